"""RemoveDeadNeurons — Han et al. (2015): neurons with zero input or zero output connections
are removed, a real shape change of the layers on both sides.

A *link* is a producer layer A (Gemm / MatMul / Conv / ConvTranspose with a constant weight),
a chain of per-unit ops (bias Add, BatchNormalization, element-wise activations, Dropout,
Identity, pooling, GlobalAveragePool → Flatten) and one or more consumer layers B that read
the chain's last tensor as their data input.  Unit j is one output column/channel of A and
the matching input row/column/channel of every B:

    h   = W_A·x + b_A                  (per unit j: h_j = W_A[j,:]·x + b_A[j])
    z_j = f_j(h_j)                     (f = the chain, applied unit by unit)
    y_B = W_B·z + b_B = Σ_j W_B[:,j]·z_j + b_B

* **zero outgoing** (W_B[:,j] = 0 in every consumer): z_j is never used; drop it.
* **zero incoming** (W_A[j,:] = 0): z_j = f_j(b_A[j]) =: v_j is a constant, so
  W_B[:,j]·v_j is folded into the consumer's bias, b_B ← b_B + v_j·W_B[:,j], and the unit
  dropped.  v_j = 0 (e.g. Relu of a negative bias) needs no fold.

Removing unit j deletes W_A's output slice j, A's bias entry, every per-unit parameter of the
chain (Add/Mul constants, PRelu slopes, the four BatchNormalization tensors) and W_B's input
slice j (a block of S columns when a Flatten turns channel j into S = H·W features).

Folding needs v_j to be constant over the whole consumer input, which holds for Gemm/MatMul,
for a Conv consumer without padding (a padded border sees 0, not v_j), after MaxPool/
GlobalAveragePool, and not through an AveragePool that counts padding; Gemm folds as
C ← C + α·v_j·op(B)[j,:]/β.  Where the consumer has no bias one is added (a C input for Gemm,
a B input for Conv, an Add node after MatMul).  Inputs are assumed finite (0·x = 0).

Removal is done only where it is provably exact; everything else is left and reported in
``kept_unsafe``: a hidden tensor with other users (residual Add, Concat, Shape, a graph
output, a subgraph), a weight or per-unit constant shared with other nodes or not a plain
constant, grouped convolutions, a Reshape or any op not in the tables below, a non-2-D
MatMul weight, Gemm with transA on the consumer side, a fold the consumer cannot absorb.

Invariants: model outputs are unchanged; graph inputs/outputs keep their shapes; dtypes of all
constants are kept; a layer never shrinks to zero units (one is kept); the shapes recorded on
shrunk hidden tensors are cleared (``shape = None``); the result is a fixed point (the pass
repeats until a sweep removes nothing, since shrinking B's outputs can leave A's units
without outgoing weights and folding A's units can leave B's without incoming ones).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import is_absent, is_float

from .base import Pass, PassError, PassResult

# --------------------------------------------------------------------------- op tables
# Per-unit maps f(v) on float64 arrays, parameterised by the node (attributes).  Only ops that
# act element by element and are exactly representable here belong in this table: a dead unit's
# constant value is computed with them.


def _gelu(v: np.ndarray, node: gs.Node) -> np.ndarray:
    if node.attrs.get("approximate", "none") == "tanh":
        return 0.5 * v * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    erf = np.vectorize(math.erf, otypes=[np.float64])
    return 0.5 * v * (1.0 + erf(v / math.sqrt(2.0)))


def _softplus(v: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, v)


UNARY: dict[str, Callable[[np.ndarray, gs.Node], np.ndarray]] = {
    "Identity": lambda v, n: v,
    "Dropout": lambda v, n: v,  # inference semantics; training_mode is checked to be off
    "Relu": lambda v, n: np.maximum(v, 0.0),
    "LeakyRelu": lambda v, n: np.where(v >= 0, v, float(n.attrs.get("alpha", 0.01)) * v),
    "Sigmoid": lambda v, n: 1.0 / (1.0 + np.exp(-v)),
    "Tanh": lambda v, n: np.tanh(v),
    "Elu": lambda v, n: np.where(v > 0, v, float(n.attrs.get("alpha", 1.0)) * np.expm1(v)),
    "Selu": lambda v, n: float(n.attrs.get("gamma", 1.05070102214813232421875)) * np.where(
        v > 0, v, float(n.attrs.get("alpha", 1.67326319217681884765625)) * np.expm1(v)),
    "Celu": lambda v, n: np.maximum(v, 0.0) + np.minimum(
        0.0, float(n.attrs.get("alpha", 1.0)) * np.expm1(v / float(n.attrs.get("alpha", 1.0)))),
    "Gelu": _gelu,
    "HardSigmoid": lambda v, n: np.clip(
        float(n.attrs.get("alpha", 0.2)) * v + float(n.attrs.get("beta", 0.5)), 0.0, 1.0),
    "HardSwish": lambda v, n: v * np.clip(v / 6.0 + 0.5, 0.0, 1.0),
    "Softplus": lambda v, n: _softplus(v),
    "Softsign": lambda v, n: v / (1.0 + np.abs(v)),
    "Mish": lambda v, n: v * np.tanh(_softplus(v)),
    "ThresholdedRelu": lambda v, n: np.where(v > float(n.attrs.get("alpha", 1.0)), v, 0.0),
    "Neg": lambda v, n: -v,
    "Abs": lambda v, n: np.abs(v),
}

# Binary ops with one constant operand, as per-unit maps; `left` is True when the chain tensor
# is the first operand.
BINARY: dict[str, Callable[[np.ndarray, np.ndarray, bool], np.ndarray]] = {
    "Add": lambda v, c, left: v + c,
    "Sub": lambda v, c, left: v - c if left else c - v,
    "Mul": lambda v, c, left: v * c,
    "Div": lambda v, c, left: v / c if left else c / v,
}

# Channel-wise spatial ops: they never mix channels, and a channel that is constant in space
# stays constant (MaxPool ignores padding; AveragePool only without counting pads).
POOLS = frozenset({"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"})

LAYER_OPS = frozenset({"Gemm", "MatMul", "Conv", "ConvTranspose"})


# --------------------------------------------------------------------------- small records


@dataclasses.dataclass
class _Param:
    """A constant used by exactly one node, possibly through a Constant node and Identity ops."""

    const: gs.Constant
    path: list[gs.Variable]  # variables between the constant and its user (shapes kept true)

    def values(self) -> np.ndarray:
        return np.asarray(self.const.values)

    def set(self, values: np.ndarray) -> None:
        self.const.values = np.ascontiguousarray(values)
        for var in self.path:
            var.shape = list(values.shape)


@dataclasses.dataclass
class _State:
    """Where the units live in the current hidden tensor."""

    axis: int  # negative axis of the unit dimension
    rank: int | None  # tensor rank when known
    block: int = 1  # consecutive features per unit (after Flatten of H×W maps)
    spatial_one: bool = False  # spatial dims are all 1 (after a global pool)
    constant_ok: bool = True  # a spatially constant unit stays constant (fold possible)

    def is_channel_axis(self) -> bool:
        return self.rank is not None and self.rank >= 2 and self.axis == 1 - self.rank


@dataclasses.dataclass
class _Stage:
    node: gs.Node
    apply: Callable[[np.ndarray], np.ndarray]  # per-unit values → per-unit values
    params: list[tuple[_Param, int]]  # per-unit constants and the axis to slice


@dataclasses.dataclass
class _Consumer:
    node: gs.Node
    weight: _Param
    in_axis: int
    block: int
    fold_problem: str | None  # why a nonzero constant cannot be folded here (None: it can)


@dataclasses.dataclass
class _Link:
    producer: gs.Node
    name: str
    weight: _Param
    out_axis: int
    bias: _Param | None
    bias_axis: int | None  # None: no per-unit bias entry to slice (absent or uniform)
    bias_scale: float  # Gemm beta
    stages: list[_Stage]
    consumers: list[_Consumer]
    tensors: list[gs.Variable]  # the hidden tensors whose unit axis shrinks
    constant_ok: bool


class _Unsafe(Exception):
    def __init__(self, reason: str, at: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.at = at


# --------------------------------------------------------------------------- helpers


def _node_name(node: gs.Node) -> str:
    return node.name or (node.outputs[0].name if node.outputs else node.op)


def _as_f64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64)


def _constant_value(t: gs.Tensor) -> np.ndarray | None:
    """Value of a tensor that is a constant (initializer, Constant node, through Identity)."""
    for _ in range(16):
        if isinstance(t, gs.Constant):
            return np.asarray(t.values)
        if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
            return None
        node = t.inputs[0]
        if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
            return np.asarray(node.attrs["value"].values)
        if node.op != "Identity" or not node.inputs:
            return None
        t = node.inputs[0]
    return None


def _unit_indices(units: np.ndarray, block: int) -> np.ndarray:
    """Feature indices of `units` when each unit owns `block` consecutive features."""
    units = np.asarray(units, dtype=np.int64)
    if block == 1:
        return units
    return (units[:, None] * block + np.arange(block, dtype=np.int64)[None, :]).reshape(-1)


def _slice_nonzero(w: np.ndarray, axis: int) -> np.ndarray:
    """Per index along `axis`: does that slice hold any nonzero (NaN counts as nonzero)?"""
    w = np.asarray(w)
    other = tuple(a for a in range(w.ndim) if a != axis % w.ndim)
    return np.any(w != 0, axis=other) if other else (w != 0)


class _Ctx:
    """Facts about the graph the walk needs, gathered once per sweep."""

    def __init__(self, graph: gs.Graph, static_shapes: dict[str, tuple[int, ...]]):
        self.graph = graph
        self.graph_outputs = {t.name for t in graph.outputs}
        self.top_nodes = {id(n) for n in graph.nodes}
        self.static_shapes = static_shapes  # name -> dims, None where not a fixed size
        self.subgraph_refs: set[str] = set()
        for node in graph.nodes:
            for value in node.attrs.values():
                for sub in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(sub, gs.Graph):
                        self._collect_refs(sub)

    def _collect_refs(self, sub: gs.Graph) -> None:
        # A subgraph may read an outer tensor implicitly; such a tensor must never shrink.
        for node in sub.nodes:
            self.subgraph_refs.update(t.name for t in node.inputs)
            for value in node.attrs.values():
                for inner in value if isinstance(value, (list, tuple)) else [value]:
                    if isinstance(inner, gs.Graph):
                        self._collect_refs(inner)

    def exclusive(self, user: gs.Node, t: gs.Tensor, what: str) -> _Param:
        """The constant behind input `t` of `user`, provided no other node reads it."""
        path: list[gs.Variable] = []
        consumer_count = sum(1 for x in user.inputs if x is t)
        for _ in range(16):
            if isinstance(t, gs.Constant):
                if len(t.outputs) != 1 or consumer_count != 1:
                    raise _Unsafe(f"{what} {t.name!r} is shared by several nodes")
                return _Param(t, path)
            if not isinstance(t, gs.Variable) or len(t.inputs) != 1:
                raise _Unsafe(f"{what} {t.name!r} is not a constant")
            if len(t.outputs) != 1 or consumer_count != 1:
                raise _Unsafe(f"{what} {t.name!r} is shared by several nodes")
            if t.name in self.graph_outputs or t.name in self.subgraph_refs:
                raise _Unsafe(f"{what} {t.name!r} is also used outside this layer")
            node = t.inputs[0]
            path.append(t)
            if node.op == "Constant" and isinstance(node.attrs.get("value"), gs.Constant):
                return _Param(node.attrs["value"], path)
            if node.op != "Identity" or not node.inputs:
                raise _Unsafe(f"{what} {t.name!r} is computed by {node.op}, not a constant")
            t = node.inputs[0]
            consumer_count = 1
        raise _Unsafe(f"{what} is behind too many Identity nodes")

    def unique_name(self, base: str) -> str:
        taken = set(self.graph.tensors().keys())
        name, k = base, 1
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        return name


# --------------------------------------------------------------------------- link discovery


def _per_unit(c: np.ndarray, state: _State, units: int, what: str) -> int | None:
    """Axis of `c` to slice when it holds one entry per unit, None when it is uniform."""
    shape = c.shape
    a = state.axis
    if len(shape) < -a:
        if all(d == 1 for d in shape):
            return None
        raise _Unsafe(f"{what} broadcasts across units but is not one value per unit")
    others = [d for i, d in enumerate(shape) if i != len(shape) + a]
    if any(d != 1 for d in others):
        raise _Unsafe(f"{what} of shape {list(shape)} varies along other axes than the units")
    if shape[a] == 1:
        return None
    if shape[a] != units:
        raise _Unsafe(f"{what} has {shape[a]} entries for {units} units")
    if state.block != 1:
        raise _Unsafe(f"{what} follows a Flatten that spreads a unit over several features")
    return len(shape) + a


def _unit_vector(c: np.ndarray, axis: int | None) -> np.ndarray:
    c = _as_f64(c)
    return c.reshape(-1) if axis is not None else c.reshape(())


def _check_single_output(node: gs.Node, ctx: _Ctx) -> None:
    for extra in node.outputs[1:]:
        if extra.outputs or extra.name in ctx.graph_outputs or extra.name in ctx.subgraph_refs:
            raise _Unsafe(f"{node.op} {_node_name(node)!r} has a second output in use")


def _stage(node: gs.Node, t: gs.Variable, state: _State, units: int, ctx: _Ctx) -> _Stage:
    """Validate one op of the chain; update `state` in place."""
    op = node.op
    if (node.domain or "") not in ("", "ai.onnx"):
        raise _Unsafe(f"op {node.domain}.{op} is not understood")
    if not node.inputs or (node.inputs[0] is not t and op not in BINARY):
        raise _Unsafe(f"{op} {_node_name(node)!r} does not take the hidden tensor as data input")
    if sum(1 for x in node.inputs if x is t) != 1:
        raise _Unsafe(f"{op} {_node_name(node)!r} reads the hidden tensor twice")
    _check_single_output(node, ctx)

    if op == "Clip":
        return _clip_stage(node)
    if op in UNARY:
        return _unary_stage(node)
    if op in BINARY or op == "PRelu":
        return _binary_stage(node, t, state, units, ctx)
    if op == "BatchNormalization":
        return _batchnorm_stage(node, state, units, ctx)
    if op in POOLS:
        return _pool_stage(node, state)
    if op == "Flatten":
        return _flatten_stage(node, t, state, ctx)
    raise _Unsafe(f"{op} {_node_name(node)!r} is not an element-wise or per-unit op this pass "
                  f"understands")


def _unary_stage(node: gs.Node) -> _Stage:
    """v -> f(v) element-wise; a Dropout only when it provably runs in inference mode."""
    if node.op == "Dropout":
        if len(node.inputs) > 2 and not is_absent(node.inputs[2]):
            mode = _constant_value(node.inputs[2])
            if mode is None or bool(np.asarray(mode).reshape(-1)[0]):
                raise _Unsafe("Dropout may run in training mode")
    fn = UNARY[node.op]
    return _Stage(node, lambda v, fn=fn, node=node: fn(v, node), [])


def _clip_stage(node: gs.Node) -> _Stage:
    """v -> min(max(v, lo), hi), the bounds from attributes (opset < 11) or constant inputs."""
    lo, hi = node.attrs.get("min", -np.inf), node.attrs.get("max", np.inf)
    for k in (1, 2):
        if len(node.inputs) > k and not is_absent(node.inputs[k]):
            bound = _constant_value(node.inputs[k])
            if bound is None or bound.size != 1:
                raise _Unsafe("Clip bounds are not constant scalars")
            if k == 1:
                lo = float(_as_f64(bound).reshape(()))
            else:
                hi = float(_as_f64(bound).reshape(()))
    return _Stage(node, lambda v, lo=lo, hi=hi: np.minimum(np.maximum(v, lo), hi), [])


def _binary_stage(node: gs.Node, t: gs.Variable, state: _State, units: int, ctx: _Ctx) -> _Stage:
    """v -> v (op) c with a constant c that is a scalar or one value per unit (then its entries
    of removed units go with them); PRelu: v -> v < 0 ? s·v : v."""
    op = node.op
    if len(node.inputs) != 2:
        raise _Unsafe(f"{op} {_node_name(node)!r} has {len(node.inputs)} inputs")
    left = node.inputs[0] is t
    other = node.inputs[1] if left else node.inputs[0]
    if op == "PRelu" and not left:
        raise _Unsafe("PRelu takes the hidden tensor as its slope")
    c = _constant_value(other)
    if c is None:
        raise _Unsafe(f"{op} {_node_name(node)!r} combines the hidden tensor with a computed "
                      f"tensor (residual or gating)")
    axis = _per_unit(c, state, units, f"{op} constant {other.name!r}")
    params = [(ctx.exclusive(node, other, f"{op} constant"), axis)] if axis is not None else []
    if state.rank is not None:
        state.rank = max(state.rank, c.ndim)
    vec = _unit_vector(c, axis)
    if op == "PRelu":
        return _Stage(node, lambda v, s=vec: np.where(v < 0, s * v, v), params)
    fn = BINARY[op]
    return _Stage(node, lambda v, c=vec, fn=fn, left=left: fn(v, c, left), params)


def _batchnorm_stage(node: gs.Node, state: _State, units: int, ctx: _Ctx) -> _Stage:
    """Inference BatchNormalization over the unit axis: v -> γ/√(σ²+ε) · (v − μ) + β."""
    if not state.is_channel_axis() or state.block != 1:
        raise _Unsafe("BatchNormalization over an axis that is not the unit axis "
                      "(or of unknown rank)")
    if int(node.attrs.get("training_mode", 0)) or int(node.attrs.get("spatial", 1)) != 1:
        raise _Unsafe("BatchNormalization in training mode or non-spatial form")
    if len(node.inputs) != 5:
        raise _Unsafe("BatchNormalization without its four parameters")
    params = [ctx.exclusive(node, p, "BatchNormalization parameter") for p in node.inputs[1:]]
    vals = [_as_f64(p.values()) for p in params]
    if any(v.shape != (units,) for v in vals):
        raise _Unsafe(f"BatchNormalization parameters are not of shape ({units},)")
    scale, bias, mean, var = vals
    eps = float(node.attrs.get("epsilon", 1e-5))
    factor = scale / np.sqrt(var + eps)
    return _Stage(node, lambda v, f=factor, m=mean, b=bias: f * (v - m) + b,
                  [(p, 0) for p in params])


def _pool_stage(node: gs.Node, state: _State) -> _Stage:
    """A pool over the spatial axes maps a constant channel to the same constant (the identity
    on a dead unit's value), except an average that counts zero padding at the borders."""
    op = node.op
    if not state.is_channel_axis() or state.block != 1:
        raise _Unsafe(f"{op} over a tensor whose channel axis is not the unit axis")
    if op.startswith("Global"):
        state.spatial_one = True
    elif op == "AveragePool" and int(node.attrs.get("count_include_pad", 0)):
        pads = node.attrs.get("pads", [])
        if any(int(p) for p in pads) or node.attrs.get("auto_pad", "NOTSET") not in (
                "NOTSET", "VALID"):
            # Border windows average in zeros: only v = 0 stays constant.
            state.constant_ok = False
    return _Stage(node, lambda v: v, [])


def _flatten_stage(node: gs.Node, t: gs.Variable, state: _State, ctx: _Ctx) -> _Stage:
    """Flatten(axis=1) of N×C×spatial: unit c becomes the block of columns
    [c·block, (c+1)·block) with block = the product of the (static) spatial sizes."""
    if not state.is_channel_axis() or state.block != 1:
        raise _Unsafe("Flatten of a tensor whose unit axis is not axis 1")
    rank = state.rank
    axis = int(node.attrs.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    if axis != 1:
        raise _Unsafe(f"Flatten(axis={axis}) mixes the unit axis with others")
    if state.spatial_one or rank == 2:
        block = 1
    else:
        shape = ctx.static_shapes.get(t.name)
        if shape is None or len(shape) != rank or any(d is None for d in shape[2:]):
            raise _Unsafe("Flatten of feature maps whose spatial size is not known statically")
        block = int(np.prod(shape[2:]))
    state.rank, state.axis, state.block = 2, -1, block
    return _Stage(node, lambda v: v, [])


def _conv_pads(node: gs.Node) -> bool:
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return True
    return any(int(p) for p in node.attrs.get("pads", []))


def _consumer(node: gs.Node, t: gs.Variable, state: _State, units: int, ctx: _Ctx) -> _Consumer:
    op = node.op
    name = _node_name(node)
    if (node.domain or "") not in ("", "ai.onnx"):
        raise _Unsafe(f"op {node.domain}.{op} is not understood", name)
    if len(node.inputs) < 2 or node.inputs[0] is not t or sum(x is t for x in node.inputs) != 1:
        raise _Unsafe(f"{op} {name!r} does not read the hidden tensor only as its data input",
                      name)
    weight = ctx.exclusive(node, node.inputs[1], "consumer weight")
    w = weight.values()
    if not is_float(w.dtype):
        raise _Unsafe(f"consumer weight dtype {w.dtype} is not floating point", name)
    fold_problem = None
    if op in ("Gemm", "MatMul"):
        if state.axis != -1:
            raise _Unsafe(f"{op} {name!r} reads the units on another axis", name)
        if w.ndim != 2:
            raise _Unsafe(f"{op} {name!r} has a {w.ndim}-D weight", name)
        if op == "Gemm":
            if int(node.attrs.get("transA", 0)):
                raise _Unsafe(f"Gemm {name!r} has transA=1", name)
            in_axis = 1 if int(node.attrs.get("transB", 0)) else 0
            if float(node.attrs.get("beta", 1.0)) == 0.0:
                fold_problem = "Gemm beta=0: no bias to fold into"
            elif len(node.inputs) > 2 and not is_absent(node.inputs[2]):
                try:
                    ctx.exclusive(node, node.inputs[2], "consumer bias")
                except _Unsafe as err:
                    fold_problem = err.reason
        else:
            in_axis = 0
            _, problem = _matmul_bias(node, ctx)
            fold_problem = problem
    else:  # Conv / ConvTranspose
        if int(node.attrs.get("group", 1)) != 1:
            raise _Unsafe(f"{op} {name!r} is a grouped convolution", name)
        if state.rank is not None and state.rank != w.ndim or not state.is_channel_axis():
            raise _Unsafe(f"{op} {name!r} reads the units on another axis", name)
        if state.block != 1:
            raise _Unsafe(f"{op} {name!r} after a Flatten", name)
        in_axis = 1 if op == "Conv" else 0
        if op == "ConvTranspose":
            fold_problem = "ConvTranspose spreads a constant channel unevenly"
        elif _conv_pads(node):
            fold_problem = f"Conv {name!r} pads its input: a constant channel is not constant " \
                           f"at the border"
        elif len(node.inputs) > 2 and not is_absent(node.inputs[2]):
            try:
                ctx.exclusive(node, node.inputs[2], "consumer bias")
            except _Unsafe as err:
                fold_problem = err.reason
    if w.shape[in_axis] != units * state.block:
        raise _Unsafe(f"{op} {name!r} weight has {w.shape[in_axis]} inputs for {units} units "
                      f"× {state.block}", name)
    return _Consumer(node, weight, in_axis, state.block, fold_problem)


def _matmul_bias(node: gs.Node, ctx: _Ctx) -> tuple[tuple[gs.Node, gs.Tensor] | None, str | None]:
    """The Add that carries a MatMul's bias, if the MatMul output feeds only that Add."""
    out = node.outputs[0]
    users = list(out.outputs)
    if (len(users) == 1 and users[0].op == "Add" and len(users[0].inputs) == 2
            and out.name not in ctx.graph_outputs and out.name not in ctx.subgraph_refs):
        add = users[0]
        other = add.inputs[1] if add.inputs[0] is out else add.inputs[0]
        if other is not out and _constant_value(other) is not None:
            try:
                ctx.exclusive(add, other, "consumer bias")
            except _Unsafe as err:
                return None, err.reason
            return (add, other), None
    return None, None  # none there: one is inserted when needed


def _producer(node: gs.Node, ctx: _Ctx) -> tuple[_Param, int, _Param | None, float, _State]:
    op = node.op
    name = _node_name(node)
    weight = ctx.exclusive(node, node.inputs[1], "weight")
    w = weight.values()
    if not is_float(w.dtype):
        raise _Unsafe(f"weight dtype {w.dtype} is not floating point")
    bias, beta = None, 1.0
    if len(node.inputs) > 2 and not is_absent(node.inputs[2]) and op != "MatMul":
        bias = ctx.exclusive(node, node.inputs[2], "bias")
    if op in ("Gemm", "MatMul"):
        if w.ndim != 2:
            raise _Unsafe(f"{op} {name!r} has a {w.ndim}-D weight: unit axis unclear")
        if op == "Gemm":
            out_axis = 0 if int(node.attrs.get("transB", 0)) else 1
            beta = float(node.attrs.get("beta", 1.0))
            rank = 2
        else:
            out_axis = 1
            shape = node.inputs[0].shape
            rank = len(shape) if shape is not None else None
            if rank is not None and rank < 2:
                raise _Unsafe(f"MatMul {name!r} of a 1-D input")
        state = _State(axis=-1, rank=rank)
    else:
        if int(node.attrs.get("group", 1)) != 1:
            raise _Unsafe(f"{op} {name!r} is a grouped convolution: channels are coupled")
        if w.ndim < 3:
            raise _Unsafe(f"{op} {name!r} has a {w.ndim}-D weight")
        out_axis = 0 if op == "Conv" else 1
        state = _State(axis=1 - w.ndim, rank=w.ndim)
    return weight, out_axis, bias, beta, state


def _build_link(node: gs.Node, ctx: _Ctx) -> _Link:
    name = _node_name(node)
    weight, out_axis, bias, beta, state = _producer(node, ctx)
    units = weight.values().shape[out_axis]
    bias_axis = None
    if bias is not None:
        b = bias.values()
        if node.op == "Gemm":
            if b.ndim > 2:
                raise _Unsafe(f"Gemm bias of rank {b.ndim}")
            bias_axis = _per_unit(b, _State(axis=-1, rank=2), units, "Gemm bias")
        elif b.shape != (units,):
            raise _Unsafe(f"{node.op} bias of shape {list(b.shape)} for {units} channels")
        else:
            bias_axis = 0
    if len(node.outputs) != 1:
        raise _Unsafe(f"{node.op} {name!r} has {len(node.outputs)} outputs")
    stages: list[_Stage] = []
    tensors: list[gs.Variable] = []
    t = node.outputs[0]
    for _ in range(64):
        if t.name in ctx.graph_outputs:
            raise _Unsafe(f"hidden tensor {t.name!r} is a graph output", "graph output")
        if t.name in ctx.subgraph_refs:
            raise _Unsafe(f"hidden tensor {t.name!r} is read inside a subgraph", "subgraph")
        users = list(t.outputs)
        if not users:
            raise _Unsafe(f"hidden tensor {t.name!r} is not used", None)
        for u in users:
            if id(u) not in ctx.top_nodes:
                raise _Unsafe(f"hidden tensor {t.name!r} is read inside a subgraph", "subgraph")
        tensors.append(t)
        if all(u.op in LAYER_OPS for u in users):
            if len({id(u) for u in users}) != len(users):
                raise _Unsafe(f"a node reads hidden tensor {t.name!r} twice")
            consumers = []
            for u in users:
                try:
                    consumers.append(_consumer(u, t, state, units, ctx))
                except _Unsafe as err:
                    raise _Unsafe(err.reason, _node_name(u)) from None
            return _Link(node, name, weight, out_axis, bias, bias_axis, beta, stages, consumers,
                         tensors, state.constant_ok)
        if len(users) > 1:
            others = ", ".join(f"{u.op} {_node_name(u)!r}" for u in users)
            first = next(u for u in users if u.op not in LAYER_OPS)
            raise _Unsafe(f"hidden tensor {t.name!r} has several readers ({others})",
                          _node_name(first))
        user = users[0]
        try:
            stages.append(_stage(user, t, state, units, ctx))
        except _Unsafe as err:
            raise _Unsafe(err.reason, err.at or _node_name(user)) from None
        t = user.outputs[0]
    raise _Unsafe("chain of more than 64 ops")


# --------------------------------------------------------------------------- shrinking


def _fold(link: _Link, consumer: _Consumer, units: np.ndarray, values: np.ndarray,
          ctx: _Ctx) -> None:
    """Add Σ_j v_j · (consumer's input slice j) to the consumer's bias."""
    node = consumer.node
    w = _as_f64(consumer.weight.values())
    w_in = np.moveaxis(w, consumer.in_axis, 0)  # (inputs, outputs, kernel…)
    idx = _unit_indices(units, consumer.block)
    v = np.repeat(values, consumer.block)
    contrib = np.tensordot(v, w_in[idx], axes=(0, 0))  # (outputs, kernel…)
    delta = contrib.reshape(contrib.shape[0], -1).sum(axis=1)  # kernel taps all see v (no pads)
    dtype = np.asarray(consumer.weight.values()).dtype
    if node.op == "Gemm":
        delta *= float(node.attrs.get("alpha", 1.0)) / float(node.attrs.get("beta", 1.0))
        _add_to_bias_input(node, 2, delta, dtype, ctx)
    elif node.op == "Conv":
        _add_to_bias_input(node, 2, delta, dtype, ctx)
    else:  # MatMul
        found, _ = _matmul_bias(node, ctx)
        if found is not None:
            add, other = found
            param = ctx.exclusive(add, other, "consumer bias")
            old = param.values()
            param.set((_as_f64(old) + delta).astype(old.dtype))
        else:
            out = node.outputs[0]
            raw = gs.Variable(ctx.unique_name(f"{out.name}_unbiased"), dtype=out.dtype)
            bias = gs.Constant(ctx.unique_name(f"{_node_name(node)}.folded_bias"),
                               delta.astype(dtype))
            node.outputs[0] = raw
            add = gs.Node("Add", name=ctx.unique_name(f"{_node_name(node)}_folded_bias_add"),
                          inputs=[raw, bias], outputs=[out])
            ctx.graph.nodes.insert(ctx.graph.nodes.index(node) + 1, add)


def _add_to_bias_input(node: gs.Node, index: int, delta: np.ndarray, dtype, ctx: _Ctx) -> None:
    if len(node.inputs) > index and not is_absent(node.inputs[index]):
        param = ctx.exclusive(node, node.inputs[index], "consumer bias")
        old = param.values()
        param.set((_as_f64(old) + delta).astype(old.dtype))  # numpy broadcasting keeps it valid
        return
    bias = gs.Constant(ctx.unique_name(f"{_node_name(node)}.folded_bias"), delta.astype(dtype))
    while len(node.inputs) < index:
        node.inputs.append(gs.Variable.empty())
    if len(node.inputs) > index:
        node.inputs[index] = bias
    else:
        node.inputs.append(bias)


def _take(param: _Param, keep: np.ndarray, axis: int) -> None:
    old = param.values()
    param.set(np.take(old, keep, axis=axis).astype(old.dtype, copy=False))


def _shrink(link: _Link, ctx: _Ctx, kept: list[dict]) -> dict[str, int]:
    """Remove this link's dead units; returns counts (all zero when nothing changed)."""
    w = link.weight.values()
    units = w.shape[link.out_axis]
    dead_in = ~_slice_nonzero(w, link.out_axis)
    live_out = np.zeros(units, dtype=bool)
    for c in link.consumers:
        feats = _slice_nonzero(c.weight.values(), c.in_axis)
        live_out |= feats.reshape(units, c.block).any(axis=1)
    dead_out = ~live_out
    counts = {"dead_in": 0, "dead_out": 0, "folded": 0, "removed": 0}
    if not (dead_in | dead_out).any():
        return counts

    # The constant each zero-input unit emits: the chain applied to the producer's bias.
    if link.bias is not None:
        b = _as_f64(link.bias.values()) * link.bias_scale
        v = np.broadcast_to(_unit_vector(b, link.bias_axis), (units,)).copy()
    else:
        v = np.zeros(units)
    with np.errstate(all="ignore"):
        for stage in link.stages:
            v = np.broadcast_to(stage.apply(v), (units,)).astype(np.float64)

    needs_fold = dead_in & ~dead_out & (v != 0)
    fold_problem = None
    if needs_fold.any():
        problems = [c.fold_problem for c in link.consumers if c.fold_problem]
        if not link.constant_ok:
            fold_problem = "AveragePool counts padding: a constant channel is not constant"
        elif problems:
            fold_problem = problems[0]
        elif not np.isfinite(v[needs_fold]).all():
            fold_problem = "the unit's constant output is not finite"
    removable = dead_out | (dead_in & (v == 0))
    if fold_problem is None:
        removable |= needs_fold
    elif needs_fold.any():
        kept.append({"producer": link.name,
                     "consumer": ", ".join(_node_name(c.node) for c in link.consumers),
                     "reason": fold_problem, "dead_units": int(needs_fold.sum())})
    if removable.all():
        # A layer of width 0 is not a valid model for most runtimes: keep the first unit as is.
        removable[0] = False
        kept.append({"producer": link.name,
                     "consumer": ", ".join(_node_name(c.node) for c in link.consumers),
                     "reason": "every unit is dead; one is kept so the layer is not empty",
                     "dead_units": 1})
    if not removable.any():
        return counts

    fold = np.flatnonzero(removable & needs_fold)
    if fold.size:
        for c in link.consumers:
            _fold(link, c, fold, v[fold], ctx)
    keep = np.flatnonzero(~removable)
    _take(link.weight, keep, link.out_axis)
    if link.bias is not None and link.bias_axis is not None:
        _take(link.bias, keep, link.bias_axis)
    for stage in link.stages:
        for param, axis in stage.params:
            _take(param, keep, axis)
    for c in link.consumers:
        _take(c.weight, _unit_indices(keep, c.block), c.in_axis)
    for t in link.tensors:
        t.shape = None  # the unit axis shrank; recorded shapes would lie
    counts.update(dead_in=int((removable & dead_in).sum()),
                  dead_out=int((removable & dead_out).sum()),
                  folded=int(fold.size), removed=int(removable.sum()))
    return counts


# --------------------------------------------------------------------------- the pass


def _is_candidate(node: gs.Node) -> bool:
    return (node.op in LAYER_OPS and (node.domain or "") in ("", "ai.onnx")
            and len(node.inputs) >= 2 and _constant_value(node.inputs[1]) is not None
            and _constant_value(node.inputs[0]) is None)


class RemoveDeadNeurons(Pass):
    name = "remove-dead-neurons"
    OPTIONS = ()
    MAX_SWEEPS = 1000  # each sweep that changes something removes at least one unit
    removes_neurons = True
    report_section = "dead_neurons"

    def requires(self, graph: gs.Graph) -> None:
        """A graphsurgeon graph whose tensor names are unique (edits are keyed by name)."""
        if not isinstance(graph, gs.Graph):
            raise PassError(f"{self.name}: expected an onnx-graphsurgeon Graph, "
                            f"got {type(graph).__name__}")
        names = [t.name for t in graph.tensors().values()]
        if len(names) != len(set(names)):
            raise PassError(f"{self.name}: the graph has duplicate tensor names")

    def run(self, graph: gs.Graph, progress=None) -> PassResult:
        # Spatial sizes never change here, so shapes known before the first edit stay valid
        # for Flatten even after the channel axis was cleared.
        static_shapes = {
            t.name: tuple(int(d) if isinstance(d, (int, np.integer)) and d >= 0 else None
                          for d in t.shape)
            for t in graph.tensors().values()
            if isinstance(t, gs.Variable) and t.shape is not None
        }
        producers = [n for n in graph.nodes if _is_candidate(n)]
        rows: dict[str, dict[str, Any]] = {}
        modified = False
        sweeps = 0
        kept: list[dict] = []
        for sweeps in range(1, self.MAX_SWEEPS + 1):
            ctx = _Ctx(graph, static_shapes)
            kept = []
            changed = False
            for i, node in enumerate(producers):
                # Rebuilt per producer: a fold upstream may have inserted a bias Add.
                ctx.top_nodes = {id(n) for n in graph.nodes}
                if progress is not None:
                    progress(i + 1, len(producers), _node_name(node))
                try:
                    link = _build_link(node, ctx)
                except _Unsafe as err:
                    _report_unsafe(node, err, kept)
                    continue
                row = rows.setdefault(link.name, {
                    "producer": link.name, "op": node.op,
                    "consumers": [_node_name(c.node) for c in link.consumers],
                    "units_before": int(link.weight.values().shape[link.out_axis]),
                    "units_after": None, "removed": 0, "dead_in": 0, "dead_out": 0,
                    "folded": 0,
                })
                counts = _shrink(link, ctx, kept)
                if counts["removed"]:
                    changed = modified = True
                    for k in ("removed", "dead_in", "dead_out", "folded"):
                        row[k] += counts[k]
                row["units_after"] = int(link.weight.values().shape[link.out_axis])
            if not changed:
                break
        else:
            raise PassError(f"{self.name}: no fixed point after {self.MAX_SWEEPS} sweeps")
        layers = list(rows.values())
        return PassResult(graph, modified, {
            "layers": layers,
            "removed": {r["producer"]: r["removed"] for r in layers if r["removed"]},
            "kept_unsafe": kept,
            "sweeps": sweeps,
        })


def _report_unsafe(node: gs.Node, err: _Unsafe, kept: list[dict]) -> None:
    """Report a link that could not be formed, if its producer has units with no inputs."""
    value = _constant_value(node.inputs[1])
    if value is None or value.ndim < 2 or not is_float(value.dtype):
        dead = None
    else:
        if node.op == "Gemm":
            axis = 0 if int(node.attrs.get("transB", 0)) else 1
        elif node.op == "MatMul":
            axis = value.ndim - 1
        else:
            axis = 0 if node.op == "Conv" else 1
        dead = int((~_slice_nonzero(value, axis)).sum())
    if dead == 0:
        return
    kept.append({"producer": _node_name(node), "consumer": err.at, "reason": err.reason,
                 "dead_units": dead})
