"""``onnxprune check``: a reference and a candidate model on the same inputs in ONNX Runtime.
"""

from __future__ import annotations

from onnxprune.core.console import Console, paint
from onnxprune.core.errors import (EXIT_OK, GateFailed)
from onnxprune.cli.output import check_paths, write_json


def cmd_check(args, console: Console) -> int:
    import time

    from onnxprune.api import check
    from onnxprune.cli.junit import check_cases, write_junit
    from onnxprune.runtime.check import input_shapes

    start = time.monotonic()
    report = check(args.reference, args.candidate, data=args.data, atol=args.atol,
                   rtol=args.rtol, batch=args.batch or 2, seed=args.seed,
                   input_shapes=input_shapes(args),
                   before_run=lambda reads: check_paths(reads, [("--json", args.json),
                                                                 ("--junit", args.junit)]))
    write_json(report, args.json)
    write_junit(args.junit, "check", check_cases(report), time.monotonic() - start)
    if report.get("batch_note") and args.batch is not None:  # only where --batch was asked for
        console.info(f"note: {report['batch_note']}")
    if "reason" not in report:  # a count or shape that differs is the error line itself
        console.info(f"max abs error {report['max_abs_error']:.3g} on {report['inputs']} "
                     f"(atol {args.atol:g}, rtol {args.rtol:g})")
    nan_both = sum(o.get("nan_both", 0) for o in report["outputs"])
    if nan_both:
        console.info(f"note: {nan_both} output value(s) are NaN in both models at the same "
                     "positions; counted as equal")
    if report.get("uninformative") and not report["passed"]:
        raise GateFailed("the check cannot tell the models apart: " + report["uninformative"])
    if report.get("uninformative"):
        console.info(f"note: {report['uninformative']}")
    if not report["passed"]:
        raise GateFailed("outputs differ: " + report["reason"] if "reason" in report else
                         f"outputs differ beyond tolerance{_hint(report)}")
    console.info(paint("PASS", "green"))
    return EXIT_OK


def _hint(report: dict) -> str:
    """How the user could make a failed check pass, if any --atol can; first, where so, that
    the outputs that differ hold the same rows in another order."""
    from onnxprune.runtime.check import reordered_text

    return reordered_text(report.get("reordered"), "the reference's") + _atol_hint(report)


def _atol_hint(report: dict) -> str:
    unfixable = sum(o.get("unfixable", 0) for o in report["outputs"])
    if report.get("atol_that_passes") is not None:
        return f"; would pass with --atol {_ceil_3g(report['atol_that_passes'])}"
    if unfixable:
        return (f"; {unfixable} value(s) are NaN or infinite on one side only, "
                "which no --atol passes")
    return ""


def _ceil_3g(x: float) -> str:
    """``x`` written with 3 significant digits, rounded up: the printed value, read back,
    is never below ``x`` (a suggested --atol must pass)."""
    import math

    if x <= 0:
        return "0"
    text = f"{x:.3g}"
    step = 10.0 ** (math.floor(math.log10(x)) - 2)
    while float(text) < x:
        text = f"{float(text) + step:.3g}"
    return text
