"""Sensitivity analysis (Han et al. 2015, §4 and Fig. 6): prune one layer at a time.

For every analysed layer l and every grid point g, only layer l is pruned — every other layer
keeps its dense weights — and top-1 accuracy is measured with ONNX Runtime on validation data:

    W_l ← W_l ⊙ [|W_l| ≥ t_l(g)],   a_l(g) = acc(model with that one layer pruned),
    Δ_l(g) = 100 · (a_dense − a_l(g))                     (accuracy drop, percentage points)

The grid is either a list of *sparsities* s (the share of the layer's weights that are zero
afterwards; zeros already present count as pruned): t_l is the threshold that prunes
⌈s·n_l⌉ weights, q_l = t_l / σ(W_l) is solved by :func:`masks.quality_for_sparsity`; or a list
of *quality parameters* q: t_l = q · σ(W_l) directly.  Either way each point records q, t and
the achieved sparsity, so a point can be turned back into a recipe entry.

Recommendation rule (per-layer budget B, ``--budget``).  For each layer take the grid points
in increasing order of pruning and keep the last one before the first point whose drop
exceeds B:

    q*_l = q_l(g_k),  k = max{ j : Δ_l(g_i) ≤ B for every i ≤ j }

Stopping at the first violation (rather than taking the largest passing point anywhere)
keeps a lucky high-sparsity point from being chosen past a failed one.  A sensitive layer —
the paper's conv1 — fails earlier and so gets a smaller q: the paper's "the most sensitive
layer gets the smallest threshold" falls out of the rule.  Because the recipe's q is applied
to the same dense σ, ``prune --recipe`` reproduces each chosen mask exactly, so each layer's
drop on this validation set, alone, is its Δ_l(g_k) ≤ B.

Total budget T (``--total-budget``): one common per-layer budget b is chosen, as large as
possible such that the chosen points' drops add up to at most T:

    b* = max{ b : Σ_l max(0, Δ_l(g_k(b))) ≤ T }

(drops of layers pruned together are treated as additive, the usual first-order assumption of
sensitivity-based pruning; a negative drop — pruning that helps — is counted as 0).  The
accuracy of all recommended layers pruned *together* is measured afterwards and reported, so
the additivity assumption is checked, not trusted.

Efficiency: the model is imported once and its layer weights are made dense initializers (or
Constant values) once; each grid point swaps one tensor's contents in the in-memory model,
evaluates, and swaps the original back.  The validation data is validated once and reused.
Since masks are nested (a higher threshold never revives a weight), two points of one layer
with the same number of zeros have the same mask: such repeats, and points that prune
nothing (the dense model), reuse the accuracy already measured instead of building another
ONNX Runtime session.
"""

from __future__ import annotations

import csv
import dataclasses
import glob as _glob
import io as _io
import time
from collections.abc import Callable

import numpy as np
import yaml
from onnx import ModelProto, TensorProto, numpy_helper

from onnxprune.core import masks
from onnxprune.runtime.datasets import Dataset, check_dataset, input_specs, n_classes
from onnxprune.core.errors import UsageError
from onnxprune.core.graph import find_layers, graph_from_model, graph_to_model, weight_values
from onnxprune.core.io import proto_graphs

DEFAULT_SPARSITY_GRID = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)
DEFAULT_QUALITY_GRID = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0)

CSV_COLUMNS = ("layer", "kind", "op", "params", "grid", "quality", "threshold", "sparsity",
               "nonzero", "top1", "top5", "drop_pp")


@dataclasses.dataclass
class SensitivityResult:
    """Curves of one analysis; ``layers[i]["points"]`` follow the grid order."""

    grid_kind: str  # "sparsity" | "quality"
    grid: list[float]
    dense: dict  # evaluate() of the unpruned model
    layers: list[dict]
    evaluations: int  # ONNX Runtime evaluations actually run (dense included)
    wall_seconds: float

    def to_json(self) -> dict:
        """The curves without timing (so the file is the same for the same input)."""
        return {"grid": {"kind": self.grid_kind, "values": self.grid},
                "dense": _acc(self.dense), "layers": self.layers}


def _acc(acc: dict) -> dict:
    return {"top1": acc["top1"], "top5": acc.get("top5"), "n": acc["n"]}


# --------------------------------------------------------------------------- grid parsing


def parse_grid(text: str, kind: str) -> list[float]:
    """``"0,10,50,90"`` → sorted unique values.  Sparsities are given in percent, in [0, 100);
    qualities as plain numbers >= 0.  An empty grid is a usage error."""
    items = [x.strip() for x in (text or "").split(",") if x.strip()]
    if not items:
        raise UsageError(f"the {kind} grid is empty; give comma-separated values")
    values = []
    for item in items:
        try:
            v = float(item.rstrip("%"))
        except ValueError:
            raise UsageError(f"grid value {item!r} is not a number") from None
        if not np.isfinite(v):
            raise UsageError(f"grid value {item!r} is not finite")
        if kind == "sparsity":
            if not 0.0 <= v < 100.0:
                raise UsageError(f"sparsity grid values are percentages in [0, 100), got {item}")
            v = v / 100.0
        elif v < 0.0:
            raise UsageError(f"quality grid values must be >= 0, got {item}")
        values.append(v)
    return sorted(set(values))


def check_grid(grid, kind: str) -> list[float]:
    if kind not in ("sparsity", "quality"):
        raise UsageError(f"grid kind must be sparsity or quality, got {kind!r}")
    values = sorted({float(v) for v in grid})
    if not values:
        raise UsageError("the grid is empty")
    for v in values:
        if not np.isfinite(v) or v < 0 or (kind == "sparsity" and v >= 1.0):
            raise UsageError(f"bad {kind} grid value {v}: sparsities are in [0, 1), "
                             "qualities >= 0")
    return values


# --------------------------------------------------------------------------- the analysis


def _working_model(model: ModelProto, layers) -> tuple[ModelProto, dict[str, TensorProto]]:
    """A copy of ``model`` whose layer weights are dense tensors, and layer name → its tensor.

    Setting each weight's values once makes the graphsurgeon export write it as a dense
    initializer (or dense Constant value), whatever its storage in the input (sparse
    initializer, Constant node, external data already read).  Each weight is also given a name
    of its own: weight names need not be unique across scopes (two If branches may each store
    ``stft.forward_basis_buffer``), and the tensors are found by that name in every scope.
    """
    graph = graph_from_model(model)
    found, _ = find_layers(graph)
    by_name = {layer.name: layer for layer in found}
    keys = {}
    for i, layer in enumerate(layers):
        g = by_name[layer.name]
        g.weight.values = np.array(weight_values(g))
        g.weight.name = keys[layer.name] = f"onnxprune.sensitivity.{i}"
    work = graph_to_model(graph, model)
    tensors: dict[str, TensorProto] = {}
    for g in proto_graphs(work.graph):
        tensors.update((t.name, t) for t in g.initializer)
        for node in g.node:
            if node.op_type == "Constant":
                tensors.update((a.t.name, a.t) for a in node.attribute if a.name == "value")
    return work, {layer: tensors[key] for layer, key in keys.items() if key in tensors}


def select_layers(model: ModelProto, patterns: list[str] | None = None):
    """The prunable layers to analyse: all of them, or those matching any glob.

    A glob that matches no prunable layer is a usage error (a typo must not silently analyse
    nothing).
    """
    layers, _ = find_layers(graph_from_model(model))
    usable = [layer for layer in layers if not layer.skip_reason and layer.params]
    if not usable:
        raise UsageError("the model has no prunable layer (Gemm/MatMul/Conv/ConvTranspose with "
                         "a constant floating-point weight)")
    if not patterns:
        return usable
    chosen = []
    for pattern in patterns:
        hits = [layer for layer in usable if layer.matches(pattern)]
        if not hits:
            names = ", ".join(layer.name for layer in usable)
            raise UsageError(f"--layers {pattern!r} matches no prunable layer; layers: {names}")
        chosen.extend(h for h in hits if h not in chosen)
    order = {layer.name: i for i, layer in enumerate(usable)}
    return sorted(chosen, key=lambda layer: order[layer.name])


def _point(w: np.ndarray, std: float, value: float, kind: str) -> tuple[np.ndarray, float, float]:
    """Prune ``w`` for one grid value: (pruned weights, q, threshold)."""
    q = masks.quality_for_sparsity(w, value) if kind == "sparsity" else float(value)
    threshold = q * std
    pruned, _, _ = masks.apply_threshold(w, threshold)
    return pruned, q, threshold


def analyse(
    model: ModelProto,
    val: Dataset,
    *,
    grid=DEFAULT_SPARSITY_GRID,
    grid_kind: str = "sparsity",
    layers: list[str] | None = None,
    batch_size: int = 256,
    threads: int | None = None,
    reuse: bool = True,
    progress: Callable[[str, int, int, str], None] | None = None,
) -> SensitivityResult:
    """Prune each selected layer alone at every grid point and measure top-1 with ORT.

    ``reuse=False`` evaluates every point, even those whose weights equal an already measured
    point (used by the tests to check that the reuse changes nothing).
    """
    from onnxprune.runtime.evaluate import evaluate

    t0 = time.perf_counter()
    grid = check_grid(grid, grid_kind)
    chosen = select_layers(model, layers)
    val = check_dataset(val, input_specs(model), n_classes(model), name="val",
                        labels=val.reference is None)
    work, tensors = _working_model(model, chosen)

    def run() -> dict:
        return evaluate(work, val, batch_size=batch_size, threads=threads)

    dense = run()
    evaluations = 1
    total = len(chosen) * len(grid)
    done = 0
    out_layers = []
    for layer in chosen:
        t = tensors.get(layer.name)
        if t is None or tuple(t.dims) != tuple(layer.shape):
            raise UsageError(f"cannot locate the weight of layer {layer.name!r} "
                             f"({layer.weight_name!r}) in the model")
        original = t.SerializeToString()
        w = numpy_helper.to_array(t)
        std = masks.weight_std(w)
        nonzero_dense = masks.count_nonzero(w)
        measured: dict[int, dict] = {nonzero_dense: dense} if reuse else {}
        points = []
        try:
            for value in grid:
                pruned, q, threshold = _point(w, std, value, grid_kind)
                nnz = masks.count_nonzero(pruned)
                acc = measured.get(nnz)
                if acc is None:
                    t.CopyFrom(numpy_helper.from_array(pruned, t.name))
                    acc = run()
                    evaluations += 1
                    t.ParseFromString(original)
                    if reuse:
                        measured[nnz] = acc
                points.append({
                    "grid": value, "quality": q, "threshold": threshold,
                    "sparsity": (w.size - nnz) / w.size, "nonzero": nnz,
                    "top1": acc["top1"], "top5": acc.get("top5"),
                    "drop_pp": 100.0 * (dense["top1"] - acc["top1"]),
                })
                done += 1
                if progress is not None:
                    progress("sensitivity", done, total, layer.name)
        finally:
            t.ParseFromString(original)
        out_layers.append({
            "name": layer.name, "weight": layer.weight_name, "op": layer.op,
            "kind": layer.kind, "scope": layer.scope, "shape": list(layer.shape), "params": layer.params,
            "std": std, "sparsity_dense": (w.size - nonzero_dense) / w.size, "points": points,
        })
    return SensitivityResult(grid_kind, list(grid), dense, out_layers, evaluations,
                             time.perf_counter() - t0)


# --------------------------------------------------------------------------- recommending


def _prefix_choice(points: list[dict], budget: float) -> int:
    """Index of the last point before the first one whose drop exceeds ``budget`` (-1: none)."""
    order = sorted(range(len(points)), key=lambda i: (points[i]["sparsity"], points[i]["quality"]))
    best = -1
    for i in order:
        if points[i]["drop_pp"] > budget + 1e-9:
            break
        best = i
    return best


def recommend(result: SensitivityResult, *, budget_pp: float | None = None,
              total_budget_pp: float | None = None) -> dict:
    """Per-layer quality parameters for an accuracy budget (see the module docstring).

    Returns ``{"rule", "budget_pp", "total_budget_pp", "per_layer_budget_pp", "layers": [...]}``
    where each layer entry holds the chosen point (q, threshold, sparsity, drop) or q = 0
    when even the mildest grid point is over budget.
    """
    if (budget_pp is None) == (total_budget_pp is None):
        raise UsageError("give exactly one of a per-layer budget and a total budget")
    for b in (budget_pp, total_budget_pp):
        if b is not None and (not np.isfinite(b) or b < 0):
            raise UsageError(f"an accuracy budget must be a finite number >= 0, got {b}")
    if budget_pp is not None:
        per_layer = float(budget_pp)
        rule = "per-layer"
    else:
        # Candidate common budgets: 0 and every measured positive drop; the largest whose
        # summed drops fit the total wins (the sum is monotone in b).
        candidates = sorted({0.0} | {p["drop_pp"] for layer in result.layers
                                     for p in layer["points"] if p["drop_pp"] > 0})
        per_layer = 0.0
        for b in candidates:
            if _summed_drop(result, b) <= total_budget_pp + 1e-9:
                per_layer = b
        rule = "total"
    chosen = []
    for layer in result.layers:
        i = _prefix_choice(layer["points"], per_layer)
        p = layer["points"][i] if i >= 0 else None
        chosen.append({
            "name": layer["name"], "weight": layer["weight"], "kind": layer["kind"],
            "params": layer["params"],
            "quality": p["quality"] if p else 0.0,
            "threshold": p["threshold"] if p else 0.0,
            "sparsity": p["sparsity"] if p else layer["sparsity_dense"],
            "drop_pp": p["drop_pp"] if p else 0.0,
            "grid": p["grid"] if p else None,
        })
    params = sum(c["params"] for c in chosen)
    pruned = sum(c["sparsity"] * c["params"] for c in chosen)
    return {
        "rule": rule, "budget_pp": budget_pp, "total_budget_pp": total_budget_pp,
        "per_layer_budget_pp": per_layer,
        "summed_drop_pp": sum(max(0.0, c["drop_pp"]) for c in chosen),
        "sparsity": pruned / params if params else 0.0,
        "layers": chosen,
    }


def _summed_drop(result: SensitivityResult, budget: float) -> float:
    total = 0.0
    for layer in result.layers:
        i = _prefix_choice(layer["points"], budget)
        if i >= 0:
            total += max(0.0, layer["points"][i]["drop_pp"])
    return total


def recipe_yaml(rec: dict, all_layers: list[str], *, source: str, val: str) -> str:
    """A ``prune --recipe`` file: the recommended q per layer, every other layer skipped.

    Layer names are glob-escaped (``[`` in a name would otherwise be a character class).
    Floats read back bit-identical: the recipe must reproduce the analysed masks exactly.
    """
    analysed = {c["name"] for c in rec["layers"]}
    if rec["rule"] == "per-layer":
        rule = f"per-layer budget {rec['budget_pp']:g} pp of top-1"
    else:
        rule = (f"total budget {rec['total_budget_pp']:g} pp of top-1 "
                f"(common per-layer budget {rec['per_layer_budget_pp']:.4g} pp)")
    lines = [
        "# Recommended by `onnxprune sensitivity` for " + _yaml_comment(source),
        "# on " + _yaml_comment(val) + ": " + rule + ".",
        "# Each q is the largest grid point whose drop (that layer pruned alone) stays within",
        "# the budget; q = 0 prunes nothing.  Drops measured per layer, on that data:",
    ]
    for c in rec["layers"]:
        lines.append(f"#   {_yaml_comment(c['name'])}: {100 * c['sparsity']:.1f}% pruned, "
                     f"drop {c['drop_pp']:+.2f} pp")
    layers = {_glob.escape(c["name"]): float(c["quality"]) for c in rec["layers"]}
    skipped = [_glob.escape(n) for n in all_layers if n not in analysed]
    options = {"layers": layers, **({"skip": skipped} if skipped else {})}
    body = {"version": 1, "passes": [{"threshold-by-std": options}], "emit": "portable"}
    # safe_dump writes floats so that they read back bit-identical (repr, with the ".0" YAML
    # 1.1 needs: a bare 1e-05 would read back as a string); sort_keys=False keeps layer order.
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False, width=2**31)


def _yaml_comment(s: str) -> str:
    return " ".join(str(s).split())


def curves_csv(result: SensitivityResult) -> str:
    """One row per (layer, grid point); floats as ``repr`` (they read back bit-identical), None
    as an empty cell, cells quoted by the stdlib ``csv`` where needed.

    Rows end in CRLF (RFC 4180, the csv default): with "\r" in the terminator every Python
    quotes a cell holding a bare carriage return, which would otherwise split the row."""
    buf = _io.StringIO()
    out = csv.writer(buf)
    out.writerow(CSV_COLUMNS)
    for layer in result.layers:
        for p in layer["points"]:
            out.writerow([layer["name"], layer["kind"], layer["op"], layer["params"], p["grid"],
                          p["quality"], p["threshold"], p["sparsity"], p["nonzero"], p["top1"],
                          p["top5"], p["drop_pp"]])
    return buf.getvalue()


def apply_recommendation(model: ModelProto, rec: dict) -> ModelProto:
    """``model`` with every recommended layer pruned at its q (all at once, for the check of
    the additivity assumption)."""
    from onnxprune.passes import ThresholdByStd

    graph = graph_from_model(model)
    layers, _ = find_layers(graph)
    names = {c["name"] for c in rec["layers"]}
    overrides = {_glob.escape(c["name"]): c["quality"] for c in rec["layers"]}
    skip = [_glob.escape(layer.name) for layer in layers if layer.name not in names]
    result = ThresholdByStd({"layers": overrides, "skip": skip})(graph)
    return graph_to_model(result.graph, model)


__all__ = [
    "DEFAULT_QUALITY_GRID",
    "DEFAULT_SPARSITY_GRID",
    "SensitivityResult",
    "analyse",
    "apply_recommendation",
    "curves_csv",
    "parse_grid",
    "recipe_yaml",
    "recommend",
    "select_layers",
]
