"""``onnxprune.compress`` and ``onnxprune.finetune``: the verbs that retrain (torch extra).

torch is imported when a verb runs, never at import; without it a verb raises ``UsageError``
("fine-tuning needs PyTorch: pip install 'onnxprune[torch]'") before reading anything.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

from onnxprune.api.source import model_files, open_model, path_of
from onnxprune.core.errors import UsageError

# What the command line defaults to where it differs from FinetuneConfig's own defaults.
_DEFAULTS = {"epochs": 2}
# How compress spreads --target-sparsity over the layers unless told (docs/RESULTS.md, "Defaults").
DEFAULT_ALLOCATION = "size"
# Sparsities the sensitivity allocation prunes each layer to, alone (the target is added).
SCAN_GRID = (0.3, 0.5, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99, 0.995)


def training_config(rounds: bool = False, **options):
    """A validated ``FinetuneConfig`` from keyword options named as its fields (``epochs``,
    ``batch_size``, ``lr``, ``original_lr``, ``lr_schedule``, ``optimizer``, ``momentum``,
    ``weight_decay``, ``l1``, ``freeze``, ``adjust_dropout``, ``keep_best``, ``seed``,
    ``device``, ``distill``, ``distill_temperature``, ``regrow``, ``objective``: labels |
    match | mixed, None = from the data; ``output_kind``: output name → ``"scores"`` |
    ``"values"``, how ``match``/``mixed`` follow that output instead of the rule of
    :func:`onnxprune.runtime.datasets.output_kinds`). ``epochs`` defaults to 2, and with
    neither ``lr`` nor ``original_lr`` the model is taken as trained at 0.1 and retrained at
    ``lr = original_lr / 10 = 0.01`` (Han et al. retrain LeNet at 1/10 of the original rate).
    ``lr_schedule`` left None is :func:`_default_schedule`'s (``rounds``: for compress).
    An unknown option or a value out of range raises ``UsageError``.
    """
    from onnxprune.training.torch_bridge import FinetuneConfig

    fields = {f.name for f in dataclasses.fields(FinetuneConfig)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise UsageError(f"unknown training option {unknown[0]!r}; known: {', '.join(sorted(fields))}")
    values = {**_DEFAULTS, **options}
    if values.get("lr_schedule") is None:
        values["lr_schedule"] = _default_schedule(values, rounds)
    if values.get("lr") is None and values.get("original_lr") is None:
        values["original_lr"] = 0.1
    return FinetuneConfig(**values).validate()


def _default_schedule(values: dict, rounds: bool) -> str:
    """The retraining schedule when none is asked for: ``compress`` (``rounds``) rewinds —
    each round restarts at the original rate (``original_lr``, taken as 0.1 when not given)
    and decays to 0 — unless a retraining rate ``lr`` is given, which is then kept constant
    (the paper); ``finetune`` keeps the paper's constant rate.  Measured in docs/RESULTS.md
    ("Defaults"): rewinding beat 1/10 of the rate, constant or decayed, on every seed."""
    return "rewind" if rounds and values.get("lr") is None else "constant"


def config_json(config) -> dict:
    """The config as the report writes it: option names (``batch-size``), not field names."""
    return {k.replace("_", "-"): v for k, v in dataclasses.asdict(config).items()}


def training_data(train: str, val: str, model, x_key: str = "x", y_key: str = "y",
                  objective: str | None = None, dense=None, output_kind=()):
    """(train set, val set, objective): the .npz sets (inputs ``x_key`` or one array per graph
    input, named after it; integer labels ``y_key``, optional), each checked against the
    model's inputs and class count before any training starts, and the objective run
    (``objective``, else labels when the train set has labels, match when not).

    With ``match`` the val set carries the outputs of ``dense`` (default ``model``) on it, so
    validation measures fidelity to them (:func:`onnxprune.runtime.evaluate.fidelity`), each
    output compared as ``output_kind`` says, else as the rule judges it.
    ``UsageError`` (exit 2) for contents that do not fit — names or shapes unlike the graph
    inputs, labels for some samples only, ``labels``/``mixed`` without labels;
    ``InvalidModelError`` (exit 4) for a file that cannot be read as data."""
    import dataclasses as dc

    from onnxprune.runtime import datasets as data
    from onnxprune.runtime.evaluate import reference
    from onnxprune.training.torch_bridge.train import resolve_objective

    specs, classes = data.input_specs(model), data.n_classes(model)
    raw = [data.load_data(path, specs, x_key=x_key, y_key=y_key) for path in (train, val)]
    mode = resolve_objective(objective, raw[0])
    labels = mode != "match"
    train_set, val_set = (data.check_dataset(s, specs, classes if labels else None, name=n, labels=labels)
                          for s, n in zip(raw, ("train", "val")))
    if not labels:
        val_set = dc.replace(val_set, reference=reference(dense if dense is not None else model, val_set.x,
                                                          output_kind=output_kind))
    return train_set, val_set, mode


def finetune(model, output: str, *, train: str, val: str, teacher=None, x_key: str = "x",
             y_key: str = "y", on_progress: Callable | None = None,
             before_run: Callable[[list[str]], None] | None = None, **options) -> dict | None:
    """Retrain the surviving weights of a pruned model and write it to ``output``; return the
    report ``onnxprune finetune --json`` writes.

    Masked retraining (Han et al. 2015): a weight that is zero stays exactly zero (its gradient
    is masked), Dropout ratios are adjusted to ``D_r = D_o·sqrt(C_ir/C_io)`` unless
    ``adjust_dropout=False``, and with ``distill = α > 0`` the loss is
    ``(1 − α)·CE + α·T²·KL`` towards ``teacher``'s outputs. ``options`` are
    :func:`training_config`'s. Accuracy before and after is measured in ONNX Runtime on
    ``val``, the latter on the model as written. Under torchrun only rank 0 writes and
    reports; the other ranks return None.

    ``model`` and ``teacher`` are paths or ``ModelProto``s. Raises ``UsageError`` (exit 2)
    for bad options (``distill`` without ``teacher`` or the reverse, no torch) or an output
    that would replace the input, ``InvalidModelError`` (exit 4) for a malformed model or
    data set, ``RuntimeFailure`` (exit 1) when training or writing fails.
    ``before_run(files)`` is called with every file read, once the models are loaded and
    before the data is read.
    """
    from onnxprune import __version__
    from onnxprune.core import io
    from onnxprune.core.stats import versions
    from onnxprune.runtime.datasets import check_output_kinds
    from onnxprune.runtime.evaluate import evaluate
    from onnxprune.training.torch_bridge import finetune as retrain

    config = training_config(**options)
    if config.distill > 0 and teacher is None:
        raise UsageError("--distill needs --teacher MODEL (the model whose outputs to follow)")
    if teacher is not None and config.distill == 0 and config.objective not in (None, "match", "mixed"):
        raise UsageError("--teacher is only used with --distill ALPHA > 0 or --objective match|mixed")
    proto, info = open_model(model)
    teacher_proto, teacher_info = open_model(teacher, what="teacher") if teacher is not None \
        else (None, None)
    check_output_kinds(proto, config.output_kind)  # before any data is read
    if before_run is not None:
        before_run([*model_files(info), *model_files(teacher_info), train, val])
    if config.objective in ("match", "mixed") and teacher_proto is None:
        raise UsageError(f"--objective {config.objective} needs --teacher MODEL (the dense model "
                         "whose outputs to follow)")
    train_set, val_set, mode = training_data(train, val, proto, x_key, y_key, config.objective,
                                             dense=teacher_proto, output_kind=config.output_kind)
    if mode == "match" and teacher_proto is None:
        raise UsageError("the training data has no labels 'y': retraining without labels follows "
                         "a teacher, give --teacher MODEL (the dense model)")
    if mode == "labels" and teacher is not None and config.distill == 0:
        raise UsageError("--teacher is only used with --distill ALPHA > 0 or --objective match|mixed")
    config = dataclasses.replace(config, objective=mode).validate()
    before = evaluate(proto, val_set)
    result = retrain(proto, train_set, val_set, config=config, on_progress=on_progress,
                     teacher=teacher_proto)
    if result.rank != 0:
        return None  # under torchrun only rank 0 writes
    after = evaluate(result.model, val_set)
    outputs: list[dict] = []
    io.save_with_storage(result.model, output, source=info, records=outputs,
                         storage="portable" if len(proto.graph.sparse_initializer) else "dense")
    return {
        "command": "finetune", "tool": {"name": "onnxprune", "version": __version__},
        "versions": versions(), "config": config_json(config), "teacher": path_of(teacher),
        "objective": result.objective, "validation": _validation(val_set),
        **_sample_axes(proto, val_set),
        "accuracy_before": before, "accuracy_after": after, "history": result.history,
        "dropout": {k: list(v) for k, v in result.dropout.items()},
        "masks": {k: {"nonzero": a, "total": b} for k, (a, b) in result.masks.items()},
        "not_retrained": result.unreached,
        "world_size": result.world_size, "max_rank_divergence": result.max_rank_divergence,
        "device": result.device, "outputs": outputs,
    }


def compress(model, output: str, *, train: str, val: str, iterations: int | None = None,
             quality: float | None = None, layer_quality=(),
             target_sparsity: float | str | None = None,
             target_scope: str = "per-layer", allocate: str | None = None, layer_targets=(),
             skip=(), min_params: int = 0, remove_dead_neurons: bool = True, emit: str = "portable",
             max_accuracy_drop: float | None = None, x_key: str = "x", y_key: str = "y",
             on_stage: Callable[[dict], None] | None = None, on_progress: Callable | None = None,
             before_run: Callable[[list[str]], None] | None = None, **options) -> dict | None:
    """Prune → retrain, ``iterations`` times (default 3), then remove dead neurons; write the
    result to ``output`` and return the report ``onnxprune compress --json`` writes.

    Round ``i`` of ``n`` prunes each layer to ``1 − (1 − s)^{i/n}`` of its final sparsity ``s``
    (from ``target_sparsity``/``layer_targets``, or the threshold ``q·σ`` of the dense weights
    with ``quality``/``layer_quality``, default conv 0.5, fc 1.0), then retrains the survivors
    with :func:`training_config`'s ``options``. ``layer_quality`` and ``layer_targets`` are
    ``(glob, value)`` pairs, the last match wins.

    Label-free data (no ``y``, or ``objective="match"``) retrains the pruned model to follow
    the dense one and measures every accuracy as fidelity to it (:func:`training_data`): top1
    is the top-1 agreement with the dense model, so the drop is ``100·(1 − agreement)``.
    ``accuracy_drop_pp = 100·(top1_dense − top1_final)``; with ``max_accuracy_drop`` set, a
    larger drop is reported as ``status: "gate-failed"`` (the model is still written; the CLI
    exits 3), not raised.

    ``target_sparsity="auto"`` (needs ``max_accuracy_drop``) turns the budget into the goal:
    rounds climb ``s_i = 1 − 0.01^{i/n}`` (``n = iterations``, default 7) while the val drop
    stays within ``max_accuracy_drop`` and the sparsest round within it is written (see
    :mod:`onnxprune.training.compress`); the report's ``auto`` block gives the trajectory and
    the round returned. Raises ``UsageError`` (exit 2) for bad options (``quality`` with
    ``target_sparsity``, no torch), ``InvalidModelError`` (exit 4) for a malformed model or
    data set, ``RuntimeFailure`` (exit 1) when training or writing fails.
    ``before_run(files)`` is called with every file read, before the data is read.
    Under torchrun the ranks retrain together (gradients averaged, pruning checked identical
    on every rank); only rank 0 writes and reports, the other ranks return None.
    """
    from onnxprune import __version__
    from onnxprune.core import io
    from onnxprune.core.stats import versions
    from onnxprune.runtime.datasets import check_output_kinds
    from onnxprune.training import torch_bridge
    from onnxprune.training.compress import Schedule, compress as run

    torch_bridge.finetune  # noqa: B018 -- no torch: the UsageError now, before any work
    if quality is not None and target_sparsity is not None:
        raise UsageError("give --quality or --target-sparsity, not both")
    fields = dict(
        quality=None if quality is None else {"conv": quality, "fc": quality},
        layer_quality=tuple(layer_quality or ()), target_scope=target_scope,
        layer_targets=tuple(layer_targets or ()), skip=tuple(skip or ()), min_params=min_params,
        allocate=DEFAULT_ALLOCATION if allocate is None else allocate)
    auto = _is_auto(target_sparsity, max_accuracy_drop)
    schedule = Schedule.auto(max_accuracy_drop, iterations, **fields) if auto else Schedule(
        iterations=3 if iterations is None else iterations, target_sparsity=target_sparsity,
        **fields).validate()
    config = training_config(rounds=True, **options)
    proto, info = open_model(model)
    check_output_kinds(proto, config.output_kind)  # before any data is read
    if before_run is not None:
        before_run([*model_files(info), train, val])
    train_set, val_set, mode = training_data(train, val, proto, x_key, y_key, config.objective,
                                             output_kind=config.output_kind)
    config = dataclasses.replace(config, objective=mode).validate()
    scan = _sensitivity_scan(proto, val_set, schedule)
    if scan is not None:
        schedule = dataclasses.replace(schedule, curves=scan["curves"])
    result = run(proto, train_set, val_set, schedule=schedule, finetune_config=config,
                 remove_dead_neurons=remove_dead_neurons, on_stage=on_stage,
                 on_progress=on_progress)
    if result.rank != 0:
        return None  # under torchrun only rank 0 writes
    rows, total = _layer_rows(proto, result.model)
    outputs: list[dict] = []
    io.save_with_storage(result.model, output, storage=emit, source=info, records=outputs)
    drop_pp = 100 * (result.dense_accuracy["top1"] - result.final_accuracy["top1"])
    gates = [] if max_accuracy_drop is None else [
        {"name": "max-accuracy-drop", "required": max_accuracy_drop, "actual": drop_pp,
         "passed": drop_pp <= max_accuracy_drop}]
    return {
        "command": "compress", "status": "ok" if all(g["passed"] for g in gates) else "gate-failed",
        "tool": {"name": "onnxprune", "version": __version__}, "versions": versions(),
        "input": {"path": info and info.path, "bytes": info and info.file_bytes},
        "outputs": outputs,
        "schedule": {"iterations": schedule.iterations, "quality": schedule.quality,
                     "layers": [list(x) for x in schedule.layer_quality],
                     "target-sparsity": "auto" if auto else schedule.target_sparsity,
                     "target-scope": schedule.target_scope,
                     "allocate": "global" if schedule.target_scope == "global" else schedule.allocate,
                     "sensitivity_scan": scan and scan["report"],
                     "layer-targets": [list(x) for x in schedule.layer_targets]},
        "final_sparsity": result.final_sparsity, "config": config_json(config),
        "peak_lr": {"first": config.resolved_lr(), "last": result.peak_lr},
        "objective": _round_objective(result), "validation": _validation(val_set),
        **_sample_axes(proto, val_set),
        "accuracy_dense": result.dense_accuracy, "accuracy_final": result.final_accuracy,
        "accuracy_drop_pp": drop_pp, "history": result.history, "layers": rows, "total": total,
        "dead_neurons": result.dead_neurons, "gates": gates, "wall_seconds": result.wall_seconds,
        "world_size": result.world_size, "max_rank_divergence": result.max_rank_divergence,
        "device": result.device, "auto": _auto_block(result) if auto else None,
    }


def _validation(val_set) -> str:
    """What the report's accuracies measure: top-1 accuracy on labels, or fidelity."""
    if val_set.reference is None:
        return "top-1 accuracy on the val labels"
    return ("fidelity to the dense model in ONNX Runtime: top1 is the top-1 agreement of its "
            "class-score outputs (1 - mean relative error when it has none); drops are "
            "100 * (1 - agreement) percentage points")


def _sample_axes(model, val_set) -> dict:
    """``{"sample_axes": {input: axis}}`` for the inputs the data feeds with their samples on
    another axis than the first (:func:`onnxprune.runtime.datasets.resolve_specs`); empty when
    every input takes them on axis 0."""
    from onnxprune.runtime import datasets as data

    moved = data.sample_axes(data.resolve_specs(data.input_specs(model), val_set.x, "val"))
    return {"sample_axes": moved} if moved else {}


def _round_objective(result) -> dict | None:
    """The objective of the last retraining round (the same every round)."""
    rounds = [h for h in result.history if h.get("objective")]
    return rounds[-1]["objective"] if rounds else None


def _sensitivity_scan(model, val_set, schedule) -> dict | None:
    """For ``allocate="sensitivity"``: prune each layer alone along SCAN_GRID (plus the
    target), measure the val drop in ONNX Runtime, and return the curves (and what the report
    shows of the scan); None when the allocation is another one or no target is spread."""
    if schedule.allocate != "sensitivity" or schedule.target_sparsity is None \
            or schedule.target_scope == "global":
        return None
    from onnxprune.analysis.sensitivity import analyse

    grid = sorted({*SCAN_GRID, round(schedule.target_sparsity, 6)})
    result = analyse(model, val_set, grid=grid)
    curves = {layer["name"]: [(p["sparsity"], p["drop_pp"]) for p in layer["points"]]
              for layer in result.layers}
    return {"curves": curves,
            "report": {"grid": grid, "evaluations": result.evaluations,
                       "wall_seconds": result.wall_seconds,
                       "drop_pp": {n: [d for _, d in c] for n, c in curves.items()}}}


def _is_auto(target_sparsity, max_accuracy_drop) -> bool:
    """Whether ``target_sparsity`` asks for the accuracy-budget search; ``"auto"`` without a
    budget, or any other string, is a ``UsageError`` (before any model is read)."""
    if not isinstance(target_sparsity, str):
        return False
    if target_sparsity != "auto":
        raise UsageError(f"target-sparsity must be a number in [0, 1) or 'auto', "
                         f"got {target_sparsity!r}")
    if max_accuracy_drop is None:
        raise UsageError("--target-sparsity auto needs --max-accuracy-drop PP (the budget "
                         "the sparsity is raised within)")
    return True


def _auto_block(result) -> dict:
    """The accuracy-budget search as the report gives it: the ladder's cap, every round tried
    (pruned share of all layer weights, val top-1, drop, within budget) and the
    round whose model was written (0 = none tried)."""
    from onnxprune.training.compress import AUTO_CAP

    rounds = [{"iteration": h["iteration"], "sparsity": 1.0 - h["nonzero"] / h["params"],
               "top1": h["top1"], "drop_pp": h["drop_pp"], "within_budget": h["within_budget"]}
              for h in result.history if h["stage"] == "iteration"]
    return {"cap": AUTO_CAP, "trajectory": rounds,
            "returned_iteration": result.returned_iteration,
            "within_budget": any(r["within_budget"] for r in rounds)}


def _layer_rows(dense, compressed) -> tuple[list[dict], dict]:
    """One row per layer of the dense model with the compressed model's shape, nonzero count
    and remaining FLOPs; density = nonzero / dense params (so removed neurons count as zeros)."""
    from onnxprune.core.graph import graph_from_model, infer_shapes
    from onnxprune.core.stats import graph_rows, merged_row, totals
    from onnxprune.runtime.shape_probe import shape_probe

    symbols: dict = {}
    shapes = infer_shapes(dense, symbols=symbols)
    sizing = {"symbols": symbols, "measure": shape_probe(dense)}
    before_rows, _ = graph_rows(graph_from_model(dense), shapes, with_std=False, **sizing)
    after_rows, _ = graph_rows(graph_from_model(compressed), shapes, with_std=False, **sizing)
    after = {r["weight"]: r for r in after_rows}
    rows = [merged_row(r, after.get(r["weight"], r)) for r in before_rows]
    return rows, totals(rows)
