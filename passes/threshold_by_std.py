"""ThresholdByStd — Han et al. (2015) magnitude pruning, one threshold per layer.

For each prunable weight W (found by ``onnxprune.core.graph.find_layers``; a weight shared by several
nodes is one layer):

    t = q · σ(W);   W ← W ⊙ [|W| ≥ t]

q comes from, in order of precedence: the last ``layers`` glob matching the layer (or weight)
name; the target-sparsity solver (``target-sparsity`` with ``target-scope`` per-layer — q solved
so that layer's pruned share is the target — or global — one q for all layers, so the *total*
pruned share is the target); the per-kind default ``quality`` (conv / fc).

Layers matching ``skip``, smaller than ``min-params``, not floating point, or whose weight is a
graph input are left untouched and reported with the reason.  A layer holding a NaN or ±Inf
weight is left untouched too, with a note: σ is then NaN, and ``|w| ≥ NaN`` is false for every
weight, so thresholding would zero the whole layer.  Zeros already present stay zero.
The std and threshold used are recorded per layer in the stats.

A ``layers`` or ``skip`` glob that matches no layer is a usage error (a typo must not
silently prune with the defaults).
"""

from __future__ import annotations

from typing import Any

import onnx_graphsurgeon as gs

from onnxprune.core import masks
from onnxprune.core.errors import UsageError, name_list
from onnxprune.core.graph import Layer, find_layers, set_weight_values, weight_values

from .base import (Option, Pass, PassResult, check_choice, check_float, check_int, check_optional,
                   check_str_list, parse_options)

DEFAULT_QUALITY = {"conv": 0.5, "fc": 1.0}


def check_quality(key: str, v: Any) -> dict[str, float]:
    num = check_float(0.0)
    if isinstance(v, dict):
        bad = sorted(set(map(str, v)) - {"conv", "fc"})
        if bad:
            raise UsageError(f"{key}: unknown layer kind(s) {', '.join(bad)}; use conv and fc")
        out = dict(DEFAULT_QUALITY)
        out.update({k: num(f"{key}.{k}", x) for k, x in v.items()})
        return out
    q = num(key, v)
    return {"conv": q, "fc": q}


def _check_layers(key: str, v: Any) -> tuple[tuple[str, float], ...]:
    num = check_float(0.0)
    if isinstance(v, dict):
        items = list(v.items())
    elif isinstance(v, (list, tuple)):
        items = []
        for entry in v:
            if not isinstance(entry, dict) or len(entry) != 1:
                raise UsageError(f"{key}: each entry must be a one-key mapping GLOB: Q")
            items.extend(entry.items())
    else:
        raise UsageError(f"{key}: expected a mapping of layer-name globs to quality values")
    out = []
    for glob, q in items:
        if not isinstance(glob, str) or not glob:
            raise UsageError(f"{key}: layer globs must be non-empty strings, got {glob!r}")
        out.append((glob, num(f"{key}[{glob}]", q)))
    return tuple(out)


class ThresholdByStd(Pass):
    name = "threshold-by-std"
    takes_threshold_flags = True
    OPTIONS = (
        Option("quality", check_quality, dict(DEFAULT_QUALITY),
               "quality parameter q: a number for all layers, or {conv: Q, fc: Q}"),
        Option("layers", _check_layers, (), "per-layer overrides: {GLOB: Q}; the last match wins"),
        Option("skip", check_str_list, (), "layer-name globs never pruned"),
        Option("min-params", check_int(0), 0, "leave layers with fewer weights than this"),
        Option("target-sparsity", check_optional(check_float(0.0, 1.0, hi_open=True)), None,
               "solve q for this pruned share instead of using quality"),
        Option("target-scope", check_choice("per-layer", "global"), "per-layer",
               "per-layer: every layer reaches the target; global: the total does"),
    )

    def __init__(self, options: dict | None = None):
        o = parse_options(self.name, self.OPTIONS, options)
        self.quality: dict[str, float] = o["quality"]
        self.layer_quality: tuple[tuple[str, float], ...] = o["layers"]
        self.skip: tuple[str, ...] = o["skip"]
        self.min_params: int = o["min-params"]
        self.target_sparsity: float | None = o["target-sparsity"]
        self.target_scope: str = o["target-scope"]

    def _override(self, layer: Layer) -> float | None:
        q = None
        for glob, value in self.layer_quality:
            if layer.matches(glob):
                q = value
        return q

    def _skip_reason(self, layer: Layer) -> str | None:
        if layer.skip_reason:
            return layer.skip_reason
        if any(layer.matches(g) for g in self.skip):
            return "in the skip list"
        if layer.params < self.min_params:
            return f"fewer than min-params ({layer.params} < {self.min_params})"
        bad = masks.count_nonfinite(weight_values(layer))
        if bad:
            return (f"{bad} non-finite weight(s) (NaN or Inf): the std is undefined, "
                    "layer not pruned")
        return None

    def _check_globs(self, layers: list[Layer]) -> None:
        """Every ``layers`` and ``skip`` glob must match a layer (or its weight name)."""
        for key, globs in (("--layer / layers", [g for g, _ in self.layer_quality]),
                           ("--skip / skip", self.skip)):
            for glob in globs:
                if not any(layer.matches(glob) for layer in layers):
                    raise UsageError(f"{self.name}: {key} glob {glob!r} matches no layer; "
                                     f"layers: {name_list([layer.name for layer in layers])}")

    def run(self, graph: gs.Graph, progress=None) -> PassResult:
        layers, notes = find_layers(graph)
        self._check_globs(layers)
        rows: list[dict] = []
        active: list[tuple[Layer, float | None]] = []
        refused: list[dict] = []
        for layer in layers:
            reason = self._skip_reason(layer)
            if reason:
                rows.append(_row(layer, None, None, None, None, None, reason))
                if not layer.skip_reason and "non-finite" in reason:
                    refused.append({"node": layer.name, "op": layer.op, "reason": reason})
                continue
            active.append((layer, self._override(layer)))

        global_q = None
        if self.target_sparsity is not None and self.target_scope == "global":
            solved = [weight_values(layer) for layer, q in active if q is None]
            global_q = masks.global_quality_for_sparsity(solved, self.target_sparsity)
            del solved

        modified = False
        total = len(active)
        for i, (layer, q) in enumerate(active):
            w = weight_values(layer)
            if q is None:
                if self.target_sparsity is None:
                    q = self.quality[layer.kind]
                elif global_q is not None:
                    q = global_q
                else:
                    q = masks.quality_for_sparsity(w, self.target_sparsity)
            std = masks.weight_std(w)
            threshold = float(q) * std
            new, nnz_before, nnz_after = masks.apply_threshold(w, threshold)
            if nnz_after != nnz_before:
                set_weight_values(layer, new)
                modified = True
            rows.append(_row(layer, q, std, threshold, nnz_before, nnz_after, None))
            del w, new
            if progress is not None:
                progress(i + 1, total, layer.name)
        order = {layer.name: k for k, layer in enumerate(layers)}
        rows.sort(key=lambda r: order[r["name"]])
        return PassResult(graph, modified, {
            "layers": rows,
            "notes": [{"node": n.node, "op": n.op, "reason": n.reason} for n in notes] + refused,
            "global_quality": global_q,
        }, _stamp(rows))


def _stamp(rows: list[dict]) -> dict[str, dict[str, float]]:
    """The q and t = q·σ used per pruned layer, rounded as the model's metadata records them."""
    used = [r for r in rows if r["quality"] is not None]
    return {"quality": {r["name"]: round(float(r["quality"]), 6) for r in used},
            "threshold": {r["name"]: float(f"{r['threshold']:.6g}") for r in used}}


def _row(layer: Layer, q, std, threshold, nnz_before, nnz_after, skipped) -> dict:
    return {
        "name": layer.name,
        "weight": layer.weight_name,
        "op": layer.op,
        "kind": layer.kind,
        "shared_by": [n.name for n in layer.nodes] if len(layer.nodes) > 1 else [],
        "quality": q,
        "std": std,
        "threshold": threshold,
        "nonzero_before": nnz_before,
        "nonzero_after": nnz_after,
        "skipped": skipped,
    }
