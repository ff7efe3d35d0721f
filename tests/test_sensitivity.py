"""`onnxprune sensitivity`: one layer pruned at a time, curves, recommendation, recipe."""

import io
import itertools
import json
import os
import sys

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper, numpy_helper

from onnxprune.analysis import sensitivity as sens
from onnxprune.cli import main
from onnxprune.runtime.datasets import Dataset, load_npz
from onnxprune.runtime.evaluate import evaluate
from tests.models import cnn

sklearn_datasets = pytest.importorskip("sklearn.datasets")


# --------------------------------------------------------------------------- fixtures


def digits_mlp(folder, hidden=(64, 32), seed=0):
    """An MLP trained by scikit-learn on its 8×8 digits, as a Gemm graph; val.npz beside it.

    Returns (model path, val path).  Trains in about a second; no torch needed.
    """
    from sklearn.neural_network import MLPClassifier

    d = sklearn_datasets.load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    tr, va = perm[:1200], perm[1200:]
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=400, random_state=seed)
    clf.fit(x[tr], y[tr])
    nodes, inits, cur = [], [], "x"
    for i, (w, b) in enumerate(zip(clf.coefs_, clf.intercepts_)):
        name = f"fc{i + 1}"
        inits += [numpy_helper.from_array(w.T.astype(np.float32).copy(), f"{name}.weight"),
                  numpy_helper.from_array(b.astype(np.float32), f"{name}.bias")]
        nodes.append(helper.make_node("Gemm", [cur, f"{name}.weight", f"{name}.bias"],
                                      [f"{name}_out"], name=name, transB=1))
        cur = f"{name}_out"
        if i < len(clf.coefs_) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"relu{i + 1}"], name=f"relu{i + 1}"))
            cur = f"relu{i + 1}"
    graph = helper.make_graph(nodes, "digits_mlp",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 64])],
                              [helper.make_tensor_value_info(cur, TensorProto.FLOAT, ["N", 10])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path, val = os.path.join(folder, "mlp.onnx"), os.path.join(folder, "val.npz")
    onnx.save(model, path)
    np.savez(val, x=x[va], y=y[va])
    np.savez(os.path.join(folder, "train.npz"), x=x[tr], y=y[tr])
    return path, val


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    folder = tmp_path_factory.mktemp("digits")
    return digits_mlp(str(folder))


@pytest.fixture(scope="module")
def cnn_self_labelled(tmp_path_factory):
    """A random CNN and inputs labelled with its own predictions: dense accuracy is 1 exactly,
    so any drop is caused by pruning alone."""
    from tests.models import run

    folder = tmp_path_factory.mktemp("cnn")
    model = cnn(seed=3, channels=(3, 8, 16), classes=5, hw=8)
    x = np.random.default_rng(0).normal(size=(300, 3, 8, 8)).astype(np.float32)
    y = run(model, {"x": x})[0].argmax(1).astype(np.int64)
    path = folder / "cnn.onnx"
    onnx.save(model, path)
    np.savez(folder / "val.npz", x=x, y=y)
    return str(path), str(folder / "val.npz")


def _run(*argv):
    return main([str(a) for a in argv])


# --------------------------------------------------------------------------- maths


def test_zero_sparsity_gives_the_dense_accuracy_exactly(digits):
    path, val = digits
    model, ds = onnx.load(path), load_npz(val)
    res = sens.analyse(model, ds, grid=[0.0, 0.5], reuse=False)
    dense = evaluate(model, ds)
    assert res.dense["top1"] == dense["top1"]
    for layer in res.layers:
        p0 = layer["points"][0]
        assert p0["grid"] == 0.0 and p0["quality"] == 0.0 and p0["sparsity"] == 0.0
        assert p0["top1"] == dense["top1"] and p0["drop_pp"] == 0.0
    # Without reuse every point is a fresh ONNX Runtime evaluation: 1 dense + 2 per layer.
    assert res.evaluations == 1 + 2 * len(res.layers)
    # Reuse skips exactly the points whose weights equal the dense ones, and changes nothing.
    again = sens.analyse(model, ds, grid=[0.0, 0.5])
    assert again.evaluations == 1 + len(res.layers)
    assert again.to_json() == res.to_json()


def test_curves_are_monotone_within_noise_and_hit_the_grid(digits):
    path, val = digits
    model, ds = onnx.load(path), load_npz(val)
    grid = [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.95, 0.99]
    res = sens.analyse(model, ds, grid=grid)
    noise_pp = 1.5  # ~9 of 597 validation digits
    for layer in res.layers:
        top1 = [100 * p["top1"] for p in layer["points"]]
        for a, b in itertools.pairwise(top1):
            assert b <= a + noise_pp, (layer["name"], top1)
        assert top1[0] - top1[-1] > 20, (layer["name"], top1)  # 99% pruned hurts a lot
        for g, p in zip(grid, layer["points"]):
            # ceil(s·n) weights pruned: the achieved share is within one weight of the grid.
            assert g - 1e-12 <= p["sparsity"] <= g + 1.0 / layer["params"] + 1e-12
            # q is what reproduces the mask: t = q·σ.
            assert p["threshold"] == pytest.approx(p["quality"] * layer["std"])
        qs = [p["quality"] for p in layer["points"]]
        assert qs == sorted(qs)


def test_quality_grid(digits):
    path, val = digits
    res = sens.analyse(onnx.load(path), load_npz(val), grid=[0.0, 0.5, 1.0, 2.0],
                       grid_kind="quality")
    for layer in res.layers:
        s = [p["sparsity"] for p in layer["points"]]
        assert s[0] == 0.0 and s == sorted(s)
        assert [p["quality"] for p in layer["points"]] == [0.0, 0.5, 1.0, 2.0]
    # Roughly Gaussian weights: q = 1 prunes about erf(1/√2) ≈ 68% of the biggest layer.
    fc1 = res.layers[0]
    assert 0.5 < fc1["points"][2]["sparsity"] < 0.85


def test_conv_layers_and_a_self_labelled_model(cnn_self_labelled):
    path, val = cnn_self_labelled
    res = sens.analyse(onnx.load(path), load_npz(val), grid=[0.0, 0.5, 0.99])
    assert res.dense["top1"] == 1.0
    assert [layer["kind"] for layer in res.layers] == ["conv", "conv", "fc"]
    for layer in res.layers:
        assert layer["points"][0]["top1"] == 1.0
        assert layer["points"][-1]["top1"] < 1.0


def test_constant_node_and_sparse_initializer_weights(tmp_path):
    """Weights outside plain initializers are found and swapped too."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(6, 5)).astype(np.float32)
    w2 = rng.normal(size=(5, 3)).astype(np.float32)
    w2[np.abs(w2) < 0.8] = 0  # stored sparse below
    const = helper.make_node("Constant", [], ["w1"], name="c1",
                             value=numpy_helper.from_array(w1, "w1_value"))
    mm1 = helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1")
    mm2 = helper.make_node("MatMul", ["h", "w2"], ["y"], name="mm2")
    idx = np.flatnonzero(w2)
    sp = helper.make_sparse_tensor(numpy_helper.from_array(w2.reshape(-1)[idx], "w2"),
                                   numpy_helper.from_array(idx.astype(np.int64), "w2_idx"),
                                   list(w2.shape))
    graph = helper.make_graph([const, mm1, mm2], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
                              sparse_initializer=[sp])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = rng.normal(size=(200, 6)).astype(np.float32)
    y = (x @ w1 @ w2).argmax(1).astype(np.int64)
    res = sens.analyse(model, Dataset(x, y), grid=[0.0, 0.9], reuse=False)
    assert res.dense["top1"] == 1.0
    names = [layer["name"] for layer in res.layers]
    assert names == ["mm1", "mm2"]
    for layer in res.layers:
        assert layer["points"][0]["top1"] == 1.0 and layer["points"][1]["top1"] < 1.0
    # The existing zeros of the sparse weight count as pruned.
    assert res.layers[1]["sparsity_dense"] == pytest.approx(1 - len(idx) / w2.size)


# --------------------------------------------------------------------------- recommending


def _result(curves):
    layers = []
    for name, kind, drops in curves:
        pts = [{"grid": s, "quality": 0.5 * i, "threshold": 0.05 * i, "sparsity": s,
                "nonzero": 0, "top1": 0.9 - d / 100, "top5": None, "drop_pp": d}
               for i, (s, d) in enumerate(zip((0.0, 0.5, 0.8, 0.9, 0.95), drops))]
        layers.append({"name": name, "weight": name + ".w", "kind": kind, "params": 100,
                       "sparsity_dense": 0.0, "points": pts})
    return sens.SensitivityResult("sparsity", [0, .5, .8, .9, .95], {"top1": 0.9, "n": 1},
                                  layers, 1, 0.0)


def test_per_layer_budget_stops_at_the_first_violation():
    res = _result([("conv1", "conv", [0, 0.8, 3.0, 0.2, 9.0]),   # lucky 90% point after a miss
                   ("fc1", "fc", [0, 0.1, 0.3, 0.9, 2.0]),
                   ("fc2", "fc", [0, 2.0, 4.0, 6.0, 8.0])])
    rec = sens.recommend(res, budget_pp=1.0)
    by = {c["name"]: c for c in rec["layers"]}
    assert by["conv1"]["sparsity"] == 0.5           # not the lucky 0.9
    assert by["fc1"]["sparsity"] == 0.9
    assert by["fc2"]["sparsity"] == 0.0 and by["fc2"]["quality"] == 0.0
    # The most sensitive layer gets the smallest q.
    assert by["fc2"]["quality"] < by["conv1"]["quality"] < by["fc1"]["quality"]
    assert rec["summed_drop_pp"] == pytest.approx(0.8 + 0.9)


def test_total_budget_is_split_as_one_common_per_layer_budget():
    res = _result([("a", "fc", [0, 0.2, 0.6, 1.5, 3.0]),
                   ("b", "fc", [0, 0.4, 0.7, 1.0, 2.5])])
    # b = 0.7 picks a@80% (0.6) + b@80% (0.7) = 1.3; b = 1.0 would add b@90%: 0.6 + 1.0 > 1.3.
    rec = sens.recommend(res, total_budget_pp=1.3)
    assert rec["rule"] == "total"
    assert rec["per_layer_budget_pp"] == pytest.approx(0.7)
    assert rec["summed_drop_pp"] == pytest.approx(1.3)
    assert [c["sparsity"] for c in rec["layers"]] == [0.8, 0.8]
    tight = sens.recommend(res, total_budget_pp=1.0)
    assert tight["per_layer_budget_pp"] == pytest.approx(0.6)
    assert [c["sparsity"] for c in tight["layers"]] == [0.8, 0.5]
    big = sens.recommend(res, total_budget_pp=2.5)
    assert big["summed_drop_pp"] <= 2.5 and big["sparsity"] > rec["sparsity"]
    from onnxprune.core.errors import UsageError

    with pytest.raises(UsageError):
        sens.recommend(res, budget_pp=1.0, total_budget_pp=1.0)


# --------------------------------------------------------------------------- the command


def test_recipe_round_trip(digits, tmp_path):
    """The recommended recipe loads in `prune`, and every layer's drop alone stays within the
    budget on the same validation data (it reproduces the analysed masks exactly)."""
    path, val = digits
    out = tmp_path / "sens"
    assert _run("sensitivity", path, "--val", val, "-o", out, "--budget", "1",
                "--json", tmp_path / "s.json", "-q") == 0
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["wall_seconds"] > 0 and report["evaluations"] <= report["points"] + 1
    rec = {c["name"]: c for c in report["recommendation"]["layers"]}
    assert any(c["sparsity"] > 0.2 for c in rec.values())
    assert _run("prune", path, "--recipe", out / "recipe.yaml", "-o", tmp_path / "p.onnx",
                "--emit", "dense", "-q") == 0
    dense, pruned, ds = onnx.load(path), onnx.load(tmp_path / "p.onnx"), load_npz(val)
    base = evaluate(dense, ds)["top1"]
    pw = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    for name, c in rec.items():
        w = pw[f"{name}.weight"]
        assert 1 - np.count_nonzero(w) / w.size == pytest.approx(c["sparsity"])
        one = onnx.ModelProto()
        one.CopyFrom(dense)
        for t in one.graph.initializer:
            if t.name == f"{name}.weight":
                t.CopyFrom(numpy_helper.from_array(w, t.name))
        drop = 100 * (base - evaluate(one, ds)["top1"])
        assert drop <= 1.0 + 1e-9
        assert drop == pytest.approx(c["drop_pp"])
    # And all layers pruned together: the measured number in the report is what prune gives.
    together = 100 * (base - evaluate(pruned, ds)["top1"])
    assert together == pytest.approx(report["recommendation"]["together"]["drop_pp"])


def test_layers_filter_skips_the_rest_in_the_recipe(digits, tmp_path):
    path, val = digits
    out = tmp_path / "sens"
    assert _run("sensitivity", path, "--val", val, "-o", out, "--layers", "fc2",
                "--grid", "0,50,90", "--no-plot", "-q") == 0
    curves = json.loads((out / "sensitivity.json").read_text())
    assert [layer["name"] for layer in curves["layers"]] == ["fc2"]
    assert not (out / "sensitivity.png").exists()
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())["passes"][0]["threshold-by-std"]
    assert list(recipe["layers"]) == ["fc2"] and recipe["skip"] == ["fc1", "fc3"]
    csv = (out / "sensitivity.csv").read_text().splitlines()
    assert csv[0].startswith("layer,kind,op,params,grid") and len(csv) == 1 + 3


def test_outputs_are_byte_stable_and_the_png_is_real(digits, tmp_path):
    path, val = digits
    for d in ("a", "b"):
        assert _run("sensitivity", path, "--val", val, "-o", tmp_path / d, "--grid",
                    "0,30,60,90,99", "-q") == 0
    for f in ("sensitivity.json", "sensitivity.csv", "sensitivity.png", "recipe.yaml"):
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes(), f
    import matplotlib.image as mpimg

    png = (tmp_path / "a" / "sensitivity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    img = mpimg.imread(io.BytesIO(png))
    assert img.shape[0] >= 300 and img.shape[1] >= 400
    rgb = img[..., :3]
    assert (rgb.mean(axis=2) < 0.9).mean() > 0.01  # lines and text, not a blank page
    assert b"Software" not in png and b"matplotlib" not in png.lower()


@pytest.mark.parametrize("case", ["no-such-layer", "empty-grid", "grid-100", "both-grids",
                                  "wrong-shape", "bad-model", "missing-val", "both-budgets"])
def test_bad_inputs(digits, tmp_path, capsys, case):
    path, val = digits
    args = [path, "--val", val, "-o", tmp_path / "o", "--no-plot"]
    code = 2
    if case == "no-such-layer":
        args += ["--layers", "conv9"]
    elif case == "empty-grid":
        args += ["--grid", ","]
    elif case == "grid-100":
        args += ["--grid", "0,100"]
    elif case == "both-grids":
        args += ["--grid", "0,50", "--grid-quality", "1"]
    elif case == "both-budgets":
        args += ["--budget", "1", "--total-budget", "2"]
    elif case == "wrong-shape":
        with np.load(val) as z:
            np.savez(tmp_path / "bad.npz", x=z["x"][:, :60], y=z["y"])
        args[2] = tmp_path / "bad.npz"
    elif case == "bad-model":
        (tmp_path / "bad.onnx").write_bytes(os.urandom(256))
        args[0] = tmp_path / "bad.onnx"
        code = 4
    elif case == "missing-val":
        args[2] = tmp_path / "nope.npz"
        code = 4
    assert _run("sensitivity", *args) == code
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err
    if case == "no-such-layer":
        assert "conv9" in err and "fc1" in err
    assert not (tmp_path / "o" / "recipe.yaml").exists()


def test_missing_matplotlib_is_a_usage_error_naming_the_extra(digits, tmp_path, monkeypatch,
                                                              capsys):
    path, val = digits
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib → ImportError
    assert _run("sensitivity", path, "--val", val, "-o", tmp_path / "o") == 2
    assert "onnxprune[plot]" in capsys.readouterr().err
    assert _run("sensitivity", path, "--val", val, "-o", tmp_path / "o", "--no-plot",
                "--grid", "0,50", "-q") == 0
