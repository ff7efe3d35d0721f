"""``onnxprune.prune``: a recipe's passes over one model, written out, and the report."""

from __future__ import annotations

from typing import Callable

from onnxprune.api.source import model_files, open_model, path_of
from onnxprune.core.errors import GateFailed, InvalidModelError, UsageError

# Keyword → threshold-pass option key, for the flags that map one to one.
_THRESHOLD_KEYS = (("min_params", "min-params"),
                   ("target_sparsity", "target-sparsity"), ("target_scope", "target-scope"))
# Keyword → lowering-pass option key.
_LOWERING_KEYS = (("expected_batch", "batch"), ("threads", "threads"), ("lower_for", "objective"),
                  ("sparse_values", "values"), ("winograd", "winograd"))


def build_recipe(recipe=None, *, quality=None, conv_quality=None, fc_quality=None, layers=None,
                 skip=None, min_params=None, target_sparsity=None, target_scope=None,
                 remove_dead_neurons=True, emit=None, expected_batch=None, threads=None,
                 lower_for=None, sparse_values=None, winograd=None, min_sparsity=None, max_size_mb=None):
    """The recipe (a path, a ``Recipe`` or None for the default) with the keyword overrides
    merged in, every option validated before any model is read (``UsageError`` otherwise).

    ``quality`` sets q for conv and fc layers, then ``conv_quality`` / ``fc_quality`` each
    kind; ``layers`` is ``[(glob, q), …]`` (the last match wins). These and ``skip``,
    ``min_params``, ``target_sparsity``, ``target_scope`` are options of the recipe's
    thresholding pass; ``expected_batch``, ``threads``, ``lower_for``, ``sparse_values``
    ("fp32" | "fp16") and ``winograd`` (True: 3x3 layers may run by Winograd where timed
    faster) of its lowering pass.
    """
    from onnxprune.passes.recipe import Recipe, default_recipe, load_recipe

    if recipe is None:
        recipe = default_recipe()
    elif not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    overrides = {}
    if quality is not None or conv_quality is not None or fc_quality is not None:
        overrides["quality"] = _quality(recipe, quality, conv_quality, fc_quality)
    if layers:
        overrides["layers"] = [{g: q} for g, q in layers]
    if skip:
        overrides["skip"] = list(skip)
    given = dict(min_params=min_params, target_sparsity=target_sparsity,
                 target_scope=target_scope)
    overrides.update({key: given[kw] for kw, key in _THRESHOLD_KEYS if given[kw] is not None})
    if overrides:
        _merge(recipe, "takes_threshold_flags", overrides, "threshold options were given but "
               "the recipe has no threshold-by-std pass")
    if not remove_dead_neurons:
        recipe.passes = [(n, o) for n, o in recipe.passes if not _declares(n, "removes_neurons")]
    if emit is not None:
        recipe.emit = emit
    _apply_lowering(recipe, dict(expected_batch=expected_batch, threads=threads,
                                 lower_for=lower_for, sparse_values=sparse_values,
                                 winograd=["*"] if winograd else None))
    if min_sparsity is not None:
        recipe.gates["min-sparsity"] = min_sparsity
    if max_size_mb is not None:
        recipe.gates["max-size-mb"] = max_size_mb
    recipe.build_passes()  # validate the merged options now, before any model is read
    return recipe


def _declares(name: str, capability: str) -> bool:
    from onnxprune.passes import REGISTRY

    return bool(getattr(REGISTRY.get(name), capability, False))


def _quality(recipe, quality, conv_quality, fc_quality) -> dict[str, float]:
    """q per kind: the recipe's, then ``quality`` for both kinds, then each kind's own."""
    from onnxprune.passes.threshold_by_std import DEFAULT_QUALITY, check_quality

    i = recipe.find("takes_threshold_flags")
    opts = recipe.passes[i][1] if i is not None else {}
    base = check_quality("quality", (opts or {}).get("quality", DEFAULT_QUALITY))
    if quality is not None:
        base = {"conv": quality, "fc": quality}
    if conv_quality is not None:
        base["conv"] = conv_quality
    if fc_quality is not None:
        base["fc"] = fc_quality
    return base


def _merge(recipe, capability: str, overrides: dict, missing: str) -> None:
    i = recipe.find(capability)
    if i is None:
        raise UsageError(missing)
    name, opts = recipe.passes[i]
    recipe.passes[i] = (name, {**opts, **overrides})


def _apply_lowering(recipe, values: dict) -> None:
    """Batch / threads / objective become options of the lowering pass (added if absent)."""
    from onnxprune.passes.recipe import LOWERING_PASS

    given = {key: values[kw] for kw, key in _LOWERING_KEYS if values[kw] is not None}
    if not given:
        return
    if recipe.emit != "sparse-ops":
        raise UsageError("--expected-batch, --threads, --lower-for, --sparse-values and --winograd only "
                         "apply to --emit sparse-ops")
    if recipe.find("lowers_weights") is None:
        recipe.passes.append((LOWERING_PASS, {}))
    _merge(recipe, "lowers_weights", given, "")


def prune(model, output, *, recipe=None, in_place: bool = False,
          before_run: Callable[[list[str]], None] | None = None,
          progress: Callable | None = None, decide: str | None = None, batch_stream: bool | None = None,
          input_shapes: dict[str, tuple[int, ...]] | None = None, timer=None,
          **options) -> dict:
    """Prune ``model`` (a path or a ``ModelProto``) with a recipe, write it to ``output``, and
    return the report ``onnxprune prune --json`` writes.

    The default recipe is Han et al. (2015): per prunable weight W, with q per layer kind
    (conv 0.5, fc 1.0) or solved for ``target_sparsity``,

        t = q · σ(W);   W ← W ⊙ [|W| ≥ t]

    then the retraining dropout D_r = D_o·sqrt(C_ir/C_io) and the removal of neurons whose
    weights are all zero.  ``options`` are ``build_recipe``'s keywords.  A model already
    carrying this recipe's stamp is written unchanged (prune is idempotent).  With emit
    sparse-ops the lowering is decided as in ``onnxprune.lower`` (``decide`` "measure", the
    default, or "model"; ``input_shapes``, ``timer``, ``batch_stream``), on the pruned graph.

    Exceptions (the CLI's exit code): ``UsageError`` (2) for a bad option or path,
    ``InvalidModelError`` (4) for a malformed or unsafe model, ``RuntimeFailure`` /
    ``PassError`` (1) otherwise.  A missed recipe gate (min-sparsity, max-size-mb) is a
    result, as in every verb: the output is written and the report says ``status``
    "gate-failed" (``raise_for_gates(report)`` turns it into ``GateFailed``, exit 3, as the
    command does).  ``before_run(files)`` is called with the files read once the model is
    open, before anything is written.
    """
    from onnxprune.api.lower import checked_shapes
    from onnxprune.runtime.lowering import MeasuredLowering

    from onnxprune.runtime.bench import csr_nodes
    from onnxprune.runtime.check import checked_input_shapes

    recipe = build_recipe(recipe, **options)
    if recipe.emit != "sparse-ops" and decide is not None:
        raise UsageError("--decide only applies to --emit sparse-ops")
    if recipe.emit != "sparse-ops" and batch_stream is not None:
        raise UsageError("--no-batch-stream only applies to --emit sparse-ops")
    shapes = checked_shapes(input_shapes)
    decision = MeasuredLowering(decide or "measure", shapes, timer, progress,
                                stream=True if batch_stream is None else batch_stream)
    if output is None:
        raise UsageError("prune: an output path is required")
    proto, info = open_model(model, lazy=True)
    from onnxprune.passes.pipeline import STAMP_RECIPE, read_stamp

    lowered = csr_nodes(proto)
    # its CSR layers are not prunable layers, so the gates would count the rest only; a file
    # this recipe wrote is the exception: prune is idempotent, it is written unchanged
    if lowered and read_stamp(proto).get(STAMP_RECIPE) != recipe.sha256:
        raise InvalidModelError(f"the model is already lowered ({len(lowered)} sparse-op node(s) "
                                "of onnxprune's CSR ops), and a lowered layer cannot be pruned "
                                "again; prune the dense model it was lowered from")
    shapes = checked_input_shapes(proto, shapes)
    if before_run is not None:
        before_run(model_files(info))
    return _prune(proto, info, path_of(model), output, recipe, in_place, progress, decision,
                  shapes)


def raise_for_gates(report: dict) -> None:
    """``GateFailed`` naming every missed gate of a prune report; nothing when all passed."""
    failed = [g for g in report["gates"] if not g["passed"]]
    if failed:
        raise GateFailed("quality gate failed: " + "; ".join(
            f"{g['name']} required {g['required']:g}, got {g['actual']:.4g}" for g in failed))


def _prune(proto, info, path, output, recipe, in_place, progress, decision, input_shapes) -> dict:
    from onnxprune import __version__
    from onnxprune.core import io
    from onnxprune.core.graph import graph_from_model, infer_shapes, save_graph
    from onnxprune.core.stats import totals, versions
    from onnxprune.passes.pipeline import run_pipeline

    from onnxprune.runtime.bench import counted_layer_rows, csr_nodes
    from onnxprune.runtime.shape_probe import shape_probe

    graph = graph_from_model(proto, info)
    symbols: dict = {}
    shapes = infer_shapes(proto, input_shapes, symbols=symbols)
    sizing = {"symbols": symbols, "measure": shape_probe(proto, input_shapes, info)}
    before_rows, notes = _rows_before(graph, shapes, sizing)
    def refine(kind, options, g):
        return decision.options_for(options, g, proto) if kind.lowers_weights else options

    result = run_pipeline(proto, recipe, progress=progress, graph=graph, refine=refine)
    lowering = result.stats_of("lowers_weights")
    if lowering is not None:
        result.graph = decision.finish(result.graph, proto, lowering)
    if result.already_applied and csr_nodes(proto):
        # a file this recipe lowered, written unchanged: its CSR layers are no prunable layers,
        # so it is counted, as inspect counts it, as the dense model it stands for (the gates
        # had seen only the layers left dense: 65.6% of 304K weights for a 77%-sparse model)
        counted, notes = counted_layer_rows(proto, info, input_shapes)
        rows = [_row(r, r, {}) for r in counted]
    else:
        rows, notes = _layer_rows(proto, info, shapes, before_rows, notes, result, sizing)
    if recipe.emit == "sparse-ops":
        _count_lowered_weights(rows, result.stats_of("lowers_weights"))
    total = totals(rows)
    outputs: list[dict] = []
    if result.already_applied:
        _, sparse = io.save_with_storage(proto, output, storage=recipe.storage, source=info,
                                         in_place=in_place, records=outputs)
    else:
        _, sparse = save_graph(result.graph, proto, output, storage=recipe.storage, source=info,
                               in_place=in_place, metadata=result.metadata, records=outputs,
                               progress=progress)
    out_bytes = sum(o["bytes"] for o in outputs)
    in_bytes = info.file_bytes if info is not None else proto.ByteSize()
    gates = _gates(recipe.gates, total, out_bytes)
    report = {
        "command": "prune",
        "status": "gate-failed" if any(not g["passed"] for g in gates) else "ok",
        "tool": {"name": "onnxprune", "version": __version__},
        "versions": versions(),
        "input": {"path": info.path if info is not None else path, "bytes": in_bytes},
        "outputs": outputs,
        "emit": recipe.emit,
        "sparse_initializers": sparse,
        "recipe": recipe.normalised(),
        "recipe_sha256": recipe.sha256,
        "already_applied": result.already_applied,
        "layers": rows,
        "total": total,
        "size": {"input_bytes": in_bytes, "output_bytes": out_bytes,
                 "ratio": in_bytes / out_bytes if out_bytes else None},
        "passes": result.passes,
        "dead_neurons": result.report_sections().get("dead_neurons"),
        "notes": notes,
        "gates": gates,
    }
    if recipe.emit == "sparse-ops":
        report["sparse_ops"] = _sparse_ops_report(lowering, rows, out_bytes)
        report["lowering"] = decision.report(lowering)
    return report


def _rows_before(graph, shapes, sizing):
    """Rows of the input model; nonzero counts are filled in later (the threshold pass counts
    them where it runs, which saves a pass over every weight of a large model). ``sizing``:
    the symbols and shape probe of ``core.stats.layer_reuses``."""
    from onnxprune.core.stats import graph_rows

    return graph_rows(graph, shapes, with_std=False, count=False, **sizing)


def _layer_rows(proto, info, shapes, before_rows, notes, result, sizing):
    """Per-layer rows: params and shapes of the input, nonzero and shapes of the output, and
    the q / σ / t the threshold pass used.  Density = nonzero after / params before."""
    from onnxprune.core.graph import graph_from_model
    from onnxprune.core.stats import graph_rows

    after_rows = before_rows if result.already_applied else \
        graph_rows(result.graph, shapes, with_std=False, **sizing)[0]
    threshold = result.stats_of("takes_threshold_flags")
    threshold_stats = {r["name"]: r for r in threshold["layers"]} if threshold else {}
    if threshold:
        notes = notes + [n for n in threshold["notes"] if n not in notes]
    for r in before_rows:
        t = threshold_stats.get(r["name"], {})
        if t.get("nonzero_before") is not None:
            r["nonzero"] = t["nonzero_before"]
    if any(r["nonzero"] is None for r in before_rows):
        counted = _by_layer(graph_rows(graph_from_model(proto, info), shapes, with_std=False, **sizing)[0])
        for r in before_rows:
            if r["nonzero"] is None:
                r.update({k: _match(counted, r)[k] for k in ("nonzero", "density", "flops_remaining")})
    after = _by_layer(after_rows)
    return [_row(r, _match(after, r) or r, threshold_stats.get(r["name"], {}))
            for r in before_rows], notes


def _by_layer(rows: list[dict]) -> dict:
    """Rows by (layer name, weight name) and by weight name alone: a weight's name need not be
    unique across scopes (an If branch may store its own ``W``), the pair is."""
    found = {(r["name"], r["weight"]): r for r in rows}
    found.update({r["weight"]: r for r in rows})
    return found


def _match(rows: dict, r: dict) -> dict | None:
    return rows.get((r["name"], r["weight"])) or rows.get(r["weight"])


def _row(r: dict, a: dict, t: dict) -> dict:
    from onnxprune.core.stats import merged_row

    return {
        **merged_row(r, a),
        "quality": t.get("quality"),
        "std": t.get("std", r["std"]),
        "threshold": t.get("threshold"),
        "skipped": t.get("skipped") or r["skipped"],
    }


def _gates(wanted: dict, total: dict, out_bytes: int) -> list[dict]:
    gates = []
    if wanted.get("min-sparsity") is not None:
        actual = total["sparsity"] or 0.0
        gates.append({"name": "min-sparsity", "required": wanted["min-sparsity"],
                      "actual": actual, "passed": actual >= wanted["min-sparsity"]})
    if wanted.get("max-size-mb") is not None:
        actual = out_bytes / 1e6
        gates.append({"name": "max-size-mb", "required": wanted["max-size-mb"],
                      "actual": actual, "passed": actual <= wanted["max-size-mb"]})
    return gates


def _count_lowered_weights(rows: list[dict], stats: dict | None) -> None:
    """Lowered weights are CSR arrays now, invisible to find_layers: take their counts from
    the lowering pass."""
    by_weight = {r["weight"]: r for r in (stats or {"layers": []})["layers"] if r["lowered"]}
    for row in rows:
        low = by_weight.get(row["weight"])
        if low is None:
            continue
        row["weight_shape"] = low["weight_shape"]
        row["nonzero"] = low["nonzero"]
        row["density"] = low["nonzero"] / row["params"] if row["params"] else None
        if row["flops"] is not None and row["params"]:
            row["flops_remaining"] = row["flops"] * low["nonzero"] // row["params"]


def _sparse_ops_report(stats: dict | None, rows: list[dict], out_bytes: int) -> dict:
    from onnxprune.core.stats import size_summary

    stats = stats or {"layers": []}
    return {"lowered": [r["name"] for r in stats["layers"] if r["lowered"]],
            "layers": stats["layers"], "rewrites": stats.get("rewrites", []),
            "nchw_pools": stats.get("nchw_pools", []),
            "sizes": size_summary(stats, rows, out_bytes)}
