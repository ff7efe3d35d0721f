"""`onnxprune finetune` and `onnxprune compress`: the commands that train (torch extra)."""

from __future__ import annotations

import argparse

from onnxprune.core.console import Console, paint
from onnxprune.core.errors import EXIT_OK, GateFailed


def add_training_args(p: argparse.ArgumentParser) -> None:
    from onnxprune.cli.args import OUTPUT_KIND_RULE, SEED_MAX, float_arg, int_arg, output_kind_arg

    g = p.add_argument_group("data")
    g.add_argument("--train", required=True, metavar="NPZ",
                   help="training data: .npz with the inputs (x, or one array per graph input "
                        "named after it) and, optionally, integer labels y")
    g.add_argument("--val", required=True, metavar="NPZ", help="validation data (the same layout)")
    g.add_argument("--x-key", default="x", help="array name of a single-input model's inputs (default x)")
    g.add_argument("--y-key", default="y", help="array name of the integer labels (default y)")
    g.add_argument("--objective", choices=("labels", "match", "mixed"),
                   help="labels: cross-entropy on y; match: no labels, reproduce the dense model's "
                        "float outputs (compress: the input model; finetune: --teacher) — KL at "
                        "--distill-temperature for class scores, squared error / dense variance "
                        "for other outputs, and validation measures fidelity (top-1 agreement "
                        "with the dense model); mixed: both. Default: labels when --train has y, "
                        "match when it has none")
    g.add_argument("--output-kind", type=output_kind_arg, action="append", metavar="NAME=KIND",
                   help="how --objective match|mixed and label-free validation follow float "
                        "output NAME: scores (KL, top-1 agreement) or values (squared error, "
                        "relative error); " + OUTPUT_KIND_RULE)
    g.add_argument("--bn-statistics", choices=("keep", "update"), default=None,
                   help="what BatchNormalization normalises with while retraining: update (the "
                        "batch's statistics, running ones updated) or keep (the running ones, "
                        "fixed; scale and shift still train). Default: update with labels, keep "
                        "when following the dense model (safe with few inputs; update when the "
                        "data is a fair sample of the model's inputs). Models fed one sample at a "
                        "time keep them")
    t = p.add_argument_group("retraining")
    t.add_argument("--epochs", type=int_arg(1), default=2,
                   help="epochs per retraining (default 2)")
    t.add_argument("--batch-size", type=int_arg(1), default=64)
    t.add_argument("--lr", type=float_arg(0.0), help="retraining learning rate")
    t.add_argument("--original-lr", type=float_arg(0.0),
                   help="the (peak) rate the model was trained with, 0.1 when neither this "
                        "nor --lr is given; rewind starts each retraining at it, constant "
                        "retrains at 1/10 of it")
    t.add_argument("--lr-schedule", choices=("constant", "cosine", "rewind"),
                   help="constant rate (the paper), cosine decay to 0 over each retraining, or "
                        "rewind: cosine from --original-lr (the rate the model was trained with, "
                        "0.1 if not given). Default: compress rewind (constant when --lr is "
                        "given), finetune constant")
    t.add_argument("--regrow", action="store_true",
                   help="experimental: let pruned weights come back while retraining (Dynamic "
                        "Network Surgery, Guo et al. 2016): each layer keeps its count of "
                        "nonzeros, the survivors are the largest of a dense shadow trained with "
                        "straight-through gradients. Measured worse than fixed masks on "
                        "LeNet-300-100 at 22x (docs/RESULTS.md)")
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


def _options(args) -> dict:
    """The training options of the command line, by ``training_config``'s names."""
    return dict(
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, original_lr=args.original_lr,
        optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay,
        l1=args.l1, freeze=args.freeze, adjust_dropout=not args.no_adjust_dropout,
        keep_best=args.keep_best, seed=args.seed, device=args.device,
        distill=args.distill, distill_temperature=args.distill_temperature,
        lr_schedule=args.lr_schedule, regrow=args.regrow, objective=args.objective,
        output_kind=tuple(args.output_kind or ()), bn_statistics=args.bn_statistics)


def _progress(console: Console, prefix: str):
    def on_progress(epoch, step, total, metrics):
        if total:
            loss = metrics.get("loss")
            console.progress(f"{prefix}epoch {epoch + 1}", min(step, total), total,
                             f"loss {loss:.4f}" if isinstance(loss, float) else "")
    return on_progress


def _guard(args):
    """Refuse, once the inputs are known, outputs that would overwrite one of them."""
    from onnxprune.cli.output import check_paths

    writes = [("-o", args.output), ("--json", args.json),
              ("--junit", getattr(args, "junit", None))]  # compress only
    return lambda reads: check_paths(reads, writes, models=[args.output])


def cmd_finetune(args, console: Console) -> int:
    from onnxprune.api import finetune
    from onnxprune.cli.output import write_json

    report = finetune(args.model, args.output, train=args.train, val=args.val,
                      teacher=args.teacher or None, x_key=args.x_key, y_key=args.y_key,
                      on_progress=_progress(console, ""), before_run=_guard(args),
                      **_options(args))
    if report is None:
        return EXIT_OK  # under torchrun only rank 0 writes
    write_json(report, args.json)
    _say_sample_axes(console, report)
    if report["not_retrained"]:
        from onnxprune.training.compress import not_retrained_note

        console.info(f"note: {not_retrained_note(report['not_retrained'])}")
    before, after = report["accuracy_before"], report["accuracy_after"]
    console.info(f"val {_measure(before)} {100 * before['top1']:.2f}% -> {100 * after['top1']:.2f}% "
                 f"(ONNX Runtime on the written model); wrote {args.output}")
    return EXIT_OK


def cmd_compress(args, console: Console) -> int:
    import time

    from onnxprune.api import compress
    from onnxprune.cli.junit import compress_cases, write_junit
    from onnxprune.cli.output import write_json
    from onnxprune.core.stats import format_table
    from onnxprune.runtime.evaluate import short_measure

    start = time.monotonic()

    def on_stage(rec):
        label = rec["stage"] if rec["stage"] != "iteration" else f"iteration {rec['iteration']}"
        extra = ""
        if rec.get("top1_before_retrain") is not None:
            extra = f" (after pruning, before retraining: {100 * rec['top1_before_retrain']:.2f}%)"
        console.info(f"{label}: {rec['nonzero']}/{rec['params']} weights, val {short_measure(rec)} "
                     f"{100 * rec['top1']:.2f}%{extra}")
        if rec.get("warning"):
            console.info(f"note: {rec['warning']}")

    def on_progress(i, epoch, step, total, metrics):
        _progress(console, f"iteration {i} ")(epoch, step, total, metrics)

    report = compress(
        args.model, args.output, train=args.train, val=args.val, iterations=args.iterations,
        quality=args.quality, layer_quality=args.layer or (),
        target_sparsity=args.target_sparsity, target_scope=args.target_scope,
        allocate=args.allocate,
        layer_targets=args.layer_target or (), skip=args.skip or (), min_params=args.min_params,
        remove_dead_neurons=not args.no_remove_dead_neurons, emit=args.emit,
        max_accuracy_drop=args.max_accuracy_drop, x_key=args.x_key, y_key=args.y_key,
        on_stage=on_stage, on_progress=on_progress, before_run=_guard(args), **_options(args))
    if report is None:
        return EXIT_OK  # under torchrun only rank 0 writes
    write_json(report, args.json)
    write_junit(args.junit, "compress", compress_cases(report), time.monotonic() - start)
    dense, final = report["accuracy_dense"]["top1"], report["accuracy_final"]["top1"]
    drop_pp = report["accuracy_drop_pp"]
    _say_sample_axes(console, report)
    console.info(format_table(report["layers"], report["total"]))
    console.info(f"val {_measure(report['accuracy_dense'])}: dense {100 * dense:.2f}% -> "
                 f"compressed {100 * final:.2f}% "
                 f"({drop_pp:+.2f} pp drop); {report['wall_seconds']:.0f} s; wrote {args.output}")
    _say_auto(console, report.get("auto"))
    for g in report["gates"]:
        word = paint("PASS", "green") if g["passed"] else paint("FAIL", "red")
        console.info(f"gate {g['name']}: {word} (allowed {g['required']:g} pp, "
                     f"dropped {g['actual']:.3g} pp)")
    if report["status"] == "gate-failed":
        raise GateFailed(f"accuracy dropped {drop_pp:.3g} pp, more than "
                         f"--max-accuracy-drop {args.max_accuracy_drop:g}")
    return EXIT_OK


def _say_sample_axes(console: Console, report: dict) -> None:
    """Which inputs took their samples on another axis than the first (the data's axis 0)."""
    moved = report.get("sample_axes") or {}
    if moved:
        console.info("data: samples fed on axis " + ", ".join(
            f"{axis} of {name!r}" for name, axis in moved.items()) + " (the model's batch axis)")


def _measure(acc: dict) -> str:
    """What an accuracy record's top1 is: top-1 accuracy, or fidelity to the dense model."""
    return acc.get("measure", "top-1")


def _sparsity_or_auto(text: str):
    """``--target-sparsity``: ``auto`` (the accuracy-budget search) or a share in [0, 1)."""
    from onnxprune.cli.args import float_arg

    return "auto" if text == "auto" else float_arg(0.0, 1.0, hi_open=True)(text)


def _say_auto(console: Console, auto: dict | None) -> None:
    """One line on the accuracy-budget search: which round was kept, at what sparsity."""
    if not auto:
        return
    kept = [r for r in auto["trajectory"] if r["iteration"] == auto["returned_iteration"]]
    if kept and auto["within_budget"]:
        console.info(f"auto: kept round {kept[0]['iteration']} of {len(auto['trajectory'])} "
                     f"tried, {100 * kept[0]['sparsity']:.1f}% pruned, the sparsest within budget")
    else:
        console.info("auto: no round stayed within the budget; wrote round 1 anyway")


def add_parsers(sub, common) -> None:
    from onnxprune.api.training import DEFAULT_ALLOCATION
    from onnxprune.cli.args import float_arg, int_arg, layer_arg
    from onnxprune.cli.junit import add_junit_arg
    from onnxprune.training.compress import ALLOCATIONS

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
    co.add_argument("--iterations", type=int_arg(1),
                    help="prune+retrain rounds (default 3; with --target-sparsity auto: "
                         "the ladder's length to the 0.99 cap, default 7)")
    co.add_argument("--quality", type=float_arg(0.0), metavar="Q",
                    help="final q for every layer (default: conv 0.5, fc 1.0), on dense σ")
    co.add_argument("--layer", type=layer_arg, action="append", metavar="GLOB=Q",
                    help="final q for matching layers")
    co.add_argument("--target-sparsity", type=_sparsity_or_auto, metavar="S|auto",
                    help="final pruned share, per layer (or in total with --target-scope "
                         "global); auto: raise it round by round while the val drop stays "
                         "within --max-accuracy-drop (required) and keep the sparsest such round")
    co.add_argument("--target-scope", choices=("per-layer", "global"), default="per-layer",
                    help="global: the same as --allocate global")
    co.add_argument("--allocate", choices=ALLOCATIONS,
                    help="how --target-sparsity is spread over the layers: uniform (each layer "
                         "the same share), global (one q·σ threshold for all), size (big layers "
                         "pruned harder, small first/last layers kept), sensitivity (a quick "
                         f"scan, the same loss from each layer); default {DEFAULT_ALLOCATION}")
    co.add_argument("--layer-target", type=layer_arg, action="append", metavar="GLOB=S",
                    help="final pruned share for matching layers (e.g. 'fc1*=0.92')")
    co.add_argument("--skip", action="append", metavar="GLOB")
    co.add_argument("--min-params", type=int_arg(0), default=0)
    co.add_argument("--no-remove-dead-neurons", action="store_true")
    co.add_argument("--emit", choices=("dense", "portable"), default="portable")
    co.add_argument("--max-accuracy-drop", type=float_arg(0.0), metavar="PP",
                    help="gate: fail (exit 3) if val top-1 drops by more than PP percentage points "
                         "(label-free, --objective match: if the top-1 agreement with the dense "
                         "model is below 100 - PP %%; 1 - mean relative error when the model has "
                         "no class-score output); --target-sparsity auto uses the same drop")
    add_junit_arg(co)
    add_training_args(co)
    common(co)
    co.set_defaults(func=cmd_compress)

