"""The pruning pipeline: recipe → passes over one graph → stamped model.

    io.load → graph_from_model → pass₁ … passₙ → graph_to_model → stamp → (io.save)

The stamp (``metadata_props``) records the tool version, the recipe's sha256 and the quality
used per layer.  A model that already carries this recipe's stamp is returned untouched, so
running a recipe on its own output changes nothing (re-thresholding a pruned layer would prune
more, because σ shrinks with every pass — the stamp is what makes prune idempotent).
"""

from __future__ import annotations

import dataclasses
import json
from typing import Callable

import onnx_graphsurgeon as gs
from onnx import ModelProto

from onnxprune import __version__
from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes.recipe import Recipe

STAMP_VERSION = "onnxprune.version"
STAMP_RECIPE = "onnxprune.recipe_sha256"
STAMP_QUALITY = "onnxprune.quality"
STAMP_THRESHOLD = "onnxprune.threshold"


@dataclasses.dataclass
class PipelineResult:
    graph: gs.Graph
    original: ModelProto
    metadata: list[tuple[str, str]]  # metadata_props of the result (the stamp included)
    modified: bool
    already_applied: bool
    passes: list[dict]  # [{"name", "modified", "stats"}]

    @property
    def model(self) -> ModelProto:
        """The result as a self-contained in-memory ModelProto."""
        if self.already_applied:
            return self.original
        return graph_to_model(self.graph, self.original, self.metadata)


def read_stamp(model: ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("onnxprune.")}


def _stamp(model: ModelProto, recipe: Recipe, quality: dict[str, float],
           thresholds: dict[str, float]) -> list[tuple[str, str]]:
    props = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("onnxprune.")]
    props += [
        (STAMP_VERSION, __version__),
        (STAMP_RECIPE, recipe.sha256),
        (STAMP_QUALITY, json.dumps(quality, sort_keys=True, separators=(",", ":"))),
        (STAMP_THRESHOLD, json.dumps(thresholds, sort_keys=True, separators=(",", ":"))),
    ]
    return props


def run_pipeline(
    model: ModelProto,
    recipe: Recipe,
    progress: Callable[[str, int, int, str], None] | None = None,
    *,
    graph: gs.Graph | None = None,
) -> PipelineResult:
    """Run the recipe's passes; ``model`` is not modified.

    ``graph`` may be given when the caller already imported ``model`` (e.g. with lazily loaded
    weights); it is then transformed in place.
    """
    metadata = [(p.key, p.value) for p in model.metadata_props]
    if read_stamp(model).get(STAMP_RECIPE) == recipe.sha256:
        return PipelineResult(graph, model, metadata, False, True, [])
    if graph is None:
        graph = graph_from_model(model)
    results = []
    modified = False
    quality: dict[str, float] = {}
    thresholds: dict[str, float] = {}
    for p in recipe.build_passes():
        cb = None
        if progress is not None:
            def cb(i, n, what, _name=p.name):
                progress(_name, i, n, what)
        r = p(graph, progress=cb)
        graph = r.graph
        modified |= r.modified
        results.append({"name": p.name, "modified": r.modified, "stats": r.stats})
        if p.name == "threshold-by-std":
            for row in r.stats["layers"]:
                if row["quality"] is not None:
                    quality[row["name"]] = round(float(row["quality"]), 6)
                    thresholds[row["name"]] = float(f"{row['threshold']:.6g}")
    return PipelineResult(graph, model, _stamp(model, recipe, quality, thresholds), modified,
                          False, results)
