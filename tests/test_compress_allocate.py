"""`compress --allocate`: how a total --target-sparsity is spread over the layers, and the
retraining schedule compress picks when none is asked for."""

import json

import numpy as np
import onnx
import pytest

from onnxprune.core.errors import UsageError
from onnxprune.core.graph import find_layers, graph_from_model
from onnxprune.training.compress import (SIZE_EXPONENT, Schedule, allocate, final_sparsities)
from tests.models import cnn, mlp


def _layers(model):
    layers, _ = find_layers(graph_from_model(model))
    return [x for x in layers if not x.skip_reason]


def _pruned(layers, shares) -> float:
    return sum(shares[x.name] * x.params for x in layers) / sum(x.params for x in layers)


@pytest.fixture(scope="module")
def wide():
    """784-300-100-10: LeNet-300-100's shapes (235 200, 30 000 and 1 000 weights)."""
    return mlp(sizes=(784, 300, 100, 10), seed=1)


@pytest.mark.parametrize("mode", ["uniform", "global", "size"])
@pytest.mark.parametrize("target", [0.0, 0.5, 0.92, 0.99])
def test_every_rule_reaches_the_total_target(wide, mode, target):
    layers = _layers(wide)
    shares = allocate(layers, target, mode)
    assert set(shares) == {x.name for x in layers}
    assert all(0.0 <= s < 1.0 for s in shares.values())
    # One weight of slack per layer: q solves on discrete magnitudes.
    assert abs(_pruned(layers, shares) - target) <= len(layers) / sum(x.params for x in layers) + 1e-9


def test_size_rule_prunes_big_layers_hardest_and_keeps_density_power_law(wide):
    layers = sorted(_layers(wide), key=lambda x: x.params)
    shares = allocate(layers, 0.92, "size")
    small, mid, big = (shares[x.name] for x in layers)
    assert small < mid < big
    # density ∝ params^-α wherever no layer is capped at density 1
    d = [(1 - shares[x.name], x.params) for x in layers]
    assert d[0][0] < 1
    ratio = d[0][0] / d[2][0]
    assert ratio == pytest.approx((d[2][1] / d[0][1]) ** SIZE_EXPONENT, rel=1e-6)


def test_size_rule_leaves_a_layer_dense_when_the_budget_allows(wide):
    layers = _layers(wide)
    shares = allocate(layers, 0.5, "size")
    smallest = min(layers, key=lambda x: x.params)
    assert shares[smallest.name] == 0.0
    assert abs(_pruned(layers, shares) - 0.5) < 1e-6


def test_sensitivity_rule_gives_the_same_tolerance_to_every_layer(wide):
    layers = sorted(_layers(wide), key=lambda x: x.params)
    grid = [0.0, 0.5, 0.8, 0.9, 0.95, 0.99]
    # the smallest layer is very sensitive, the others not at all until 0.95
    curves = {layers[0].name: [(s, 40 * s) for s in grid],
              layers[1].name: [(s, 0.0 if s < 0.95 else 5.0) for s in grid],
              layers[2].name: [(s, 0.0 if s < 0.95 else 5.0) for s in grid]}
    shares = allocate(layers, 0.9, "sensitivity", curves)
    assert abs(_pruned(layers, shares) - 0.9) < 1e-6
    assert shares[layers[0].name] < 0.5 < shares[layers[2].name]
    # non-monotone noise (a drop that goes back down) does not let a layer past its first rise
    noisy = dict(curves)
    noisy[layers[0].name] = [(0.0, 0.0), (0.5, 3.0), (0.8, -1.0), (0.9, 0.5), (0.95, 8), (0.99, 9)]
    again = allocate(layers, 0.9, "sensitivity", noisy)
    assert again[layers[0].name] <= 0.5 + 1e-9


def test_sensitivity_rule_stops_at_the_last_measured_point(wide):
    layers = _layers(wide)
    curves = {x.name: [(0.0, 0.0), (0.9, 1.0)] for x in layers}
    shares = allocate(layers, 0.99, "sensitivity", curves)
    assert all(s == pytest.approx(0.9) for s in shares.values())
    with pytest.raises(UsageError, match="no sensitivity curve"):
        allocate(layers, 0.9, "sensitivity", {layers[0].name: [(0.0, 0.0)]})


def test_explicit_layer_targets_win_and_the_rest_share_the_target(wide):
    layers = _layers(wide)
    first = layers[0].name
    sched = Schedule(target_sparsity=0.9, allocate="size", layer_targets=((first, 0.3),))
    shares = final_sparsities(wide, sched)
    assert shares[first] == 0.3
    rest = [x for x in layers if x.name != first]
    assert abs(_pruned(rest, shares) - 0.9) < 1e-6


def test_target_scope_global_is_allocate_global(wide):
    a = final_sparsities(wide, Schedule(target_sparsity=0.8, target_scope="global"))
    b = final_sparsities(wide, Schedule(target_sparsity=0.8, allocate="global"))
    assert a == b


def test_unknown_allocation_is_a_usage_error(wide):
    with pytest.raises(UsageError, match="allocate must be one of"):
        Schedule(target_sparsity=0.5, allocate="magic").validate()


def test_first_conv_is_protected_by_the_size_rule():
    model = cnn(channels=(3, 8, 16), hw=12)
    layers = _layers(model)
    shares = allocate(layers, 0.8, "size")
    first = min(layers, key=lambda x: x.params)
    assert shares[first.name] == min(shares.values())


# --- the retraining schedule compress picks ---------------------------------------------------

def test_compress_rewinds_by_default():
    pytest.importorskip("torch")
    from onnxprune.api.training import training_config

    cfg = training_config(rounds=True, original_lr=0.05)
    assert cfg.lr_schedule == "rewind" and cfg.resolved_lr() == pytest.approx(0.05)
    # the original rate not known: taken as 0.1, as the retraining rate's default always was
    bare = training_config(rounds=True)
    assert bare.lr_schedule == "rewind" and bare.resolved_lr() == pytest.approx(0.1)
    # a retraining rate given: kept constant (the paper)
    given = training_config(rounds=True, lr=0.02)
    assert given.lr_schedule == "constant" and given.resolved_lr() == pytest.approx(0.02)
    paper = training_config(rounds=True, original_lr=0.1, lr_schedule="constant")
    assert paper.lr_schedule == "constant" and paper.resolved_lr() == pytest.approx(0.01)
    # finetune keeps the paper's constant rate unless asked
    assert training_config(original_lr=0.1).lr_schedule == "constant"


def test_compress_cli_reports_allocation_and_scan(tmp_path, capsys):
    pytest.importorskip("torch")
    from tests.conftest import labelled_npz, run_cli

    model = mlp(sizes=(16, 32, 8, 4), seed=0)
    onnx.save(model, tmp_path / "m.onnx")
    train = labelled_npz(tmp_path, "train.npz", n=64, seed=0)
    val = labelled_npz(tmp_path, "val.npz", n=32, seed=1)
    code, out, err = run_cli(["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c.onnx"),
                              "--train", str(train), "--val", str(val), "--epochs", "1",
                              "--iterations", "1", "--target-sparsity", "0.7",
                              "--allocate", "sensitivity", "--original-lr", "0.05",
                              "--json", "-", "-q"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["schedule"]["allocate"] == "sensitivity"
    scan = report["schedule"]["sensitivity_scan"]
    assert 0.7 in scan["grid"] and set(scan["drop_pp"]) == set(report["final_sparsity"])
    assert report["config"]["lr-schedule"] == "rewind" and report["config"]["original-lr"] == 0.05
    total = sum(r["params"] for r in report["layers"])
    pruned = sum(report["final_sparsity"][r["name"]] * r["params"] for r in report["layers"])
    assert abs(pruned / total - 0.7) < 0.01

    code, out, err = run_cli(["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "d.onnx"),
                              "--train", str(train), "--val", str(val), "--allocate", "bogus"], capsys)
    assert code == 2 and "allocate" in err and not (tmp_path / "d.onnx").exists()


def _compress_right_labels(tmp_path, capsys, *options):
    """compress on data whose labels are the model's own predictions (it starts right):
    (exit code, report, stderr)."""
    pytest.importorskip("torch")
    from onnxprune.runtime.check import run_model
    from tests.conftest import run_cli

    model = mlp(sizes=(16, 32, 8, 4), seed=0)
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((256, 16)).astype(np.float32)
    np.savez(tmp_path / "d.npz", x=x, y=run_model(model, {model.graph.input[0].name: x})[0].argmax(1))
    data = str(tmp_path / "d.npz")
    code, out, err = run_cli(["compress", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "c.onnx"),
                              "--train", data, "--val", data, "--epochs", "1",
                              "--target-sparsity", "0.3", "--json", "-", *options], capsys)
    return code, json.loads(out) if code == 0 else None, err


def test_a_rate_that_wrecks_the_round_is_backed_off(tmp_path, capsys):
    """A rate far too high for the model (here 5, as if it had been trained at it) wrecks
    the retraining; the round is retrained from the same pruned weights at a tenth of the
    rate until it is not worse than before retraining, the later rounds keep that rate, and
    the record, the report and stderr say so."""
    code, report, err = _compress_right_labels(tmp_path, capsys, "--iterations", "2",
                                               "--original-lr", "5")
    assert code == 0, err
    rounds = [h for h in report["history"] if h["stage"] == "iteration"]
    first = rounds[0]["rate_attempts"]
    assert len(first) > 1 and first[0]["peak_lr"] == 5 and not first[0]["kept"]
    assert first[-1]["kept"] and first[-1]["peak_lr"] == pytest.approx(5 * 0.1 ** (len(first) - 1))
    assert rounds[0]["top1"] >= rounds[0]["top1_before_retrain"] - 0.01
    # round 2 starts at the rate round 1 found
    assert rounds[1]["rate_attempts"][0]["peak_lr"] == pytest.approx(first[-1]["peak_lr"])
    assert report["peak_lr"]["first"] == 5 and report["peak_lr"]["last"] < 5
    assert "--original-lr" in rounds[0]["warning"] and "note: retraining at peak rate 5 " in err


def test_no_backoff_when_retraining_does_not_hurt(tmp_path, capsys):
    code, report, err = _compress_right_labels(tmp_path, capsys, "--iterations", "1",
                                               "--original-lr", "0.001")
    assert code == 0, err
    rec = [h for h in report["history"] if h["stage"] == "iteration"][0]
    assert [a["kept"] for a in rec["rate_attempts"]] == [True] and "warning" not in rec
    assert report["peak_lr"] == {"first": 0.001, "last": 0.001} and "note:" not in err
