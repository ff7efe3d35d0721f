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
    kinds: list[type] = dataclasses.field(default_factory=list, repr=False)  # class per pass

    def stats_of(self, capability: str) -> dict | None:
        """The stats of the first pass run that declares ``capability`` (a ``Pass`` flag)."""
        for kind, p in zip(self.kinds, self.passes):
            if getattr(kind, capability, False):
                return p["stats"]
        return None

    def report_sections(self) -> dict[str, dict]:
        """``{report_section: stats}`` for every pass run that declares a report section."""
        return {kind.report_section: p["stats"] for kind, p in zip(self.kinds, self.passes)
                if kind.report_section}

    @property
    def model(self) -> ModelProto:
        """The result as a self-contained in-memory ModelProto."""
        if self.already_applied:
            return self.original
        return graph_to_model(self.graph, self.original, self.metadata)


def read_stamp(model: ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props if p.key.startswith("onnxprune.")}


def _stamp(model: ModelProto, recipe: Recipe,
           values: dict[str, dict[str, float]]) -> list[tuple[str, str]]:
    """The model's own metadata, then version, recipe hash and each ``onnxprune.<key>`` the
    passes stamped (quality and threshold always, empty when no pass set them)."""
    props = [(p.key, p.value) for p in model.metadata_props if not p.key.startswith("onnxprune.")]
    props += [(STAMP_VERSION, __version__), (STAMP_RECIPE, recipe.sha256)]
    props += [(f"onnxprune.{key}", json.dumps(v, sort_keys=True, separators=(",", ":")))
              for key, v in values.items()]
    return props


def run_pipeline(
    model: ModelProto,
    recipe: Recipe,
    progress: Callable[[str, int, int, str], None] | None = None,
    *,
    graph: gs.Graph | None = None,
    refine: Callable[[type, dict, gs.Graph], dict] | None = None,
) -> PipelineResult:
    """Run the recipe's passes; ``model`` is not modified.

    ``graph`` may be given when the caller already imported ``model`` (e.g. with lazily loaded
    weights); it is then transformed in place.  ``refine(pass_class, options, graph)``, called
    just before each pass runs, returns the options it runs with: what can only be decided on
    the graph as it stands then (lowering by measured speed-ups) without entering the recipe,
    so the stamp still names the recipe as written.
    """
    metadata = [(p.key, p.value) for p in model.metadata_props]
    if read_stamp(model).get(STAMP_RECIPE) == recipe.sha256:
        return PipelineResult(graph, model, metadata, False, True, [])
    if graph is None:
        graph = graph_from_model(model)
    results = []
    kinds = []
    modified = False
    stamped: dict[str, dict[str, float]] = {"quality": {}, "threshold": {}}
    for (_, options), p in zip(recipe.effective_passes, recipe.build_passes()):
        if refine is not None:
            refined = refine(type(p), options, graph)
            p = p if refined is options else type(p)(refined)
        cb = None
        if progress is not None:
            def cb(i, n, what, _name=p.name):
                progress(_name, i, n, what)
        r = p(graph, progress=cb)
        graph = r.graph
        modified |= r.modified
        results.append({"name": p.name, "modified": r.modified, "stats": r.stats})
        kinds.append(type(p))
        for key, values in r.stamp.items():
            stamped.setdefault(key, {}).update(values)
    return PipelineResult(graph, model, _stamp(model, recipe, stamped), modified,
                          False, results, kinds)
