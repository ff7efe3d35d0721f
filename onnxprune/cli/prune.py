"""``onnxprune prune`` and ``onnxprune inspect``: the pass pipeline over one model, and its
per-layer table.
"""

from __future__ import annotations

from onnxprune.core.console import Console, paint
from onnxprune.core.errors import EXIT_OK
from onnxprune.cli.lower import (batch_line, layer_lines, rewrite_lines, stream_line, values_line,
                                 whole_model_line, winograd_line)
from onnxprune.cli.output import check_paths, write_json


def _recipe_options(args) -> dict:
    """The prune flags as keywords of ``onnxprune.api.prune.build_recipe``."""
    return dict(recipe=args.recipe, quality=args.quality, conv_quality=args.conv_quality,
                fc_quality=args.fc_quality, layers=args.layer, skip=args.skip,
                min_params=args.min_params, target_sparsity=args.target_sparsity,
                target_scope=args.target_scope,
                remove_dead_neurons=not args.no_remove_dead_neurons, emit=args.emit,
                expected_batch=args.expected_batch, threads=args.threads,
                lower_for=args.lower_for, sparse_values=args.sparse_values, winograd=args.winograd,
                min_sparsity=args.min_sparsity,
                max_size_mb=args.max_size_mb)


def cmd_prune(args, console: Console) -> int:
    """Thin layer over ``onnxprune.api.prune``: the paths checked, the report written, the
    tables printed, then a missed gate raised (exit 3)."""
    import time

    from onnxprune.api.prune import prune, raise_for_gates
    from onnxprune.runtime.check import input_shapes
    from onnxprune.cli.junit import prune_cases, write_junit
    from onnxprune.core.stats import format_note, format_table

    start = time.monotonic()

    def before_run(files: list[str]) -> None:
        check_paths([*files, args.recipe], [("-o", args.output), ("--json", args.json),
                                            ("--junit", args.junit)],
                    models=[args.output], replaceable=files, in_place=args.in_place)

    report = prune(args.model, args.output, in_place=args.in_place,
                   before_run=before_run, progress=console.progress, decide=args.decide,
                   batch_stream=args.batch_stream,
                   input_shapes=input_shapes(args), **_recipe_options(args))
    write_json(report, args.json)
    write_junit(args.junit, "prune", prune_cases(report), time.monotonic() - start)
    rows, outputs = report["layers"], report["outputs"]
    if not rows:
        console.info("no prunable layer found (Gemm/MatMul/Conv/ConvTranspose with a constant "
                     "floating-point weight); the model was written unchanged")
    elif report["already_applied"]:
        console.info("this recipe was already applied to the input (metadata stamp); "
                     "nothing changed")
    if rows:
        console.info(format_table(rows, report["total"]))
    for n in report["notes"]:
        console.info(format_note(n))
    if report.get("sparse_ops"):
        console.info(_format_sparse_ops(report["sparse_ops"]))
        for line in rewrite_lines(report):
            console.info(line)
        for line in (whole_model_line(report.get("lowering"), report["sparse_ops"].get("layers")),
                     winograd_line(report.get("lowering")),
                     stream_line(report.get("lowering")),
                     values_line(report.get("lowering")),
                     batch_line(report.get("lowering"), args.expected_batch)):
            if line:
                console.info(line)
    size = report["size"]
    console.info(f"wrote {', '.join(o['path'] for o in outputs)} "
                 f"({size['input_bytes'] / 1e6:.2f} MB -> {size['output_bytes'] / 1e6:.2f} MB, "
                 f"{report['emit']})")
    if rows and not report["already_applied"] and size["output_bytes"] >= size["input_bytes"] \
            and report["emit"] == "portable":
        console.info("note: the file is not smaller: at these densities the standard sparse "
                     "storage (int64 indices) is not smaller than dense, so the weights stay "
                     "dense; --emit sparse-ops --lower-for size writes the compact CSR file")
    for g in report["gates"]:
        word = paint("PASS", "green") if g["passed"] else paint("FAIL", "red")
        console.info(f"gate {g['name']}: {word} (required {g['required']:g}, "
                     f"actual {g['actual']:.4g})")
    raise_for_gates(report)
    return EXIT_OK


def _format_sparse_ops(sp: dict) -> str:
    lines = layer_lines(sp["layers"])
    z = sp["sizes"]
    lines.append(f"sizes: sparse-ops {z['sparse_ops_bytes'] / 1e6:.2f} MB, dense "
                 f"~{z['dense_bytes_estimated'] / 1e6:.2f} MB, portable "
                 f"~{z['portable_bytes_estimated'] / 1e6:.2f} MB ({z['method']})")
    return "\n".join(lines)


def cmd_inspect(args, console: Console) -> int:
    from onnxprune.api import inspect
    from onnxprune.core.stats import format_note, format_table

    from onnxprune.runtime.check import input_shapes

    report = inspect(args.model, input_shapes=input_shapes(args),
                     before_run=lambda reads: check_paths(reads, [("--json", args.json)]))
    write_json(report, args.json)
    if report["layers"]:
        console.info(format_table(report["layers"], report["total"]))
    else:
        console.info("no prunable layer found")
    for n in report["notes"]:
        console.info(format_note(n))
    return EXIT_OK
