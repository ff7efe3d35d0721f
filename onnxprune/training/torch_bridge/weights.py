"""Find the trainable weights of an ONNX graph and write new values back in place (numpy only).

A *weight* is a floating-point tensor held in the graph itself — an initializer, a sparse
initializer, or the ``value``/``sparse_value`` of a ``Constant`` node — that feeds one of the
layer slots below, possibly through a chain of ``Identity`` nodes (the legacy torch exporter
inserts those for shared weights) or float-to-float ``Cast`` nodes (mixed precision):

=====================  =======================================  ================
op                     slot → role                              group
=====================  =======================================  ================
Conv, ConvTranspose    input 1 → weight, input 2 → bias         conv
Gemm                   constant operand of 0/1 → weight,        fc
                       input 2 → bias
MatMul                 constant operand → weight; a constant    fc
                       operand of an ``Add`` fed by the MatMul
                       → bias (the MatMul+Add linear idiom)
LSTM, GRU, RNN         1 → weight (W), 2 → weight (R),          fc
                       3 → bias (B)
BatchNormalization     1 → bn_scale, 2 → bn_bias,               group of the
                       3 → bn_mean, 4 → bn_var (statistics:     layer feeding it
                       not trained, but updated and written)
=====================  =======================================  ================

Every other float constant (input normalisation, epsilons, PRelu slopes...) is part of the
fixed computation and is never changed.  Only ``weight`` roles are *prunable*: a pruned
connection is an exact zero there, and retraining must keep it so.

Invariants of :func:`write_back`: the returned model is a deep copy in which only the values
of the named tensors differ — same nodes, names, order, opsets, metadata, dtypes, dims and
storage place (initializer stays initializer, Constant stays Constant, a tensor stored in
``raw_data`` stays in ``raw_data``, one stored in the typed field stays there).  Values
computed in float32 are cast back to the tensor's own type (fp16/bf16 round to nearest even,
fp64 widens).  A sparse tensor keeps its index set and takes the new values at those
indices; that is lossless because the positions outside the index set are pruned
connections, which masked retraining holds at zero.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from onnxprune.core.errors import InvalidModelError, UsageError
from onnxprune.core.graph import RECURRENT_OPS, rows_partition
from onnxprune.core.io import node_label, scoped_graphs

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)

# op type → ({input index: role}, group).  Gemm and MatMul pick their weight operand at
# discovery time because either operand may be the constant one.
_LAYER_SLOTS: dict[str, tuple[dict[int, str], str]] = {
    "Conv": ({1: "weight", 2: "bias"}, "conv"),
    "ConvTranspose": ({1: "weight", 2: "bias"}, "conv"),
    "Gemm": ({2: "bias"}, "fc"),
    "MatMul": ({}, "fc"),
    "BatchNormalization": ({1: "bn_scale", 2: "bn_bias", 3: "bn_mean", 4: "bn_var"}, "bn"),
    **{op: ({1: "weight", 2: "weight", 3: "bias"}, "fc") for op in RECURRENT_OPS},
}
class UnsupportedOpError(InvalidModelError):
    """The graph uses ops (or op features) the fine-tune bridge cannot rebuild in torch.

    The model is rejected as input (exit 4) rather than as a usage error: no option makes it
    trainable; the graph has to change, or the op table has to grow.
    """


STAT_ROLES = frozenset({"bn_mean", "bn_var"})


@dataclasses.dataclass
class WeightInfo:
    """One weight tensor and how the graph uses it."""

    name: str
    role: str  # weight | bias | bn_scale | bn_bias | bn_mean | bn_var
    layer: str  # name of the (first) consuming layer node
    op_type: str  # op type of that layer
    group: str  # "conv" or "fc": what ``freeze`` acts on
    storage: str  # initializer | sparse_initializer | constant | constant_sparse
    shape: tuple[int, ...]
    elem_type: int
    scope: str = ""  # "" in the main graph; else the subgraph of its layer, "If_0/then_branch"

    @property
    def prunable(self) -> bool:
        return self.role == "weight"

    @property
    def trainable(self) -> bool:
        return self.role not in STAT_ROLES


def _constant_tensor(node: onnx.NodeProto):
    """The TensorProto/SparseTensorProto a Constant node holds, or None for value_float(s)..."""
    for attr in node.attribute:
        if attr.name == "value":
            return "constant", attr.t
        if attr.name == "sparse_value":
            return "constant_sparse", attr.sparse_tensor
    return None, None


def stored_tensors(graph: onnx.GraphProto) -> dict[str, tuple[str, object]]:
    """Map name → (storage kind, TensorProto or SparseTensorProto) of tensors held in the graph."""
    found: dict[str, tuple[str, object]] = {}
    for t in graph.initializer:
        found[t.name] = ("initializer", t)
    for s in graph.sparse_initializer:
        found[s.values.name] = ("sparse_initializer", s)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            kind, t = _constant_tensor(node)
            if kind is not None:
                found[node.output[0]] = (kind, t)
    return found


def all_stored_tensors(graph: onnx.GraphProto) -> dict[str, tuple[str, object]]:
    """:func:`stored_tensors` of ``graph`` and of every subgraph, by name.  The main graph's
    tensors always count; a subgraph's only when its name is stored nowhere else (a branch
    shadowing an outer name, or two branches reusing one, would make the name ambiguous:
    such branch tensors stay fixed constants of their branch)."""
    main = stored_tensors(graph)
    found: dict[str, tuple[str, object]] = {}
    repeated: set[str] = set()
    for g, prefix in scoped_graphs(graph):
        if not prefix:
            continue
        for name, entry in stored_tensors(g).items():
            if name in found or name in main:
                repeated.add(name)
            found[name] = entry
    return {**{k: v for k, v in found.items() if k not in repeated}, **main}


def _elem_type(kind: str, t) -> int:
    return t.values.data_type if _is_sparse(kind) else t.data_type


def _dims(kind: str, t) -> tuple[int, ...]:
    return tuple(int(d) for d in t.dims)


def _is_sparse(kind: str) -> bool:
    return kind in ("sparse_initializer", "constant_sparse")


class _Chains:
    """How a layer input reaches a stored tensor: through Identity and float-to-float Cast
    (mixed-precision graphs store fp16 weights and cast them up: the gradient reaches the
    stored tensor through either), and for recurrent weights (``unsqueeze``) also through an
    Unsqueeze with constant axes and a row-block Concat — the gate reorder torch writes in
    front of an LSTM (``core.graph.const_source`` follows the same views).

    Names are resolved as ONNX scopes them: a name read in a subgraph is the one defined there
    or in the nearest enclosing graph, never one of a sibling branch (two If branches may each
    compute a local ``t``, or one may store a ``t`` the other computes).  Every lookup takes the
    scope (``scoped_graphs`` prefix) of the node reading the name."""

    def __init__(self, stored: dict, scoped: list) -> None:
        self.stored = stored
        # (scope, name) → (storage kind, tensor) stored there; ``held``: those ``stored`` holds
        # (not a name stored in more than one scope, kept a fixed constant of its graph)
        self.home: dict[tuple[str, str], tuple[str, object]] = {}
        self.held: set[tuple[str, str]] = set()
        self.producers: dict[tuple[str, str], onnx.NodeProto] = {}
        self.parent: dict[str, str] = {}
        self.scope_of: dict[int, str] = {}
        self.formal: set[tuple[str, str]] = set()  # a Loop/Scan body's inputs hide outer names
        for g, prefix in scoped:
            if prefix:
                self.formal.update((prefix, i.name) for i in g.input)
            for n, entry in stored_tensors(g).items():
                self.home[prefix, n] = entry
                if n in stored and stored[n][1] is entry[1]:
                    self.held.add((prefix, n))
            for i, node in enumerate(g.node):
                self.scope_of[id(node)] = prefix
                self.producers.update(((prefix, out), node) for out in node.output if out)
                for a in node.attribute:
                    if a.HasField("g") or len(a.graphs):
                        self.parent[f"{prefix}{node_label(node, i)}/{a.name}/"] = prefix

    def lookup(self, name: str, scope: str) -> tuple[str, object] | None:
        """Where ``name`` read in ``scope`` is defined: ("stored", entry), ("fixed", entry) (a
        stored tensor whose name another scope stores too), ("node", producer), or None (a
        graph input or unknown), searching ``scope`` then its enclosing graphs."""
        while True:
            if (scope, name) in self.home:
                return ("stored" if (scope, name) in self.held else "fixed"), self.home[scope, name]
            if (scope, name) in self.producers:
                return "node", self.producers[scope, name]
            if (scope, name) in self.formal or scope not in self.parent:
                return None
            scope = self.parent[scope]

    def producer(self, name: str, scope: str) -> onnx.NodeProto | None:
        found = self.lookup(name, scope)
        return found[1] if found and found[0] == "node" else None

    def passes_value(self, node: onnx.NodeProto, unsqueeze: bool) -> bool:
        if node.op_type == "Identity":
            return True
        if node.op_type == "Cast":
            to = next((a.i for a in node.attribute if a.name == "to"), None)
            return to in FLOAT_TYPES
        if node.op_type == "Unsqueeze" and unsqueeze:
            axes = node.input[1] if len(node.input) > 1 else ""
            if not axes:
                return True
            found = self.lookup(axes, self.scope_of[id(node)])
            return found is not None and (found[0] != "node" or found[1].op_type == "Constant")
        return False

    def ints(self, name: str, scope: str) -> list[int] | None:
        src, kind, _ = self.resolve(name, scope)
        if kind != "stored" or _elem_type(*self.stored[src]) in FLOAT_TYPES:
            return None
        return [int(v) for v in tensor_value(*self.stored[src]).reshape(-1)]

    def row_blocks(self, concat: onnx.NodeProto) -> str | None:
        """The tensor whose axis-0 Slices (step 1) ``concat`` joins on axis 0, when they cover
        each of its rows once; else None."""
        axis = next((a.i for a in concat.attribute if a.name == "axis"), None)
        if axis != 0 or not concat.input:
            return None
        scope = self.scope_of[id(concat)]
        whole, rows = None, []
        for part in concat.input:
            node = self.producer(part, scope)
            if node is None or node.op_type != "Slice" or len(node.input) < 3 or \
                    whole not in (None, node.input[0]) or self.scope_of[id(node)] != scope:
                return None
            whole = node.input[0]
            extra = [self.ints(x, scope) if x else d
                     for x, d in zip(list(node.input[3:5]) + ["", ""], ([0], [1]))]
            bounds = self.ints(node.input[1], scope), self.ints(node.input[2], scope)
            if None in bounds or any(len(b) != 1 for b in bounds) or extra != [[0], [1]]:
                return None
            rows.append((bounds[0][0], bounds[1][0]))
        src, kind, _ = self.resolve(whole, scope)
        dims = _dims(*self.stored[src]) if kind == "stored" else ()
        return whole if dims and rows_partition(rows, dims[0]) else None

    def resolve(self, name: str, scope: str, unsqueeze: bool = False) -> tuple[str, str | None, tuple | None]:
        """Follow the chain from ``name`` read in ``scope`` back as far as it goes: the name it
        ends on, and when that is a stored tensor "stored" / "fixed" (see :meth:`lookup`) and its
        (storage kind, tensor)."""
        seen = set()
        while (found := self.lookup(name, scope)) is not None and (scope, name) not in seen:
            if found[0] != "node":
                return name, found[0], found[1]
            seen.add((scope, name))
            node = found[1]
            scope = self.scope_of[id(node)]
            whole = self.row_blocks(node) if unsqueeze and node.op_type == "Concat" else None
            if whole is not None:
                name = whole
                continue
            if not self.passes_value(node, unsqueeze) or not node.input:
                break
            name = node.input[0]
        return name, None, None

    def float_source(self, name: str, scope: str, unsqueeze: bool = False) -> str | None:
        """The stored floating-point tensor behind ``name`` read in ``scope``, or None."""
        if not name:
            return None
        src, kind, _ = self.resolve(name, scope, unsqueeze)
        return src if kind == "stored" and _elem_type(*self.stored[src]) in FLOAT_TYPES else None

    def fixed_float(self, name: str, scope: str, unsqueeze: bool = False) -> str | None:
        """The name of the floating-point tensor behind ``name`` when it is stored under a name
        another scope stores too (the bridge keeps it fixed), else None."""
        if not name:
            return None
        src, kind, entry = self.resolve(name, scope, unsqueeze)
        return src if kind == "fixed" and _elem_type(*entry) in FLOAT_TYPES else None


def find_weights(model: onnx.ModelProto) -> dict[str, WeightInfo]:
    """All weights of the graph, keyed by initializer / Constant-output name (see module doc).

    Layers inside subgraphs (If branches, Loop/Scan bodies) count too, whether their weight is
    stored in the subgraph or read from an enclosing scope; ``layer`` is then the node's label
    as the interpreter names it (``"If_0/then_branch/Conv_3"``)."""
    return scan_weights(model)[0]


def scan_weights(model: onnx.ModelProto) -> tuple[dict[str, WeightInfo], list[str]]:
    """(:func:`find_weights`, the names of the layer weights the bridge keeps fixed because the
    name is stored in more than one scope — two If branches each storing ``W``: the pruner
    prunes each, nothing retrains them)."""
    graph = model.graph
    stored = all_stored_tensors(graph)
    scoped = list(scoped_graphs(graph))
    nodes = [(node, prefix + node_label(node, i)) for g, prefix in scoped for i, node in enumerate(g.node)]
    chains = _Chains(stored, scoped)

    def scope_of(node: onnx.NodeProto) -> str:
        return chains.scope_of[id(node)]

    def is_float_const(name: str, node: onnx.NodeProto) -> bool:
        return chains.float_source(name, scope_of(node), node.op_type in RECURRENT_OPS) is not None

    weights: dict[str, WeightInfo] = {}
    fixed: set[str] = set()
    # Before IR version 4 every initializer had to be listed as a graph input as well: there
    # the listing says nothing about the user wanting to override it (as in core.graph).
    overridable = {i.name for i in graph.input} & set(stored_tensors(graph)) if model.ir_version >= 4 else set()
    labels = {id(node): label for node, label in nodes}

    def weight(name: str, node: onnx.NodeProto, group: str) -> bool:
        """Add ``name`` as the layer's prunable weight when it is a held float constant; note
        it when it is a fixed one."""
        if is_float_const(name, node):
            add(name, "weight", node, group)
            return True
        kept = chains.fixed_float(name, scope_of(node), node.op_type in RECURRENT_OPS)
        if kept is not None:
            fixed.add(kept)
        return False

    def add(name: str, role: str, node: onnx.NodeProto, group: str) -> None:
        src = chains.float_source(name, scope_of(node), node.op_type in RECURRENT_OPS)
        if src in overridable:
            return  # a default the user may override at run time: left alone, as prune does
        if src in weights:
            # Shared tensor: a prunable use wins, so its mask is enforced everywhere.
            if role == "weight" and weights[src].role != "weight":
                weights[src].role = role
            return
        kind, t = stored[src]
        weights[src] = WeightInfo(
            name=src, role=role, layer=labels[id(node)], op_type=node.op_type, group=group,
            storage=kind, shape=_dims(kind, t), elem_type=_elem_type(kind, t), scope=scope_of(node)[:-1],
        )

    def bn_group(node: onnx.NodeProto) -> str:
        # A BatchNormalization belongs to the layer it normalises (freeze acts on both).
        name, scope = node.input[0], scope_of(node)
        prod = chains.producer(name, scope)
        while prod is not None and prod.op_type == "Identity" and prod.input:
            prod = chains.producer(prod.input[0], scope_of(prod))
        if prod is None:
            return "conv"
        if prod.op_type in ("Gemm", "MatMul"):
            return "fc"
        if prod.op_type == "Add" and any(
            getattr(chains.producer(i, scope_of(prod)), "op_type", None) == "MatMul" for i in prod.input
        ):
            return "fc"
        return "conv"

    consumers: dict[tuple[str, str], list[onnx.NodeProto]] = {}  # (scope, name): readers there
    for node, _ in nodes:
        for i in node.input:
            consumers.setdefault((scope_of(node), i), []).append(node)

    for node, _ in nodes:
        if node.domain not in ("", "ai.onnx") or node.op_type not in _LAYER_SLOTS:
            continue
        slots, group = _LAYER_SLOTS[node.op_type]
        if group == "bn":
            group = bn_group(node)
        if node.op_type in ("Gemm", "MatMul"):
            ops = list(node.input[:2]) + ["", ""]
            _ = weight(ops[1], node, group) or weight(ops[0], node, group)
        for idx, role in slots.items():
            if idx < len(node.input) and role == "weight":
                weight(node.input[idx], node, group)
            elif idx < len(node.input) and is_float_const(node.input[idx], node):
                add(node.input[idx], role, node, group)
        if node.op_type == "MatMul":
            for cons in consumers.get((scope_of(node), node.output[0]), []):
                if cons.op_type == "Add" and cons.domain in ("", "ai.onnx"):
                    other = [i for i in cons.input if i != node.output[0]]
                    if len(other) == 1 and is_float_const(other[0], cons):
                        add(other[0], "bias", node, group)
    return weights, sorted(fixed)


def _check_loaded(name: str, t: TensorProto) -> None:
    if t.data_location == TensorProto.EXTERNAL:
        raise InvalidModelError(
            f"weight {name!r} is stored in external data that was not loaded; "
            "load the model with its external data first"
        )


def _sparse_indices(s: onnx.SparseTensorProto) -> np.ndarray:
    """Flat (row-major) positions of a sparse tensor's stored values."""
    idx = numpy_helper.to_array(s.indices).astype(np.int64)
    dims = tuple(int(d) for d in s.dims)
    if idx.ndim == 2:
        idx = np.ravel_multi_index(tuple(idx.T), dims) if idx.size else idx.reshape(0)
    return idx.reshape(-1)


def tensor_value(kind: str, t) -> np.ndarray:
    """Dense numpy value of a stored tensor, in its own dtype."""
    if _is_sparse(kind):
        _check_loaded(t.values.name, t.values)
        dims = tuple(int(d) for d in t.dims)
        vals = numpy_helper.to_array(t.values).reshape(-1)
        dense = np.zeros(int(np.prod(dims)), dtype=vals.dtype)
        dense[_sparse_indices(t)] = vals
        return dense.reshape(dims)
    _check_loaded(t.name, t)
    return numpy_helper.to_array(t)


def read_weights(model: onnx.ModelProto, names=None) -> dict[str, np.ndarray]:
    """Dense values of the named stored tensors (default: every weight of :func:`find_weights`)."""
    stored = all_stored_tensors(model.graph)
    if names is None:
        names = list(find_weights(model))
    return {n: tensor_value(*stored[n]) for n in names}


def _cast_like(value: np.ndarray, elem_type: int) -> np.ndarray:
    target = onnx.helper.tensor_dtype_to_np_dtype(elem_type)
    if elem_type == TensorProto.BFLOAT16:
        import ml_dtypes  # a core dependency; float32 → bfloat16 rounds to nearest even

        return np.asarray(value, dtype=np.float32).astype(ml_dtypes.bfloat16)
    return np.asarray(value).astype(target)


def _set_dense(t: TensorProto, value: np.ndarray) -> None:
    """Replace the values of ``t`` keeping the field they were stored in."""
    cast = _cast_like(value, t.data_type)
    if t.raw_data:
        t.raw_data = numpy_helper.from_array(cast).raw_data
        return
    flat = cast.reshape(-1)
    if t.data_type == TensorProto.FLOAT:
        del t.float_data[:]
        t.float_data.extend(flat.tolist())
    elif t.data_type == TensorProto.DOUBLE:
        del t.double_data[:]
        t.double_data.extend(flat.tolist())
    elif t.data_type in (TensorProto.FLOAT16, TensorProto.BFLOAT16):
        # The typed field holds the 16-bit patterns widened to int32.
        del t.int32_data[:]
        t.int32_data.extend(flat.view(np.uint16).astype(np.int32).tolist())
    else:  # pragma: no cover - find_weights only yields float tensors
        raise UsageError(f"cannot write values of element type {t.data_type} into {t.name!r}")


def write_back(model: onnx.ModelProto, weights: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` where the named stored tensors take the given values (see module doc)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    stored = all_stored_tensors(out.graph)
    for name, value in weights.items():
        if name not in stored:
            raise UsageError(f"write_back: no initializer or Constant named {name!r} in the graph "
                             "(or the name is stored in more than one scope)")
        kind, t = stored[name]
        value = np.asarray(value)
        dims = _dims(kind, t)
        if tuple(value.shape) != dims:
            raise UsageError(
                f"write_back: {name!r} has shape {dims} in the graph but new value has {value.shape}"
            )
        if _elem_type(kind, t) not in FLOAT_TYPES:
            raise UsageError(f"write_back: {name!r} is not a floating-point tensor")
        if _is_sparse(kind):
            _check_loaded(name, t.values)
            _set_dense(t.values, value.reshape(-1)[_sparse_indices(t)])
        else:
            _check_loaded(name, t)
            _set_dense(t, value)
    return out
