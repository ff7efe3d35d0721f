"""Fine-tune options and result (no torch import: the CLI can build and check these cheaply)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable

import onnx

from onnxprune.core.errors import UsageError, short_repr

LR_SCHEDULES = ("constant", "cosine", "rewind")
OBJECTIVES = ("labels", "match", "mixed")
BN_STATISTICS = ("keep", "update")
# output_kind given where no dense-model output is followed (objective labels).
OUTPUT_KIND_UNUSED = ("output-kind sets how the dense model's outputs are followed (objective "
                      "match or mixed, or data without labels); objective {} follows none")
ProgressFn = Callable[[int, int, "int | None", dict], None]


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Options of :func:`onnxprune.training.torch_bridge.finetune`; field ``x_y`` is option ``--x-y``.

    ``lr`` is the retraining learning rate; if omitted it is ``original_lr / 10`` (the paper
    retrains LeNet at 1/10 of the original rate; pass ``lr`` for AlexNet's 1/100).
    ``weight_decay`` is the L2 strength and ``l1`` the L1 strength; both act on layer weights
    only (the prunable Conv/ConvTranspose/Gemm/MatMul and recurrent W/R weights), not on biases or
    BatchNormalization parameters.  ``batch_size`` is the *global* batch: under torchrun it is
    split evenly across processes, so a run gives the same weights for any process count
    (up to float summation order).

    ``lr_schedule="cosine"`` decays the rate from the resolved rate (``lr``, or
    ``original_lr/10``) to 0 over the run by ``lr·(1 + cos(π·t))/2``, t the share of training
    steps done (the data must have a known number of batches); the paper retrains at a
    constant rate (the default).  ``lr_schedule="rewind"`` is the same cosine started from the
    rate the model was trained with (``original_lr``; ``lr`` when only that is given): each
    compress round restarts at the original peak and decays to 0, in the spirit of
    learning-rate rewinding (Renda et al. 2020, who replay the tail of the original schedule).

    ``distill`` (α in [0, 1], 0 = off) mixes a distillation term from a teacher model (in
    ``compress``: the dense input model) into the loss, Hinton et al. 2015:
    ``(1 − α)·CE(s, y) + α·T²·KL(softmax(t/T) ‖ softmax(s/T))`` with ``T =
    distill_temperature``.  Not part of Han et al.'s method; it is off unless asked for.

    ``output_kind``: ``(output name, "scores" | "values")`` pairs (a dict is taken too) that
    override how the ``match``/``mixed`` objective and label-free validation follow those
    outputs (:func:`onnxprune.runtime.datasets.output_kinds`: the rule judges the rest).

    ``bn_statistics``: what BatchNormalization layers normalise with while retraining —
    ``"update"``: the batch's statistics, the running ones updated (training mode);
    ``"keep"``: the running statistics, unchanged (scale and shift still train); ``None``:
    update with labels, keep when following a teacher (train.py says why). ``"update"`` needs
    batches of more than one sample: a model that fixes its batch below ``batch_size`` is fed
    micro-batches whose statistics are not the batch's, so it is refused there.
    """

    epochs: int = 1
    batch_size: int = 64
    lr: float | None = None
    original_lr: float | None = None
    optimizer: str = "sgd"  # sgd | adam
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    l1: float = 0.0
    freeze: str | None = None  # None | "conv" | "fc"
    adjust_dropout: bool = True
    keep_best: bool = False
    seed: int = 0
    device: str = "cpu"  # cpu | cuda | auto
    distill: float = 0.0
    distill_temperature: float = 4.0
    lr_schedule: str = "constant"  # constant | cosine | rewind
    regrow: bool = False  # pruned weights may come back (Dynamic Network Surgery); train.py
    objective: str | None = None  # None (from the data) | labels | match | mixed
    output_kind: tuple = ()  # ((name, "scores" | "values"), ...): overrides the rule
    bn_statistics: str | None = None  # None (by objective) | keep | update

    def __post_init__(self) -> None:
        # A mapping (the API's natural spelling) or a list is kept as a tuple of pairs:
        # hashable, JSON-able, in the order given.
        kinds = self.output_kind
        if kinds is None:
            kinds = ()
        elif isinstance(kinds, dict):
            kinds = tuple(kinds.items())
        elif isinstance(kinds, (list, tuple)):
            kinds = tuple(tuple(p) if isinstance(p, (list, tuple)) else p for p in kinds)
        object.__setattr__(self, "output_kind", kinds)  # anything else: validate() says so

    def resolved_lr(self) -> float:
        if self.lr_schedule == "rewind" and self.original_lr is not None:
            return self.original_lr
        return self.lr if self.lr is not None else self.original_lr / 10.0

    def validate(self) -> "FinetuneConfig":
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise UsageError(f"finetune: {msg}")

        need(isinstance(self.epochs, int) and self.epochs >= 1, f"epochs must be an integer >= 1, got {self.epochs!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch-size must be an integer >= 1, got {self.batch_size!r}")
        need(self.lr is not None or self.original_lr is not None,
             "give lr (the retraining rate) or original-lr (retrains at 1/10 of it)")
        need(self.lr is None or self.original_lr is None, "give lr or original-lr, not both")
        need(self.resolved_lr() > 0, f"the learning rate must be > 0, got {self.resolved_lr()!r}")
        need(self.optimizer in ("sgd", "adam"), f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        need(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum!r}")
        need(self.weight_decay >= 0, f"weight-decay must be >= 0, got {self.weight_decay!r}")
        need(self.l1 >= 0, f"l1 must be >= 0, got {self.l1!r}")
        need(self.freeze in (None, "conv", "fc"), f"freeze must be 'conv', 'fc' or none, got {self.freeze!r}")
        need(self.device in ("cpu", "cuda", "auto"), f"device must be 'cpu', 'cuda' or 'auto', got {self.device!r}")
        need(isinstance(self.seed, int), f"seed must be an integer, got {self.seed!r}")
        need(isinstance(self.regrow, bool), f"regrow must be true or false, got {self.regrow!r}")
        need(self.lr_schedule in LR_SCHEDULES,
             f"lr-schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        need(_number(self.distill) and 0.0 <= self.distill <= 1.0,
             f"distill must be a number in [0, 1], got {self.distill!r}")
        need(_number(self.distill_temperature) and 0 < self.distill_temperature < math.inf,
             f"distill-temperature must be a finite number > 0, got {self.distill_temperature!r}")
        need(self.objective in (None, *OBJECTIVES),
             f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        need(self.objective in (None, "labels") or self.distill == 0,
             f"distill mixes a teacher term into the labels objective; objective "
             f"{self.objective} already follows the teacher (leave distill at 0)")
        need(isinstance(self.output_kind, tuple) and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(v, str) for v in p)
            for p in self.output_kind),
            f"output-kind must be NAME=KIND pairs (or a mapping name -> kind), got {short_repr(self.output_kind)}")
        need(not self.output_kind or self.objective in (None, "match", "mixed"),
             OUTPUT_KIND_UNUSED.format(self.objective))
        need(self.bn_statistics in (None, *BN_STATISTICS),
             f"bn-statistics must be one of {', '.join(BN_STATISTICS)}, got {short_repr(self.bn_statistics)}")
        return self

    @classmethod
    def from_options(cls, options: dict[str, Any]) -> "FinetuneConfig":
        """Build from kebab-case (recipe/CLI) or snake_case keys; unknown keys are an error."""
        fields = {f.name for f in dataclasses.fields(cls)}
        kwargs, unknown = {}, []
        for key, value in options.items():
            name = key.replace("-", "_")
            if name in fields:
                kwargs[name] = value
            else:
                unknown.append(key)
        if unknown:
            known = ", ".join(sorted(f.replace("_", "-") for f in fields))
            raise UsageError(f"finetune: unknown option(s) {unknown}; known: {known}")
        return cls(**kwargs).validate()


@dataclasses.dataclass
class FinetuneResult:
    """What a fine-tune run produced.

    ``model`` is the input graph with new weight values (``None`` on torchrun ranks other
    than 0, which only help train).  ``history`` has one dict per epoch.  ``dropout`` maps a
    Dropout node to ``(D_o, D_r)``; ``masks`` maps each prunable weight to
    ``(nonzero, total)`` as held through training.  ``unreached`` lists the trained prunable
    weights that no gradient reached in the whole run (layers in If branches the training
    inputs never take): they kept their pruned values without retraining.
    """

    model: onnx.ModelProto | None
    history: list[dict]
    best_epoch: int | None
    dropout: dict[str, tuple[float, float]]
    masks: dict[str, tuple[int, int]]
    world_size: int = 1
    rank: int = 0
    max_rank_divergence: float | None = None
    device: str = "cpu"
    objective: dict | None = None  # the loss as run: mode and each output's treatment
    unreached: list[str] = dataclasses.field(default_factory=list)
