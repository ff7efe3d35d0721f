"""``onnxprune check``: a reference and a candidate model on the same inputs in ONNX Runtime.
"""

from __future__ import annotations

from onnxprune import __version__
from onnxprune.core.console import Console, paint
from onnxprune.core.errors import (EXIT_OK, GateFailed)
from onnxprune.cli.output import check_paths, input_files, write_json


def cmd_check(args, console: Console) -> int:
    from onnxprune.core import io
    from onnxprune.runtime.check import compare, input_shapes, load_inputs, random_inputs, run_model
    from onnxprune.core.stats import versions

    shapes = input_shapes(args)
    ref, ref_info = io.load(args.reference)
    cand, cand_info = io.load(args.candidate)
    check_paths([*input_files(ref_info), *input_files(cand_info), args.data],
                [("--json", args.json)])
    if args.data:
        feeds = load_inputs(args.data, ref)
        source = args.data
    else:
        feeds = random_inputs(ref, batch=args.batch, seed=args.seed, shapes=shapes, strict=True)
        source = _describe_random(feeds, args.seed)
    out_ref = run_model(ref, feeds)
    out_cand = run_model(cand, feeds)
    result = compare(out_ref, out_cand, args.atol, args.rtol)
    report = {"command": "check", "tool": {"name": "onnxprune", "version": __version__},
              "versions": versions(), "reference": args.reference, "candidate": args.candidate,
              "inputs": source, **result}
    write_json(report, args.json)
    if "reason" in result:
        console.info(result["reason"])
    else:
        console.info(f"max abs error {result['max_abs_error']:.3g} on {source} "
                     f"(atol {args.atol:g}, rtol {args.rtol:g})")
    nan_both = sum(o.get("nan_both", 0) for o in result["outputs"])
    if nan_both:
        console.info(f"note: {nan_both} output value(s) are NaN in both models at the same "
                     "positions; counted as equal")
    if not result["passed"]:
        unfixable = sum(o.get("unfixable", 0) for o in result["outputs"])
        if result.get("atol_that_passes") is not None:
            hint = f"; would pass with --atol {_ceil_3g(result['atol_that_passes'])}"
        elif unfixable:
            hint = (f"; {unfixable} value(s) are NaN or infinite on one side only, "
                    "which no --atol passes")
        else:
            hint = ""
        raise GateFailed(f"outputs differ beyond tolerance{hint}")
    console.info(paint("PASS", "green"))
    return EXIT_OK


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


def _describe_random(feeds: dict, seed: int) -> str:
    """What the random inputs were, by the batch sizes actually fed (a model that fixes its
    batch dimension overrides --batch)."""
    batches = sorted({v.shape[0] for v in feeds.values() if getattr(v, "ndim", 0)})
    which = f", batch {', '.join(map(str, batches))}" if batches else ""
    return f"random (seed {seed}{which})"
