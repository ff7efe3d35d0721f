"""LowerToSparseOps — rewrite pruned Gemm / MatMul / Conv nodes into onnxprune's CSR ops.

The "accelerated" output form (DESIGN.md §4): a pruned weight W becomes three ordinary
initializers holding W by output row in CSR (``runtime_ops/README.md``, op contract v2)::

    values  float32|float16[nnz]    col_idx int16|int32|uint8[nnz]    row_ptr int32[N + 1]

Lowered for size, each layer takes the index encoding with fewer bytes: uint8 column deltas
(filler entries bridge gaps over 255) or absolute int16/int32 columns (``compact_csr``); for
speed, int16/int32 (decoding deltas costs the batch-1 loop more per nonzero than reading
int16 when the arrays are cache-resident; runtime_ops/README.md "Compact CSR").  Values are
float32 unless the ``values`` option asks for float16 (the weights then round to float16 once;
a layer with a weight beyond float16's range keeps float32, and says so).

and its node becomes ``CsrGemm`` / ``CsrConv`` in domain ``ai.onnxprune`` (op-set 1).  The
rows of the CSR are always the op's outputs, so the source matrix is (op knowledge, one table,
``_ROWS_BY_OUTPUT``)::

    Gemm(A, B, C), transB=1   B            (N, K)        → CsrGemm(A, v, c, p, C)  α, β, transA kept
    Gemm(A, B, C), transB=0   Bᵀ                         → CsrGemm(A, v, c, p, C)
    MatMul(X, W), W (K, N)    Wᵀ                         → CsrGemm(X, v, c, p[, b]) matmul=1
        (a following Add(·, b) with constant b of shape (N,) is folded in as input 4)
    Conv(X, W, B), 1-D or 2-D W.reshape(C_out, C_in/g·kH·kW) → CsrConv(X, v, c, p[, B])
                                                           (auto_pad resolved to explicit pads)
        (a following inference BatchNormalization with constant (C_out,) tensors, the conv's
        only use, is folded in: W·s and (B − μ)·s + β with s = γ/√(σ² + ε), as ONNX Runtime
        folds it into its own Conv; zeros stay zeros; then an Add(·, z) that is the only use of
        the result, z of exactly its shape, becomes CsrConv's residual input Z (op-set 5: a
        ResNet block's shortcut); then the activation that is the only use
        of the result — Relu, LeakyRelu, Clip, HardSigmoid, HardSwish, also Hardswish spelled
        out in several nodes, Sigmoid, SiLU (x·Sigmoid(x)) — becomes CsrConv's ``activation``:
        ``activations.py``)
    the same activations, and GELU (the Gelu op, or its Erf form x·½·(1 + erf(x/√2)) as
    exporters spell it), after a Gemm, or after a MatMul and its folded bias Add, become
    CsrGemm's ``activation`` (op-set 3); GELU after a Conv becomes CsrConv's. Before them, an
    Add(·, z) that is the only use of the product (after its bias Add), z of exactly its shape,
    becomes CsrGemm's residual input Z (op-set 6: a transformer's sublayer output plus its
    input, before the LayerNorm).

Exactness: the CSR holds exactly the nonzero weights (pruned weights are exact zeros), so the
lowered op computes the same sum with the zero terms left out; results differ from the dense
op only by floating-point summation order.

Per layer, only where the kernel beats ONNX Runtime's dense op: as measured on the machine
that will run the model when ``measured`` carries the layer's speed-up t_dense / t_csr (lowered
at >= ``MEASURED_MIN_SPEEDUP``; a layer it does not name stays dense), else as predicted by
``cost_model.estimate`` with the expected ``batch`` and ``threads``; unless the layer
matches a ``force`` glob (always lowered when eligible, also where the cost model cannot judge
it: a convolution whose output size is unknown) or a ``never`` glob (never lowered);
``max-density`` replaces the cost model by a plain density threshold.  Layers the ops cannot
express (float16/float64 weights — both ops compute in float32 only, and casting would change
the model's numerics —, a weight on the left of MatMul, a batched MatMul weight, 3-D
convolutions, strided SAME padding on an input of unknown size) are kept and reported with the
reason.
A 1-D convolution lowers to the 1-D CsrConv of op-set 4 (kernel_shape [k]).

Before the layers are found, each main-graph LRN matching a ``decompose-lrn`` glob is rewritten
into the standard ops it is (``lrn.py``: Mul, a 1x1 window Conv, Sqrt/Pow, Div), which ONNX
Runtime runs several times faster than its own LRN; the window Conv is then a layer like any
other, lowered whenever eligible (it was measured with its LRN) and never when the ``never``
list names it. ``stats["rewrites"]`` has a row per main-graph LRN: rewritten or not, and why.
The measured decision (``onnxprune.runtime.lowering``) times each LRN against its rewrite and
names the winners; ``--decide model`` names all; the size objective none.

Invariants: graph inputs and outputs are unchanged; a lowered node keeps its name and output
tensor (the activation's output when one is folded in; a rewritten LRN's output is written by
its final Div); the graph gains the opset import (``ai.onnxprune``, 1) iff a node was
lowered — op-set 2 when a CsrConv carries an activation, 3 when a CsrGemm does or an
activation is Gelu, 4 when a CsrConv is 1-D, 5 when a CsrConv reads a residual Z, 6 when a
CsrGemm does, 7 when a CsrGemm writes its output transposed for the next one (``chains.py``:
two lowered products in a row, ``transposed-chains``), 8 when one writes or reads each batch
transposed (``heads.py``: an attention's head splits and merge, under the same option), 9
when an ONNX MaxPool that reads a lowered node's output became onnxprune's MaxPool
(``pools.py``, option ``nchw-pools``: ONNX Runtime would reorder around its own); the node list
stays topologically sorted.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, Callable

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.core.errors import UsageError
from onnxprune.core.graph import (Layer, const_source, export_with_placeholders, find_layers,
                             infer_shapes, is_absent, unique_name, weight_values)
from onnxprune.runtime_ops import DOMAIN
from onnxprune.runtime_ops.csr import compact_csr, csr_nbytes

from . import cost_model as cost
from . import lrn as lrn_rewrite
from .chains import TRANSPOSED_OUTPUT_OPSET, reads_residual, transposed_chains
from .heads import HEADS_OPSET, attention_heads
from .pools import POOL_OPSET, nchw_pools
from .activations import FusedActivation, fusable_activation
from ..base import (Option, Pass, PassError, PassResult, check_bool, check_choice, check_float, check_int,
                   check_optional, check_str_list, parse_options)

# Which node input is the weight, and how to turn the weight into rows = outputs.
_ROWS_BY_OUTPUT: dict[str, Callable[[gs.Node, np.ndarray], np.ndarray]] = {
    "Gemm": lambda n, w: w if n.attrs.get("transB", 0) else w.T,
    "MatMul": lambda n, w: w.T,
    "Conv": lambda n, w: w.reshape(w.shape[0], -1),
}
_NEW_OP = {"Gemm": "CsrGemm", "MatMul": "CsrGemm", "Conv": "CsrConv"}
LOWERABLE_OPS = frozenset(_NEW_OP)  # op types this pass can lower (others stay dense, with a reason)


class _Skip(Exception):
    """This node cannot be lowered; the message says why."""


@dataclasses.dataclass
class _Plan:
    """How one node of a layer would be lowered."""

    node: gs.Node
    kind: str  # "fc" | "conv"
    orientation: str  # key of the CSR source matrix (nodes sharing a weight may differ)
    rows: int
    cols: int
    batch_rows: int  # rows of X per call for fc (batch × leading dims); batch for conv
    out_hw: tuple[int, int] | None
    attrs: dict[str, Any]
    bias: gs.Tensor | None
    fused_add: gs.Node | None = None
    fused_bn: gs.Node | None = None
    fused_residual: gs.Node | None = None  # a CsrConv's Add(y, z): z becomes its input Z
    residual: gs.Tensor | None = None
    fused_act: FusedActivation | None = None
    unproven_residual: str | None = None  # an Add left as a node: its operand's shape is unknown


def _fixed(d) -> int | None:
    return int(d) if isinstance(d, (int, np.integer)) and d > 0 else None


def _shape_of(t: gs.Tensor, shapes: dict) -> list | None:
    s = shapes.get(t.name)
    if s is None and t.shape is not None:
        s = [_fixed(d) for d in t.shape]
    return s


def _resolve_batch(dim, batch: int) -> int:
    """The model's own batch size when its graph fixes it, else the expected one."""
    fixed = _fixed(dim)
    return fixed if fixed is not None else batch


def _plan_gemm(node: gs.Node, layer: Layer, shapes: dict, batch: int) -> _Plan:
    if _weight_input(node) != 1:
        raise _Skip("the constant is Gemm's A operand, not its weight B")
    w_shape = layer.shape
    trans_b = int(node.attrs.get("transB", 0))
    trans_a = int(node.attrs.get("transA", 0))
    n, k = (w_shape[0], w_shape[1]) if trans_b else (w_shape[1], w_shape[0])
    x_shape = _shape_of(node.inputs[0], shapes)
    m = _resolve_batch(x_shape[1 if trans_a else 0], batch) if x_shape and len(x_shape) == 2 \
        else batch
    attrs = {a: node.attrs[a] for a in ("transA", "alpha", "beta") if a in node.attrs}
    bias = node.inputs[2] if len(node.inputs) > 2 and not is_absent(node.inputs[2]) else None
    return _Plan(node, "fc", f"gemm-transB{trans_b}", n, k, m, None, attrs, bias)


def _weight_input(node: gs.Node) -> int | None:
    """Which input holds the constant (find_layers prefers input 1, as done here)."""
    for i in (1, 0):
        if i < len(node.inputs) and const_source(node.inputs[i])[0] is not None:
            return i
    return None


def _sole_add(y: gs.Tensor, graph_outputs: set[int]) -> tuple[gs.Node, gs.Tensor] | None:
    """The standard two-input Add that is ``y``'s only use (``y`` not a graph output), and its
    other operand; None otherwise, or when that operand is ``y`` itself (y + y)."""
    if id(y) in graph_outputs or len(y.outputs) != 1:
        return None
    add = y.outputs[0]
    if add.op != "Add" or (add.domain or "") not in ("", "ai.onnx") or len(add.inputs) != 2 or \
            len(add.outputs) != 1:
        return None
    other = add.inputs[1] if add.inputs[0] is y else add.inputs[0]
    return None if other is y else (add, other)


def _fusable_add(node: gs.Node, graph_outputs: set[int], n: int) -> tuple[gs.Node, gs.Tensor] | None:
    """The Add that adds a constant (N,) bias to this MatMul's output, if that is its only use."""
    sole = _sole_add(node.outputs[0], graph_outputs)
    if sole is None:
        return None
    add, other = sole
    const = const_source(other)[0]  # an initializer or a Constant node
    if const is None:
        return None
    values = np.asarray(const.values)
    if values.dtype != np.float32 or values.shape != (n,):
        return None
    return add, other


def _fusable_bn(node: gs.Node, graph_outputs: set[int], c_out: int) -> gs.Node | None:
    """The inference BatchNormalization that is this Conv's only use, with constant float32
    (C_out,) scale, bias, mean and variance, and a constant bias (or none) on the Conv."""
    y = node.outputs[0]
    if id(y) in graph_outputs or len(y.outputs) != 1:
        return None
    bn = y.outputs[0]
    if bn.op != "BatchNormalization" or (bn.domain or "") not in ("", "ai.onnx") or \
            len(bn.inputs) != 5 or bn.inputs[0] is not y or len(bn.outputs) != 1 or \
            int(bn.attrs.get("training_mode", 0)) != 0 or int(bn.attrs.get("spatial", 1)) != 1:
        return None
    for t in bn.inputs[1:]:
        const = const_source(t)[0]
        v = np.asarray(const.values) if const is not None else None
        if v is None or v.dtype != np.float32 or v.shape != (c_out,):
            return None
    bias = node.inputs[2] if len(node.inputs) > 2 and not is_absent(node.inputs[2]) else None
    if bias is not None and const_source(bias)[0] is None:
        return None
    # A scale that is not finite (variance + ε <= 0, an infinite γ) would turn the pruned
    # zeros' products into NaN in the BN but leave them out of the CSR: keep such a BN.
    with np.errstate(all="ignore"):
        scale = _bn_scale(bn)
    return bn if np.all(np.isfinite(scale)) and np.all(np.isfinite(scale.astype(np.float32))) else None


def _own_symbol(name) -> bool:
    """A dimension symbol of the model's own (``batch``, ``N``), not one shape inference made up
    for a dimension it could not follow (``unk__3``)."""
    return bool(name) and not str(name).startswith("unk__")


def _residual(y: gs.Tensor, shapes: dict, symbols: dict, graph_outputs: set[int],
              ranks: tuple[int, ...] | None = (3, 4)) -> tuple[gs.Node, gs.Tensor, bool] | None:
    """The Add(y, z) (either order) that is ``y``'s only use, with a float32 ``z``, as
    (add, z, foldable). Foldable when shape inference shows z to be exactly ``y``'s shape
    (fixed dims equal, symbolic ones the same symbol), of one of ``ranks`` (None: any):
    CsrConv's Z adds it in the tiles, CsrGemm's while the rows of Y are in cache, before the
    activation (op-sets 5 and 6). Not foldable, and returned for the report to name, when shape
    inference could not tell z's shape (an unknown rank, or a dimension that is neither a value
    nor a symbol of the model's own on one side: ONNX shape inference names the dimensions it
    cannot follow ``unk__N``). None otherwise: a ``z`` that broadcasts (a per-channel constant,
    a batch of 1) stays a node by design, as Z takes no broadcasting."""
    sole = _sole_add(y, graph_outputs)
    if sole is None:
        return None
    add, z = sole
    if z.dtype is not None and np.dtype(z.dtype) != np.float32:
        return None
    sy, sz = shapes.get(y.name), shapes.get(z.name)
    if not sy or sz is None:
        return add, z, False
    if len(sy) != len(sz) or (ranks is not None and len(sy) not in ranks):
        return None
    ny, nz = symbols.get(y.name) or [None] * len(sy), symbols.get(z.name) or [None] * len(sz)
    proven, unknown = True, False
    for dy, dz, my, mz in zip(sy, sz, ny, nz):
        if dy is not None and dz is not None:
            if dy != dz:
                return None  # a known mismatch: z broadcasts
            continue
        if dy is not None or dz is not None or my is None or my != mz:
            proven = False
        if (dy is None and not _own_symbol(my)) or (dz is None and not _own_symbol(mz)):
            unknown = True
    if proven:
        return add, z, True
    return (add, z, False) if unknown else None


def _take_residual(p: "_Plan", found: tuple | None) -> gs.Tensor | None:
    """Records ``_residual``'s finding on the plan: the Add folded (its output returned, where
    the activation is looked for) or named as left unfolded."""
    if found is None:
        return None
    add, z, foldable = found
    if not foldable:
        p.unproven_residual = add.name
        return None
    p.fused_residual, p.residual = add, z
    return add.outputs[0]


def _folded_note(plans: list[_Plan]) -> str:
    """What a lowered layer's node took in besides its weight, for the report's reason."""
    note = ""
    if plans[0].fused_bn is not None:
        note += f"; BatchNormalization {plans[0].fused_bn.name} folded in"
    residuals = list(dict.fromkeys(p.fused_residual.name for p in plans if p.fused_residual is not None))
    if residuals:  # one per node: a weight shared by several nodes folds each one's Add
        note += f"; residual Add{'s' if len(residuals) > 1 else ''} {', '.join(residuals)} folded in"
    folded_acts = sorted({p.fused_act.description for p in plans if p.fused_act is not None})
    if folded_acts:
        note += f"; activation {', '.join(folded_acts)} folded in"
    unproven = [p.unproven_residual for p in plans if p.unproven_residual is not None]
    if unproven:
        note += (f"; residual Add{'s' if len(unproven) > 1 else ''} {', '.join(unproven)} left as "
                 "node(s): shape inference cannot show the other operand has the output's shape")
    return note


def _keep_to_graph(p: _Plan, main: set[int]) -> None:
    """Folds only nodes of the graph being lowered: onnx-graphsurgeon lists a node of an If or
    Loop body that reads an outer tensor among that tensor's users, and such a node can be
    neither removed from this graph nor computed by its CSR node. A fold left out takes
    everything after it along (each later one reads its output)."""
    def outside(n) -> bool:
        return n is not None and id(n) not in main

    if outside(p.fused_add):
        p.fused_add, p.bias, p.fused_residual, p.residual, p.fused_act = None, None, None, None, None
    if outside(p.fused_bn):
        p.fused_bn, p.fused_residual, p.residual, p.fused_act = None, None, None, None
    if outside(p.fused_residual):
        p.fused_residual, p.residual, p.fused_act = None, None, None
    if p.fused_act is not None and any(outside(n) for n in p.fused_act.nodes):
        p.fused_act = None


def _drop_claimed_residual(plans: list[_Plan]) -> None:
    """A residual Add of two convolutions' outputs (a ResNet block's main path and its
    projection shortcut) is each one's only use: the first of them lowered takes it (and the
    activation after it) as its Z; the other, lowered later, finds it gone and folds neither."""
    for p in plans:
        if p.fused_residual is not None and not p.fused_residual.outputs:
            p.fused_residual, p.residual, p.fused_act = None, None, None


def _bn_scale(bn: gs.Node) -> np.ndarray:
    """γ/√(σ² + ε) of an inference BatchNormalization whose tensors are constant (float64)."""
    gamma, _, _, var = (np.asarray(const_source(t)[0].values, np.float64) for t in bn.inputs[1:])
    return gamma / np.sqrt(var + float(bn.attrs.get("epsilon", 1e-5)))


def _bn_folded_weight(plan: _Plan, w: np.ndarray) -> np.ndarray:
    """The weight with ``plan.fused_bn`` folded in: each output channel's row times its scale."""
    if plan.fused_bn is None:
        return w
    scale = _bn_scale(plan.fused_bn).reshape((-1,) + (1,) * (w.ndim - 1))
    return (w.astype(np.float64) * scale).astype(np.float32)


def _bn_folded_bias(plan: _Plan) -> np.ndarray | None:
    """(B − μ)·s + β for ``plan.fused_bn`` (B = 0 without a conv bias); None without a BN."""
    if plan.fused_bn is None:
        return None
    _, beta, mean, _ = (np.asarray(const_source(t)[0].values, np.float64) for t in plan.fused_bn.inputs[1:])
    scale = _bn_scale(plan.fused_bn)
    b = np.zeros_like(scale) if plan.bias is None else np.asarray(const_source(plan.bias)[0].values, np.float64)
    return ((b - mean) * scale + beta).astype(np.float32)


def _plan_matmul(node: gs.Node, layer: Layer, shapes: dict, batch: int,
                 graph_outputs: set[int]) -> _Plan:
    if _weight_input(node) != 1:
        raise _Skip("MatMul's constant is on the left (W·X); only X·W is lowered")
    if len(layer.shape) != 2:
        raise _Skip(f"batched MatMul weight of rank {len(layer.shape)}; only 2-D weights lower")
    k, n = layer.shape
    out = _shape_of(node.outputs[0], shapes)
    x = _shape_of(node.inputs[0], shapes)
    rank = len(out) if out else (len(x) if x else None)
    if rank == 1:
        m = 1  # X is a single vector
    elif out:
        m = _resolve_batch(out[0], batch)
        for d in out[1:-1]:
            m *= d or 1
    else:
        m = batch
    fused = _fusable_add(node, graph_outputs, n)
    attrs = {"matmul": 1}
    if fused is None:
        return _Plan(node, "fc", "matmul", n, k, m, None, attrs, None)
    add, bias = fused
    return _Plan(node, "fc", "matmul", n, k, m, None, attrs, bias, fused_add=add)


def _conv_pads(node: gs.Node, x_hw, kernel, strides, dilations) -> list[int]:
    """Explicit pads, [begin..., end...] over the kernel's axes (1 or 2), auto_pad resolved."""
    rank = len(kernel)
    auto = node.attrs.get("auto_pad", "NOTSET")
    if isinstance(auto, bytes):
        auto = auto.decode()
    if auto in ("NOTSET", ""):
        pads = list(node.attrs.get("pads", [0] * 2 * rank))
        if len(pads) != 2 * rank:
            raise _Skip(f"pads {pads} are not {rank}-D")
        return [int(p) for p in pads]
    if auto == "VALID":
        return [0] * 2 * rank
    if auto not in ("SAME_UPPER", "SAME_LOWER"):
        raise _Skip(f"unknown auto_pad {auto!r}")
    if x_hw is None:
        if any(s != 1 for s in strides):
            raise _Skip(f"auto_pad={auto} on an input of unknown spatial size")
        # stride 1: the total pad is (k - 1)·d whatever the size (EfficientNet's SAME 1x1s)
        x_hw = [1] * rank
    begin, end = [], []
    for size, k, s, d in zip(x_hw, kernel, strides, dilations):
        total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
        small, big = total // 2, total - total // 2
        # SAME_UPPER puts the odd pad at the end, SAME_LOWER at the beginning (ONNX Conv).
        begin.append(small if auto == "SAME_UPPER" else big)
        end.append(big if auto == "SAME_UPPER" else small)
    return [*begin, *end]


def _plan_conv(node: gs.Node, layer: Layer, shapes: dict, batch: int,
               graph_outputs: set[int], own: tuple[dict, dict]) -> _Plan:
    """``own``: the model's own (shapes, dim symbols), which decide a residual fold."""
    rank = len(layer.shape) - 2  # 1-D convolutions lower to op-set 4's 1-D CsrConv
    if rank not in (1, 2):
        raise _Skip(f"{rank}-D convolution; CsrConv is 1-D or 2-D")
    c_out = layer.shape[0]
    kernel = [int(v) for v in node.attrs.get("kernel_shape", layer.shape[2:])]
    strides = [int(v) for v in node.attrs.get("strides", [1] * rank)]
    dilations = [int(v) for v in node.attrs.get("dilations", [1] * rank)]
    if not len(kernel) == len(strides) == len(dilations) == rank:
        raise _Skip(f"kernel_shape {kernel}, strides {strides} or dilations {dilations} are not {rank}-D")
    group = int(node.attrs.get("group", 1))
    x = _shape_of(node.inputs[0], shapes)
    spatial = x[2:] if x and len(x) == rank + 2 and all(x[2:]) else None
    pads = _conv_pads(node, spatial, kernel, strides, dilations)
    out = _shape_of(node.outputs[0], shapes)
    if out and len(out) == rank + 2 and all(out[2:]):
        out_sp = list(out[2:])
    elif spatial is not None:
        out_sp = [(spatial[i] + pads[i] + pads[i + rank] - (kernel[i] - 1) * dilations[i] - 1)
                  // strides[i] + 1 for i in range(rank)]
    else:
        out_sp = None  # CsrConv finds it at run time; only the cost model needs it (see _unsized)
    out_hw = None if out_sp is None else (tuple(out_sp) if rank == 2 else (1, out_sp[0]))
    m = _resolve_batch(x[0], batch) if x else batch
    attrs = {"kernel_shape": kernel, "strides": strides, "pads": pads, "dilations": dilations,
             "group": group}
    bias = node.inputs[2] if len(node.inputs) > 2 and not is_absent(node.inputs[2]) else None
    k = int(np.prod(layer.shape[1:]))
    fused_bn = _fusable_bn(node, graph_outputs, c_out) if len(layer.nodes) == 1 else None
    y = fused_bn.outputs[0] if fused_bn is not None else node.outputs[0]
    plan = _Plan(node, "conv", "conv", c_out, k, m, out_hw, attrs, bias, fused_bn=fused_bn)
    if len(layer.nodes) == 1:
        y = _take_residual(plan, _residual(y, *own, graph_outputs)) or y
        plan.fused_act = fusable_activation(y, graph_outputs)
    return plan


def winograd_eligible(plan: _Plan) -> bool:
    """Whether CsrConv's Winograd path takes the convolution of ``plan``: a 2-D 3x3 kernel at
    unit strides and dilations, one group (runtime_ops/README.md, ``winograd``)."""
    a = plan.attrs
    return plan.kind == "conv" and list(a.get("kernel_shape", [])) == [3, 3] and \
        list(a["strides"]) == [1, 1] and list(a["dilations"]) == [1, 1] and int(a["group"]) == 1


def _kernel_area(plan: _Plan) -> int | None:
    """kH·kW of a convolution plan (the cost model's input-channel count is K / kH·kW)."""
    kernel = plan.attrs.get("kernel_shape") if plan.kind == "conv" else None
    return int(np.prod(kernel)) if kernel else None


def static_shapes(graph: gs.Graph, input_shapes: dict[str, list[int]] | None = None,
                  symbols: dict | None = None, dtypes: dict | None = None) -> dict[str, list[int | None]]:
    """Tensor shapes from ONNX shape inference, without copying the graph's weights; the graph
    inputs named in ``input_shapes`` take those dims (``--input-shape``) for the inference.
    ``symbols`` and ``dtypes``, when given, are filled with each tensor's dims' symbols and its
    element type (``infer_shapes``)."""
    original = onnx.ModelProto()
    original.ir_version = onnx.IR_VERSION
    original.opset_import.extend(graph.import_domains or
                                 [onnx.helper.make_opsetid("", graph.opset)])
    model, _ = export_with_placeholders(graph, original)
    return infer_shapes(model, input_shapes, symbols, dtypes)


def _drop_dangling_producers(graph: gs.Graph, t: gs.Tensor, outputs: set[int]) -> None:
    """Remove the Constant/Identity chain that only fed a rewritten weight input."""
    while isinstance(t, gs.Variable) and not t.outputs and id(t) not in outputs \
            and len(t.inputs) == 1 and t.inputs[0].op in ("Constant", "Identity"):
        producer = t.inputs[0]
        if any(o.outputs or id(o) in outputs for o in producer.outputs):
            return
        upstream = producer.inputs[0] if producer.op == "Identity" and producer.inputs else None
        producer.inputs.clear()
        producer.outputs.clear()
        graph.nodes.remove(producer)
        t = upstream


# A measured speed-up is the truth on the machine it was taken on; the margin over 1 only
# absorbs run-to-run noise (the cost model's own margin, cost.MIN_SPEEDUP, covers its errors).
MEASURED_MIN_SPEEDUP = 1.1
# The reason of a layer left dense because none of its weights is zero (the measured lowering
# may still lower an unpruned convolution with its neighbours: runtime/lowering.py).
NOT_PRUNED = "not pruned (100% dense)"


def check_speedups(key: str, v: Any) -> dict[str, float] | None:
    """``{layer name: speed-up}`` with every speed-up a finite number > 0 (or None: no
    measurements)."""
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(k, str) and k for k in v):
        raise UsageError(f"{key}: expected a mapping of layer names to speed-ups")
    check = check_float(0.0)
    out = {k: check(f"{key}.{k}", s) for k, s in v.items()}
    bad = [k for k, s in out.items() if s <= 0.0]
    if bad:
        raise UsageError(f"{key}.{bad[0]}: a speed-up must be > 0")
    return out


def check_input_shapes(key: str, v: Any) -> dict[str, list[int]] | None:
    """``{graph input name: [dims]}`` with every dim an int >= 1 (or None: the model's own)."""
    if v is None:
        return None
    if not isinstance(v, dict) or not all(isinstance(k, str) and k for k in v):
        raise UsageError(f"{key}: expected a mapping of input names to shapes")
    out = {}
    for name, dims in v.items():
        if not isinstance(dims, (list, tuple)) or not dims or not all(
                isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims):
            raise UsageError(f"{key}.{name}: expected a list of sizes >= 1")
        out[name] = [int(d) for d in dims]
    return out


def _glob_match(layer: Layer, globs: tuple[str, ...]) -> bool:
    return any(layer.matches(g) for g in globs)


# A convolution whose output size shape inference cannot give (symbolic input height/width)
# runs fine as CsrConv, but the cost model has nothing to judge it by.
UNSIZED_REASON = ("output size unknown (symbolic input size), so the cost model cannot judge "
                  "it; give the input's size (--input-shape NAME=DIMS), or add the layer to the "
                  "recipe's lower-to-sparse-ops force list to lower it anyway")


def _unsized(plans: list[_Plan]) -> bool:
    return any(p.kind == "conv" and p.out_hw is None for p in plans)


class LowerToSparseOps(Pass):
    name = "lower-to-sparse-ops"
    lowers_weights = True
    OPTIONS = (
        Option("batch", check_int(1), 1,
               "expected batch size at serving time (a batch fixed in the model wins)"),
        Option("threads", check_int(1), 1, "intra-op threads the model will run with"),
        Option("force", check_str_list, (), "layer-name globs always lowered when eligible"),
        Option("never", check_str_list, (), "layer-name globs never lowered"),
        Option("max-density", check_optional(check_float(0.0, 1.0)), None,
               "lower every eligible layer at or below this density instead of asking the "
               "cost model"),
        Option("objective", check_choice("speed", "size"), "speed",
               "speed: lower where the cost model predicts a win; size: lower wherever the "
               "CSR arrays are smaller than the dense weight (the compact file)"),
        Option("values", check_choice("fp32", "fp16"), "fp32",
               "value type of the CSR arrays: fp32, or fp16 (half the value bytes; the kernels "
               "widen them in registers and sum in fp32, but each weight is rounded to fp16)"),
        Option("winograd", check_str_list, (),
               "layer-name globs whose lowered 3x3 convolutions (2-D, unit strides and "
               "dilations, one group) run by Winograd F(4x4, 3x3) over their weights made dense "
               "(CsrConv winograd=1): fewer multiply-adds on denser layers, a slightly different "
               "rounding (onnxprune lower --winograd times both paths and picks per layer)"),
        Option("input-shapes", check_input_shapes, None,
               "graph input name -> dims for shape inference where the model's are symbolic "
               "(what --input-shape gives), so the cost model can size those layers"),
        Option("measured", check_speedups, None,
               "layer name -> speed-up t_dense / t_csr measured on the machine that will run "
               "the model (what onnxprune lower measures); when given it decides instead of "
               "the cost model, and a layer it does not name stays dense"),
        Option("decompose-lrn", check_str_list, (),
               "LRN node-name globs rewritten into Mul, a 1x1 window Conv (lowered with them), "
               "Sqrt/Pow and Div, which run faster than ONNX Runtime's LRN (lrn.py)"),
        Option("transposed-chains", check_bool, True,
               "a lowered product whose output only feeds another one's X writes it transposed "
               "for it (chains.py), and an attention's head splits and merge skip their "
               "transposes (heads.py); off for timing layers one at a time"),
        Option("nchw-pools", check_bool, True,
               "an ONNX MaxPool that reads a lowered node's output becomes onnxprune's MaxPool "
               "(op-set 9), which ONNX Runtime runs without reordering its input and output to "
               "its blocked layout (pools.py)"),
    )

    def __init__(self, options: dict | None = None):
        o = parse_options(self.name, self.OPTIONS, options)
        self.batch: int = o["batch"]
        self.threads: int = o["threads"]
        self.force: tuple[str, ...] = o["force"]
        self.never: tuple[str, ...] = o["never"]
        self.max_density: float | None = o["max-density"]
        self.objective: str = o["objective"]
        self.measured: dict[str, float] | None = o["measured"]
        self.values: str = o["values"]
        self.winograd: tuple[str, ...] = o["winograd"]
        self.input_shapes: dict[str, list[int]] | None = o["input-shapes"]
        self.decompose_lrn: tuple[str, ...] = o["decompose-lrn"]
        self.chains: bool = o["transposed-chains"]
        self.pools: bool = o["nchw-pools"]
        self._window_of: dict[int, str] = {}  # id(window Conv) -> the LRN it came from

    # ------------------------------------------------------------------ planning

    def _plans(self, layer: Layer, shapes, graph_outputs) -> list[_Plan]:
        if layer.skip_reason:
            raise _Skip(layer.skip_reason)
        if layer.op not in _NEW_OP:
            raise _Skip(f"{layer.op} has no sparse op")
        if np.dtype(layer.dtype) != np.float32:
            raise _Skip(f"weight dtype {layer.dtype}: {_NEW_OP[layer.op]} computes in float32 "
                        "only (casting would change the numerics)")
        plans = []
        for node in layer.nodes:
            if node.op != layer.op:
                raise _Skip(f"weight shared by a {layer.op} and a {node.op}")
            if node.op == "Gemm":
                plans.append(_plan_gemm(node, layer, shapes, self.batch))
            elif node.op == "MatMul":
                plans.append(_plan_matmul(node, layer, shapes, self.batch, graph_outputs))
            else:
                plans.append(_plan_conv(node, layer, shapes, self.batch, graph_outputs,
                                        (self._own_shapes, self._symbols)))
        for p in plans:
            if p.kind == "fc":
                # CsrGemm's residual Z (op-set 6: a transformer's Add(sublayer, input) before
                # its LayerNorm) after the folded bias Add when there is one, then its
                # activation (op-set 3); per node, as neither touches the weight (transformer
                # layers exported from copies of one module share theirs)
                y = (p.fused_add or p.node).outputs[0]
                y = _take_residual(p, _residual(y, self._own_shapes, self._symbols, graph_outputs,
                                                ranks=None)) or y
                p.fused_act = fusable_activation(y, graph_outputs)
        for p in plans:
            _keep_to_graph(p, self._main_nodes)
        return plans

    def _forced(self, layer: Layer) -> bool:
        """In the force list, or an LRN's window, and not in the never list (never wins, as in
        ``_decide``)."""
        return (_glob_match(layer, self.force) or self._window(layer) is not None) and \
            not _glob_match(layer, self.never)

    def _window(self, layer: Layer) -> str | None:
        """The LRN whose window sum ``layer`` is (``lrn.py``), None for any other layer."""
        return self._window_of.get(id(layer.nodes[0])) if layer.nodes else None

    def _needs_cost_model(self, layer: Layer) -> bool:
        """Whether ``_decide`` asks the cost model about ``layer`` (which needs its output
        size): not when it is forced, nor under max-density or the size objective, which
        judge by density or bytes alone, nor when measurements decide."""
        return not self._forced(layer) and self.max_density is None and \
            self.objective == "speed" and self.measured is None

    def _decide(self, layer: Layer, density: float, estimates: list[cost.Estimate],
                csr_bytes: int, dense_bytes: int) -> tuple[bool, str]:
        if _glob_match(layer, self.never):
            return False, "in the never list"
        if _glob_match(layer, self.force):
            return True, "forced"
        if self._window(layer) is not None:
            return True, f"window sum of LRN {self._window(layer)}, lowered with its rewrite"
        if self.max_density is not None:
            if density <= self.max_density:
                return True, f"density {density:.1%} <= max-density {self.max_density:.1%}"
            return False, f"density {density:.1%} > max-density {self.max_density:.1%}"
        if density >= 1.0:
            return False, NOT_PRUNED
        if self.objective == "size":
            if csr_bytes < dense_bytes:
                return True, f"size: CSR {csr_bytes} B < dense {dense_bytes} B"
            return False, f"size: CSR {csr_bytes} B >= dense {dense_bytes} B"
        if self.measured is not None:
            return decide_measured(self.measured.get(layer.name))
        speedup = _combined_speedup(estimates)
        if speedup >= cost.MIN_SPEEDUP:
            return True, f"cost model: {_vs(speedup, cost.MIN_SPEEDUP)}x >= {cost.MIN_SPEEDUP}x"
        return False, f"cost model: {_vs(speedup, cost.MIN_SPEEDUP)}x < {cost.MIN_SPEEDUP}x"

    # ------------------------------------------------------------------ the pass

    def requires(self, graph: gs.Graph) -> None:
        if not isinstance(graph, gs.Graph):
            raise PassError(f"{self.name}: expected an onnx-graphsurgeon Graph, "
                            f"got {type(graph).__name__}")

    def _shapes(self, graph: gs.Graph, layers: list[Layer]) -> dict:
        """Tensor shapes for the plans (``--input-shape`` dims applied). Also kept: the model's
        own shapes and dim symbols (a residual Z must match Y whatever the batch: the pinned
        dims only size the cost model), and the nodes of this graph (a node of an If or Loop
        body that reads an outer tensor is among its users, and is never folded)."""
        needs_shapes = any(layer.op in ("Conv", "MatMul", "Gemm") for layer in layers)
        self._symbols: dict = {}
        self._own_shapes = static_shapes(graph, None, self._symbols) if needs_shapes else {}
        self._main_nodes = {id(n) for n in graph.nodes}
        if needs_shapes and self.input_shapes:
            return static_shapes(graph, self.input_shapes)
        return self._own_shapes

    def _rewrite_lrns(self, graph: gs.Graph) -> list[dict]:
        """Every main-graph LRN matching ``decompose-lrn`` rewritten (``lrn.py``), its window
        Conv recorded as its layer; a row per LRN node for the report."""
        self._window_of = {}
        nodes = [n for n in graph.nodes if n.op == "LRN"]
        if not nodes:
            return []
        dtypes: dict = {}
        shapes = static_shapes(graph, self.input_shapes, dtypes=dtypes) if self.decompose_lrn else {}
        tensor_names = set(graph.tensors().keys())
        node_names = {n.name for n in graph.nodes}
        rows = []
        for node in nodes:
            name = lrn_rewrite.label(node)
            row = {"node": name, "op": "LRN", "rewritten": False, "window": None, "reason": None}
            rows.append(row)
            if not any(fnmatch.fnmatchcase(name, g) for g in self.decompose_lrn):
                row["reason"] = "not in the decompose-lrn list"
                continue
            found = lrn_rewrite.eligibility(node, shapes, dtypes, graph.opset)
            if isinstance(found, str):
                row["reason"] = found
                continue
            params, channels = found
            window = lrn_rewrite.decompose(graph, node, params, channels, tensor_names, node_names)
            self._window_of[id(window)] = name
            row.update(rewritten=True, window=window.name,
                       reason=f"rewritten: {channels}-channel window of {min(params.size, channels)} "
                              f"as a 1x1 Conv, ^{params.beta:g} as "
                              f"{'·'.join(lrn_rewrite.power_steps(params.beta)) or 'itself'}")
        if self._window_of:
            graph.toposort(recurse_subgraphs=False, recurse_functions=False, mode="nodes")
        return rows

    def run(self, graph: gs.Graph, progress=None) -> PassResult:
        rewrites = self._rewrite_lrns(graph)
        layers, _ = find_layers(graph)
        graph_outputs = {id(t) for t in graph.outputs}
        shapes = self._shapes(graph, layers)

        prepared = []
        encoded: dict[str, tuple[tuple[np.ndarray, ...], str | None]] = {}
        dense_ws = 0
        csr_ws = 0
        for layer in layers:
            w = weight_values(layer) if layer.weight is not None else None
            dense_ws += layer.params * (w.dtype.itemsize if w is not None else 4)
            try:
                if layer.scope:
                    raise _Skip(f"used inside a subgraph ({layer.scope}): only main-graph "
                                "nodes are lowered")
                plans = self._plans(layer, shapes, graph_outputs)
            except _Skip as why:
                prepared.append((layer, None, None, str(why)))
                continue
            if _unsized(plans) and self._needs_cost_model(layer):
                prepared.append((layer, None, None, UNSIZED_REASON))
                continue
            nnz = int(np.count_nonzero(w))
            encoded[layer.weight_name] = self._encode(layer, plans[0], _bn_folded_weight(plans[0], w))
            csr_ws += csr_nbytes(*encoded[layer.weight_name][0])
            prepared.append((layer, plans, nnz, None))

        rows: list[dict] = []
        taken = set(graph.tensors().keys())
        lowered_any = False
        total = len(prepared)
        for i, (layer, plans, nnz, skip) in enumerate(prepared):
            row = _first_row(layer, plans, nnz, skip)
            rows.append(row)
            if plans is None:
                continue
            density = nnz / layer.params if layer.params else 0.0
            arrays, values_note = encoded[layer.weight_name]
            idx_t = arrays[1].dtype
            row["density"] = density
            row["index_dtype"] = "uint8-delta" if idx_t == np.uint8 else str(idx_t)
            row["values_dtype"] = str(arrays[0].dtype)
            # Another orientation of a shared weight (rare) is counted at the first one's size.
            row["csr_bytes"] = csr_nbytes(*arrays) * len({p.orientation for p in plans})
            common = dict(threads=self.threads, index_bytes=idx_t.itemsize,
                          value_bytes=arrays[0].dtype.itemsize,
                          dense_working_set=dense_ws, csr_working_set=csr_ws)
            estimates = []
            if not _unsized(plans):  # else decided without an estimate (_needs_cost_model)
                estimates = [cost.estimate(p.kind, p.rows, p.cols, nnz, batch=p.batch_rows,
                                           out_hw=p.out_hw, kernel_area=_kernel_area(p), **common)
                             for p in plans]
                row["estimated_speedup"] = round(_combined_speedup(estimates), 3)
                p0 = plans[0]
                row["break_even_density"] = round(cost.break_even_density(
                    p0.kind, p0.rows, p0.cols, batch=p0.batch_rows, out_hw=p0.out_hw,
                    kernel_area=_kernel_area(p0), **common), 4)
            lower, reason = self._decide(layer, density, estimates, row["csr_bytes"],
                                         row["dense_bytes"] or 0)
            _drop_claimed_residual(plans)
            row["reason"] = reason if values_note is None or not lower else f"{reason}; {values_note}"
            if lower:
                row["reason"] += _folded_note(plans)
                self._lower(graph, layer, plans, taken, graph_outputs, arrays)
                row["lowered"] = True
                row["winograd"] = any(int(p.node.attrs.get("winograd", 0)) == 1 for p in plans)
                lowered_any = True
            if progress is not None:
                progress(i + 1, total, layer.name)

        if any(n.domain == DOMAIN and reads_residual(n) for n in graph.nodes):
            # A folded residual's Z may come from a node listed after the product (a ResNet
            # block's shortcut branch): the node list must stay in topological order.
            graph.toposort(recurse_subgraphs=False, recurse_functions=False, mode="nodes")
        chains, heads, pools = [], [], []
        if lowered_any:
            chains = self._chain(graph, prepared, rows, shapes, graph_outputs, taken)
            heads = self._heads(graph, prepared, rows, shapes, graph_outputs, taken)
            pools = nchw_pools(graph, lambda t: _shape_of(t, shapes)) if self.pools else []
            _declare_op_set(graph)
        lowered = [r["name"] for r in rows if r["lowered"]]
        return PassResult(graph, lowered_any or bool(self._window_of), {
            "domain": DOMAIN,
            "options": {"batch": self.batch, "threads": self.threads, "force": list(self.force),
                        "never": list(self.never), "max-density": self.max_density,
                        "objective": self.objective, "measured": self.measured,
                        "values": self.values, "winograd": list(self.winograd),
                        "decompose-lrn": list(self.decompose_lrn),
                        "transposed-chains": self.chains, "nchw-pools": self.pools},
            "lowered": lowered,
            "layers": rows,
            "rewrites": rewrites,
            "transposed_chains": [{"producer": a, "consumer": b} for a, b in chains],
            "attention_heads": [{"node": a, "rewrite": b} for a, b in heads],
            "nchw_pools": pools,
        })

    def _chain(self, graph: gs.Graph, prepared: list, rows: list[dict], shapes: dict, graph_outputs: set[int],
               taken: set[str]) -> list[tuple[str, str]]:
        """The transposed chains (chains.py) of the products lowered in this run, where the
        option allows, each noted in the two layers' reasons; the pairs' node names (an
        unnamed node by its output's)."""
        if not self.chains:
            return []
        row_of = _lowered_rows(prepared, rows)
        xs = {k: v for k, v in _known_rows(prepared, shapes).items() if k in row_of}
        names = []
        for producer, consumer in transposed_chains(graph, xs, graph_outputs, taken):
            a, b = (producer.name or producer.outputs[0].name), (consumer.name or consumer.outputs[0].name)
            if int(producer.attrs["matmul"]) == 3:
                row_of[id(producer)]["reason"] += f"; output written per batch transposed for {b} (matmul=3)"
                row_of[id(consumer)]["reason"] += f"; reads {a}'s output per batch transposed (matmul=4)"
            else:
                row_of[id(producer)]["reason"] += f"; output written transposed for {b} (matmul=2)"
                row_of[id(consumer)]["reason"] += f"; reads {a}'s transposed output (transA=1)"
            names.append((a, b))
        return names

    def _heads(self, graph: gs.Graph, prepared: list, rows: list[dict], shapes: dict, graph_outputs: set[int],
               taken: set[str]) -> list[tuple[str, str]]:
        """The attention head splits and merges (heads.py) of the products lowered in this run,
        where the option allows, each noted in its layer's reason; (node name, "split" or
        "merge") for each."""
        if not self.chains:
            return []
        row_of = _lowered_rows(prepared, rows)
        done = []

        def own(t: gs.Tensor) -> tuple:  # the model's own dims and symbols (no --input-shape)
            return self._own_shapes.get(t.name), self._symbols.get(t.name)

        for node, what in attention_heads(graph, set(row_of), lambda t: _shape_of(t, shapes), graph_outputs, taken,
                                          own):
            row_of[id(node)]["reason"] += ("; output written per batch transposed, its heads as attention reads "
                                           "them (matmul=3)" if what == "split" else
                                           "; reads its heads' context computed transposed (matmul=4)")
            done.append((node.name or node.outputs[0].name, what))
        return done

    def _encode(self, layer: Layer, plan: _Plan, w: np.ndarray
                ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], str | None]:
        """The smallest CSR of ``w`` as ``plan`` orients it, with the asked value type, and a
        note when float16 was asked but the layer keeps float32."""
        rows = _ROWS_BY_OUTPUT[layer.op](plan.node, w)
        deltas = self.objective == "size"
        if self.values == "fp16" and self._window(layer) is not None:
            # α/size (2e-5 in AlexNet) is subnormal or zero in float16
            return compact_csr(rows, deltas=deltas), "values kept fp32: an LRN window's α/size"
        if self.values == "fp16":
            try:
                return compact_csr(rows, np.float16, deltas), None
            except ValueError as why:
                return compact_csr(rows, deltas=deltas), f"values kept fp32: {why}"
        return compact_csr(rows, deltas=deltas), None

    def _lower(self, graph: gs.Graph, layer: Layer, plans: list[_Plan], taken: set[str],
               graph_outputs: set[int], first: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        w = weight_values(layer)
        csr: dict[str, tuple[gs.Constant, gs.Constant, gs.Constant]] = {}
        for plan in plans:
            # nodes of one shared weight whose outputs meet in one Add: the first lowered took it
            _drop_claimed_residual([plan])
            if plan.orientation not in csr:
                values, col_idx, row_ptr = first if not csr else self._encode(layer, plan, w)[0]
                suffix = "" if len(csr) == 0 else f"_{plan.orientation}"
                base = layer.weight_name + suffix
                csr[plan.orientation] = (
                    gs.Constant(unique_name(f"{base}.csr_values", taken), values),
                    gs.Constant(unique_name(f"{base}.csr_col_idx", taken), col_idx),
                    gs.Constant(unique_name(f"{base}.csr_row_ptr", taken), row_ptr),
                )
            node = plan.node
            old_weight = node.inputs[1]
            x = node.inputs[0]
            new_inputs = [x, *csr[plan.orientation]]
            folded_bias = _bn_folded_bias(plan)
            if folded_bias is not None:
                new_inputs.append(gs.Constant(unique_name(f"{layer.weight_name}.bn_bias", taken),
                                              folded_bias))
            elif plan.bias is not None:
                new_inputs.append(plan.bias)
            if plan.residual is not None:  # Z after B, or after an empty bias slot
                if len(new_inputs) == 4:
                    new_inputs.append(gs.Variable.empty())
                new_inputs.append(plan.residual)
            dropped = [plan.bias] if folded_bias is not None and plan.bias is not None else []
            folded = [n for n in (plan.fused_add, plan.fused_bn, plan.fused_residual) if n is not None]
            dropped += _absorb(graph, node, folded + (plan.fused_act.nodes if plan.fused_act else []))
            node.inputs.clear()
            node.inputs.extend(new_inputs)
            node.op = _NEW_OP[layer.op]
            node.domain = DOMAIN
            node.attrs = {**plan.attrs, "columns": int(plan.cols)}  # K, for readers without shapes
            if _glob_match(layer, self.winograd) and winograd_eligible(plan):
                node.attrs["winograd"] = 1
            if plan.fused_act is not None:
                node.attrs["activation"] = plan.fused_act.name
                if plan.fused_act.params:
                    node.attrs["activation_params"] = [float(v) for v in plan.fused_act.params]
            for t in [old_weight, *dropped]:
                _drop_dangling_producers(graph, t, graph_outputs)


def _declare_op_set(graph: gs.Graph) -> None:
    """Imports ai.onnxprune at the lowest op-set the file's nodes need (op_set_needed), so that
    a file without a fused activation still loads where an op-set 1 library runs it."""
    version = max([1, *(op_set_needed(n) for n in graph.nodes if n.domain == DOMAIN)])
    domains = [d for d in graph.import_domains or [onnx.helper.make_opsetid("", graph.opset)]
               if d.domain != DOMAIN or d.version >= version]
    if not any(d.domain == DOMAIN for d in domains):
        domains.append(onnx.helper.make_opsetid(DOMAIN, version))
    graph.import_domains = domains


def _lowered_rows(prepared: list, rows: list[dict]) -> dict[int, dict]:
    """Each node lowered in this run (by id: names may be empty or repeat) -> its layer's row."""
    return {id(p.node): row for (_, plans, _, _), row in zip(prepared, rows) if row["lowered"] for p in plans or []}


def _known_rows(prepared: list, shapes: dict) -> dict[int, tuple[int | None, int | None, int | None]]:
    """Each product's rows of X (M) at the expected batch where X's shape gives all of its
    leading dims (the batch resolved as the plans resolve it), X's rank, and the rows of each
    of X's batches (its next-to-last dim, rank 3 or more), each None when unknown: by id of the
    node (names may be empty or repeat)."""
    out: dict[int, tuple[int | None, int | None, int | None]] = {}
    for _, plans, _, _ in prepared:
        for p in plans or []:
            if p.kind != "fc":
                continue
            x = _shape_of(p.node.inputs[0], shapes)
            known = x is not None and (len(x) == 1 or all(d is not None for d in x[1:-1]))
            seq = x[-2] if x is not None and len(x) >= 3 and isinstance(x[-2], int) else None
            out[id(p.node)] = (p.batch_rows if known else None, len(x) if x is not None else None, seq)
    return out


def op_set_needed(node: gs.Node) -> int:
    """The op-set of ``ai.onnxprune`` that first defines what a node of the domain uses
    (runtime_ops/README.md): 9 for MaxPool, 8 for CsrGemm's batches transposed (matmul=3 and
    4, attention heads), 7 for CsrGemm's transposed output (matmul=2), 6 for CsrGemm's
    residual input Z, 5 for CsrConv's, 4 for a 1-D
    CsrConv, 3 for CsrGemm's activation and for the Gelu activation, 2 for CsrConv's other
    activations, else 1."""
    if node.op == "MaxPool":
        return POOL_OPSET
    if node.op == "CsrGemm" and int(node.attrs.get("matmul", 0)) in (3, 4):
        return HEADS_OPSET
    if node.op == "CsrGemm" and int(node.attrs.get("matmul", 0)) == 2:
        return TRANSPOSED_OUTPUT_OPSET
    if reads_residual(node):
        return 6 if node.op == "CsrGemm" else 5
    one_d = 4 if node.op == "CsrConv" and len(node.attrs.get("kernel_shape", [])) == 1 else 1
    act = node.attrs.get("activation")
    if act is None:
        return one_d
    act = act.decode(errors="replace") if isinstance(act, bytes) else str(act)
    return max(one_d, 3 if node.op == "CsrGemm" or act == "Gelu" else 2)


def _absorb(graph: gs.Graph, node: gs.Node, chain: list[gs.Node]) -> list[gs.Tensor]:
    """Removes the nodes of ``chain`` (the folded bias Add or BatchNormalization, then the
    activation's nodes, in order), ``node`` now writing the last one's output; returns the
    inputs they read from outside the chain (constants that may now dangle)."""
    if not chain:
        return []
    inside = {id(node.outputs[0])} | {id(n.outputs[0]) for n in chain}
    outside = [t for n in chain for t in n.inputs if id(t) not in inside]
    y = chain[-1].outputs[0]
    for n in chain:
        n.inputs.clear()
        n.outputs.clear()
        graph.nodes.remove(n)
    node.outputs.clear()
    node.outputs.append(y)
    return outside


def _vs(speedup: float, limit: float) -> str:
    """``speedup`` to two decimals, or as many more as it takes not to read as the limit it
    is compared with (1.0976 is "1.098x < 1.1x", not "1.10x < 1.1x")."""
    for digits in range(2, 10):
        text = f"{speedup:.{digits}f}"
        if float(text) != limit:
            return text
    return repr(float(speedup))


def decide_measured(speedup: float | None) -> tuple[bool, str]:
    """Whether a measured speed-up lowers (>= ``MEASURED_MIN_SPEEDUP``), and the reason's text."""
    if speedup is None:
        return False, "not measured"
    if speedup >= MEASURED_MIN_SPEEDUP:
        return True, f"measured {_vs(speedup, MEASURED_MIN_SPEEDUP)}x >= {MEASURED_MIN_SPEEDUP}x"
    return False, f"measured {_vs(speedup, MEASURED_MIN_SPEEDUP)}x < {MEASURED_MIN_SPEEDUP}x"


def _first_row(layer: Layer, plans: list[_Plan] | None, nnz: int | None, skip: str | None) -> dict:
    """A layer's report row before its decision. ``nodes``: every node the weight feeds (a
    weight shared by several nodes, as torch's cloned TransformerEncoder layers export, is one
    layer and one decision, one CSR node per use)."""
    nodes = [p.node.name for p in plans] if plans else [n.name for n in layer.nodes]
    return {"name": layer.name, "op": layer.op, "weight": layer.weight_name,
            "nodes": nodes, "weight_shape": list(layer.shape), "dtype": layer.dtype,
            "nonzero": nnz, "density": None, "lowered": False, "reason": skip,
            "estimated_speedup": None, "break_even_density": None,
            "dense_bytes": layer.params * np.dtype(layer.dtype).itemsize if layer.dtype != "?" else None,
            "csr_bytes": None, "index_dtype": None, "values_dtype": None, "winograd": False}


def _combined_speedup(estimates: list[cost.Estimate]) -> float:
    """A weight used by several nodes: total dense time over total CSR time."""
    return sum(e.dense_s for e in estimates) / sum(e.sparse_s for e in estimates)
