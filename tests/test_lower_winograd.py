"""``onnxprune lower --winograd``: each pruned 3x3 layer the Winograd path takes is timed both
ways and takes the faster; the report says which, with both timings and the output change
measured (an injected timer decides; runtime_ops's own tests check the path's numbers)."""

from __future__ import annotations

import onnx
import pytest

from onnxprune.api import lower
from onnxprune.core.errors import UsageError
from tests.models import cnn
from tests.test_lower_measure import masked
from tests.test_runtime_ops_winograd import WINOGRAD_BOUND


def _timer(winograd_wins: set, calls: list):
    """Layer timings: each layer's first timing (the direct path) 2x, its second (the Winograd
    path) 3x where it is in ``winograd_wins``, else 1.5x; the whole model 1.5x."""
    seen: dict = {}

    def timer(name, dense, sparse, feeds):
        calls.append(name)
        if name is None:
            return 1.5e-3, 1e-3
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1:
            return 2e-3, 1e-3
        return (3e-3 if name in winograd_wins else 1.5e-3), 1e-3
    return timer


@pytest.fixture
def pruned_cnn(tmp_path):
    path = tmp_path / "cnn.onnx"
    onnx.save(masked(cnn(channels=(3, 8, 16), hw=12), density=0.5), str(path))
    return path


def test_winograd_is_taken_per_layer_where_it_measured_faster(tmp_path, pruned_cnn):
    calls = []
    out = tmp_path / "low.onnx"
    report = lower(str(pruned_cnn), str(out), winograd=True, timer=_timer({"conv2"}, calls))
    # the two convolutions timed twice (direct, then Winograd), the Gemm once, the whole model once
    assert sorted(c for c in calls if c) == ["conv1", "conv1", "conv2", "conv2", "fc"]
    rows = {r["name"]: r for r in report["lowering"]["layers"]}
    assert rows["conv2"]["winograd"] and rows["conv2"]["speedup"] == pytest.approx(3.0)
    assert rows["conv2"]["direct_speedup"] == pytest.approx(2.0)
    assert rows["conv2"]["winograd_speedup"] == pytest.approx(3.0)
    assert "by Winograd F(4x4, 3x3) (the direct path measured 2.00x)" in rows["conv2"]["reason"]
    assert not rows["conv1"]["winograd"] and rows["conv1"]["speedup"] == pytest.approx(2.0)
    assert rows["fc"]["winograd_speedup"] is None
    nodes = {n.name: n for n in onnx.load(str(out)).graph.node}
    flags = {name: {a.name: a.i for a in n.attribute}.get("winograd") for name, n in nodes.items()
             if n.op_type == "CsrConv"}
    assert flags == {"conv1": None, "conv2": 1}
    change = report["lowering"]["values_change"]
    assert change["winograd_layers"] == 1 and change["values"] == "fp32"
    assert 0 <= change["max_relative_output_change"] <= WINOGRAD_BOUND
    assert report["options"]["winograd"] == ["conv2"]


def test_without_the_flag_nothing_is_timed_twice_nor_marked(tmp_path, pruned_cnn):
    calls = []
    report = lower(str(pruned_cnn), str(tmp_path / "low.onnx"), timer=_timer({"conv1", "conv2"}, calls))
    assert sorted(c for c in calls if c) == ["conv1", "conv2", "fc"]
    assert not any(r["winograd"] for r in report["lowering"]["layers"])
    assert report["lowering"]["values_change"] is None


@pytest.mark.parametrize("kw", [dict(decide="model"), dict(lower_for="size")])
def test_winograd_needs_the_measured_decision(tmp_path, pruned_cnn, kw):
    out = tmp_path / "low.onnx"
    with pytest.raises(UsageError, match="--winograd needs the measured decision"):
        lower(str(pruned_cnn), str(out), winograd=True, **kw)
    assert not out.exists()


def test_the_cli_flag_and_its_usage_errors(tmp_path, pruned_cnn, capsys):
    from onnxprune.cli import main

    out = tmp_path / "low.onnx"
    assert main(["lower", str(pruned_cnn), "-o", str(out), "--winograd", "--decide", "model"]) == 2
    assert "--winograd needs the measured decision" in capsys.readouterr().err
    assert not out.exists()
    assert main(["prune", str(pruned_cnn), "-o", str(out), "--winograd"]) == 2
    assert "only apply to --emit sparse-ops" in capsys.readouterr().err
    assert not out.exists()


def test_the_cli_line_names_the_winograd_layers():
    from onnxprune.cli.lower import values_line

    change = {"values": "fp32", "winograd_layers": 3, "max_relative_output_change": 2.5e-6,
              "inputs": "random normal, seed 0, batch 1"}
    assert values_line({"values_change": change}) == (
        "Winograd in 3 layer(s): largest relative output change 2.5e-06 (random normal, seed 0, batch 1)")
    both = {**change, "values": "fp16"}
    assert values_line({"values_change": both}).startswith("sparse values fp16 and Winograd in 3 layer(s): ")
