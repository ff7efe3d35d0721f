"""`onnxprune finetune` and `onnxprune compress`: the commands that train (torch extra)."""

from __future__ import annotations

import argparse

from onnxprune import __version__
from onnxprune.core.console import Console, paint
from onnxprune.core.errors import EXIT_OK, GateFailed, UsageError


def add_training_args(p: argparse.ArgumentParser) -> None:
    from onnxprune.cli.args import SEED_MAX, float_arg, int_arg

    g = p.add_argument_group("data")
    g.add_argument("--train", required=True, metavar="NPZ", help="training data (.npz with x, y)")
    g.add_argument("--val", required=True, metavar="NPZ", help="validation data (.npz with x, y)")
    g.add_argument("--x-key", default="x", help="array name of the inputs (default x)")
    g.add_argument("--y-key", default="y", help="array name of the integer labels (default y)")
    t = p.add_argument_group("retraining")
    t.add_argument("--epochs", type=int_arg(1), default=2,
                   help="epochs per retraining (default 2)")
    t.add_argument("--batch-size", type=int_arg(1), default=64)
    t.add_argument("--lr", type=float_arg(0.0), help="retraining learning rate")
    t.add_argument("--original-lr", type=float_arg(0.0),
                   help="the rate the model was trained with; retrain at 1/10 of it "
                        "(default when neither is given: 0.1, i.e. lr 0.01)")
    t.add_argument("--lr-schedule", choices=("constant", "cosine"), default="constant",
                   help="constant rate (the paper; default) or cosine decay to 0 over the epochs")
    t.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    t.add_argument("--momentum", type=float_arg(0.0, 1.0, hi_open=True), default=0.9)
    t.add_argument("--weight-decay", type=float_arg(0.0), default=5e-4, help="L2 strength")
    t.add_argument("--l1", type=float_arg(0.0), default=0.0, help="L1 strength (instead of or with L2)")
    t.add_argument("--freeze", choices=("conv", "fc"), help="keep these layers fixed while retraining")
    t.add_argument("--no-adjust-dropout", action="store_true",
                   help="keep Dropout ratios (default: D_r = D_o·sqrt(C_ir/C_io))")
    t.add_argument("--keep-best", action="store_true", help="keep the best validation epoch")
    t.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0)
    t.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu")
    t.add_argument("--distill", type=float_arg(0.0, 1.0), default=0.0, metavar="ALPHA",
                   help="weight of a distillation term following the teacher's outputs "
                        "(compress: the dense input model; finetune: --teacher); 0 = off (default)")
    t.add_argument("--distill-temperature", type=float_arg(0.0, lo_open=True), default=4.0,
                   metavar="T", help="softmax temperature of the distillation term (default 4)")


def _config(args):
    from onnxprune.training.torch_bridge import FinetuneConfig

    lr, original = args.lr, args.original_lr
    if lr is None and original is None:
        original = 0.1
    return FinetuneConfig(
        epochs=args.epochs, batch_size=args.batch_size, lr=lr, original_lr=original,
        optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        l1=args.l1, freeze=args.freeze, adjust_dropout=not args.no_adjust_dropout,
        keep_best=args.keep_best, seed=args.seed, device=args.device,
        distill=args.distill, distill_temperature=args.distill_temperature,
        lr_schedule=args.lr_schedule,
    ).validate()


def _data(args, model):
    from onnxprune.runtime import datasets as data

    train = data.load_npz(args.train, x_key=args.x_key, y_key=args.y_key)
    val = data.load_npz(args.val, x_key=args.x_key, y_key=args.y_key)
    spec, classes = data.input_spec(model), data.n_classes(model)
    # Validate both sets against the model before any training starts.
    return (data.check_dataset(train, spec, classes, name="train"),
            data.check_dataset(val, spec, classes, name="val"))


def _progress(console: Console, prefix: str):
    def on_progress(epoch, step, total, metrics):
        if total:
            loss = metrics.get("loss")
            console.progress(f"{prefix}epoch {epoch + 1}", min(step, total), total,
                             f"loss {loss:.4f}" if isinstance(loss, float) else "")
    return on_progress


def cmd_finetune(args, console: Console) -> int:
    from onnxprune.core import io
    from onnxprune.cli.output import check_paths, input_files, write_json
    from onnxprune.runtime.evaluate import evaluate
    from onnxprune.core.stats import versions
    from onnxprune.training.torch_bridge import finetune

    config = _config(args)
    if config.distill > 0 and not args.teacher:
        raise UsageError("--distill needs --teacher MODEL (the model whose outputs to follow)")
    if args.teacher and config.distill == 0:
        raise UsageError("--teacher is only used with --distill ALPHA > 0")
    model, info = io.load(args.model)
    teacher = teacher_info = None
    if args.teacher and config.distill > 0:
        teacher, teacher_info = io.load(args.teacher)
    check_paths([*input_files(info), *(input_files(teacher_info) if teacher_info else ()),
                 args.train, args.val],
                [("-o", args.output), ("--json", args.json)], models=[args.output])
    train, val = _data(args, model)
    before = evaluate(model, val)
    result = finetune(model, train, val, config=config, on_progress=_progress(console, ""),
                      teacher=teacher)
    if result.rank != 0:
        return EXIT_OK  # under torchrun only rank 0 writes
    after = evaluate(result.model, val)
    outputs: list[dict] = []
    io.save_with_storage(result.model, args.output, source=info, records=outputs,
                         storage="portable" if len(model.graph.sparse_initializer) else "dense")
    report = {
        "command": "finetune", "tool": {"name": "onnxprune", "version": __version__},
        "versions": versions(), "config": _config_json(config), "teacher": args.teacher,
        "accuracy_before": before, "accuracy_after": after, "history": result.history,
        "dropout": {k: list(v) for k, v in result.dropout.items()},
        "masks": {k: {"nonzero": a, "total": b} for k, (a, b) in result.masks.items()},
        "world_size": result.world_size, "max_rank_divergence": result.max_rank_divergence,
        "device": result.device, "outputs": outputs,
    }
    write_json(report, args.json)
    console.info(f"val top-1 {100 * before['top1']:.2f}% -> {100 * after['top1']:.2f}% "
                 f"(ONNX Runtime on the written model); wrote {args.output}")
    return EXIT_OK


def _config_json(config) -> dict:
    import dataclasses

    return {k.replace("_", "-"): v for k, v in dataclasses.asdict(config).items()}


def cmd_compress(args, console: Console) -> int:
    from onnxprune.core import io
    from onnxprune.cli.output import check_paths, input_files, write_json
    from onnxprune.training.compress import Schedule, compress
    from onnxprune.core.graph import graph_from_model, infer_shapes
    from onnxprune.core.stats import format_table, graph_rows, totals, versions

    if args.quality is not None and args.target_sparsity is not None:
        raise UsageError("give --quality or --target-sparsity, not both")
    quality = None
    if args.quality is not None:
        quality = {"conv": args.quality, "fc": args.quality}
    schedule = Schedule(
        iterations=args.iterations, quality=quality,
        layer_quality=tuple(args.layer or ()), target_sparsity=args.target_sparsity,
        target_scope=args.target_scope, layer_targets=tuple(args.layer_target or ()),
        skip=tuple(args.skip or ()), min_params=args.min_params,
    ).validate()
    config = _config(args)
    model, info = io.load(args.model)
    check_paths([*input_files(info), args.train, args.val],
                [("-o", args.output), ("--json", args.json)], models=[args.output])
    train, val = _data(args, model)

    def on_stage(rec):
        label = rec["stage"] if rec["stage"] != "iteration" else f"iteration {rec['iteration']}"
        extra = ""
        if rec.get("top1_before_retrain") is not None:
            extra = f" (after pruning, before retraining: {100 * rec['top1_before_retrain']:.2f}%)"
        console.info(f"{label}: {rec['nonzero']}/{rec['params']} weights, val top-1 "
                     f"{100 * rec['top1']:.2f}%{extra}")

    def on_progress(i, epoch, step, total, metrics):
        if total:
            loss = metrics.get("loss")
            console.progress(f"iteration {i} epoch {epoch + 1}", min(step, total), total,
                             f"loss {loss:.4f}" if isinstance(loss, float) else "")

    result = compress(model, train, val, schedule=schedule, finetune_config=config,
                      remove_dead_neurons=not args.no_remove_dead_neurons,
                      on_stage=on_stage, on_progress=on_progress)
    shapes = infer_shapes(model)
    before_rows, _ = graph_rows(graph_from_model(model), shapes, with_std=False)
    after_rows, _ = graph_rows(graph_from_model(result.model), shapes, with_std=False)
    after = {r["weight"]: r for r in after_rows}
    rows = []
    for r in before_rows:
        a = after.get(r["weight"], r)
        rows.append({**r, "weight_shape": a["weight_shape"], "original_shape": r["weight_shape"],
                     "nonzero": a["nonzero"],
                     "density": a["nonzero"] / r["params"] if r["params"] else None,
                     "flops_remaining": a["flops_remaining"]})
    total = totals(rows)
    outputs: list[dict] = []
    io.save_with_storage(result.model, args.output, storage=args.emit, source=info,
                         records=outputs)
    drop_pp = 100 * (result.dense_accuracy["top1"] - result.final_accuracy["top1"])
    gates = []
    if args.max_accuracy_drop is not None:
        gates.append({"name": "max-accuracy-drop", "required": args.max_accuracy_drop,
                      "actual": drop_pp, "passed": drop_pp <= args.max_accuracy_drop})
    failed = [g for g in gates if not g["passed"]]
    report = {
        "command": "compress", "status": "gate-failed" if failed else "ok",
        "tool": {"name": "onnxprune", "version": __version__}, "versions": versions(),
        "input": {"path": info.path, "bytes": info.file_bytes}, "outputs": outputs,
        "schedule": {"iterations": schedule.iterations, "quality": schedule.quality,
                     "layers": [list(x) for x in schedule.layer_quality],
                     "target-sparsity": schedule.target_sparsity,
                     "target-scope": schedule.target_scope,
                     "layer-targets": [list(x) for x in schedule.layer_targets]},
        "final_sparsity": result.final_sparsity, "config": _config_json(config),
        "accuracy_dense": result.dense_accuracy, "accuracy_final": result.final_accuracy,
        "accuracy_drop_pp": drop_pp, "history": result.history, "layers": rows, "total": total,
        "dead_neurons": result.dead_neurons, "gates": gates, "wall_seconds": result.wall_seconds,
    }
    write_json(report, args.json)
    console.info(format_table(rows, total))
    console.info(f"val top-1: dense {100 * result.dense_accuracy['top1']:.2f}% -> "
                 f"compressed {100 * result.final_accuracy['top1']:.2f}% "
                 f"({drop_pp:+.2f} pp drop); {result.wall_seconds:.0f} s; wrote {args.output}")
    for g in gates:
        word = paint("PASS", "green") if g["passed"] else paint("FAIL", "red")
        console.info(f"gate {g['name']}: {word} (allowed {g['required']:g} pp, "
                     f"dropped {g['actual']:.3g} pp)")
    if failed:
        raise GateFailed(f"accuracy dropped {drop_pp:.3g} pp, more than "
                         f"--max-accuracy-drop {args.max_accuracy_drop:g}")
    return EXIT_OK


def add_parsers(sub, common) -> None:
    from onnxprune.cli.args import float_arg, int_arg, layer_arg

    ft = sub.add_parser("finetune", help="retrain the surviving weights of a pruned model")
    ft.add_argument("model")
    ft.add_argument("-o", "--output", required=True)
    ft.add_argument("--teacher", metavar="MODEL",
                    help="model whose outputs --distill follows (e.g. the dense original)")
    add_training_args(ft)
    common(ft)
    ft.set_defaults(func=cmd_finetune)

    co = sub.add_parser("compress", help="prune -> retrain, iterated, then remove dead neurons")
    co.add_argument("model")
    co.add_argument("-o", "--output", required=True)
    co.add_argument("--iterations", type=int_arg(1), default=3,
                    help="prune+retrain rounds (default 3)")
    co.add_argument("--quality", type=float_arg(0.0), metavar="Q",
                    help="final q for every layer (default: conv 0.5, fc 1.0), on dense σ")
    co.add_argument("--layer", type=layer_arg, action="append", metavar="GLOB=Q",
                    help="final q for matching layers")
    co.add_argument("--target-sparsity", type=float_arg(0.0, 1.0, hi_open=True), metavar="S",
                    help="final pruned share, per layer (or in total with --target-scope global)")
    co.add_argument("--target-scope", choices=("per-layer", "global"), default="per-layer")
    co.add_argument("--layer-target", type=layer_arg, action="append", metavar="GLOB=S",
                    help="final pruned share for matching layers (e.g. 'fc1*=0.92')")
    co.add_argument("--skip", action="append", metavar="GLOB")
    co.add_argument("--min-params", type=int_arg(0), default=0)
    co.add_argument("--no-remove-dead-neurons", action="store_true")
    co.add_argument("--emit", choices=("dense", "portable"), default="portable")
    co.add_argument("--max-accuracy-drop", type=float_arg(0.0), metavar="PP",
                    help="gate: fail (exit 3) if val top-1 drops by more than PP percentage points")
    add_training_args(co)
    common(co)
    co.set_defaults(func=cmd_compress)

