"""Timing a dense model against its lowered form, model by model and layer by layer, in one
process: the measurements behind ``onnxprune bench`` and the benchmark scripts.
"""

from __future__ import annotations

import math
import statistics
import time
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from onnxprune.core.io import dim_size
from onnxprune.runtime_ops import CSR_OPS, DOMAIN
from onnxprune.runtime.check import aligned


REL_ATOL = 1e-4
# The least atol bench's comparison takes, whatever the outputs' scale: float32 rounding of
# intermediate values near 1, summed in another order. An output far smaller than its model's
# intermediates (a text detector's map on noise, ~1.5e-5 at most) differed by 2.1e-7 between
# the lowered and the dense model and by 1.8e-7 between ONNX Runtime's optimized and
# unoptimized runs of the dense one; 1e-4 of its scale (1.5e-9) had called that a mismatch.
ABS_ATOL_FLOOR = 1e-6
RTOL = 1e-4


def session_for(model_bytes: bytes, threads: int):
    """A session for timing against another one in turn: its workers do not spin between
    calls (make_session)."""
    from onnxprune.runtime.check import make_session

    return make_session(model_bytes, threads, inter_op_threads=1, spinning=False)


def run_outputs(sess, feeds):
    from onnxprune.runtime.check import run_session

    return run_session(sess, feeds)


def densified_graph(model):
    """The model as a graph with every sparse initializer turned into a dense constant."""
    import onnx_graphsurgeon as gs
    from onnx_graphsurgeon.ir.tensor import LazyValues

    from onnxprune.core.graph import graph_from_model

    graph = graph_from_model(model)
    for t in graph.tensors().values():
        if isinstance(t, gs.Constant) and isinstance(t._values, LazyValues) and \
                isinstance(t._values.tensor, onnx.SparseTensorProto):
            t.values = np.ascontiguousarray(t.values)
    return graph


def is_lowered(model) -> bool:
    """Whether any node of the model (a streamed prefix's included) is one of onnxprune's."""
    from onnxprune.core.io import proto_graphs

    return any(n.domain == DOMAIN for g in proto_graphs(model.graph) for n in g.node)


def lower_model(dense_model, **options):
    from onnxprune.core.graph import graph_from_model, graph_to_model
    from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps

    graph = graph_from_model(dense_model)
    result = LowerToSparseOps(options)(graph)
    return graph_to_model(result.graph, dense_model), result.stats


def csr_nodes(model) -> list[onnx.NodeProto]:
    """The model's CsrGemm and CsrConv nodes (not the domain's MaxPool, which holds no weight),
    those of a prefix streamed image by image (``stream.flat_nodes``) among them, in graph order."""
    from onnxprune.passes.lower_to_sparse_ops.stream import flat_nodes

    return [n for n in flat_nodes(model) if n.domain == DOMAIN and n.op_type in CSR_OPS]


def _inits(model) -> dict[str, onnx.TensorProto]:
    """Constant tensors by the name nodes read them under: initializers, ``Constant`` nodes'
    values and ``Identity`` outputs over either (PyTorch aliases equal biases through Identity,
    Paddle keeps every weight in a Constant). An alias maps to the source tensor, whose own
    name may differ: :func:`_named` gives it the alias's name where a graph needs one."""
    from onnxprune.core.io import sparse_to_dense

    out = {t.name: t for t in model.graph.initializer}
    # what prune and compress write by default (portable storage): a bias that is mostly zeros
    # (torch starts attention biases at 0) is a sparse initializer or a Constant sparse_value
    for sp in model.graph.sparse_initializer:
        out[sp.values.name] = numpy_helper.from_array(sparse_to_dense(sp), sp.values.name)
    for node in model.graph.node:  # topological order: a chain of Identities resolves in one pass
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1:
            continue
        if node.op_type == "Constant":
            value = next((a.t for a in node.attribute if a.name == "value"), None)
            sparse = next((a.sparse_tensor for a in node.attribute if a.name == "sparse_value"), None)
            if value is not None:
                out[node.output[0]] = value
            elif sparse is not None:
                out[node.output[0]] = numpy_helper.from_array(sparse_to_dense(sparse), node.output[0])
        elif node.op_type == "Identity" and node.input and node.input[0] in out:
            out[node.output[0]] = out[node.input[0]]
    return out


def _named(t: onnx.TensorProto, name: str) -> onnx.TensorProto:
    """``t`` itself when it is called ``name``, else a copy under that name."""
    if t.name == name:
        return t
    copy = onnx.TensorProto()
    copy.CopyFrom(t)
    copy.name = name
    return copy


def capture_shapes(model, names: list[str], feeds, threads: int) -> dict[str, tuple]:
    """Shapes the named tensors take on ``feeds`` (one run with them added as outputs)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    have = {o.name for o in probe.graph.output}
    extra = [n for n in dict.fromkeys(names) if n not in have]
    probe.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                              for n in extra)
    sess = session_for(probe.SerializeToString(), threads)
    outs = run_outputs(sess, feeds)
    by_name = {o.name: v for o, v in zip(sess.get_outputs(), outs)}
    return {n: tuple(by_name[n].shape) for n in names}


def node_attrs(node: onnx.NodeProto) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _activation_nodes(a: dict, y_in: str, y_out: str, name: str, opset: int
                      ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard ops applying a CSR node's ``activation`` to ``y_in``, writing ``y_out``: the ops
    ONNX Runtime fuses into its own Conv where it can (Relu, LeakyRelu, Clip, HardSigmoid,
    Sigmoid), and GELU as the Gelu op (opset 20) or its Erf form (which ONNX Runtime fuses into
    one Gelu node), so a timing against them is against the fused dense model."""
    act = a["activation"]
    act = act.decode(errors="replace") if isinstance(act, bytes) else str(act)
    params = [float(v) for v in a.get("activation_params", [])]
    if act == "Gelu":
        if opset >= 20:
            return [helper.make_node("Gelu", [y_in], [y_out], name=f"{name}.Gelu")], []
        consts = [numpy_helper.from_array(np.array(v, np.float32), f"{name}.gelu_{k}")
                  for k, v in (("sqrt2", np.sqrt(2.0)), ("one", 1.0), ("half", 0.5))]
        t = [f"{name}.gelu_t{i}" for i in range(4)]
        return [helper.make_node("Div", [y_in, consts[0].name], [t[0]], name=f"{name}.gelu_div"),
                helper.make_node("Erf", [t[0]], [t[1]], name=f"{name}.gelu_erf"),
                helper.make_node("Add", [t[1], consts[1].name], [t[2]], name=f"{name}.gelu_add"),
                helper.make_node("Mul", [y_in, t[2]], [t[3]], name=f"{name}.gelu_mul"),
                helper.make_node("Mul", [t[3], consts[2].name], [y_out], name=f"{name}.gelu_half")], consts
    if act in ("Relu", "Sigmoid") or (act == "HardSwish" and opset >= 14):
        return [helper.make_node(act, [y_in], [y_out], name=f"{name}.{act}")], []
    if act in ("LeakyRelu", "HardSigmoid"):
        keys = ("alpha", "beta")[:len(params)]
        return [helper.make_node(act, [y_in], [y_out], name=f"{name}.{act}", **dict(zip(keys, params)))], []
    if act == "Clip":
        lo, hi = params or (-np.inf, np.inf)
        if opset < 11:
            return [helper.make_node("Clip", [y_in], [y_out], name=f"{name}.Clip", min=lo, max=hi)], []
        bounds = [numpy_helper.from_array(np.array(v, np.float32), f"{name}.clip_{k}")
                  for k, v in (("min", lo), ("max", hi))]
        return [helper.make_node("Clip", [y_in, *(b.name for b in bounds)], [y_out], name=f"{name}.Clip")], bounds
    if act not in ("HardSwish", "Swish"):
        raise ValueError(f"{name}: unknown activation {act!r}")
    gate = f"{name}.gate"
    first = helper.make_node("Sigmoid", [y_in], [gate], name=f"{name}.Sigmoid") if act == "Swish" else \
        helper.make_node("HardSigmoid", [y_in], [gate], name=f"{name}.HardSigmoid", alpha=1 / 6, beta=0.5)
    return [first, helper.make_node("Mul", [y_in, gate], [y_out], name=f"{name}.Mul")], []


def _has_residual(node: onnx.NodeProto) -> bool:
    """Whether a CSR node reads a residual input Z (CsrConv from op-set 5, CsrGemm from 6)."""
    return len(node.input) > 5 and bool(node.input[5])


def _without_residual(node: onnx.NodeProto) -> onnx.NodeProto:
    """A copy of a CSR node without its input Z."""
    bare = onnx.NodeProto()
    bare.CopyFrom(node)
    del bare.input[5:]
    return bare


def _dense_equivalent(node: onnx.NodeProto, inits: dict, x_shape: tuple, prefix: str = "",
                      opset: int = 17) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Standard-op nodes computing what a CsrGemm / CsrConv node computes (weights from its CSR),
    its fused activation included."""
    a = node_attrs(node)
    if "activation" in a:  # the node without it, then the activation's standard ops
        name = node.name or node.output[0]
        inner = onnx.NodeProto()
        inner.CopyFrom(node)
        del inner.attribute[:]
        inner.attribute.extend(x for x in node.attribute if x.name not in ("activation", "activation_params"))
        mid = f"{prefix}{name}.product"
        inner.output[0] = mid
        nodes, new_inits = _dense_equivalent(inner, inits, x_shape, prefix, opset)
        act_nodes, act_inits = _activation_nodes(a, mid, node.output[0], f"{prefix}{name}", opset)
        return [*nodes, *act_nodes], [*new_inits, *act_inits]
    if _has_residual(node):  # the product without Z, then the Add (before any activation)
        name = node.name or node.output[0]
        inner = _without_residual(node)
        mid = f"{prefix}{name}.conv" if node.op_type == "CsrConv" else f"{prefix}{name}.product_z"
        inner.output[0] = mid
        nodes, new_inits = _dense_equivalent(inner, inits, x_shape, prefix, opset)
        nodes.append(helper.make_node("Add", [mid, node.input[5]], list(node.output), name=f"{prefix}{name}_residual"))
        return nodes, new_inits
    from onnxprune.runtime_ops import dense_from_csr

    values, col_idx, row_ptr = (numpy_helper.to_array(inits[n]) for n in node.input[1:4])
    bias = node.input[4] if len(node.input) > 4 and node.input[4] else None
    name = node.name or node.output[0]
    w_name = f"{prefix}{name}.dense_weight"
    if node.op_type == "CsrConv":
        c_in = x_shape[1]
        group = int(a.get("group", 1))
        kernel = [int(v) for v in a["kernel_shape"]]  # [kH, kW], or [k] (1-D)
        w = dense_from_csr(values, col_idx, row_ptr, c_in // group * math.prod(kernel))
        w = w.reshape(w.shape[0], c_in // group, *kernel)
        attrs = {k: a[k] for k in ("kernel_shape", "strides", "pads", "dilations", "group")
                 if k in a}
        inputs = [node.input[0], w_name] + ([bias] if bias else [])
        return ([helper.make_node("Conv", inputs, list(node.output), name=name, **attrs)],
                [numpy_helper.from_array(w, w_name)])
    if int(a.get("matmul", 0)) == 2:  # MatMul style, Y transposed to (N, M) (op-set 7)
        inner = onnx.NodeProto()
        inner.CopyFrom(node)
        for attr in inner.attribute:
            if attr.name == "matmul":
                attr.i = 1
        mid = f"{prefix}{name}.untransposed"
        inner.output[0] = mid
        nodes, new_inits = _dense_equivalent(inner, inits, x_shape, prefix, opset)
        flat, shape = f"{prefix}{name}.flat", f"{prefix}{name}.flat_shape"
        new_inits.append(numpy_helper.from_array(np.array([-1, row_ptr.shape[0] - 1], np.int64), shape))
        nodes.append(helper.make_node("Reshape", [mid, shape], [flat], name=f"{name}_flat"))
        nodes.append(helper.make_node("Transpose", [flat], list(node.output), name=f"{name}_transpose", perm=[1, 0]))
        return nodes, new_inits
    if int(a.get("matmul", 0)) in (3, 4):  # each batch's Y (3) or X (4) transposed (op-set 8)
        return _batch_transposed_equivalent(node, inits, x_shape, prefix, opset)
    if int(a.get("matmul", 0)):
        w = dense_from_csr(values, col_idx, row_ptr, x_shape[-1])
        alpha = float(a.get("alpha", 1.0))
        beta = float(a.get("beta", 1.0))
        inits_out = [numpy_helper.from_array(np.ascontiguousarray(alpha * w.T), w_name)]
        if not bias or beta == 0.0:
            return [helper.make_node("MatMul", [node.input[0], w_name], list(node.output),
                                     name=name)], inits_out
        mid = f"{prefix}{name}.matmul_out"
        nodes = [helper.make_node("MatMul", [node.input[0], w_name], [mid], name=name)]
        b_in = bias
        if beta != 1.0:
            b_in = f"{prefix}{name}.scaled_bias"
            inits_out.append(numpy_helper.from_array(
                (beta * numpy_helper.to_array(inits[bias])).astype(np.float32), b_in))
        nodes.append(helper.make_node("Add", [mid, b_in], list(node.output), name=name + "_add"))
        return nodes, inits_out
    trans_a = int(a.get("transA", 0))
    k = x_shape[0] if trans_a else x_shape[1]
    w = dense_from_csr(values, col_idx, row_ptr, k)
    attrs = {"transB": 1, **{key: a[key] for key in ("transA", "alpha", "beta") if key in a}}
    inputs = [node.input[0], w_name] + ([bias] if bias else [])
    return ([helper.make_node("Gemm", inputs, list(node.output), name=name, **attrs)],
            [numpy_helper.from_array(w, w_name)])


def _batch_transposed_equivalent(node: onnx.NodeProto, inits: dict, x_shape: tuple, prefix: str,
                                 opset: int) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """A matmul=3 or 4 node as its matmul=1 product with the last two axes swapped after it
    (3: Y given (..., N, S)) or before it (4: X given (..., K, S)), by an ``Einsum`` (op-set
    12; the lowering writes these nodes only there) that needs no rank: ``x_shape`` may be the
    rank-2 stand-in a node's recorded width gives."""
    name = node.name or node.output[0]
    inner = onnx.NodeProto()
    inner.CopyFrom(node)
    for attr in inner.attribute:
        if attr.name == "matmul":
            attr.i = 1
    if node_attrs(node)["matmul"] == 4:
        x_swapped = f"{prefix}{name}.x_untransposed"
        inner.input[0] = x_swapped
        nodes, new_inits = _dense_equivalent(inner, inits, (*x_shape[:-2], x_shape[-1], x_shape[-2]), prefix, opset)
        return [helper.make_node("Einsum", [node.input[0]], [x_swapped], name=f"{name}_x_transpose",
                                 equation=_SWAP_LAST_TWO), *nodes], new_inits
    mid = f"{prefix}{name}.untransposed"
    inner.output[0] = mid
    nodes, new_inits = _dense_equivalent(inner, inits, x_shape, prefix, opset)
    nodes.append(helper.make_node("Einsum", [mid], list(node.output), name=f"{name}_transpose",
                                  equation=_SWAP_LAST_TWO))
    return nodes, new_inits


_SWAP_LAST_TWO = "...ij->...ji"


def dense_from_lowered(model, x_shapes: dict, partial: bool = False) -> onnx.ModelProto:
    """The lowered model with every CSR node replaced by its dense equivalent (``partial``:
    only those whose input ``x_shapes`` names, the others kept); a streamed prefix is flattened
    first (``stream.flatten``)."""
    from onnxprune.core.graph import standard_pool
    from onnxprune.passes.lower_to_sparse_ops.stream import flatten

    model = flatten(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = _inits(model)
    nodes, new_inits, used = [], [], set()
    # nodes lowered from one shared weight share their CSR arrays: they share one dense weight
    # again (counted once, as in the model they came from), where it comes out the same
    built: dict[tuple, str] = {}
    for node in model.graph.node:
        if node.domain == DOMAIN and node.op_type == "MaxPool":
            nodes.append(standard_pool(node))
            continue
        if node.domain != DOMAIN or (partial and node.input[0] not in x_shapes):
            nodes.append(node)
            continue
        ns, ts = _dense_equivalent(node, inits, x_shapes[node.input[0]], opset=model_opset(model))
        for t in list(ts):
            key = (tuple(node.input[1:4]), tuple(t.dims), t.data_type, t.raw_data)
            if not t.name.endswith(".dense_weight") or not t.raw_data:
                continue
            if key in built:
                ts.remove(t)
                for n in ns:
                    n.input[:] = [built[key] if i == t.name else i for i in n.input]
            else:
                built[key] = t.name
        nodes.extend(ns)
        new_inits.extend(ts)
        used.update(node.input[1:4])
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    still = {i for n in nodes for i in n.input}
    keep = [t for t in out.graph.initializer if t.name not in used or t.name in still]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep + new_inits)
    if not any(n.domain == DOMAIN for n in nodes):  # partial: the CSR nodes left need it
        ops = [o for o in out.opset_import if o.domain != DOMAIN]
        del out.opset_import[:]
        out.opset_import.extend(ops)
    return out


def _columns_known(node: onnx.NodeProto, shape) -> bool:
    """Whether ``shape`` (dims, None where unknown) gives what the node's dense weight needs:
    C_in of a CsrConv, K of a CsrGemm."""
    if shape is None or not shape:
        return False
    a = node_attrs(node)
    if node.op_type == "CsrConv":
        return len(shape) > 1 and shape[1] is not None
    if int(a.get("matmul", 0)) == 4:
        return len(shape) > 1 and shape[-2] is not None
    if int(a.get("matmul", 0)):
        return shape[-1] is not None
    return len(shape) == 2 and shape[0 if int(a.get("transA", 0)) else 1] is not None


def _recorded_x_shape(node: onnx.NodeProto) -> tuple | None:
    """An input shape giving the dense weight of a CSR node that records its width K (the
    ``columns`` attribute the lowering writes): only the dims its dense equivalent reads are
    real (C_in of a CsrConv, K of a CsrGemm). None without the attribute."""
    a = node_attrs(node)
    k = a.get("columns")
    if not isinstance(k, int) or k < 1:
        return None
    if node.op_type == "CsrConv":
        kernel = [int(v) for v in a.get("kernel_shape", [1])]
        area, group = math.prod(kernel), int(a.get("group", 1))
        if area < 1 or group < 1 or k % area:
            return None
        return (1, k // area * group, *([1] * len(kernel)))
    if int(a.get("matmul", 0)) == 4:
        return (1, k, 1)
    if int(a.get("matmul", 0)):
        return (1, k)
    return (k, 1) if int(a.get("transA", 0)) else (1, k)


# Largest dense weight (elements) the counting view rebuilds from one CSR node: 1 GiB of float32,
# above any single layer of today's models; a larger K is left uncounted with a note.
MAX_DENSE_VIEW_ELEMENTS = 1 << 28


def _width_of(node: onnx.NodeProto, x_shape: tuple) -> int:
    """The CSR matrix width K that ``x_shape`` gives ``node`` (C_in/group·kernel area, or K)."""
    a = node_attrs(node)
    if node.op_type == "CsrConv":
        return x_shape[1] // int(a.get("group", 1)) * math.prod(int(v) for v in a.get("kernel_shape", [1]))
    if int(a.get("matmul", 0)) == 4:  # X given (..., K, S)
        return x_shape[-2]
    if int(a.get("matmul", 0)):
        return x_shape[-1]
    return x_shape[0] if int(a.get("transA", 0)) else x_shape[1]


def _unsizable(node: onnx.NodeProto, x_shape: tuple, inits: dict) -> str | None:
    """Why ``node``'s dense weight at ``x_shape`` cannot be rebuilt for counting (None: it can).
    A width at or below a stored column is a model the op itself refuses (InvalidModelError)."""
    from onnxprune.core.errors import InvalidModelError
    from onnxprune.runtime_ops.csr import columns_of

    if any(name not in inits for name in node.input[1:4]):
        return "its CSR arrays are not constants (graph inputs)"
    col, row_ptr = (numpy_helper.to_array(inits[n]) for n in node.input[2:4])
    k, rows = _width_of(node, x_shape), max(len(row_ptr) - 1, 0)
    cols = columns_of(col, row_ptr) if col.size and row_ptr.size else np.zeros(0, np.int64)
    if cols.size and int(cols.max()) >= k:
        raise InvalidModelError(f"{node.name or node.output[0]}: col_idx refers to column {int(cols.max())} "
                                f"but the node's width is {k}")
    if rows * k > MAX_DENSE_VIEW_ELEMENTS:
        return f"its dense weight would be {rows} x {k} elements"
    return None


def dense_view(model: onnx.ModelProto, input_shapes: dict | None = None
               ) -> tuple[onnx.ModelProto, list[tuple[str, str]]]:
    """A lowered model as the dense pruned model it came from, for counting (inspect, report):
    every CSR node replaced by its dense equivalent: at once where the node records its width
    (the ``columns`` attribute the lowering writes), else where ONNX shape inference can
    give it (C_in, K), round by round (shape inference stops at a custom op, so a CSR node's
    output is sized once the node before it is dense). Also ``(name, why)`` of the CSR nodes
    left as they are: width symbolic, CSR arrays fed as inputs, or a dense weight too large."""
    from onnxprune.core.graph import infer_shapes
    from onnxprune.passes.lower_to_sparse_ops.stream import flatten

    model = flatten(model)  # a prefix streamed image by image counts as the nodes it runs
    inits, skipped = _inits(model), {}

    def take(node, x_shape) -> bool:
        why = _unsizable(node, x_shape, inits)
        if why is not None:
            skipped[node.name or node.output[0]] = why
        return why is None

    recorded = {n.input[0]: s for n in csr_nodes(model) if (s := _recorded_x_shape(n)) is not None and take(n, s)}
    view, sized = (dense_from_lowered(model, recorded, partial=True), recorded) if recorded else (model, {})
    while True:
        left = [n for n in csr_nodes(view) if n.input[0] not in sized and (n.name or n.output[0]) not in skipped]
        if not left:
            return view, list(skipped.items())
        shapes = infer_shapes(view, input_shapes)
        ready = {n.input[0]: tuple(shapes[n.input[0]]) for n in left
                 if _columns_known(n, shapes.get(n.input[0])) and take(n, tuple(shapes[n.input[0]]))}
        if not ready:
            return view, list(skipped.items()) + [
                (n.name or n.output[0], "its input width is symbolic, so its dense shape is unknown")
                for n in left if (n.name or n.output[0]) not in skipped]
        sized.update(ready)
        view = dense_from_lowered(view, ready, partial=True)


def counting_view(model: onnx.ModelProto, info=None, input_shapes: dict | None = None
                  ) -> tuple[onnx.ModelProto, object, list[dict]]:
    """What inspect and report count: ``(model, info, notes)`` as given for a model without
    CSR nodes; for a lowered one (onnxprune's CsrGemm / CsrConv nodes) its :func:`dense_view`,
    the dense pruned model it came from (each CSR node a layer again, its nonzeros its stored
    ones), no lazy info, and a note per CSR node it could not size."""
    if not csr_nodes(model):
        return model, info, []
    if info is not None and info.external:  # lazily loaded: the view needs the bytes themselves
        embedded = onnx.ModelProto()
        embedded.CopyFrom(model)
        for i, t in enumerate(embedded.graph.initializer):
            ref = info.ref_of(t)
            if ref is not None:
                embedded.graph.initializer[i].CopyFrom(numpy_helper.from_array(info.array_of(ref), t.name))
        model = embedded
    view, left = dense_view(model, input_shapes)
    return view, None, [{"node": name, "op": "CSR", "reason": f"lowered layer not counted: {why}"}
                        for name, why in left]


def counted_layer_rows(model: onnx.ModelProto, info=None, input_shapes: dict | None = None
                       ) -> tuple[list[dict], list[dict]]:
    """``core.stats.layer_rows`` of :func:`counting_view`, its notes added."""
    from onnxprune.core.stats import layer_rows

    from onnxprune.runtime.shape_probe import shape_probe

    view, view_info, view_notes = counting_view(model, info, input_shapes)
    rows, notes = layer_rows(view, view_info, input_shapes,
                             measure=shape_probe(view, input_shapes, view_info))
    return rows, notes + view_notes


def _one_node_models(node: onnx.NodeProto, inits: dict, x_shape: tuple, opset: int,
                     csr_opset: int = 1) -> tuple[bytes, bytes]:
    """(dense, sparse) single-layer models for one CSR node of the model; the sparse one
    declares the model's own ``ai.onnxprune`` op-set (a node with an activation needs 2 or 3).
    A residual input Z (CsrConv's from op-set 5, CsrGemm's from 6), another layer's output, is
    left out of both: the layer is timed as its product and activation."""
    if _has_residual(node):
        node = _without_residual(node)
    x = helper.make_tensor_value_info(node.input[0], TensorProto.FLOAT, list(x_shape))
    y = helper.make_tensor_value_info(node.output[0], TensorProto.FLOAT, None)
    needed = [n for n in node.input[1:] if n]
    sparse_inits = [_named(inits[n], n) for n in needed]
    d_nodes, d_inits = _dense_equivalent(node, inits, x_shape, opset=opset)
    bias = [_named(inits[n], n) for n in node.input[4:5]
            if n and any(n in dn.input for dn in d_nodes)]
    std = helper.make_opsetid("", opset)
    sparse = helper.make_model(helper.make_graph([node], "layer", [x], [y], sparse_inits),
                               opset_imports=[std, helper.make_opsetid(DOMAIN, csr_opset)])
    dense = helper.make_model(helper.make_graph(d_nodes, "layer", [x], [y], d_inits + bias),
                              opset_imports=[std])
    for m in (sparse, dense):
        m.ir_version = 8
    return dense.SerializeToString(), sparse.SerializeToString()


def time_pair(sess_a, sess_b, feeds_a, feeds_b, repeats: int, warmup: int) -> tuple[float, float]:
    """Median ms of ``sess_a`` and ``sess_b``, run alternately (a b, b a, ...) after warm-ups."""
    for _ in range(warmup):
        run_outputs(sess_a, feeds_a)
        run_outputs(sess_b, feeds_b)
    ta, tb = [], []
    for i in range(repeats):
        order = ((sess_a, feeds_a, ta), (sess_b, feeds_b, tb))
        for sess, feeds, acc in (order if i % 2 == 0 else order[::-1]):
            t0 = time.perf_counter()
            run_outputs(sess, feeds)
            acc.append(time.perf_counter() - t0)
    return statistics.median(ta) * 1e3, statistics.median(tb) * 1e3


def compare_outputs(ref: list[np.ndarray], cand: list[np.ndarray]) -> dict:
    from onnxprune.runtime.check import compare

    scale = max((float(np.max(np.abs(r))) for r in ref
                 if isinstance(r, np.ndarray) and r.size and r.dtype.kind in "iufc"), default=0.0)
    atol = max(REL_ATOL * scale, ABS_ATOL_FLOOR)
    result = compare(ref, cand, atol, RTOL)
    out = {"passed": result["passed"], "atol": atol, "rtol": RTOL, "output_scale": scale,
           "max_abs_error": result.get("max_abs_error"), "reordered": result.get("reordered")}
    if "reason" in result:  # an output count or shape that differs: no error to measure
        out["reason"] = result["reason"]
    return out


def error_text(check: dict) -> str:
    """A ``compare_outputs`` result in words: its error against the tolerance, or why the
    outputs could not be compared."""
    if check.get("max_abs_error") is None:
        return check.get("reason", "no comparable output")
    from onnxprune.runtime.check import reordered_text

    return (f"max abs error {check['max_abs_error']:.3g}, tolerance {check['atol']:.3g}"
            + reordered_text(check.get("reordered"), "the dense model's"))


def batch_dims(model) -> tuple[dict[str, int | None], list[str]]:
    from onnxprune.runtime.check import graph_inputs

    fixed, symbolic = {}, []
    for vi in graph_inputs(model):
        dims = vi.type.tensor_type.shape.dim
        if dims and dim_size(dims[0]) is not None:
            fixed[vi.name] = dim_size(dims[0])
        else:
            symbolic.append(vi.name)
    return fixed, symbolic


def model_opset(model) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)


def one_node_pairs(forced: onnx.ModelProto, shape_model: onnx.ModelProto, feeds: dict,
                   threads: int, opset: int, seed: int, select=None):
    """For each CSR node of ``forced`` (those ``select(node)`` is true of, when given): ``(node,
    inits, x_shape, x, dense session, CSR session)`` — the node alone as a one-node dense model
    and a one-node CSR model, its input shape as ``shape_model`` sees it on ``feeds``, and a
    random input ``x`` of that shape."""
    nodes = [n for n in csr_nodes(forced) if select is None or select(n)]
    if not nodes:
        return
    xs = capture_shapes(shape_model, [n.input[0] for n in nodes], feeds, threads)
    inits = _inits(forced)
    csr_opset = next((o.version for o in forced.opset_import if o.domain == DOMAIN), 1)
    rng = np.random.default_rng(seed)
    for node in nodes:
        x_shape = xs[node.input[0]]
        dense_b, sparse_b = _one_node_models(node, inits, x_shape, opset, csr_opset)
        # aligned as the layer's input is inside the model (check.FEED_ALIGNMENT)
        x = {node.input[0]: aligned(rng.standard_normal(x_shape).astype(np.float32))}
        yield node, inits, x_shape, x, session_for(dense_b, threads), session_for(sparse_b, threads)


def rows_by_node(layer_rows: list[dict]) -> dict[str, dict]:
    """The lowering's per-layer rows keyed by every node each covers: a layer whose weight
    several nodes share (an exporter's deduplicated initializers, e.g. torch's cloned encoder
    layers) is one row named after its first node, and the others are lowered with it."""
    out: dict[str, dict] = {}
    for row in layer_rows:
        for name in row.get("nodes") or [row["name"]]:
            out.setdefault(name, row)
    return out


def csr_params(node: onnx.NodeProto, inits: dict, x_shape: tuple) -> int:
    """N·K of the weight behind a CSR node (K from the input it sees)."""
    return (int(inits[node.input[3]].dims[0]) - 1) * _width_of(node, x_shape)
