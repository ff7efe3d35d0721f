"""The paper's three-step method made whole: prune → retrain, iterated, then shrink.

    evaluate dense → for i in 1..N: prune to s_i, retrain survivors, evaluate
                   → remove dead neurons → evaluate

Schedule.  Each layer l has a final pruned share f_l (from ``target-sparsity``, per layer or
global, from the quality parameters applied to the *dense* weights — q·σ_dense — or from an
explicit per-layer target).  Iteration i prunes the layer to

    s_{l,i} = 1 − (1 − f_l)^{i/N}

so every iteration removes the same share of the surviving weights (Han et al. raise the
threshold step by step: AlexNet went from 5× one-shot to 9× iterative).  Each step is carried
out by the ``threshold-by-std`` pass with the q that reaches s_{l,i} on the current weights
(zeros already in the layer count as pruned), so the stats and stamp are those of a normal
prune.  Retraining goes through the fine-tune bridge (pruned weights stay exactly zero), and
accuracy is always measured with ONNX Runtime on the written graph, never on the torch module.

Under torchrun (``WORLD_SIZE`` > 1) one process group lives for the whole run: every rank
prunes the same weights with the same deterministic numpy (checked: a digest of every mask is
compared with rank 0's, and all ranks fail alike if one differs), retrains through the
fine-tune bridge's DistributedDataParallel path (gradients averaged over ranks), then takes
rank 0's retrained model, so the next round starts from identical weights on every rank.
ONNX Runtime evaluates the same graph on every rank; only rank 0 reports and writes.

Accuracy budget (``target-sparsity auto``, ``Schedule.budget_pp`` = PP).  Instead of a
sparsity the run is given the largest allowed val top-1 drop.  The rounds climb a fixed
ladder toward the cap ``AUTO_CAP`` = 0.99: round i of N (N = ``iterations``, default
``AUTO_ROUNDS`` = 7, so each round removes ≈ 48 % of the survivors) prunes to

    s_i = 1 − (1 − 0.99)^{i/N}        (0.48, 0.73, 0.86, 0.93, 0.96, 0.98, 0.99 for N = 7)

— the fixed schedule toward the cap — retrains and measures ``drop_i = 100·(top1_dense −
top1_i)``.  The climb stops at the cap or after ``AUTO_PATIENCE + 1`` = 2 consecutive rounds
over budget: one round over budget is often a round whose retraining at the rewound rate has
not settled yet — the next round keeps training and is often back within budget (measured
on LeNet-300-100: round 1 at 48 % lost 0.42 pp on val after its 2 epochs, round 2 at 73 %
was within 0.1 pp; docs/RESULTS.md).  The sparsest round within budget is returned (its graph
and weights are kept, dead neurons are then removed from it); the rounds over budget stay in
the history as the end of the trajectory.  If no round is within budget, round 1 is returned
and the run reports it over budget (``compress`` marks the gate failed: exit 3, model and
report still written).  Every decision depends only on ONNX Runtime accuracies of the same graph,
so under torchrun every rank stops at the same round.
"""

from __future__ import annotations

import dataclasses
import glob as _glob
import hashlib
import os
import time
from typing import Callable

from onnx import ModelProto

from onnxprune.core import masks
from onnxprune.core.errors import RuntimeFailure, UsageError, name_list
from onnxprune.core.graph import find_layers, graph_from_model, graph_to_model, weight_values
from onnxprune.passes import RemoveDeadNeurons, ThresholdByStd
from onnxprune.passes.threshold_by_std import DEFAULT_QUALITY

AUTO_CAP = 0.99  # the sparsest the accuracy-budget ladder goes (100× fewer weights)
AUTO_ROUNDS = 7  # default ladder length: each round removes ≈ 48 % of the survivors
# A round whose retraining lowers val top-1 by more than this (a share, 1 pp) is retrained at a
# tenth of the rate (_Rounds.run): a rate far above the model's own wrecks it; a rewound rate
# that has not settled yet costs less (LeNet-300-100: 0.28 pp after round 1).
WORSE_AFTER_RETRAINING = 0.01
RATE_BACKOFFS = 3  # retrainings of a round at 1/10, 1/100, 1/1000 of the rate, at most
AUTO_PATIENCE = 1  # rounds over budget tried after the first one before the climb stops
ALLOCATIONS = ("uniform", "global", "size", "sensitivity")
# The size rule keeps density ∝ params^(−SIZE_EXPONENT): fitted to the densities Han et al.
# chose by hand (LeNet-5 conv1 500 weights kept 66 %, fc1 400K kept 8 %: 8.25× over 800×,
# exponent 0.32; LeNet-300-100 fc3 vs fc1: 0.22; AlexNet conv1 vs fc6: 0.32).
SIZE_EXPONENT = 0.3


@dataclasses.dataclass
class Schedule:
    """How far each layer is pruned in the end, and in how many steps."""

    iterations: int = 3
    quality: dict[str, float] | None = None  # {"conv": q, "fc": q}
    layer_quality: tuple[tuple[str, float], ...] = ()  # (glob, q): last match wins
    target_sparsity: float | None = None
    target_scope: str = "per-layer"
    layer_targets: tuple[tuple[str, float], ...] = ()  # (glob, final sparsity): last match wins
    skip: tuple[str, ...] = ()
    min_params: int = 0
    budget_pp: float | None = None  # set: accuracy-budget mode (module doc), target = AUTO_CAP
    allocate: str = "uniform"  # how target_sparsity is spread over the layers (allocate())
    # sensitivity allocation: layer name -> [(sparsity, val drop pp), ...] measured alone
    curves: dict[str, list[tuple[float, float]]] | None = None

    def validate(self) -> "Schedule":
        if not isinstance(self.iterations, int) or self.iterations < 1:
            raise UsageError(f"iterations must be an integer >= 1, got {self.iterations!r}")
        if self.target_sparsity is not None and not 0 <= self.target_sparsity < 1:
            raise UsageError(f"target-sparsity must be in [0, 1), got {self.target_sparsity}")
        for g, s in self.layer_targets:
            if not 0 <= s < 1:
                raise UsageError(f"layer target {g}={s}: sparsity must be in [0, 1)")
        if self.target_scope not in ("per-layer", "global"):
            raise UsageError(f"target-scope must be per-layer or global, got {self.target_scope!r}")
        if self.allocate not in ALLOCATIONS:
            raise UsageError(f"allocate must be one of {', '.join(ALLOCATIONS)}, got {self.allocate!r}")
        if self.budget_pp is not None and not self.budget_pp >= 0:
            raise UsageError(f"the accuracy budget must be >= 0 pp, got {self.budget_pp}")
        return self

    @classmethod
    def auto(cls, budget_pp: float, iterations: int | None = None, **fields) -> "Schedule":
        """The accuracy-budget schedule: the ladder s_i = 1 − (1 − AUTO_CAP)^{i/N}, stopped
        at the first round whose drop exceeds ``budget_pp`` (module doc)."""
        return cls(iterations=AUTO_ROUNDS if iterations is None else iterations,
                   target_sparsity=AUTO_CAP, budget_pp=budget_pp, **fields).validate()


def _last_match(layer, pairs):
    value = None
    for g, v in pairs:
        if layer.matches(g):
            value = v
    return value


def final_sparsities(model: ModelProto, schedule: Schedule) -> dict[str, float]:
    """Layer name → the pruned share it should reach after the last iteration.

    A layer with an explicit target or q keeps it; ``target_sparsity`` is spread over the
    others by ``schedule.allocate`` (:func:`allocate`); without a target, q·σ_dense sets it.
    """
    graph = graph_from_model(model)
    layers, _ = find_layers(graph)
    active = [layer for layer in layers
              if not layer.skip_reason and layer.params >= schedule.min_params
              and not any(layer.matches(g) for g in schedule.skip)]
    quality = dict(DEFAULT_QUALITY)
    quality.update(schedule.quality or {})
    out: dict[str, float] = {}
    free = []
    for layer in active:
        explicit = _last_match(layer, schedule.layer_targets)
        q = _last_match(layer, schedule.layer_quality)
        if explicit is not None:
            out[layer.name] = explicit
        elif q is None and schedule.target_sparsity is not None:
            free.append(layer)
        else:
            out[layer.name] = _sparsity_at(weight_values(layer), quality[layer.kind] if q is None else q)
    if free:
        mode = "global" if schedule.target_scope == "global" else schedule.allocate
        out.update(allocate(free, schedule.target_sparsity, mode, schedule.curves))
    return {layer.name: out[layer.name] for layer in active if layer.name in out}


def _sparsity_at(w, q: float) -> float:
    """The pruned share of ``w`` at the threshold q·σ(w)."""
    _, _, kept = masks.apply_threshold(w, q * masks.weight_std(w))
    return 1.0 - kept / w.size


def allocate(layers, target: float, mode: str = "uniform", curves=None) -> dict[str, float]:
    """Spread a total pruned share ``target`` over ``layers`` (name → final sparsity).

    - ``uniform``: every layer pruned to ``target``.
    - ``global``: one q for all layers, each pruning ``|w| < q·σ_l`` (the paper's quality × std
      with a common q), q chosen so that the pruned share of all their weights is ``target``.
    - ``size``: density ``d_l = min(1, c·n_l^(−SIZE_EXPONENT))`` for a layer of n_l weights,
      c solved so that Σ d_l·n_l = (1 − target)·Σ n_l.  Big layers are pruned hardest; the
      small ones — a first convolution, an output layer — keep more (a layer below the size
      where d_l reaches 1 is not pruned).  The exponent is fitted to Han et al.'s own choices.
    - ``sensitivity``: ``curves[name]`` = [(sparsity, val drop pp)] measured with that layer
      pruned alone (no retraining).  With drops made monotone (running max) and interpolated
      linearly, every layer goes to the largest sparsity whose drop is ≤ a common tolerance b,
      b solved so the total is ``target``: the same loss is accepted from every layer, so a
      sensitive layer is pruned less.  Beyond the last measured point a layer is not pushed.
    """

    sizes = {layer.name: layer.params for layer in layers}
    total = float(sum(sizes.values()))
    if mode == "uniform" or target <= 0 or total == 0:
        return {name: target for name in sizes}
    if mode == "global":
        ws = [weight_values(layer) for layer in layers]
        q = masks.global_quality_for_sparsity(ws, target)
        return {layer.name: _sparsity_at(w, q) for layer, w in zip(layers, ws)}
    if mode == "size":
        scale = {n: float(p) ** -SIZE_EXPONENT for n, p in sizes.items()}

        def shares_at(c: float) -> dict[str, float]:
            return {n: 1.0 - min(1.0, c * scale[n]) for n in sizes}
        lo, hi = max(1.0 / v for v in scale.values()), 0.0  # all dense … all pruned
    elif mode == "sensitivity":
        missing = [n for n in sizes if not (curves or {}).get(n)]
        if missing:
            raise UsageError(f"no sensitivity curve for layer {missing[0]!r}")
        # A tiny layer's grid point can prune it whole: every layer keeps one weight at least.
        prepared = {n: _monotone_curve(curves[n], 1.0 - 1.0 / sizes[n]) for n in sizes}

        def shares_at(b: float) -> dict[str, float]:
            return {n: _curve_sparsity(prepared[n], b) for n in sizes}
        lo = min(0.0, min(float(d[0]) for _, d in prepared.values()))
        hi = max(float(d[-1]) for _, d in prepared.values())
    else:
        raise UsageError(f"allocate must be one of {', '.join(ALLOCATIONS)}, got {mode!r}")
    return _reach(shares_at, sizes, target, lo, hi)


def _reach(shares_at, sizes: dict[str, int], target: float, lo: float, hi: float):
    """The allocation ``shares_at(x)`` whose total pruned share is ``target``, x bisected in
    [lo, hi] (the total is nondecreasing from lo to hi).  Where the total jumps over the
    target (measured drops are discrete) the two allocations either side of the jump are
    blended linearly so the total is met exactly; if even ``hi`` falls short, ``hi``'s."""
    total = float(sum(sizes.values()))

    def pruned(shares) -> float:
        return sum(shares[n] * p for n, p in sizes.items()) / total

    if pruned(shares_at(hi)) <= target:
        return shares_at(hi)
    for _ in range(100):
        mid = 0.5 * (lo + hi)
        if pruned(shares_at(mid)) < target:
            lo = mid
        else:
            hi = mid
    a, b = shares_at(lo), shares_at(hi)
    pa, pb = pruned(a), pruned(b)
    t = 1.0 if pb <= pa else min(1.0, max(0.0, (target - pa) / (pb - pa)))
    return {n: a[n] + t * (b[n] - a[n]) for n in sizes}


def _monotone_curve(points, cap: float):
    """(sparsities ≤ cap, running-max drops) sorted by sparsity, starting at (0, ≤ 0)."""
    import numpy as np

    pts = sorted((min(float(s), cap), float(d)) for s, d in points)
    if pts[0][0] > 0:
        pts.insert(0, (0.0, min(0.0, pts[0][1])))
    s = np.array([p[0] for p in pts])
    d = np.maximum.accumulate(np.array([p[1] for p in pts]))
    return s, d


def _curve_sparsity(curve, b: float) -> float:
    """The largest sparsity whose (monotone, interpolated) drop is ≤ b."""
    s, d = curve
    if b >= d[-1]:
        return float(s[-1])
    j = int((d > b).argmax())  # first point over b (j ≥ 1 when b ≥ d[0])
    if j == 0:
        return float(s[0])
    if d[j] == d[j - 1]:
        return float(s[j - 1])
    return float(s[j - 1] + (s[j] - s[j - 1]) * (b - d[j - 1]) / (d[j] - d[j - 1]))


def step_sparsity(final: float, i: int, n: int) -> float:
    """s_i = 1 − (1 − f)^{i/n}: the same share of survivors is removed at every step."""
    return 1.0 - (1.0 - final) ** (i / n)


def prune_step(model: ModelProto, targets: dict[str, float]):
    """Prune each named layer to its target share (q solved on the current weights)."""
    graph = graph_from_model(model)
    layers, _ = find_layers(graph)
    by_name = {layer.name: layer for layer in layers}
    overrides = {}
    for name, s in targets.items():
        layer = by_name.get(name)
        if layer is None:
            continue
        overrides[_glob.escape(name)] = masks.quality_for_sparsity(weight_values(layer), s)
    skip = [_glob.escape(layer.name) for layer in layers if layer.name not in targets]
    result = ThresholdByStd({"layers": overrides, "skip": skip})(graph)
    return graph_to_model(result.graph, model), result.stats


def not_retrained_note(names: list[str]) -> str:
    """What compress and finetune say of pruned weights their retraining never reached."""
    return (f"{len(names)} pruned weight(s) got no gradient from the training data and were not "
            f"retrained ({name_list(names, 3)}): layers in If branches the inputs never take are "
            "pruned by magnitude only (--skip GLOB keeps them dense)")


@dataclasses.dataclass
class CompressResult:
    model: ModelProto
    dense_accuracy: dict
    final_accuracy: dict
    history: list[dict]  # one record per stage: dense, each iteration, dead-neuron removal
    final_sparsity: dict[str, float]
    dead_neurons: dict | None
    wall_seconds: float
    world_size: int = 1
    rank: int = 0
    max_rank_divergence: float | None = None  # max over rounds of max |w_rank − w_rank0|
    device: str = "cpu"
    returned_iteration: int = 0  # the round whose model was returned (the last, or auto's pick)
    peak_lr: float | None = None  # the retraining rate the last round ran at (after back-offs)


def compress(
    model: ModelProto,
    train,
    val,
    *,
    schedule: Schedule,
    finetune_config,
    remove_dead_neurons: bool = True,
    on_stage: Callable[[dict], None] | None = None,
    on_progress=None,
) -> CompressResult:
    """Prune → retrain for each iteration of ``schedule``, then remove dead neurons.

    ``train``/``val`` are what :func:`onnxprune.training.torch_bridge.finetune` accepts; ``val`` is also
    evaluated with ONNX Runtime after every stage.  ``on_stage(record)`` is called as each
    stage finishes (for a live log); ``on_progress`` is the bridge's per-step callback, given
    the iteration as an extra first argument.

    Under torchrun every rank runs this with the same arguments and gets the same model back
    (see module doc); ``on_stage`` and ``on_progress`` are called on rank 0 only.
    """
    schedule.validate()
    ranks = _Ranks(getattr(finetune_config, "device", "cpu"))
    # On an error the group is left to process exit: a closing barrier would wait forever
    # for a rank that has already failed.
    result = _compress(model, train, val, schedule, finetune_config, remove_dead_neurons,
                       on_stage if ranks.rank == 0 else None, on_progress, ranks)
    ranks.close()
    return result


def _compress(model, train, val, schedule, finetune_config, remove_dead_neurons, on_stage,
              on_progress, ranks: "_Ranks") -> CompressResult:
    """:func:`compress` within its process group (``ranks``; one process: world 1)."""
    from onnxprune.runtime.datasets import Dataset
    from onnxprune.runtime.evaluate import evaluate

    t0 = time.perf_counter()
    val_ds = val if isinstance(val, Dataset) else Dataset(*val) if isinstance(val, tuple) else val
    dense_acc = evaluate(model, val_ds)
    finals = final_sparsities(model, schedule)
    if not finals:
        raise UsageError("no prunable layer to compress (Gemm/MatMul/Conv/ConvTranspose with a "
                         "constant floating-point weight)")
    history = [_record("dense", 0, model, dense_acc, None)]
    if on_stage:
        on_stage(history[-1])
    rounds = _Rounds(model, train, val_ds, finals, schedule, finetune_config, ranks,
                     history[0]["params"], on_progress)
    current, kept, kept_acc, kept_i = model, model, dense_acc, 0
    misses = 0  # consecutive rounds over budget
    for i in range(1, schedule.iterations + 1):
        current, acc, rec = rounds.run(current, i)
        over = _over_budget(rec, dense_acc, schedule.budget_pp)
        history.append(rec)
        if on_stage:
            on_stage(rec)
        misses = misses + 1 if over else 0
        if not over or i == 1:  # round 1 is kept even over budget (reported so)
            kept, kept_acc, kept_i = current, acc, i
        if misses > AUTO_PATIENCE:
            break  # the sparsest round within budget is the one kept
    current, acc, dead = kept, kept_acc, None
    if remove_dead_neurons:
        current, acc, dead = _remove_dead(current, acc, val_ds)
        history.append(_record("remove-dead-neurons", kept_i, current, acc, None,
                               history[0]["params"]))
        if on_stage:
            on_stage(history[-1])
    return CompressResult(current, dense_acc, acc, history, finals, dead,
                          time.perf_counter() - t0, ranks.world, ranks.rank, rounds.divergence,
                          rounds.device, returned_iteration=kept_i,
                          peak_lr=rounds.config.resolved_lr() if rounds.config else None)


def _over_budget(rec: dict, dense_acc: dict, budget_pp: float | None) -> bool:
    """With a budget, record ``drop_pp = 100·(top1_dense − top1)`` and ``within_budget``
    (drop ≤ budget) in ``rec`` and say whether the round is over it; without, False."""
    if budget_pp is None:
        return False
    rec["drop_pp"] = 100.0 * (dense_acc["top1"] - rec["top1"])
    rec["within_budget"] = rec["drop_pp"] <= budget_pp
    return not rec["within_budget"]


def _remove_dead(model: ModelProto, acc: dict, val_ds):
    """(model, val accuracy, stats) after removing dead neurons; accuracy re-measured only
    when the graph changed."""
    from onnxprune.runtime.evaluate import evaluate

    r = RemoveDeadNeurons()(graph_from_model(model))
    if not r.modified:
        return model, acc, r.stats
    model = graph_to_model(r.graph, model)
    return model, evaluate(model, val_ds), r.stats


class _Rounds:
    """One prune → retrain → evaluate round at a time, tracking the bridge's device and the
    largest rank divergence over the rounds run."""

    def __init__(self, dense, train, val_ds, finals, schedule, config, ranks, dense_params,
                 on_progress) -> None:
        self.dense, self.train, self.val_ds, self.finals = dense, train, val_ds, finals
        self.schedule, self.config, self.ranks = schedule, config, ranks
        self.dense_params, self.on_progress = dense_params, on_progress
        self.divergence, self.device = None, "cpu"

    def run(self, current: ModelProto, i: int):
        """Round ``i``: prune ``current`` to s_{l,i}, retrain; (model, accuracy, record).

        Rate back-off: a retraining that ends more than ``WORSE_AFTER_RETRAINING`` below the
        pruned model's own val measure, or with a non-finite weight, is thrown away and run
        again from the same pruned weights at a tenth of the rate, at most ``RATE_BACKOFFS``
        times; the rate found is kept for the later rounds.  The usual cause is a model
        trained at a much smaller rate than the rewound default (0.1), e.g. with Adam.
        """
        from onnxprune.runtime.evaluate import evaluate, short_measure

        n = self.schedule.iterations
        targets = {name: step_sparsity(f, i, n) for name, f in self.finals.items()}
        pruned, stats = prune_step(current, targets)
        self.ranks.check_same_masks(pruned, i)
        pruned_acc = evaluate(pruned, self.val_ds)
        attempts = []
        while True:
            model, acc, result = self._retrain(pruned, i)
            wrecked = not _finite_weights(model)
            worse = wrecked or acc["top1"] < pruned_acc["top1"] - WORSE_AFTER_RETRAINING
            attempts.append({"peak_lr": self.config.resolved_lr(), "top1": acc["top1"],
                             "finite": not wrecked, "kept": not worse})
            if not worse or len(attempts) > RATE_BACKOFFS:
                break
            self.config = _scaled_rate(self.config, 0.1)
        rec = _record("iteration", i, model, acc, pruned_acc, self.dense_params)
        rec["targets"] = targets
        rec["rate_attempts"] = attempts
        if len(attempts) > 1 and attempts[-1]["kept"]:
            rec["warning"] = (f"retraining at peak rate {attempts[0]['peak_lr']:g} lowered val "
                              f"{short_measure(acc)} below the pruned model's; retrained at "
                              f"{attempts[-1]['peak_lr']:g} instead (give --original-lr to start there)")
        elif worse:
            rec["warning"] = (f"retraining lowered val {short_measure(acc)} from "
                              f"{100 * pruned_acc['top1']:.2f}% to {100 * acc['top1']:.2f}% even at "
                              f"peak rate {self.config.resolved_lr():g}; kept (give --original-lr "
                              "or --lr)")
        rec["not_retrained"] = result.unreached
        if result.unreached:
            note = not_retrained_note(result.unreached)
            rec["warning"] = f"{rec['warning']}; {note}" if rec.get("warning") else note
        rec["quality"] = {r["name"]: r["quality"] for r in stats["layers"]
                          if r["quality"] is not None}
        rec["train_history"] = result.history
        rec["objective"] = result.objective
        rec["dropout"] = {k: list(v) for k, v in result.dropout.items()}
        return model, acc, rec

    def _retrain(self, pruned: ModelProto, i: int):
        """One retraining of the round's pruned model at the current rate: (model, val, result)."""
        from onnxprune.runtime.evaluate import evaluate
        from onnxprune.training.torch_bridge import finetune

        cb = None
        if self.on_progress is not None:
            def cb(epoch, step, total, metrics, _i=i):
                self.on_progress(_i, epoch, step, total, metrics)
        # Distillation and the label-free objectives follow the dense model the run started from.
        follow = getattr(self.config, "distill", 0) > 0 or \
            getattr(self.config, "objective", None) in ("match", "mixed")
        result = finetune(pruned, self.train, self.val_ds, config=self.config, on_progress=cb,
                          teacher=self.dense if follow else None)
        model = self.ranks.from_rank0(result.model)
        if result.max_rank_divergence is not None:
            self.divergence = max(self.divergence or 0.0, result.max_rank_divergence)
        self.device = result.device
        return model, evaluate(model, self.val_ds), result


def _finite_weights(model: ModelProto) -> bool:
    """Whether every prunable layer's weights are finite (a diverged retraining is not)."""
    import numpy as np

    layers, _ = find_layers(graph_from_model(model))
    return all(bool(np.isfinite(weight_values(x)).all()) for x in layers if not x.skip_reason)


def _scaled_rate(config, factor: float):
    """``config`` with its peak retraining rate times ``factor`` (the same schedule)."""
    if config.lr_schedule == "rewind" and config.original_lr is not None:
        return dataclasses.replace(config, original_lr=config.original_lr * factor)
    return dataclasses.replace(config, lr=config.resolved_lr() * factor, original_lr=None)


class _Ranks:
    """The torchrun process group compress holds across all its rounds (world 1: none).

    One group for the whole run, so each round's fine-tune joins it instead of making and
    destroying its own.  With ``device`` cuda (or auto and a GPU seen) CUDA tensors go over
    nccl and the objects compress shares over gloo; otherwise everything goes over gloo.
    """

    def __init__(self, device: str) -> None:
        self.world, self.rank, self.owns = int(os.environ.get("WORLD_SIZE", "1")), 0, False
        if self.world <= 1:
            self.world = 1
            return
        import torch
        import torch.distributed as dist

        if not dist.is_available():
            raise UsageError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        self.dist = dist
        if not dist.is_initialized():
            from onnxprune.training.torch_bridge.train import rank_device

            rank = rank_device(device)  # the device each round's fine-tune will pick
            if rank.type == "cuda":
                torch.cuda.set_device(rank)
                dist.init_process_group(backend="cpu:gloo,cuda:nccl")
            else:
                dist.init_process_group(backend="gloo")
            self.owns = True
        self.world, self.rank = dist.get_world_size(), dist.get_rank()

    def close(self) -> None:
        if self.owns and self.dist.is_initialized():
            self.dist.barrier()
            self.dist.destroy_process_group()

    def check_same_masks(self, model: ModelProto, iteration: int) -> None:
        """Raise ``RuntimeFailure`` on every rank when any rank's masks differ from rank 0's.

        The digest is SHA-256 over each layer's name and packed ``w != 0`` bits; rank 0's is
        broadcast and a mismatch anywhere is all-reduced (max), so no rank trains on alone.
        """
        if self.world == 1:
            return
        import torch

        mine = torch.tensor([mask_digest(model)], dtype=torch.int64)
        ref = mine.clone()
        self.dist.broadcast(ref, src=0)
        differs = (mine != ref).to(torch.int64)
        self.dist.all_reduce(differs, op=self.dist.ReduceOp.MAX)
        if int(differs):
            raise RuntimeFailure(f"iteration {iteration}: the pruning masks differ across "
                                 "torchrun ranks (is every rank reading the same model?)")

    def from_rank0(self, model: ModelProto | None) -> ModelProto:
        """Rank 0's model on every rank (the fine-tune bridge returns it on rank 0 only)."""
        if self.world == 1:
            return model
        from onnx import load_from_string

        box = [model.SerializeToString() if self.rank == 0 else None]
        self.dist.broadcast_object_list(box, src=0)
        return model if self.rank == 0 else load_from_string(box[0])


def mask_digest(model: ModelProto) -> int:
    """First 8 bytes of SHA-256 over (layer name, shape, packed ``w != 0``) of every layer, as
    a signed 64-bit integer: equal masks give equal digests on any machine."""
    import numpy as np

    h = hashlib.sha256()
    layers, _ = find_layers(graph_from_model(model))
    for layer in sorted(layers, key=lambda x: x.name):
        if layer.skip_reason:
            continue
        w = weight_values(layer)
        h.update(layer.name.encode() + b"\0" + repr(w.shape).encode())
        h.update(np.packbits(w.reshape(-1) != 0).tobytes())
    return int.from_bytes(h.digest()[:8], "little", signed=True)


def _record(stage: str, iteration: int, model: ModelProto, acc: dict, before_retrain,
            dense_params: int | None = None) -> dict:
    """One stage of the run; ``params`` is the dense model's weight count (dead-neuron removal
    shrinks shapes, ``params_current`` is what the stage's graph holds)."""
    graph = graph_from_model(model)
    layers, _ = find_layers(graph)
    current = sum(layer.params for layer in layers if not layer.skip_reason)
    params = dense_params if dense_params is not None else current
    counts = {layer.name: masks.count_nonzero(weight_values(layer))
              for layer in layers if not layer.skip_reason}
    nonzero = sum(counts.values())
    return {
        "stage": stage, "iteration": iteration,
        "top1": acc["top1"], "top5": acc.get("top5"),
        **({"measure": acc["measure"]} if "measure" in acc else {}),
        "top1_before_retrain": before_retrain["top1"] if before_retrain else None,
        "params": params, "params_current": current, "nonzero": nonzero,
        "density": {layer.name: counts[layer.name] / layer.params
                    for layer in layers if not layer.skip_reason and layer.params},
    }
