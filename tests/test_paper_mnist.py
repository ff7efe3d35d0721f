"""Smoke test of bench/paper_mnist.py (the paper reproduction) on a small MNIST subset.

Skips when the MNIST file (../shared/data/mnist.npz beside the repository) is absent.
"""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "paper_mnist.py"
DATA = REPO.parent / "shared" / "data" / "mnist.npz"


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_mnist", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


pm = _load_script()
needs_data = pytest.mark.skipif(not DATA.is_file(), reason=f"{DATA} not found")


def test_missing_data_exits_cleanly(tmp_path, capsys):
    assert pm.main(["--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "o")]) == 0
    assert "skipped" in capsys.readouterr().out
    assert not (tmp_path / "o").exists()


def test_layer_targets_are_the_pruned_share():
    args = pm.layer_target_args({"fc1": 0.08, "fc3": 0.26})
    assert args == ["--layer-target", "fc1.*=0.92", "--layer-target", "fc3.*=0.74"]
    # The paper's densities give its 12x on both networks' weights.
    for model, (dense, plan) in {"lenet300": (266200, pm.PLANS["lenet300"]),
                                 "lenet5": (430500, pm.PLANS["lenet5"])}.items():
        sizes = {"lenet300": {"fc1": 235200, "fc2": 30000, "fc3": 1000},
                 "lenet5": {"conv1": 500, "conv2": 25000, "fc1": 400000, "fc2": 5000}}[model]
        assert sum(sizes.values()) == dense
        kept = sum(sizes[k] * v for k, v in plan.remaining.items())
        assert 11.5 < dense / kept < 13, model
        kept = sum(sizes[k] * v for k, v in plan.stretch.items())
        assert dense / kept >= 16, model


def test_layer_rows_follow_the_papers_flop_rule():
    """FLOP% = weights% x the previous layer's Act% (the image counts as dense)."""
    report = {"layers": [
        {"weight": "fc1.weight", "params": 1000, "nonzero": 100, "flops": 2000, "flops_remaining": 200},
        {"weight": "fc2.weight", "params": 100, "nonzero": 50, "flops": 200, "flops_remaining": 100},
    ]}
    act = {"fc1": (0.4, 10), "fc2": (1.0, 2)}
    rows = pm.layer_rows(report, act)
    assert [r["layer"] for r in rows] == ["fc1", "fc2"]
    assert rows[0]["weights_pct"] == pytest.approx(10.0)
    assert rows[0]["flop_pct"] == pytest.approx(10.0)
    assert rows[1]["flop_pct"] == pytest.approx(50.0 * 0.4)
    assert rows[1]["flop_pct_dense_act"] == pytest.approx(50.0)
    assert pm.total_act(rows) == pytest.approx((40 * 10 + 100 * 2) / 12)
    table = pm.layer_table("lenet300", [dict(r, layer=k) for r, k in zip(rows, ("fc1", "fc2"))])
    assert "| fc1 | 1.0K | 2.0K | 40% | 10.0% | 10.0% | 10.0% | 235K | 470K | 38% | 8% | 8% |" in table
    # total FLOP%: (200·1 + 100·0.4) / 2200
    assert f"| {100 * 240 / 2200:.1f}% | {100 * 300 / 2200:.1f}% |" in table.splitlines()[-1]


def test_retrain_modes_give_the_compress_flags(tmp_path):
    plan = pm.PLANS["lenet5"]
    paths = {"train": tmp_path / "t.npz", "val": tmp_path / "v.npz"}
    common = dict(remaining=plan.remaining, iterations=3, seed=0)
    rewind = pm.compress_args(tmp_path / "d.onnx", tmp_path / "o.onnx", tmp_path / "r.json", paths,
                              plan, retrain="rewind", **common)
    paper = pm.compress_args(tmp_path / "d.onnx", tmp_path / "o.onnx", tmp_path / "r.json", paths,
                             plan, retrain="paper", **common)
    i = rewind.index("--lr")
    assert rewind[i:i + 4] == ["--lr", "0.05", "--lr-schedule", "cosine"] and "--original-lr" not in rewind
    assert paper[paper.index("--original-lr") + 1] == "0.05" and "--lr-schedule" not in paper
    # Both parse as onnxprune compress command lines.
    from onnxprune.cli.app import build_parser

    for argv in (rewind, paper):
        build_parser().parse_args(argv)


def test_seed_table_pools_the_seeds():
    spec = importlib.util.spec_from_file_location("paper_mnist_seeds", REPO / "bench" / "paper_mnist_seeds.py")
    seeds = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(seeds)

    def summary(dense, pruned, b, c):
        run = {"error": pruned, "ratio": 12.3, "paired": {"only_dense_right": b, "only_other_right": c},
               "val_error_dense": 1.3, "val_error": 1.2}
        return {"models": {"lenet300": {"retrain": "rewind", "dense": {"error": dense}, "compressed": run}}}

    md = seeds.table([("1", summary(1.50, 1.40, 20, 30)), ("2", summary(1.60, 1.70, 25, 15))], ["lenet300"])
    assert "| 1 | rewind | 1.50% | 1.40% | -0.10 |" in md
    assert "1.55 ± 0.07% | 1.55 ± 0.21% | +0.00 ± 0.14 | | 45 / 45 (pooled)" in md
    assert "worse than its reference on 1 of 2 seeds" in md


def test_mcnemar_exact():
    dense_ok = np.array([True] * 10 + [False] * 2 + [True] * 50)
    other_ok = np.array([False] * 10 + [True] * 2 + [True] * 50)
    r = pm.mcnemar(dense_ok, other_ok)
    assert (r["only_dense_right"], r["only_other_right"]) == (10, 2)
    assert r["p_value"] == pytest.approx(2 * (1 + 12 + 66) / 2 ** 12)
    assert pm.mcnemar(dense_ok, dense_ok)["p_value"] == 1.0


def test_networks_export_with_the_papers_layer_names(tmp_path):
    from onnxprune.core import io
    from onnxprune.core.graph import find_layers, graph_from_model

    for model, names, weights in (("lenet300", ["fc1", "fc2", "fc3"], 266200),
                                  ("lenet5", ["conv1", "conv2", "fc1", "fc2"], 430500)):
        path = tmp_path / f"{model}.onnx"
        pm.export(pm.build(model), path)
        layers, _ = find_layers(graph_from_model(io.load(str(path))[0]))
        assert [x.weight_name.split(".")[0] for x in layers] == names
        assert sum(x.params for x in layers) == weights


@needs_data
def test_splits_hold_out_the_end_of_train():
    s = pm.load_mnist(DATA, limit={"train": 1000, "test": 200})
    (xt, yt), (xv, yv), (xs, _) = s["train"], s["val"], s["test"]
    assert xt.shape == (900, 1, 28, 28) and xv.shape == (100, 1, 28, 28) and xs.shape == (200, 1, 28, 28)
    assert xt.dtype == np.float32 and yt.dtype == np.int64
    assert 0.0 <= xt.min() and xt.max() == pytest.approx(1.0)
    with np.load(DATA) as d:
        np.testing.assert_array_equal(yv, d["y_train"][900:1000])
        np.testing.assert_allclose(xv[:, 0] * 255.0, d["x_train"][900:1000], atol=1e-4)


@needs_data
def test_quick_run_end_to_end(tmp_path):
    """LeNet-5 (conv and fc layers, dead-neuron removal) through every step; LeNet-300-100
    runs the same code with other layers."""
    out = tmp_path / "mnist"
    assert pm.main(["--data", str(DATA), "--out", str(out), "--quick", "--no-stretch",
                    "--models", "lenet5"]) == 0
    for name in ("train.npz", "val.npz", "test.npz", "results.md", "summary.json",
                 "lenet5_dense.onnx", "lenet5_compressed.onnx", "lenet5_compress.json"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    r = summary["models"]["lenet5"]
    report = json.loads((out / "lenet5_compress.json").read_text())
    # the compress report: one record per stage, per-layer densities at the paper's targets
    assert [h["stage"] for h in report["history"]] == ["dense", "iteration", "remove-dead-neurons"]
    density = {k.split("/")[1]: v for k, v in report["history"][1]["density"].items()}
    assert density == pytest.approx(pm.PLANS["lenet5"].remaining, abs=0.01)
    assert r["compressed"]["nonzero"] == report["total"]["nonzero"]
    assert r["compressed"]["ratio"] == pytest.approx(430500 / report["total"]["nonzero"])
    assert r["compressed"]["ratio"] > 11
    # errors come from ONNX Runtime on the test split; even one epoch on 2,700 images beats chance
    assert r["dense"]["error"] < 60 and r["compressed"]["error"] < 80
    assert "onnxprune compress" in r["commands"]["compressed"]
    md = (out / "results.md").read_text()
    assert "| LeNet-5 Ref |" in md and "| LeNet-5 Pruned |" in md
    assert "| conv1 | 0.5K | 576K |" in md
    # the tables can be rebuilt from the written files alone, with the paired comparison
    assert pm.main(["--data", str(DATA), "--out", str(out), "--tables-only"]) == 0
    again = json.loads((out / "summary.json").read_text())["models"]["lenet5"]
    assert again["compressed"]["error"] == pytest.approx(r["compressed"]["error"])
    pair = again["compressed"]["paired"]
    assert pair == r["compressed"]["paired"]
    assert 0 <= pair["p_value"] <= 1
    assert "(McNemar p)" in (out / "results.md").read_text()
