"""`onnxprune sensitivity` and `onnxprune report`: analysis commands that write a folder.

Both take ``-o DIR`` (created when its parent exists) and write every file atomically (a
temporary file in DIR, then a rename).  Files in DIR carry no timestamps or timings, so the
same input and options give the same bytes; the wall time goes to stderr and the ``--json``
report.  Figures need the ``plot`` extra (matplotlib): without it the commands stop with exit 2
before any work unless ``--no-plot`` / ``--no-figures`` is given.
"""

from __future__ import annotations

import json
import os

from onnxprune import __version__
from onnxprune.cli.output import check_paths, input_files, write_atomic
from onnxprune.core.console import Console, printable, text_table
from onnxprune.core.errors import EXIT_OK, UsageError, name_list

# --------------------------------------------------------------------------- files


def prepare_dir(path: str) -> str:
    """The output folder's absolute path; refuse one that is a file or whose parent is missing.
    Nothing is created here: the command makes the folder (``os.makedirs``) just before its
    first write, so a refused or failed run leaves no empty folder behind."""
    if not path:
        raise UsageError("-o: output folder is empty")
    path = os.path.abspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise UsageError(f"-o {path}: exists and is not a folder")
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise UsageError(f"-o {path}: parent folder {parent} does not exist")
    return path


def _dumps(obj) -> str:
    from onnxprune.cli.output import json_default

    return json.dumps(obj, indent=2, default=json_default) + "\n"


# --------------------------------------------------------------------------- sensitivity


def labelled_or_reference(ds, model, output_kind=()):
    """``ds`` as is when it has labels; label-free, with the model's own outputs as the
    reference, so the drops measured are fidelity drops (100·(1 − agreement)), each output
    compared as ``output_kind`` (``--output-kind``) says, else as the rule judges it."""
    import dataclasses

    from onnxprune.runtime import datasets as data
    from onnxprune.runtime.evaluate import reference

    if ds.y is not None:
        if output_kind:
            raise UsageError("--output-kind sets how outputs are compared without labels; "
                             "--val has labels y, so accuracy on them is measured")
        return ds
    checked = data.check_dataset(ds, data.input_specs(model), None, name="val", labels=False)
    return dataclasses.replace(checked, reference=reference(model, checked.x, output_kind=output_kind))


def cmd_sensitivity(args, console: Console) -> int:
    from onnxprune.runtime import datasets as data
    from onnxprune.core import io
    from onnxprune.analysis import sensitivity as sens
    from onnxprune.cli.output import write_json
    from onnxprune.runtime.evaluate import evaluate
    from onnxprune.core.graph import find_layers, graph_from_model
    from onnxprune.core.stats import versions

    if args.grid is not None and args.grid_quality is not None:
        raise UsageError("give --grid or --grid-quality, not both")
    if args.grid_quality is not None:
        grid_kind, grid = "quality", sens.parse_grid(args.grid_quality, "quality")
    elif args.grid is not None:
        grid_kind, grid = "sparsity", sens.parse_grid(args.grid, "sparsity")
    else:
        grid_kind, grid = "sparsity", list(sens.DEFAULT_SPARSITY_GRID)
    if args.budget is not None and args.total_budget is not None:
        raise UsageError("give --budget or --total-budget, not both")
    budget = args.budget if args.budget is not None or args.total_budget is not None else 1.0
    if not args.no_plot:
        from onnxprune.analysis.figures import require_matplotlib

        require_matplotlib()  # fail before minutes of evaluation, not after
    out_dir = prepare_dir(args.output)
    names = {k: os.path.join(out_dir, f) for k, f in (
        ("json", "sensitivity.json"), ("csv", "sensitivity.csv"), ("png", "sensitivity.png"),
        ("recipe", "recipe.yaml"))}
    model, info = io.load(args.model)
    check_paths([*input_files(info), args.val],
                [*(("-o", p) for p in names.values()), ("--json", args.json)],
                new_folder=out_dir)
    val = labelled_or_reference(data.load_data(args.val, model, x_key=args.x_key, y_key=args.y_key),
                                model, tuple(args.output_kind or ()))
    result = sens.analyse(model, val, grid=grid, grid_kind=grid_kind, layers=args.layers,
                          batch_size=args.batch_size, threads=args.threads,
                          progress=console.progress)
    rec = sens.recommend(result, budget_pp=budget if args.total_budget is None else None,
                         total_budget_pp=args.total_budget)
    together = evaluate(sens.apply_recommendation(model, rec),
                        val, batch_size=args.batch_size, threads=args.threads)
    rec["together"] = {"top1": together["top1"], "top5": together.get("top5"),
                       "drop_pp": 100.0 * (result.dense["top1"] - together["top1"])}
    all_layers = [layer.name for layer in find_layers(graph_from_model(model))[0]]
    source = os.path.basename(args.model)
    curves = {"command": "sensitivity", "tool": {"name": "onnxprune", "version": __version__},
              "model": source, "val": os.path.basename(args.val), **result.to_json(),
              "recommendation": rec}
    os.makedirs(out_dir, exist_ok=True)
    outputs = [write_atomic(names["json"], _dumps(curves)),
               write_atomic(names["csv"], sens.curves_csv(result)),
               write_atomic(names["recipe"], sens.recipe_yaml(
                   rec, all_layers, source=source, val=os.path.basename(args.val)))]
    if not args.no_plot:
        from onnxprune.analysis.figures import sensitivity_png

        what = "" if grid_kind == "sparsity" else " (quality grid)"
        png = sensitivity_png(result.layers, result.dense["top1"],
                              title=f"Sensitivity of {source}: one layer pruned at a time{what}")
        outputs.append(write_atomic(names["png"], png))

    report = {**curves, "versions": versions(),
              "input": {"path": info.path, "bytes": info.file_bytes},
              "outputs": outputs, "evaluations": result.evaluations,
              "points": len(result.layers) * len(grid), "wall_seconds": result.wall_seconds}
    write_json(report, args.json)
    console.info(format_curves(result))
    console.info(format_recommendation(rec, result.dense["top1"]))
    unexercised = [layer["name"] for layer in result.layers if layer.get("scope")
                   and all(p["top1"] == result.dense["top1"] for p in layer["points"])]
    if unexercised:
        console.info(f"note: {len(unexercised)} layer(s) inside subgraphs changed nothing at any point "
                     f"({name_list(unexercised, 3)}): the data may never take their branch, so their "
                     "recommendation says nothing (--skip them when pruning)")
    console.info(f"{result.evaluations} ONNX Runtime evaluations for "
                 f"{len(result.layers) * len(grid)} points in {result.wall_seconds:.1f} s; "
                 f"wrote {', '.join(os.path.basename(o['path']) for o in outputs)} to {out_dir}")
    return EXIT_OK


def _table(headers: list[str], body: list[list[str]]) -> str:
    """Columns padded to width; cells (layer names from the model) escaped and cut."""
    from onnxprune.core.stats import NAME_CHARS

    return text_table(headers, [[printable(c, NAME_CHARS) for c in row] for row in body])


def format_curves(result) -> str:
    """Top-1 (%) per layer and grid point; the first line gives the dense accuracy."""
    if result.grid_kind == "sparsity":
        heads = [f"{100 * g:g}%" for g in result.grid]
    else:
        heads = [f"q={g:g}" for g in result.grid]
    body = [[layer["name"], layer["kind"]] + [f"{100 * p['top1']:.2f}" for p in layer["points"]]
            for layer in result.layers]
    return (f"dense top-1 {100 * result.dense['top1']:.2f}% on {result.dense['n']} samples; "
            f"top-1 (%) with one layer pruned ({result.grid_kind} grid):\n"
            + _table(["layer", "kind"] + heads, body))


def format_recommendation(rec: dict, dense_top1: float) -> str:
    if rec["rule"] == "per-layer":
        head = f"recommended q for a budget of {rec['budget_pp']:g} pp per layer:"
    else:
        head = (f"recommended q for a total budget of {rec['total_budget_pp']:g} pp "
                f"(common per-layer budget {rec['per_layer_budget_pp']:.3g} pp):")
    body = [[c["name"], f"{c['quality']:.4g}", f"{100 * c['sparsity']:.1f}%",
             f"{c['drop_pp']:+.2f}"] for c in rec["layers"]]
    t = rec["together"]
    return (head + "\n" + _table(["layer", "q", "pruned", "drop (pp)"], body) +
            f"\nall recommended layers pruned together: top-1 {100 * t['top1']:.2f}% "
            f"({t['drop_pp']:+.2f} pp; per-layer drops add up to {rec['summed_drop_pp']:.2f}), "
            f"{100 * rec['sparsity']:.1f}% of the analysed weights pruned")


# --------------------------------------------------------------------------- report


def _pick_layer(rows: list[dict], name: str | None) -> dict | None:
    import fnmatch

    if not rows:
        if name is not None:
            raise UsageError(f"--layer {name!r}: the model has no prunable layer")
        return None
    if name is None:
        return max(rows, key=lambda r: r["params"])  # the largest layer, fc1 in the LeNets
    for r in rows:
        if name in (r["name"], r["weight"]):
            return r
    # Like --layers of sensitivity and the recipe globs: the layer or its weight name.
    hits = [r for r in rows if fnmatch.fnmatchcase(r["name"], name)
            or fnmatch.fnmatchcase(r["weight"], name)]
    if not hits:
        raise UsageError(f"--layer {name!r} matches no prunable layer; layers: "
                         + ", ".join(r["name"] for r in rows))
    return hits[0]


def _layer_weights(model, name: str):
    import numpy as np

    from onnxprune.core.graph import find_layers, graph_from_model, weight_values

    for layer in find_layers(graph_from_model(model))[0]:
        if layer.name == name:
            return np.asarray(weight_values(layer)), layer
    return None, None


def _mask_figure(w, layer, chosen: dict, plot: bool, images: dict) -> dict:
    """Fig. 4: the chosen layer's mask, one row per output, one column per input connection."""
    from onnxprune.analysis import figures

    mask = figures.mask_matrix(w, layer.out_axis)
    fig = {"heading": f"Mask of {chosen['name']} (Fig. 4)",
           "caption": (f"Non-zero weights of {chosen['name']} ({chosen['op']}, weight "
                       f"{'x'.join(map(str, chosen['weight_shape']))}) in black: one row per "
                       "output, one column per input connection (inputs in their stored "
                       f"order). {int(mask.sum())} of {mask.size} kept."),
           "layer": chosen["name"], "rows": int(mask.shape[0]), "cols": int(mask.shape[1]),
           "kept": int(mask.sum()), "kept_per_row": mask.sum(1).astype(int).tolist(),
           "kept_per_col": mask.sum(0).astype(int).tolist()}
    if plot:
        images["mask"] = figures.mask_png(mask, title=chosen["name"])
    return fig


def _baseline_weights(baseline, base_rows, chosen: dict):
    """The chosen layer's weights in the baseline: by layer name, else by weight name."""
    base_w, _ = _layer_weights(baseline, chosen["name"])
    if base_w is None:
        for r in base_rows or []:
            if r["weight"] == chosen["weight"]:
                base_w, _ = _layer_weights(baseline, r["name"])
    return base_w


def _histogram_figure(w, chosen: dict, baseline, base_rows, plot: bool, images: dict) -> dict:
    """Fig. 7: the baseline's weights before pruning beside the non-zero weights that remain."""
    from onnxprune.analysis import figures

    fig = {"heading": f"Weight distribution of {chosen['name']} (Fig. 7)",
           "caption": "Left: the baseline's weights before pruning. Right: the non-zero weights "
                      "that remain (pruning removes the small ones; retraining moves the "
                      "survivors)."}
    base_w = None if baseline is None else _baseline_weights(baseline, base_rows, chosen)
    if base_w is None:
        fig["missing"] = ("needs --baseline (the unpruned model) with this layer"
                          if baseline is None else
                          f"layer {chosen['name']} is not in the baseline")
        return fig
    hb = figures.histogram_counts(base_w)
    ha = figures.histogram_counts(w, nonzero_only=True)
    fig.update({"before": {"counts": hb[0].tolist(), "edges": hb[1].tolist()},
                "after": {"counts": ha[0].tolist(), "edges": ha[1].tolist()}})
    if plot:
        images["histogram"] = figures.histogram_png(hb, ha, title=chosen["name"])
    return fig


def _tradeoff_figure(history, title: str, plot: bool, images: dict) -> dict:
    """Fig. 5: the trade-off curve of a compress run (top-1 drop against the share pruned)."""
    from onnxprune.analysis import figures
    from onnxprune.analysis import report as rc

    measure = "top-1" if history is None else rc.history_measure(history)
    fig = {"heading": "Accuracy vs. parameters pruned (Fig. 5)",
           "caption": f"From the compress run's history: {measure} drop (dense − pruned, in points; "
                      "positive = worse, drawn downwards as in the paper) against the share of "
                      "the prunable weights that are zero, after each stage, and after each "
                      "prune step just before its retraining."}
    if history is None:
        fig["missing"] = "needs --history (a `onnxprune compress --json` report)"
        return fig
    series = rc.tradeoff_series(history)
    fig["series"] = series
    fig["points_table"] = (
        ["series", "stage", "pruned", measure, "drop (pp)"],
        [[s["label"], p["stage"], f"{100 * p['pruned']:.1f}%", f"{100 * p['top1']:.2f}%",
          f"{p['drop_pp']:+.2f}"] for s in series for p in s["points"]])
    if plot:
        images["tradeoff"] = figures.tradeoff_png(series, title=title, measure=measure)
    return fig


def _write_report_files(out_dir: str, paths: dict, data: dict, images: dict) -> list[dict]:
    """Figures drawn, then report.md, report.html and report.json, each written atomically;
    every figure records its file name (None where it was not drawn)."""
    from onnxprune.analysis import report as rc

    for key, fig in data["figures"].items():
        fig["file"] = rc.FIGURE_FILES[key] if key in images else None
    os.makedirs(out_dir, exist_ok=True)
    outputs = []
    for key in ("mask", "histogram", "tradeoff"):
        if key in images:
            outputs.append(write_atomic(paths[key], images[key]))
    outputs.append(write_atomic(paths["md"], rc.render_markdown(data)))
    outputs.append(write_atomic(paths["html"], rc.render_html(data, images)))
    outputs.append(write_atomic(paths["json"], _dumps(data)))
    return outputs


def cmd_report(args, console: Console) -> int:
    from onnxprune.core import io
    from onnxprune.analysis import report as rc
    from onnxprune.cli.output import write_json
    from onnxprune.core.stats import format_note, layer_rows, versions
    from onnxprune.runtime.bench import counting_view

    if not args.no_figures:
        from onnxprune.analysis.figures import require_matplotlib

        require_matplotlib()
    out_dir = prepare_dir(args.output)
    files = {"md": "report.md", "html": "report.html", "json": "report.json", **rc.FIGURE_FILES}
    paths = {k: os.path.join(out_dir, f) for k, f in files.items()}
    model, info = io.load(args.model)
    baseline = base_rows = binfo = None
    if args.baseline:
        baseline, binfo = io.load(args.baseline)
    check_paths([*input_files(info), *(input_files(binfo) if binfo else ()), args.history],
                [*(("-o", p) for p in paths.values()), ("--json", args.json)],
                new_folder=out_dir)
    from onnxprune.runtime.check import checked_input_shapes, input_shapes
    from onnxprune.runtime.shape_probe import shape_probe

    shapes = input_shapes(args)
    # a lowered model is counted, and its mask drawn, as the dense pruned model it came from
    model, info, view_notes = counting_view(model, info, checked_input_shapes(model, shapes))
    rows, notes = layer_rows(model, info, shapes, measure=shape_probe(model, shapes, info))
    notes += view_notes
    if baseline is not None:
        baseline, binfo, _ = counting_view(baseline, binfo, checked_input_shapes(baseline, shapes))
        base_rows, _ = layer_rows(baseline, binfo, shapes, measure=shape_probe(baseline, shapes, binfo))
    history = rc.load_history(args.history) if args.history else None
    usable = [r for r in rows if not r["skipped"]]
    chosen = _pick_layer(usable, args.layer)
    table_rows, total = rc.paper_rows(rows, base_rows)
    table_notes = [printable(f"{r['name']}: {r['note']}") for r in table_rows if r["note"]]
    table_notes += [format_note(n)[len("note: "):] for n in notes]
    unrelated = baseline is not None and bool(table_rows) and all(
        (r["note"] or "").startswith("not in the baseline") for r in table_rows)
    if unrelated:  # every layer's share is then of its own shape: say why, once, first
        table_notes.insert(0, "no layer of the model is in the baseline (by layer or weight "
                              "name): is it the model this one was pruned from?")

    data = {
        "command": "report", "tool_version": __version__,
        "model": os.path.basename(args.model),
        "baseline": os.path.basename(args.baseline) if args.baseline else None,
        "table": {"rows": table_rows, "total": total, "notes": table_notes,
                  "cells": rc.table_cells(table_rows, total)},
        "figures": {},
    }
    images: dict[str, bytes] = {}
    plot = not args.no_figures
    if chosen is None:  # nothing to draw a layer's figures of; the table says so (exit 0)
        for key, heading in (("mask", "Mask (Fig. 4)"), ("histogram", "Weight distribution (Fig. 7)")):
            data["figures"][key] = {"heading": heading, "caption": "A pruned layer's weights.",
                                    "missing": "the model has no prunable layer"}
    else:
        w, layer = _layer_weights(model, chosen["name"])
        data["figures"]["mask"] = _mask_figure(w, layer, chosen, plot, images)
        data["figures"]["histogram"] = _histogram_figure(w, chosen, baseline, base_rows, plot, images)
    data["figures"]["tradeoff"] = _tradeoff_figure(history, data["model"], plot, images)
    outputs = _write_report_files(out_dir, paths, data, images)
    write_json({**data, "versions": versions(), "outputs": outputs}, args.json)

    from onnxprune.analysis.report import TABLE_HEADERS

    console.info(_table(list(TABLE_HEADERS), data["table"]["cells"]))
    if unrelated:
        console.info(f"note: {table_notes[0]}")
    for n in notes:  # what the table leaves out, as inspect says it (also in report.md)
        console.info(format_note(n))
    if chosen is None:
        console.info("no prunable layer found; the report has no layer figures")
    console.info(f"wrote {', '.join(os.path.basename(o['path']) for o in outputs)} to {out_dir}")
    return EXIT_OK


# --------------------------------------------------------------------------- parsers


def add_parsers(sub, common) -> None:
    from onnxprune.cli.args import OUTPUT_KIND_RULE, THREADS_MAX, float_arg, int_arg, output_kind_arg

    se = sub.add_parser(
        "sensitivity", help="prune one layer at a time over a grid; curves, plot, recipe",
        description="Prune each layer alone over a grid of sparsities (or qualities), every "
                    "other layer dense, and measure top-1 with ONNX Runtime (Han et al. 2015, "
                    "Fig. 6).  Writes sensitivity.json/.csv/.png and recipe.yaml to DIR: per "
                    "layer the largest grid q whose drop stays within the budget, stopping at "
                    "the first grid point over it.")
    se.add_argument("model")
    se.add_argument("--val", required=True, metavar="NPZ",
                    help="validation data: .npz with the inputs (x, or one array per graph input) "
                         "and labels y; without y the drops are of top-1 agreement with the "
                         "unpruned model")
    se.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    se.add_argument("--grid", metavar="PCTS",
                    help="sparsities in percent, comma-separated "
                         "(default 0,10,20,30,40,50,60,70,80,90,95,99)")
    se.add_argument("--grid-quality", metavar="QS",
                    help="quality parameters q instead (threshold q·std), comma-separated")
    se.add_argument("--layers", nargs="+", metavar="GLOB", help="analyse only these layers")
    se.add_argument("--budget", type=float_arg(0.0), metavar="PP",
                    help="allowed top-1 drop per layer, in percentage points (default 1)")
    se.add_argument("--total-budget", type=float_arg(0.0), metavar="PP",
                    help="allowed top-1 drop for all layers together, split as one common "
                         "per-layer budget whose drops add up to at most PP")
    se.add_argument("--x-key", default="x", help="array name of the inputs (default x)")
    se.add_argument("--y-key", default="y", help="array name of the labels (default y)")
    se.add_argument("--output-kind", type=output_kind_arg, action="append", metavar="NAME=KIND",
                    help="without labels, compare float output NAME as scores (top-1 agreement) "
                         "or values (relative error); " + OUTPUT_KIND_RULE)
    se.add_argument("--batch-size", type=int_arg(1), default=256)
    se.add_argument("--threads", type=int_arg(1, THREADS_MAX), metavar="N",
                    help="ONNX Runtime intra-op threads (default: its own choice)")
    se.add_argument("--no-plot", action="store_true", help="skip the PNG (no matplotlib needed)")
    common(se)
    se.set_defaults(func=cmd_sensitivity)

    rp = sub.add_parser(
        "report", help="Markdown + self-contained HTML report with the paper's figures",
        description="Per-layer table (paper Tables 2-5), the mask of one layer (Fig. 4), its "
                    "weight histogram before/after (Fig. 7, needs --baseline) and the accuracy "
                    "vs. parameters-pruned curve of a compress run (Fig. 5, needs --history).")
    rp.add_argument("model", help="the pruned model")
    rp.add_argument("--baseline", metavar="ONNX", help="the original (dense) model")
    rp.add_argument("--history", metavar="JSON", help="a `onnxprune compress --json` report")
    rp.add_argument("--layer", metavar="NAME", help="layer for the mask and histogram: a layer "
                    "or weight name, or a glob of either (default: the largest layer)")
    rp.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    rp.add_argument("--no-figures", action="store_true",
                    help="tables only (no matplotlib needed)")
    from onnxprune.cli.args import FLOPS_SHAPE_HELP
    from onnxprune.runtime.check import add_input_shape_option
    add_input_shape_option(rp, FLOPS_SHAPE_HELP)
    common(rp)
    rp.set_defaults(func=cmd_report)
