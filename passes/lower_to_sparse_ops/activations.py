"""The activation after a lowered convolution or product, folded into ``CsrConv`` or
``CsrGemm`` (their ``activation`` and ``activation_params`` attributes, ``runtime_ops/README.md``).

ONNX Runtime fuses Conv + Relu (and Clip, LeakyRelu, HardSigmoid, Sigmoid) into its own
FusedConv, so a lowered model that ran them as separate nodes paid a full pass over every
feature map that the dense model never paid.  Real networks also spell activations out in
several nodes — Hardswish as ``x · Clip(x + 3, 0, 6) / 6`` (PaddlePaddle exports), SiLU as
``x · Sigmoid(x)`` (YOLO detectors) — which neither model fuses; folded into the kernel they
cost nothing beyond the tile still in L1.  Transformers spell GELU out in its Erf form,
``x · ½ · (1 + erf(x/√2))`` (torch's export of ``nn.GELU``, Hugging Face's ``gelu``); ONNX
Runtime fuses that into one Gelu node after a dense MatMul, and folded into CsrGemm it is
applied to each output row while the row is in cache.

Only exact rewrites: each pattern below computes the named function (up to float32 rounding,
as ``runtime_ops`` documents), every intermediate tensor has the pattern as its only use and is
not a graph output, and every constant is a float32 scalar.

Sigmoid and SiLU (``x · Sigmoid(x)``, which ONNX Runtime fuses into one QuickGelu node) are
folded since the ops' vector Sigmoid takes a rational tanh instead of ``exp``
(runtime_ops/README.md): with ``exp`` it cost ~4 cycles per element on a Zen 1 class core, more
than ONNX Runtime's own Sigmoid, and nudenet (YOLOv8, SiLU after 55 lowered convolutions) ran
1.68x of dense with them folded and 1.79x without (2026-12-02); docs/BENCHMARKS.md has the
figures since. ``FOLDED`` is the set the lowering uses.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx_graphsurgeon as gs

from onnxprune.core.graph import const_source, is_absent

_STD = ("", "ai.onnx")

# The activations the lowering folds: every one the ops take.
FOLDED = frozenset({"Relu", "LeakyRelu", "Clip", "HardSigmoid", "HardSwish", "Sigmoid", "Swish", "Gelu"})

_SQRT2 = np.float32(np.sqrt(2.0))
_SQRT1_2 = np.float32(1 / np.sqrt(2.0))


@dataclasses.dataclass
class FusedActivation:
    """An activation CsrConv or CsrGemm can apply: its attributes and the nodes it replaces."""

    name: str  # the op's ``activation``
    params: list[float]  # ``activation_params``; [] writes none (the op's defaults)
    nodes: list[gs.Node]  # in order; the last one's output is the activation's

    @property
    def description(self) -> str:
        ops = ", ".join(n.op for n in self.nodes)
        return self.name if ops == self.name else f"{self.name} ({ops})"


def _is(node: gs.Node, op: str, n_inputs: tuple[int, ...] = (1,)) -> bool:
    return node.op == op and (node.domain or "") in _STD and len(node.inputs) in n_inputs and \
        len(node.outputs) == 1


def _scalar(t: gs.Tensor | None) -> float | None:
    """The value of a constant float32 scalar or one-element vector, else None (a one-element
    tensor of higher rank could broadcast the output to a higher rank)."""
    if t is None:
        return None
    const = const_source(t)[0]
    if const is None:
        return None
    v = np.asarray(const.values)
    return float(v.reshape(-1)[0]) if v.dtype == np.float32 and v.size == 1 and v.ndim <= 1 else None


def _accepted(act: FusedActivation) -> bool:
    """Whether CsrConv takes ``act``'s parameters as float32 (runtime_ops/README.md "Limits"):
    Clip's bounds not NaN and in order, every other parameter finite. A LeakyRelu with an
    infinite alpha runs in ONNX Runtime but would make a file the op refuses: it stays a node."""
    p = np.asarray(act.params, np.float64).astype(np.float32) if act.params else np.zeros(0, np.float32)
    if act.name == "Clip":
        return not np.isnan(p).any() and bool(p[0] <= p[1])
    return bool(np.isfinite(p).all())


def _is_f32(v: float | None, want: np.float32) -> bool:
    """Whether ``v`` (a constant's value, None for no constant) is ``want`` as float32."""
    return v is not None and np.float32(v) == want


def _only_use(t: gs.Tensor, graph_outputs: set[int]) -> gs.Node | None:
    """The single node reading ``t``, when ``t`` is not also a graph output."""
    return t.outputs[0] if id(t) not in graph_outputs and len(t.outputs) == 1 else None


def _other(node: gs.Node, t: gs.Tensor) -> gs.Tensor | None:
    """The other input of a two-input node that reads ``t`` once."""
    if len(node.inputs) != 2 or (node.inputs[0] is t) == (node.inputs[1] is t):
        return None
    return node.inputs[1] if node.inputs[0] is t else node.inputs[0]


def _clip_bounds(clip: gs.Node) -> tuple[float, float] | None:
    """[min, max] of a Clip: inputs (opset 11+) or attributes (older); where one is absent,
    ONNX's default, float32's lowest and largest finite values (so Clip(±inf) is ±FLT_MAX, as
    ONNX Runtime computes it, not ±inf)."""
    lo, hi = float(-np.finfo(np.float32).max), float(np.finfo(np.float32).max)
    if len(clip.inputs) > 1:
        for i, t in enumerate(clip.inputs[1:3]):
            if is_absent(t):
                continue  # an optional input left out
            v = _scalar(t)
            if v is None:
                return None
            lo, hi = (v, hi) if i == 0 else (lo, v)
    else:
        lo = float(clip.attrs.get("min", lo))
        hi = float(clip.attrs.get("max", hi))
    return (lo, hi) if not (np.isnan(lo) or np.isnan(hi)) and lo <= hi else None


def _single(node: gs.Node, y: gs.Tensor) -> FusedActivation | None:
    """One node applied to ``y`` alone."""
    if not node.inputs or node.inputs[0] is not y or any(t is y for t in node.inputs[1:]):
        return None
    if len(node.outputs) != 1 or (node.domain or "") not in _STD:
        return None
    if node.op in ("Relu", "HardSwish", "Sigmoid") and len(node.inputs) == 1:
        return FusedActivation(node.op, [], [node])
    if node.op == "LeakyRelu" and len(node.inputs) == 1:
        return FusedActivation("LeakyRelu", [float(node.attrs.get("alpha", 0.01))], [node])
    if node.op == "HardSigmoid" and len(node.inputs) == 1:
        return FusedActivation("HardSigmoid", [float(node.attrs.get("alpha", 0.2)),
                                               float(node.attrs.get("beta", 0.5))], [node])
    if node.op == "Clip" and len(node.inputs) <= 3:
        bounds = _clip_bounds(node)
        return FusedActivation("Clip", list(bounds), [node]) if bounds else None
    if node.op == "Gelu" and len(node.inputs) == 1:  # opset 20; the tanh approximation stays a node
        approx = node.attrs.get("approximate", "none")
        approx = approx.decode(errors="replace") if isinstance(approx, bytes) else str(approx)
        return FusedActivation("Gelu", [], [node]) if approx == "none" else None
    return None


def _swish(y: gs.Tensor, users: list[gs.Node], graph_outputs: set[int]) -> FusedActivation | None:
    """``y · Sigmoid(y)`` → Swish, ``y · HardSigmoid(y; 1/6, 1/2)`` → HardSwish."""
    gate = next((u for u in users if u.op in ("Sigmoid", "HardSigmoid")), None)
    mul = next((u for u in users if u.op == "Mul"), None)
    if gate is None or mul is None or not _is(gate, gate.op) or not _is(mul, "Mul", (2,)):
        return None
    if _only_use(gate.outputs[0], graph_outputs) is not mul or _other(mul, y) is not gate.outputs[0]:
        return None
    if gate.op == "Sigmoid":
        return FusedActivation("Swish", [], [gate, mul])
    alpha, beta = float(gate.attrs.get("alpha", 0.2)), float(gate.attrs.get("beta", 0.5))
    if not _is_f32(alpha, np.float32(1 / 6)) or beta != 0.5:
        return None
    return FusedActivation("HardSwish", [], [gate, mul])


def _hardswish_spelled(y: gs.Tensor, users: list[gs.Node], graph_outputs: set[int]
                       ) -> FusedActivation | None:
    """``y · Clip(y + 3, 0, 6) / 6`` (or ``· (1/6)``) → HardSwish."""
    add = next((u for u in users if u.op == "Add"), None)
    mul = next((u for u in users if u.op == "Mul"), None)
    if add is None or mul is None or not _is(add, "Add", (2,)) or not _is(mul, "Mul", (2,)):
        return None
    if _scalar(_other(add, y)) != 3.0:
        return None
    clip = _only_use(add.outputs[0], graph_outputs)
    if clip is None or not _is(clip, "Clip", (1, 2, 3)) or clip.inputs[0] is not add.outputs[0] or \
            _clip_bounds(clip) != (0.0, 6.0):
        return None
    if _other(mul, y) is not clip.outputs[0] or _only_use(clip.outputs[0], graph_outputs) is not mul:
        return None
    last = _only_use(mul.outputs[0], graph_outputs)
    if last is None or not _is(last, last.op, (2,)) or last.inputs[0] is not mul.outputs[0]:
        return None
    scale = _scalar(last.inputs[1])
    if not ((last.op == "Div" and scale == 6.0) or
            (last.op == "Mul" and _is_f32(scale, np.float32(1 / 6)))):
        return None
    return FusedActivation("HardSwish", [], [add, clip, mul, last])


def _gelu_spelled(y: gs.Tensor, users: list[gs.Node], graph_outputs: set[int]) -> FusedActivation | None:
    """GELU's Erf form on ``y``: ``Erf(y / √2)`` (or ``y · (1/√2)``) plus 1, multiplied by
    ``y`` and by ½ in any of the orders exporters write — ``(y · (1 + erf)) · ½``,
    ``(y · ½) · (1 + erf)``, ``y · ((1 + erf) · ½)`` — with float32 constants equal to √2, 1/√2,
    1 and ½ as float32."""
    def feeds_erf(u: gs.Node) -> bool:
        reader = _only_use(u.outputs[0], graph_outputs) if len(u.outputs) == 1 else None
        return reader is not None and reader.op == "Erf"

    scale = next((u for u in users if u.op in ("Div", "Mul") and feeds_erf(u)), None)
    if scale is None or not _is(scale, scale.op, (2,)):
        return None
    if scale.op == "Div":
        if scale.inputs[0] is not y or not _is_f32(_scalar(scale.inputs[1]), _SQRT2):
            return None
    elif not _is_f32(_scalar(_other(scale, y)), _SQRT1_2):
        return None
    erf = _only_use(scale.outputs[0], graph_outputs)
    if erf is None or not _is(erf, "Erf") or erf.inputs[0] is not scale.outputs[0]:
        return None
    add = _only_use(erf.outputs[0], graph_outputs)
    if add is None or not _is(add, "Add", (2,)) or not _is_f32(_scalar(_other(add, erf.outputs[0])), np.float32(1)):
        return None
    one_plus = add.outputs[0]
    mul = next((u for u in users if u is not scale), None)
    if mul is None or not _is(mul, "Mul", (2,)):
        return None
    half = np.float32(0.5)
    other = _other(mul, y)
    if other is not None and other is one_plus and _only_use(one_plus, graph_outputs) is mul:
        last = _only_use(mul.outputs[0], graph_outputs)  # (y · (1 + erf)) · ½
        if last is None or not _is(last, "Mul", (2,)) or not _is_f32(_scalar(_other(last, mul.outputs[0])), half):
            return None
        return FusedActivation("Gelu", [], [scale, erf, add, mul, last])
    if other is not None and _is_f32(_scalar(other), half):
        last = _only_use(mul.outputs[0], graph_outputs)  # (y · ½) · (1 + erf)
        if last is None or not _is(last, "Mul", (2,)) or _other(last, mul.outputs[0]) is not one_plus or \
                _only_use(one_plus, graph_outputs) is not last:
            return None
        return FusedActivation("Gelu", [], [scale, erf, add, mul, last])
    halve = _only_use(one_plus, graph_outputs)  # y · ((1 + erf) · ½)
    if halve is None or halve is mul or not _is(halve, "Mul", (2,)) or \
            not _is_f32(_scalar(_other(halve, one_plus)), half):
        return None
    if other is not halve.outputs[0] or _only_use(halve.outputs[0], graph_outputs) is not mul:
        return None
    return FusedActivation("Gelu", [], [scale, erf, add, halve, mul])


def fusable_activation(y: gs.Tensor, graph_outputs: set[int]) -> FusedActivation | None:
    """The activation applied to ``y`` (a conv's or a product's output), when every node reading
    ``y`` is part of it and it is one the ops can apply; else None."""
    if id(y) in graph_outputs:
        return None
    users = list(y.outputs)
    found = None
    if len(users) == 1:
        found = _single(users[0], y)
    elif len(users) == 2:
        found = _swish(y, users, graph_outputs) or _hardswish_spelled(y, users, graph_outputs) or \
            _gelu_spelled(y, users, graph_outputs)
    return found if found is not None and found.name in FOLDED and _accepted(found) else None
