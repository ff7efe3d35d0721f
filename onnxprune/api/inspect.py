"""``onnxprune.inspect``: the per-layer table of a model, as a report."""

from __future__ import annotations

from typing import Callable

from onnxprune.api.source import model_files, open_model


def inspect(model, *, before_run: Callable[[list[str]], None] | None = None,
            input_shapes: dict[str, tuple[int, ...]] | None = None) -> dict:
    """The report ``onnxprune inspect --json`` writes: one row per prunable layer (params,
    nonzero, density = nonzero / params, dense and remaining FLOPs, the weights' σ), their
    totals, notes on what was skipped, and the pruning stamp the model carries (None when it
    was never pruned by onnxprune).

    ``model`` is a path (read lazily: external weights are memory-mapped, not copied) or a
    ``ModelProto``; the report's ``input`` is None for the latter. Raises
    ``InvalidModelError`` (exit 4) for a malformed or unsafe model, ``UsageError`` (exit 2)
    for an argument that is neither. ``before_run(files)`` is called with the files read,
    before the table is computed. ``input_shapes`` (name → dims, as ``--input-shape``) sizes
    inputs the model leaves symbolic, so that their layers' FLOPs are counted; each must name
    a graph input of that rank and agree with its fixed dims (``UsageError``).
    """
    from onnxprune import __version__
    from onnxprune.core.stats import file_record, totals, versions
    from onnxprune.runtime.bench import counted_layer_rows
    from onnxprune.passes.pipeline import read_stamp

    proto, info = open_model(model, lazy=True)
    if before_run is not None:
        before_run(model_files(info))
    from onnxprune.runtime.check import checked_input_shapes

    shapes = checked_input_shapes(proto, input_shapes)
    rows, notes = counted_layer_rows(proto, info, shapes)
    source = None if info is None else {**file_record(info.path), "total_bytes": info.file_bytes,
                                        "data_files": list(info.data_files)}
    return {"command": "inspect", "tool": {"name": "onnxprune", "version": __version__},
            "versions": versions(), "input": source, "stamp": read_stamp(proto),
            "layers": rows, "total": totals(rows), "notes": notes}
