"""The pass contract: every registered pass is a ``Pass``; ``modified`` is true exactly when the
serialized graph changed; the template checks its declarations; the pipeline and the prune
verb find passes by declared capability, never by name."""

from __future__ import annotations

import json
import pathlib

import numpy as np
import onnx_graphsurgeon as gs
import pytest
from onnx import numpy_helper

from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes import REGISTRY, AdjustDropout, ThresholdByStd
from onnxprune.passes.base import Pass, PassError, PassResult
from onnxprune.passes.pipeline import read_stamp, run_pipeline
from onnxprune.passes.recipe import Recipe
from tests.models import mlp

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _serialized(graph: gs.Graph, model) -> bytes:
    return graph_to_model(graph, model).graph.SerializeToString()


def _pruned(model):
    """``model`` after q = 1 thresholding (so dropouts and lowering have work to do)."""
    graph = graph_from_model(model)
    ThresholdByStd({"quality": 1.0})(graph)
    return graph_to_model(graph, model)


def _with_dead_unit(model):
    """fc1's unit 3 feeds nothing: fc2's weight column 3 (Gemm transB=1) is zeroed."""
    for i, t in enumerate(model.graph.initializer):
        if t.name == "fc2.weight":
            w = numpy_helper.to_array(t).copy()
            w[:, 3] = 0.0
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(w, t.name))
    return model


# (pass, options, model builder) where the pass changes the graph, and where it does not.
CHANGES = {
    "threshold-by-std": ({"quality": 1.0}, lambda: mlp()),
    "adjust-dropout": ({}, lambda: _pruned(mlp(dropout=0.5))),
    "remove-dead-neurons": ({}, lambda: _with_dead_unit(mlp())),
    "lower-to-sparse-ops": ({"force": ["*"]}, lambda: _pruned(mlp())),
}
NO_CHANGE = {
    # t = 0·σ keeps every weight (|w| ≥ 0).
    "threshold-by-std": ({"quality": 0.0}, lambda: mlp()),
    # Nothing pruned: C_ir = C_io, so D_r = D_o.
    "adjust-dropout": ({}, lambda: mlp(dropout=0.5)),
    "remove-dead-neurons": ({}, lambda: mlp()),
    "lower-to-sparse-ops": ({"never": ["*"]}, lambda: _pruned(mlp())),
}


def test_every_registered_pass_is_covered_and_declares_the_contract():
    assert set(CHANGES) == set(NO_CHANGE) == set(REGISTRY)
    for name, cls in REGISTRY.items():
        assert issubclass(cls, Pass) and cls.name == name
        assert isinstance(cls.in_place, bool) and isinstance(cls.OPTIONS, tuple)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_modified_when_the_graph_changes(name):
    options, build = CHANGES[name]
    model = build()
    before = _serialized(graph_from_model(model), model)
    graph = graph_from_model(model)
    result = REGISTRY[name](options)(graph)
    assert result.modified is True
    assert _serialized(result.graph, model) != before


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_not_modified_and_byte_identical_when_nothing_changes(name):
    options, build = NO_CHANGE[name]
    model = build()
    before = _serialized(graph_from_model(model), model)
    graph = graph_from_model(model)
    result = REGISTRY[name](options)(graph)
    assert result.modified is False
    assert _serialized(result.graph, model) == before


class _Probe(Pass):
    name = "probe"

    def __init__(self, other_graph=False, bad_post=False):
        super().__init__()
        self.calls: list[str] = []
        self.other_graph = other_graph
        self.bad_post = bad_post

    def requires(self, graph):
        self.calls.append("requires")

    def run(self, graph, progress=None):
        self.calls.append("run")
        return PassResult(gs.Graph() if self.other_graph else graph, False, {})

    def ensures(self, graph, result):
        self.calls.append("ensures")
        if self.bad_post:
            raise PassError("probe: postcondition")


def test_template_checks_conditions_around_run():
    graph = graph_from_model(mlp())
    probe = _Probe()
    assert probe(graph).graph is graph
    assert probe.calls == ["requires", "run", "ensures"]
    with pytest.raises(PassError, match="in place"):
        _Probe(other_graph=True)(graph)
    with pytest.raises(PassError, match="postcondition"):
        _Probe(bad_post=True)(graph)


def test_requires_refuses_a_graph_that_is_not_graphsurgeon():
    for name in ("remove-dead-neurons", "lower-to-sparse-ops"):
        with pytest.raises(PassError, match="onnx-graphsurgeon Graph"):
            REGISTRY[name]()(object())


def test_the_stamp_comes_from_the_result_not_the_pass_name():
    """A thresholding pass under another name still stamps q and t = q·σ per layer."""

    class Renamed(ThresholdByStd):
        name = "renamed-threshold"

    model = mlp()
    recipe = Recipe([("threshold-by-std", {"quality": 1.0})])
    recipe.build_passes = lambda: [Renamed({"quality": 1.0})]
    stamp = read_stamp(run_pipeline(model, recipe).model)
    q = json.loads(stamp["onnxprune.quality"])
    t = json.loads(stamp["onnxprune.threshold"])
    assert set(q) == set(t) == {"fc1", "fc2", "fc3"} and all(v == 1.0 for v in q.values())
    w = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "fc1.weight"))
    assert t["fc1"] == pytest.approx(float(np.std(w)), rel=1e-5)


def test_adjust_dropout_unchanged_ratio_is_not_modified():
    """A ratio that rounds to the stored value is no change (float32 storage)."""
    model = mlp(dropout=0.5)
    graph = graph_from_model(model)
    result = AdjustDropout()(graph)
    assert result.modified is False
    assert all(r["new_ratio"] == r["ratio"] for r in result.stats["dropouts"])


@pytest.mark.parametrize("path", ["passes/pipeline.py", "onnxprune/cli/prune.py",
                                  "onnxprune/api/prune.py"])
def test_pipeline_and_prune_never_name_a_pass(path):
    text = (ROOT / path).read_text()
    for name in REGISTRY:
        assert f'"{name}"' not in text, f"{path} compares pass name {name}"


# ---- the prune verb


def _without_paths(report: dict) -> dict:
    """The report less what names files (paths differ between the two runs compared)."""
    return {k: v for k, v in report.items() if k not in ("input", "outputs")}


def test_api_prune_returns_the_report_the_cli_writes(tmp_path, capsys):
    import onnx

    from onnxprune.api.prune import prune
    from onnxprune.cli import main

    src = tmp_path / "m.onnx"
    onnx.save(mlp(), src)
    assert main(["prune", str(src), "-o", str(tmp_path / "cli.onnx"), "--quality", "0.7",
                 "--json", str(tmp_path / "r.json")]) == 0
    capsys.readouterr()
    cli_report = json.loads((tmp_path / "r.json").read_text())
    report = prune(str(src), str(tmp_path / "api.onnx"), quality=0.7)
    assert json.loads(json.dumps(_without_paths(report))) == _without_paths(cli_report)
    assert (tmp_path / "api.onnx").read_bytes() == (tmp_path / "cli.onnx").read_bytes()
    # A ModelProto in memory: same model written, the caller's proto untouched.
    proto = mlp()
    before = proto.SerializeToString()
    from_proto = prune(proto, str(tmp_path / "proto.onnx"), quality=0.7)
    assert proto.SerializeToString() == before
    assert from_proto["layers"] == report["layers"]
    assert (tmp_path / "proto.onnx").read_bytes() == (tmp_path / "api.onnx").read_bytes()


def test_api_prune_gate_and_usage_errors(tmp_path):
    from onnxprune.api.prune import prune
    from onnxprune.core.errors import GateFailed, UsageError

    from onnxprune.api.prune import raise_for_gates

    out = tmp_path / "o.onnx"
    report = prune(mlp(), str(out), quality=0.1, min_sparsity=0.99)
    assert out.exists()  # a missed gate is a result: the output is written
    assert report["status"] == "gate-failed" and not report["gates"][0]["passed"]
    with pytest.raises(GateFailed, match="min-sparsity"):
        raise_for_gates(report)
    with pytest.raises(UsageError, match="only appl(y|ies) to --emit sparse-ops"):
        prune(mlp(), str(tmp_path / "q.onnx"), threads=2)
    with pytest.raises(UsageError):
        prune(mlp(), None)
    assert not (tmp_path / "q.onnx").exists()
