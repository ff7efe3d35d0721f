"""Fine-tune entry point for one process or many under torchrun.

    torchrun --nproc_per_node 2 -m onnxprune.torch_bridge.worker MODEL.onnx \\
        --train a.npz --val b.npz -o OUT.onnx [--epochs N --batch-size B --lr LR ...]

Every rank loads the model and data and trains its shard (DDP, see :mod:`.train`); only rank
0 writes the output model (and the ``--json`` report).  The checks and writers are the CLI's:
options are validated as ``onnxprune finetune`` validates them, no output may overwrite an input
(``cli.check_paths``), the report is strict JSON written atomically, and errors print the CLI's
one line with the code of :mod:`onnxprune.errors` (2 usage, 4 invalid input, 1 runtime failure).
"""

from __future__ import annotations

import argparse
import sys

from onnxprune.errors import EXIT_RUNTIME, OnnxPruneError


# ----------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    from onnxprune.cli import SEED_MAX, Parser, float_arg, int_arg

    p = Parser(prog="python -m onnxprune.torch_bridge.worker",
                description="Retrain the surviving weights of a pruned ONNX model.")
    p.add_argument("model")
    p.add_argument("--train", required=True, help=".npz with x/y arrays")
    p.add_argument("--val", help=".npz with x/y arrays for per-epoch validation")
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--x-key", default="x")
    p.add_argument("--y-key", default="y")
    p.add_argument("--epochs", type=int_arg(1), default=1)
    p.add_argument("--batch-size", type=int_arg(1), default=64)
    p.add_argument("--lr", type=float_arg(0.0))
    p.add_argument("--original-lr", type=float_arg(0.0))
    p.add_argument("--optimizer", choices=["sgd", "adam"], default="sgd")
    p.add_argument("--momentum", type=float_arg(0.0, 1.0, hi_open=True), default=0.9)
    p.add_argument("--weight-decay", type=float_arg(0.0), default=5e-4)
    p.add_argument("--l1", type=float_arg(0.0), default=0.0)
    p.add_argument("--freeze", choices=["conv", "fc"])
    p.add_argument("--no-adjust-dropout", action="store_true")
    p.add_argument("--keep-best", action="store_true")
    p.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0)
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="cpu")
    p.add_argument("--json", help="write a JSON report here (rank 0 only); '-' for stdout")
    p.add_argument("--debug", action="store_true",
                   help="print the traceback behind an internal error (as ONNXPRUNE_DEBUG=1)")
    return p


def main(argv: list[str] | None = None) -> int:
    from onnxprune.cli import EXIT_INTERRUPTED, print_error, print_internal_error

    args = None
    try:  # the parser too: Ctrl-C at any moment is one line and exit 130
        from onnxprune.runtime_ops import disable_telemetry

        disable_telemetry()  # before anything can import ONNX Runtime, as the CLI does
        args = build_parser().parse_args(argv)
        from onnxprune import data
        from onnxprune.torch_bridge import FinetuneConfig, finetune

        config = FinetuneConfig(
            epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, original_lr=args.original_lr,
            optimizer=args.optimizer, momentum=args.momentum, weight_decay=args.weight_decay, l1=args.l1,
            freeze=args.freeze, adjust_dropout=not args.no_adjust_dropout, keep_best=args.keep_best,
            seed=args.seed, device=args.device,
        ).validate()
        from onnxprune import io
        from onnxprune.cli import check_paths, input_files, write_json

        model, info = io.load(args.model)
        check_paths([*input_files(info), args.train, args.val],
                    [("-o", args.output), ("--json", args.json)], models=[args.output])
        train = data.load_npz(args.train, x_key=args.x_key, y_key=args.y_key)
        val = data.load_npz(args.val, x_key=args.x_key, y_key=args.y_key) if args.val else None
        result = finetune(model, train, val, config=config)
        if result.rank == 0:
            io.save(result.model, args.output, source=info)
            if args.json:
                report = {
                    "history": result.history, "best_epoch": result.best_epoch,
                    "dropout": {k: list(v) for k, v in result.dropout.items()},
                    "masks": {k: {"nonzero": nz, "total": tot} for k, (nz, tot) in result.masks.items()},
                    "world_size": result.world_size, "max_rank_divergence": result.max_rank_divergence,
                    "device": result.device,
                }
                write_json(report, args.json)
    except OnnxPruneError as err:
        print_error(str(err))
        return err.exit_code
    except KeyboardInterrupt:
        print("onnxprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a bug: one line, the traceback only on request, exit 1 (as the CLI)
        print_internal_error(e, debug=getattr(args, "debug", False))
        return EXIT_RUNTIME
    return 0


if __name__ == "__main__":
    sys.exit(main())
