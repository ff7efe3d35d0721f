"""``onnxprune prune`` and ``onnxprune inspect``: the pass pipeline over one model, and its
per-layer table.
"""

from __future__ import annotations

from onnxprune import __version__
from onnxprune.core.console import Console, paint, printable
from onnxprune.core.errors import (EXIT_OK, GateFailed,
                              UsageError)
from onnxprune.cli.output import check_paths, input_files, write_json


def _recipe_from_args(args):
    from onnxprune.passes.recipe import default_recipe, load_recipe

    recipe = load_recipe(args.recipe) if args.recipe else default_recipe()
    overrides = {}
    threshold_opts = recipe.pass_options("threshold-by-std")
    if args.quality is not None or args.conv_quality is not None or args.fc_quality is not None:
        from onnxprune.passes.threshold_by_std import DEFAULT_QUALITY, check_quality

        base = check_quality("quality", (threshold_opts or {}).get("quality", DEFAULT_QUALITY))
        if args.quality is not None:
            base = {"conv": args.quality, "fc": args.quality}
        if args.conv_quality is not None:
            base["conv"] = args.conv_quality
        if args.fc_quality is not None:
            base["fc"] = args.fc_quality
        overrides["quality"] = base
    if args.layer:
        overrides["layers"] = [{g: q} for g, q in args.layer]
    if args.skip:
        overrides["skip"] = list(args.skip)
    if args.min_params is not None:
        overrides["min-params"] = args.min_params
    if args.target_sparsity is not None:
        overrides["target-sparsity"] = args.target_sparsity
    if args.target_scope is not None:
        overrides["target-scope"] = args.target_scope
    if overrides:
        for i, (name, opts) in enumerate(recipe.passes):
            if name == "threshold-by-std":
                merged = dict(opts)
                merged.update(overrides)
                recipe.passes[i] = (name, merged)
                break
        else:
            raise UsageError("threshold options were given but the recipe has no "
                             "threshold-by-std pass")
    if args.no_remove_dead_neurons:
        recipe.passes = [(n, o) for n, o in recipe.passes if n != "remove-dead-neurons"]
    if args.emit is not None:
        recipe.emit = args.emit
    _apply_lowering_args(recipe, args)
    if args.min_sparsity is not None:
        recipe.gates["min-sparsity"] = args.min_sparsity
    if args.max_size_mb is not None:
        recipe.gates["max-size-mb"] = args.max_size_mb
    # Validate the merged options now, before any model is read.
    recipe.build_passes()
    return recipe


def _apply_lowering_args(recipe, args) -> None:
    """--expected-batch / --threads / --lower-for become options of the lowering pass."""
    from onnxprune.passes.recipe import LOWERING_PASS

    given = {k: v for k, v in (("batch", args.expected_batch), ("threads", args.threads),
                               ("objective", args.lower_for))
             if v is not None}
    if not given:
        return
    if recipe.emit != "sparse-ops":
        raise UsageError("--expected-batch, --threads and --lower-for only apply to "
                         "--emit sparse-ops")
    for i, (name, opts) in enumerate(recipe.passes):
        if name == LOWERING_PASS:
            recipe.passes[i] = (name, {**opts, **given})
            return
    recipe.passes.append((LOWERING_PASS, given))


def cmd_prune(args, console: Console) -> int:
    from onnxprune.core import io
    from onnxprune.passes.pipeline import run_pipeline
    from onnxprune.core.graph import graph_from_model, infer_shapes, save_graph
    from onnxprune.core.stats import format_note, format_table, graph_rows, totals, versions

    recipe = _recipe_from_args(args)
    model, info = io.load(args.model, lazy=True)
    check_paths([*input_files(info), args.recipe],
                [("-o", args.output), ("--json", args.json)], models=[args.output],
                replaceable=input_files(info), in_place=args.in_place)
    graph = graph_from_model(model, info)
    shapes = infer_shapes(model)
    # Nonzero counts before pruning come from the threshold pass where it ran (saves a pass
    # over every weight of a large model); the rest are counted below.
    before_rows, notes = graph_rows(graph, shapes, with_std=False, count=False)
    result = run_pipeline(model, recipe, progress=console.progress, graph=graph)
    after_rows = before_rows if result.already_applied else \
        graph_rows(result.graph, shapes, with_std=False)[0]

    threshold_stats = {}
    dead_stats = None
    for p in result.passes:
        if p["name"] == "threshold-by-std":
            threshold_stats = {r["name"]: r for r in p["stats"]["layers"]}
            notes = notes + [n for n in p["stats"]["notes"] if n not in notes]
        if p["name"] == "remove-dead-neurons":
            dead_stats = p["stats"]
    for r in before_rows:
        t = threshold_stats.get(r["name"], {})
        if t.get("nonzero_before") is not None:
            r["nonzero"] = t["nonzero_before"]
    if any(r["nonzero"] is None for r in before_rows):
        counted = {r["weight"]: r for r in graph_rows(graph_from_model(model, info), shapes,
                                                      with_std=False)[0]}
        for r in before_rows:
            if r["nonzero"] is None:
                r.update({k: counted[r["weight"]][k] for k in ("nonzero", "density",
                                                               "flops_remaining")})
    after_by_weight = {r["weight"]: r for r in after_rows}
    rows = []
    for r in before_rows:
        a = after_by_weight.get(r["weight"], r)
        t = threshold_stats.get(r["name"], {})
        rows.append({
            **r,
            # Shapes of the output model; params (the density's denominator) of the input.
            "weight_shape": a["weight_shape"],
            "original_shape": r["weight_shape"],
            "nonzero": a["nonzero"],
            "density": (a["nonzero"] / r["params"]) if r["params"] and a["nonzero"] is not None else None,
            "flops_remaining": a["flops_remaining"],
            "quality": t.get("quality"),
            "std": t.get("std", r["std"]),
            "threshold": t.get("threshold"),
            "skipped": t.get("skipped") or r["skipped"],
        })
    if recipe.emit == "sparse-ops":
        _count_lowered_weights(rows, result.passes)
    total = totals(rows)

    outputs: list[dict] = []
    if result.already_applied:
        written, sparse = io.save_with_storage(
            model, args.output, storage=recipe.storage, source=info, in_place=args.in_place,
            records=outputs)
    else:
        written, sparse = save_graph(
            result.graph, model, args.output, storage=recipe.storage, source=info,
            in_place=args.in_place, metadata=result.metadata, records=outputs,
            progress=console.progress)
    out_bytes = sum(o["bytes"] for o in outputs)

    gates = []
    if recipe.gates.get("min-sparsity") is not None:
        actual = total["sparsity"] or 0.0
        gates.append({"name": "min-sparsity", "required": recipe.gates["min-sparsity"],
                      "actual": actual, "passed": actual >= recipe.gates["min-sparsity"]})
    if recipe.gates.get("max-size-mb") is not None:
        actual = out_bytes / 1e6
        gates.append({"name": "max-size-mb", "required": recipe.gates["max-size-mb"],
                      "actual": actual, "passed": actual <= recipe.gates["max-size-mb"]})
    failed = [g for g in gates if not g["passed"]]

    report = {
        "command": "prune",
        "status": "gate-failed" if failed else "ok",
        "tool": {"name": "onnxprune", "version": __version__},
        "versions": versions(),
        "input": {"path": info.path, "bytes": info.file_bytes},
        "outputs": outputs,
        "emit": recipe.emit,
        "sparse_initializers": sparse,
        "recipe": recipe.normalised(),
        "recipe_sha256": recipe.sha256,
        "already_applied": result.already_applied,
        "layers": rows,
        "total": total,
        "size": {"input_bytes": info.file_bytes, "output_bytes": out_bytes,
                 "ratio": info.file_bytes / out_bytes if out_bytes else None},
        "passes": result.passes,
        "dead_neurons": dead_stats,
        "notes": notes,
        "gates": gates,
    }
    if recipe.emit == "sparse-ops":
        report["sparse_ops"] = _sparse_ops_report(result.passes, rows, out_bytes)
    write_json(report, args.json)

    if not rows:
        console.info("no prunable layer found (Gemm/MatMul/Conv/ConvTranspose with a constant "
                     "floating-point weight); the model was written unchanged")
    elif result.already_applied:
        console.info("this recipe was already applied to the input (metadata stamp); "
                     "nothing changed")
    if rows:
        console.info(format_table(rows, total))
    for n in notes:
        console.info(format_note(n))
    if report.get("sparse_ops"):
        console.info(_format_sparse_ops(report["sparse_ops"]))
    console.info(f"wrote {', '.join(o['path'] for o in outputs)} "
                 f"({info.file_bytes / 1e6:.2f} MB -> {out_bytes / 1e6:.2f} MB, {recipe.emit})")
    for g in gates:
        word = paint("PASS", "green") if g["passed"] else paint("FAIL", "red")
        console.info(f"gate {g['name']}: {word} (required {g['required']:g}, "
                     f"actual {g['actual']:.4g})")
    if failed:
        raise GateFailed("quality gate failed: " + "; ".join(
            f"{g['name']} required {g['required']:g}, got {g['actual']:.4g}" for g in failed))
    return EXIT_OK


def _count_lowered_weights(rows: list[dict], passes: list[dict]) -> None:
    """Lowered weights are CSR arrays now, invisible to find_layers: take their counts from
    the lowering pass."""
    from onnxprune.passes.recipe import LOWERING_PASS

    stats = next((p["stats"] for p in passes if p["name"] == LOWERING_PASS), {"layers": []})
    by_weight = {r["weight"]: r for r in stats["layers"] if r["lowered"]}
    for row in rows:
        low = by_weight.get(row["weight"])
        if low is None:
            continue
        row["weight_shape"] = low["weight_shape"]
        row["nonzero"] = low["nonzero"]
        row["density"] = low["nonzero"] / row["params"] if row["params"] else None
        if row["flops"] is not None and row["params"]:
            row["flops_remaining"] = row["flops"] * low["nonzero"] // row["params"]


def _sparse_ops_report(passes: list[dict], rows: list[dict], out_bytes: int) -> dict:
    from onnxprune.passes.lower_to_sparse_ops import size_summary
    from onnxprune.passes.recipe import LOWERING_PASS

    stats = next((p["stats"] for p in passes if p["name"] == LOWERING_PASS), {"layers": []})
    return {"lowered": [r["name"] for r in stats["layers"] if r["lowered"]],
            "layers": stats["layers"], "sizes": size_summary(stats, rows, out_bytes)}


def _format_sparse_ops(sp: dict) -> str:
    lines = []
    for r in sp["layers"]:
        est = "" if r["estimated_speedup"] is None else f", est. {r['estimated_speedup']:.2f}x"
        word = "lowered" if r["lowered"] else "dense  "
        lines.append(printable(f"sparse-ops: {word} {r['name']} ({r['reason']}{est})"))
    z = sp["sizes"]
    lines.append(f"sizes: sparse-ops {z['sparse_ops_bytes'] / 1e6:.2f} MB, dense "
                 f"~{z['dense_bytes_estimated'] / 1e6:.2f} MB, portable "
                 f"~{z['portable_bytes_estimated'] / 1e6:.2f} MB ({z['method']})")
    return "\n".join(lines)


def cmd_inspect(args, console: Console) -> int:
    from onnxprune.api import inspect
    from onnxprune.core.stats import format_note, format_table

    report = inspect(args.model,
                     before_run=lambda reads: check_paths(reads, [("--json", args.json)]))
    write_json(report, args.json)
    if report["layers"]:
        console.info(format_table(report["layers"], report["total"]))
    else:
        console.info("no prunable layer found")
    for n in report["notes"]:
        console.info(format_note(n))
    return EXIT_OK
