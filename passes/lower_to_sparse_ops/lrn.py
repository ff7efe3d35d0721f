"""LRN written as the ops it is, which run it several times faster than ONNX Runtime's LRN kernel.

ONNX ``LRN`` (local response normalization across channels; AlexNet, CaffeNet, GoogLeNet) over
X of shape (N, C, H, W)::

    y[n, c] = x[n, c] / (bias + α/size · Σ_{i = c − ⌊(size−1)/2⌋ .. c + ⌈(size−1)/2⌉, 0 <= i < C} x[n, i]²)^β

is rewritten, for lowering for speed, into::

    s = Mul(x, x)
    t = Conv(s, W, B)     1×1, W[c, i] = α/size for i in c's window, else 0; B[c] = bias
    d = t^β               β = 1: t · ½: Sqrt(t) · ¼: Sqrt(Sqrt(t)) · ¾: Sqrt(t)·Sqrt(Sqrt(t)) · else Pow(t, β)
    y = Div(x, d)

``W`` is a banded C × C matrix holding ``min(size, C)`` or fewer nonzeros per row (5 of 96 in
AlexNet's first LRN): a pruned 1×1 convolution, which the lowering pass runs as ``CsrConv``
(the window is lowered with its LRN: the pair was measured together).  ONNX Runtime's CPU
``LRN`` computes each output's window and power one element at a time; on AlexNet's two layers
it took 5.8 and 3.5 ms against 0.60 and 0.33 ms for this rewrite with its window as
``CsrConv`` (0.96 and 0.82 ms with a dense window; ``lscpu`` family 6, one thread; family 23,
dense window: 12.0 against 1.6 ms; docs/BENCHMARKS.md).

Exactness: the same sum and power, with the window's products α/size·x² summed in another
order and x^¾ as √x·⁴√x instead of ``pow``: a few float32 ulps (≤ 3e-7 relative measured).

Eligible: an LRN of the main graph, in a model of op-set 7 or later (ONNX Runtime has no
kernels for the Mul and Div of op-sets 1-6, in which AlexNet was first published), over a
float32 4-D input whose channel count C shape inference knows, 1 <= C <= ``MAX_CHANNELS``
(W is built dense, C² floats, before the lowering encodes it), with float attributes α > 0,
β > 0 and bias, finite, and an odd size (what ONNX Runtime's LRN accepts; the others it
refuses, so there is no result to match; ``window_weight`` follows the ONNX definition for
even sizes too).  Any other LRN stays as it is, with the reason.  The window's CSR values
stay float32 under ``--sparse-values fp16`` (α/size, 2e-5 in AlexNet, is subnormal there).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from onnxprune.core.graph import unique_name

# W is C x C float32 before the lowering encodes it: 64 MiB at this bound.
MAX_CHANNELS = 4096

ONNX_DEFAULTS = {"alpha": 1e-4, "beta": 0.75, "bias": 1.0}


@dataclasses.dataclass(frozen=True)
class LrnParams:
    size: int
    alpha: float
    beta: float
    bias: float


def label(node: gs.Node) -> str:
    """The name an LRN goes by in options and reports: its own, or its output's when unnamed."""
    return node.name or (node.outputs[0].name if node.outputs else "")


def window_weight(channels: int, size: int, alpha: float) -> np.ndarray:
    """The (C, C, 1, 1) float32 weight whose 1×1 convolution of x² is α/size times LRN's
    window sum: row c holds α/size at columns max(0, c − ⌊(size−1)/2⌋) .. min(C−1, c +
    ⌈(size−1)/2⌉), zero elsewhere."""
    low, high = (size - 1) // 2, size - 1 - (size - 1) // 2
    c = np.arange(channels)
    i = np.arange(channels)
    band = (i[None, :] >= c[:, None] - low) & (i[None, :] <= c[:, None] + high)
    w = np.where(band, np.float32(alpha / size), np.float32(0.0)).astype(np.float32)
    return w.reshape(channels, channels, 1, 1)


def power_steps(beta: float) -> list[str]:
    """How t^β is computed: a list of the ops applied, ``[]`` for t itself, ``["Pow"]`` for
    the general case. ``["Sqrt", "Sqrt", "Mul"]`` is t^½ · (t^½)^½ = t^¾."""
    return {1.0: [], 0.5: ["Sqrt"], 0.25: ["Sqrt", "Sqrt"], 0.75: ["Sqrt", "Sqrt", "Mul"]}.get(beta, ["Pow"])


def params_of(node: gs.Node) -> LrnParams | str:
    """The node's attributes with ONNX's defaults, or why they cannot be decomposed."""
    size = node.attrs.get("size")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        return f"size {size!r} is not an integer >= 1"
    if size % 2 == 0:  # the window above c is then one wider than below
        return f"even size {size}: ONNX Runtime's LRN refuses it, so no result to match"
    values = {}
    for key, default in ONNX_DEFAULTS.items():
        v = node.attrs.get(key, default)
        if not isinstance(v, (float, np.floating)):  # ONNX declares them FLOAT attributes
            return f"{key} {v!r} is not a float attribute"
        if not math.isfinite(float(v)):
            return f"{key} {v!r} is not a finite number"
        values[key] = float(np.float32(v))  # ONNX stores them as float32
    for key in ("alpha", "beta"):
        if values[key] <= 0.0:
            return f"{key} {values[key]:g} <= 0: ONNX Runtime's LRN refuses it, so no result to match"
    return LrnParams(int(size), values["alpha"], values["beta"], values["bias"])


# Mul, Div, Sqrt and Pow as ONNX Runtime implements them (their op-set 7 forms, broadcasting
# without the attribute of op-sets 1-6, which ONNX Runtime has no kernels for).
MIN_OPSET = 7


def eligibility(node: gs.Node, shapes: dict, dtypes: dict, opset: int) -> tuple[LrnParams, int] | str:
    """(params, C) when ``node``, a node of the main graph (callers look at no other), can be
    decomposed in a graph of default-domain ``opset``, else the reason it stays an LRN."""
    if opset < MIN_OPSET:
        return (f"the model's op-set {opset} is below {MIN_OPSET}: ONNX Runtime has no kernels for "
                "the Mul and Div of that op-set")
    if (node.domain or "") not in ("", "ai.onnx") or len(node.inputs) != 1 or len(node.outputs) != 1:
        return "not a standard one-input LRN"
    params = params_of(node)
    if isinstance(params, str):
        return params
    x = node.inputs[0]
    if dtypes.get(x.name) != onnx.TensorProto.FLOAT:
        return "its input is not known to be float32 (the rewrite computes in float32 only)"
    shape = shapes.get(x.name)
    if not shape or len(shape) != 4:
        return "its input is not known to be 4-D (N, C, H, W)"
    channels = shape[1]
    if not channels:
        return "its channel count is unknown (symbolic)"
    if channels > MAX_CHANNELS:
        return f"{channels} channels > {MAX_CHANNELS}: the window's C x C weight would be too large"
    return params, int(channels)


def decompose(graph: gs.Graph, node: gs.Node, params: LrnParams, channels: int,
              tensor_names: set[str], node_names: set[str]) -> gs.Node:
    """Replaces ``node`` in ``graph`` by the ops of the module doc; its output tensor is kept
    (written by the final Div). Returns the window Conv, named ``<node>/window`` (``<output
tensor>/window`` for an unnamed node)."""

    base = label(node)

    def tensor(suffix: str, values: np.ndarray | None = None) -> gs.Tensor:
        name = unique_name(f"{base}.{suffix}", tensor_names)
        # no dtype on the new tensors: a typed value_info without a shape fails onnx.checker
        return gs.Constant(name, values) if values is not None else gs.Variable(name)

    def add(op: str, suffix: str, inputs: list[gs.Tensor], output: gs.Tensor | None = None) -> gs.Tensor:
        out = output if output is not None else tensor(suffix)
        new = gs.Node(op, unique_name(f"{base}/{suffix}", node_names), inputs=inputs, outputs=[out])
        graph.nodes.append(new)
        return out

    x, y = node.inputs[0], node.outputs[0]
    node.inputs.clear()
    node.outputs.clear()
    graph.nodes.remove(node)
    square = add("Mul", "square", [x, x])
    t = add("Conv", "window", [square, tensor("window_weight", window_weight(channels, params.size, params.alpha)),
                               tensor("window_bias", np.full(channels, params.bias, np.float32))])
    window = graph.nodes[-1]
    steps = power_steps(params.beta)
    d = t
    if steps == ["Pow"]:
        d = add("Pow", "power", [t, tensor("beta", np.array(params.beta, np.float32))])
    elif steps:
        root = add("Sqrt", "sqrt", [t])
        d = root
        if len(steps) > 1:
            d = add("Sqrt", "sqrt2", [root])
        if steps[-1] == "Mul":
            d = add("Mul", "power", [root, d])
    add("Div", "normalize", [x, d], output=y)
    return window
