"""What retraining minimises: labels, the teacher's outputs, or both (``FinetuneConfig.objective``).

An :class:`Objective` is a weighted sum of terms over named tensors of the student (the
model being retrained) and, for the teacher terms, of a teacher graph rebuilt once in
evaluation mode without gradients.  Every term is a *sum over the samples* of a micro-batch,
so the caller's scaling by ``1 / global batch`` gives the mean over the global batch:

* ``ce``: cross-entropy of the student's logits against the labels;
* ``kl``: ``T²·KL(softmax(t/T) ‖ softmax(s/T))`` on logits (Hinton et al. 2015), the T²
  keeping its gradient on the scale of a hard term;
* ``mse``: ``n · mean((s − t)²) / var_t`` for an output of n samples (the mean over every
  element of the micro-batch's output, so also right for an output whose first axis is not
  the sample axis), with ``var_t`` the variance of the teacher's output over all its
  elements and the whole training set, measured once before training (1 when constant).

``labels``: ``(1 − α)·ce + α·kl`` on the class scores (``α = distill``, 0 = plain ce).
``match``: one term of weight 1 per floating-point graph output — ``kl`` for class scores
(:func:`onnxprune.runtime.datasets.output_kinds`), on the logits behind the output (the
input of a Softmax/LogSoftmax producing it, else the output), ``mse`` for any other; the
user's ``output_kind`` overrides (``--output-kind NAME=scores|values``) win over that rule.
``mixed``: ``ce`` + the match terms.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import torch
import torch.nn.functional as F

from onnxprune.core.errors import OnnxPruneError, UsageError
from onnxprune.runtime import datasets as _data
from onnxprune.training.torch_bridge.module import OnnxModule, build_module, default_opset


@dataclasses.dataclass
class Term:
    """One teacher term: graph output ``output``, compared through the student's tensor
    ``student`` and the teacher's ``teacher``, as ``kind`` (kl | mse) with ``weight``;
    ``source``: what chose the kind, :data:`RULE` or :data:`OVERRIDE`."""

    output: str
    student: str
    teacher: str
    kind: str
    weight: float = 1.0
    variance: float = 1.0
    source: str = "rule"


# Where a term's treatment came from, as the report says it.
RULE, OVERRIDE = "rule", "--output-kind"


def logits_name(module: OnnxModule, opset: int, out: str | None = None) -> str:
    """The logits behind score output ``out`` (default the module's first output): the input
    of the Softmax/LogSoftmax over the class axis that produces it, or ``z`` of a softmax
    written out (:func:`onnxprune.runtime.datasets.softmax_logits`), else ``out`` itself."""
    out = out or module.output_names[0]
    node = module.producer(out)
    if node is not None and node.op_type in ("Softmax", "LogSoftmax"):
        axis = node.attrs.get("axis", -1 if opset >= 13 else 1)
        if axis in (-1, 1):
            return node.inputs[0]

    def producer(t):
        p = module.producer(t)
        return (p.op_type, list(p.inputs)) if p is not None else None
    return _data.softmax_logits(out, producer) or out


def named(module, feeds: dict, names: list[str]) -> dict:
    """Tensors ``names`` of ``module`` run on ``feeds`` (name → tensor, laid out for the model:
    :func:`onnxprune.runtime.datasets.model_batch`), by name."""
    out = module(feeds, outputs=list(names))
    out = out if isinstance(out, tuple) else (out,)
    return dict(zip(names, out))


def forward_padded(module, x: dict, names: list[str], specs) -> dict:
    """:func:`named` on a batch ``x`` (name → tensor, samples on axis 0) for the model's
    inputs ``specs`` (sample axes resolved): all at once, or — a model whose batch is fixed
    at B — B samples at a time, the last chunk padded by repeating its last sample and the
    padding dropped."""
    fixed = _data.fixed_batch(specs)
    if fixed is None:
        return named(module, _data.model_batch(x, specs), names)
    n = _data.n_samples(x)
    parts: dict[str, list] = {k: [] for k in names}
    for start in range(0, n, fixed):
        real = min(fixed, n - start)
        for k, v in named(module, _data.model_batch(x, specs, start, start + fixed, pad_to=fixed),
                          names).items():
            parts[k].append(v[:real] if real < fixed else v)  # an unpadded output is kept whole
    return {k: torch.cat(v) for k, v in parts.items()}


class Objective:
    """The retraining loss (module doc)."""

    def __init__(self, mode: str, specs, *, ce: str | None = None, ce_weight: float = 1.0,
                 terms: list[Term] = (), teacher: OnnxModule | None = None,
                 temperature: float = 4.0, ignored: list[str] = ()) -> None:
        self.specs = specs  # the model's inputs, sample axes resolved: how a batch is fed
        self.mode, self.ce, self.ce_weight = mode, ce, ce_weight
        self.terms, self.teacher, self.temperature = list(terms), teacher, temperature
        self.ignored = list(ignored)
        self.student_names = list(dict.fromkeys([*([ce] if ce else []), *(t.student for t in self.terms)]))

    def to(self, device) -> "Objective":
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def loss(self, net, x: dict, y):
        """(summed loss over the micro-batch ``x``, samples on axis 0; the student's tensors
        by name)."""
        feeds = _data.model_batch(x, self.specs)
        outs = named(net, feeds, self.student_names)
        summed = torch.zeros((), device=next(iter(x.values())).device)
        if self.ce is not None:
            logits = outs[self.ce]
            if logits.dim() != 2:
                raise UsageError(f"tensor {self.ce!r} has shape {tuple(logits.shape)}; "
                                 "classification logits (N, C) are required")
            summed = summed + self.ce_weight * F.cross_entropy(logits, y, reduction="sum")
        if self.terms:
            with torch.no_grad():
                t_outs = named(self.teacher, feeds, [t.teacher for t in self.terms])
            n = _data.n_samples(x)
            for t in self.terms:
                s, target = outs[t.student], t_outs[t.teacher]
                if s.shape != target.shape:
                    raise UsageError(f"output {t.output!r}: the teacher's shape {tuple(target.shape)} "
                                     f"differs from the model's {tuple(s.shape)}")
                summed = summed + t.weight * self._term(t, s, target, n)
        return summed, outs

    def _term(self, t: Term, s, target, n: int):
        if t.kind == "kl":
            return distill_loss(s, target, self.temperature)
        return n * (s.float() - target.float()).pow(2).mean() / t.variance

    def report(self) -> dict:
        """The objective as the report gives it: mode and each output's treatment and weight."""
        rows = []
        if self.ce is not None:
            rows.append({"output": self.ce, "treatment": "cross-entropy with the labels",
                         "weight": self.ce_weight})
        for t in self.terms:
            rows.append({"output": t.output, "treatment": (
                f"KL divergence at temperature {self.temperature:g} (class scores)"
                if t.kind == "kl" else "squared error / dense variance"),
                "weight": t.weight, **({"variance": t.variance} if t.kind == "mse" else {}),
                "source": t.source})
        rows += [{"output": o, "treatment": "ignored (not floating point)", "weight": 0.0}
                 for o in self.ignored]
        return {"mode": self.mode, "outputs": rows}


def distill_loss(logits, t_logits, temperature: float):
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), summed over the batch."""
    log_s = F.log_softmax(logits.float() / temperature, dim=1)
    log_t = F.log_softmax(t_logits.float() / temperature, dim=1)
    return F.kl_div(log_s, log_t, reduction="sum", log_target=True) * temperature ** 2


def student_outputs(model: onnx.ModelProto, mode: str) -> list[str]:
    """The graph outputs the student module is rebuilt for under ``mode``."""
    scores = [_data.scores_output(model)] if mode != "match" else []
    follow = _data.float_outputs(model) if mode != "labels" else []
    if mode != "labels" and not follow:
        raise UsageError("objective match: the model has no floating-point output to follow")
    return list(dict.fromkeys([*scores, *follow]))


def rebuild_teacher(teacher: onnx.ModelProto, outputs: list[str], specs) -> OnnxModule:
    """The teacher rebuilt for ``outputs`` in evaluation mode, without gradients; its inputs
    must be the student's (names, element types, fixed dims; fed on the same sample axes)."""
    try:
        t_specs = _data.input_specs(teacher)
        t_module = build_module(teacher, outputs)
    except OnnxPruneError as exc:
        raise type(exc)(f"teacher: {exc}") from exc
    mine = {s.name: s for s in specs}
    for i, ts in enumerate(t_specs):
        s = mine.get(ts.name) if len(specs) > 1 else specs[0]
        if s is None or not _same_input(s, ts):
            want = [(x.name, str(x.dtype), x.shape) for x in specs]
            raise UsageError(f"teacher input {ts.name!r} {ts.dtype} {ts.shape} does not match the "
                             f"model's inputs {want}")
        t_specs[i] = dataclasses.replace(ts, sample_axis=s.sample_axis)
    if len(t_specs) != len(specs):
        raise UsageError(f"teacher has {len(t_specs)} inputs, the model {len(specs)}")
    t_batch, batch = _data.fixed_batch(t_specs), _data.fixed_batch(specs)
    if t_batch is not None and t_batch != batch:
        raise UsageError(f"teacher: its input has a fixed batch of {t_batch} and the model's "
                         f"{'is dynamic' if batch is None else f'is {batch}'}; "
                         "export the teacher with a dynamic batch axis")
    t_module.eval()
    for p in t_module.parameters():
        p.requires_grad_(False)
    return t_module


def _same_input(a, b) -> bool:
    return a.dtype == b.dtype and (
        a.shape is None or b.shape is None
        or (len(a.shape) == len(b.shape)
            and all(x is None or y is None or x == y for x, y in zip(a.shape, b.shape))))


def match_objective(mode: str, model, module: OnnxModule, teacher: onnx.ModelProto, specs,
                    batches, ce: str | None, temperature: float, overrides=()) -> Objective:
    """The ``match``/``mixed`` objective: one term per float output of ``model``, its kind
    from the teacher's outputs on the first batch (``overrides``, name → kind or pairs, win:
    :func:`onnxprune.runtime.datasets.output_kinds`), its variance over all ``batches``
    (an iterable of input mappings, the whole training set, in any order)."""
    overrides = _data.check_output_kinds(model, overrides)  # before the teacher is run
    follow = _data.float_outputs(model)
    ignored = [o.name for o in model.graph.output if o.name not in follow]
    missing = [o for o in follow if o not in {x.name for x in teacher.graph.output}]
    if missing:
        raise UsageError(f"teacher has no output(s) {missing} to follow")
    t_module = rebuild_teacher(teacher, follow, specs)
    shapes, sums = None, {}
    with torch.no_grad():
        for x in batches:
            outs = forward_padded(t_module, x, follow, specs)
            if shapes is None:
                shapes = {k: tuple(v.shape) for k, v in outs.items()}
            for k, v in outs.items():
                v = v.double()
                s = sums.setdefault(k, [0.0, 0.0, 0])
                s[0] += float(v.sum())
                s[1] += float((v * v).sum())
                s[2] += v.numel()
    kinds = _data.output_kinds(teacher, shapes or {}, overrides)
    s_opset, t_opset = default_opset(model), default_opset(teacher)
    terms = []
    for name in follow:
        source = OVERRIDE if name in overrides else RULE
        if kinds[name] == "scores":
            terms.append(Term(name, logits_name(module, s_opset, name),
                              logits_name(t_module, t_opset, name), "kl", source=source))
        else:
            total, sq, count = sums.get(name, (0.0, 0.0, 0))
            var = sq / count - (total / count) ** 2 if count else 0.0
            var = var if np.isfinite(var) and var > 1e-12 else 1.0
            terms.append(Term(name, name, name, "mse", variance=float(var), source=source))
    return Objective(mode, specs, ce=ce, terms=terms, teacher=t_module, temperature=temperature,
                     ignored=ignored)
