"""The ``onnxprune`` command line.

Exit codes (DESIGN.md §4): 0 ok · 1 runtime failure · 2 usage/config error · 3 a quality gate
failed · 4 input rejected as invalid or unsafe.  Errors print one line on stderr, never a
traceback (``--debug`` or ``ONNXPRUNE_DEBUG=1`` adds the traceback of an internal error, for
a bug report).  ``--json PATH|-`` writes the machine-readable report (``-`` = stdout); human tables
go to stderr.
"""

from __future__ import annotations

import argparse
import sys
from onnxprune import __version__
from onnxprune.core.console import Console
from onnxprune.core.errors import (EXIT_RUNTIME, EXIT_USAGE, OnnxPruneError)
from onnxprune.cli.args import FLOPS_SHAPE_HELP, Parser, SEED_MAX, float_arg, int_arg, layer_arg
from onnxprune.cli.output import DEBUG_ENV, print_error, print_internal_error
from onnxprune.cli.lower import add_lowering_args
from onnxprune.cli.prune import cmd_inspect, cmd_prune
from onnxprune.cli.check import cmd_check
from onnxprune.cli.junit import add_junit_arg


EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C


def cmd_demo(args, console: Console) -> int:
    from onnxprune.cli.demo import run_demo

    return run_demo(args, console)


def build_parser() -> argparse.ArgumentParser:
    from onnxprune.passes.recipe import EMIT_FORMS

    p = Parser(prog="onnxprune", description=(
        "Prune ONNX models by per-layer quality x std thresholds (Han et al., NIPS 2015). "
        "Exit codes: 0 ok, 1 runtime failure, 2 usage error, 3 quality gate failed, "
        "4 input rejected."), epilog=(
        f"An internal error (a bug) prints one line; --debug or {DEBUG_ENV}=1 adds its traceback."))
    p.add_argument("--version", action="version", version=f"onnxprune {__version__}")
    p.add_argument("--debug", action="store_true",
                   help=f"print the traceback behind an internal error (as {DEBUG_ENV}=1)")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    def common(sp):
        sp.add_argument("--json", metavar="PATH|-", help="write a JSON report ('-' = stdout)")
        sp.add_argument("-q", "--quiet", action="store_true", help="no tables or progress on stderr")
        # Also accepted after the command; SUPPRESS keeps a flag given before it.
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="print the traceback behind an internal error")

    pr = sub.add_parser("prune", help="prune a model by quality x std thresholds")
    pr.add_argument("model", help="input .onnx model")
    pr.add_argument("-o", "--output", required=True, help="output .onnx path")
    pr.add_argument("--recipe", metavar="FILE", help="YAML recipe (flags below override it)")
    pr.add_argument("--quality", type=float_arg(0.0), metavar="Q",
                    help="quality parameter for every layer (defaults: conv 0.5, fc 1.0)")
    pr.add_argument("--conv-quality", type=float_arg(0.0), metavar="Q")
    pr.add_argument("--fc-quality", type=float_arg(0.0), metavar="Q")
    pr.add_argument("--layer", type=layer_arg, action="append", metavar="GLOB=Q",
                    help="per-layer quality by name glob (repeatable; the last match wins)")
    pr.add_argument("--skip", action="append", metavar="GLOB", help="never prune these layers")
    pr.add_argument("--min-params", type=int_arg(0), metavar="N",
                    help="leave layers smaller than N")
    pr.add_argument("--target-sparsity", type=float_arg(0.0, 1.0, hi_open=True), metavar="S",
                    help="solve q for this pruned share instead of using --quality")
    pr.add_argument("--target-scope", choices=("per-layer", "global"),
                    help="per-layer: each layer reaches the target; global: one q, total reaches it")
    pr.add_argument("--no-remove-dead-neurons", action="store_true",
                    help="keep shapes; only zero weights")
    pr.add_argument("--emit", choices=EMIT_FORMS,
                    help="portable (default): standard ops, sparse initializers where smaller; "
                         "dense: plain initializers; sparse-ops: pruned layers lowered to "
                         "onnxprune's CSR ops where they run faster")
    add_lowering_args(pr, defaults=False)
    pr.add_argument("--min-sparsity", type=float_arg(0.0, 1.0), metavar="S",
                    help="gate: fail (exit 3) if less than S of the weights are zero")
    pr.add_argument("--max-size-mb", type=float_arg(0.0), metavar="M",
                    help="gate: fail (exit 3) if the output exceeds M MB (10^6 bytes)")
    pr.add_argument("--in-place", action="store_true", help="allow -o to be the input")
    add_junit_arg(pr)
    common(pr)
    pr.set_defaults(func=cmd_prune)

    from onnxprune.runtime.check import add_input_shape_option

    ins = sub.add_parser("inspect", help="per-layer table: params, nonzero, density, FLOPs")
    ins.add_argument("model")
    add_input_shape_option(ins, FLOPS_SHAPE_HELP)
    common(ins)
    ins.set_defaults(func=cmd_inspect)

    from onnxprune.cli.lower import add_parser as add_lower_parser
    add_lower_parser(sub, common)

    ch = sub.add_parser("check", help="compare two models' outputs in ONNX Runtime")
    ch.add_argument("reference")
    ch.add_argument("candidate")
    ch.add_argument("--data", metavar="NPZ", help="inputs (.npz keyed by input name, or x), fed as they "
                    "stand; a file that does not fit so is read as compress reads its data (samples "
                    "on axis 0)")
    ch.add_argument("--atol", type=float_arg(0.0), default=1e-4)
    ch.add_argument("--rtol", type=float_arg(0.0), default=1e-3)
    ch.add_argument("--batch", type=int_arg(1), default=None,
                    help="batch size for random inputs (default 2; a batch the model fixes wins)")
    ch.add_argument("--seed", type=int_arg(0, SEED_MAX), default=0)
    add_input_shape_option(ch)
    add_junit_arg(ch)
    common(ch)
    ch.set_defaults(func=cmd_check)

    from onnxprune.cli.bench import add_parser as add_bench_parser
    add_bench_parser(sub)

    from onnxprune.cli.training import add_parsers as add_training_parsers

    add_training_parsers(sub, common)
    from onnxprune.cli.analysis import add_parsers as add_analysis_parsers
    add_analysis_parsers(sub, common)

    de = sub.add_parser("demo", help="train LeNet-300-100 on bundled digits and compress it "
                        "(needs the demo extra)")
    de.add_argument("-o", "--output", help="where to write the pruned model (default: a temp dir)")
    common(de)
    de.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    # Everything, the parser included, runs inside the try: Ctrl-C at any moment exits 130
    # with one line, never a traceback (unless --debug asks for one).
    args = None
    try:
        # Before anything can import ONNX Runtime: it sends nothing (README's promise).
        from onnxprune.runtime_ops import disable_telemetry

        disable_telemetry()
        parser = build_parser()
        args = parser.parse_args(argv)
        if not getattr(args, "command", None):
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        console = Console(quiet=getattr(args, "quiet", False))
        return args.func(args, console)
    except OnnxPruneError as e:
        print_error(str(e))
        return e.exit_code
    except KeyboardInterrupt:
        print("onnxprune: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except MemoryError:
        print_error("out of memory")
        return EXIT_RUNTIME
    except Exception as e:  # a bug: one line (a traceback only on request), exit 1
        print_internal_error(e, debug=getattr(args, "debug", False))
        return EXIT_RUNTIME
