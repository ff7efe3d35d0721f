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


def _timer(winograd_wins: dict, calls: list, wholes=()):
    """Layer timings: each layer's first timing (the direct path) 2x, its second (the Winograd
    path) ``winograd_wins[layer]`` (3x by default for a set), else 1.5x; the whole model the
    ``wholes`` in turn, then 1.5x."""
    seen: dict = {}
    wholes = list(wholes)
    wins = winograd_wins if isinstance(winograd_wins, dict) else {n: 3.0 for n in winograd_wins}

    def timer(name, dense, sparse, feeds):
        calls.append(name)
        if name is None:
            return (wholes.pop(0) if wholes else 1.5) * 1e-3, 1e-3
        seen[name] = seen.get(name, 0) + 1
        if seen[name] == 1:
            return 2e-3, 1e-3
        return wins.get(name, 1.5) * 1e-3, 1e-3
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
    # the two convolutions timed twice (direct, then Winograd), the Gemm once; the whole model
    # without and with Winograd, then the lowering written
    assert sorted(c for c in calls if c) == ["conv1", "conv1", "conv2", "conv2", "fc"]
    assert calls.count(None) == 3
    assert report["lowering"]["winograd"] == {"layers": ["conv2"], "with_speedup": 1.5,
                                              "without_speedup": 1.5, "kept": True}
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


def test_a_whole_model_slower_with_winograd_keeps_the_direct_path(tmp_path, pruned_cnn):
    calls = []
    out = tmp_path / "low.onnx"
    report = lower(str(pruned_cnn), str(out), winograd=True,
                   timer=_timer({"conv2"}, calls, wholes=[1.6, 1.4]))
    low = report["lowering"]
    assert low["winograd"] == {"layers": ["conv2"], "with_speedup": 1.4, "without_speedup": 1.6, "kept": False}
    rows = {r["name"]: r for r in low["layers"]}
    assert not rows["conv2"]["winograd"] and rows["conv2"]["speedup"] == pytest.approx(2.0)
    assert "Winograd measured 3.00x alone, but the whole model ran 1.40x with it and 1.60x without: " \
        "direct path" in rows["conv2"]["reason"]
    assert low["values_change"] is None and report["options"]["winograd"] == []
    assert not any(a.name == "winograd" for n in onnx.load(str(out)).graph.node for a in n.attribute)


def test_a_layer_ahead_by_less_than_the_margin_keeps_the_direct_path(tmp_path, pruned_cnn):
    from onnxprune.runtime.lowering import WINOGRAD_MIN_GAIN

    calls = []
    just_under = 2.0 * WINOGRAD_MIN_GAIN * 0.99
    report = lower(str(pruned_cnn), str(tmp_path / "low.onnx"), winograd=True,
                   timer=_timer({"conv1": just_under, "conv2": 2.0 * WINOGRAD_MIN_GAIN}, calls))
    rows = {r["name"]: r for r in report["lowering"]["layers"]}
    assert not rows["conv1"]["winograd"] and rows["conv2"]["winograd"]
    assert f"Winograd measured {just_under:.2f}x (< {WINOGRAD_MIN_GAIN:g} x the direct path's)" in \
        rows["conv1"]["reason"]
    assert report["lowering"]["winograd"]["layers"] == ["conv2"]


def test_without_the_flag_nothing_is_timed_twice_nor_marked(tmp_path, pruned_cnn):
    calls = []
    report = lower(str(pruned_cnn), str(tmp_path / "low.onnx"), timer=_timer({"conv1", "conv2"}, calls))
    assert sorted(c for c in calls if c) == ["conv1", "conv2", "fc"]
    assert not any(r["winograd"] for r in report["lowering"]["layers"])
    assert report["lowering"]["values_change"] is None and report["lowering"]["winograd"] is None
    assert calls.count(None) == 1


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


def test_the_cli_line_says_what_the_whole_model_timing_decided():
    from onnxprune.cli.lower import winograd_line

    assert winograd_line({"winograd": None}) is None
    kept = {"layers": ["a", "b"], "with_speedup": 2.3, "without_speedup": 1.9, "kept": True}
    assert winograd_line({"winograd": kept}) == (
        "winograd: the lowered model ran 2.30x of dense with it, 1.90x without; kept in 2 layer(s)")
    dropped = {**kept, "with_speedup": 1.8, "kept": False}
    assert winograd_line({"winograd": dropped}).endswith(
        "1.90x without; dropped: the direct path runs in the 2 layer(s) it had won")
