"""Layers inside If branches: found, pruned, trained, written back — and never lowered.

The model (opset 17) routes its input through one of two branches and a main-graph head:

    h = If(max(x) > 100,
           then: x @ Wt               (Wt: a Constant node inside the branch),
           else: relu(x @ We) @ Wo)   (We: the branch's own initializer; Wo: read from the main graph)
    y = h @ W3                         (W3: a main-graph initializer)

Training inputs are N(0, 1), so the then-branch is never taken: its weight is pruned but gets
no gradient, and the run says so.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.app import main
from onnxprune.core.graph import find_layers, graph_from_model
from onnxprune.runtime.check import make_session

BRANCH_NAMES = {"Wt", "We", "Wo", "W3"}


def _model(seed: int = 0, by_rate: bool = False) -> onnx.ModelProto:
    """The module doc's model; ``by_rate``: the branch is chosen by a scalar input ``rate``
    (then-branch when rate > 12000), as silero picks its network by the sample rate."""
    rng = np.random.default_rng(seed)
    w = {k: rng.normal(size=shape).astype(np.float32)
         for k, shape in (("Wt", (8, 8)), ("We", (8, 16)), ("Wo", (16, 8)), ("W3", (8, 3)))}
    f = TensorProto.FLOAT
    then_g = helper.make_graph(
        [helper.make_node("Constant", [], ["Wt"], value=numpy_helper.from_array(w["Wt"], "Wt")),
         helper.make_node("MatMul", ["x", "Wt"], ["t_out"], name="then_mm")],
        "then", [], [helper.make_tensor_value_info("t_out", f, None)])
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "We"], ["e1"], name="else_mm1"),
         helper.make_node("Relu", ["e1"], ["e2"]),
         helper.make_node("MatMul", ["e2", "Wo"], ["e_out"], name="else_mm2")],
        "else", [], [helper.make_tensor_value_info("e_out", f, None)],
        [numpy_helper.from_array(w["We"], "We")])
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["mx"], keepdims=0),
        helper.make_node("Greater", ["rate", "twelve_k"] if by_rate else ["mx", "hundred"], ["cond"]),
        helper.make_node("If", ["cond"], ["h"], name="route", then_branch=then_g, else_branch=else_g),
        helper.make_node("MatMul", ["h", "W3"], ["y"], name="head"),
    ]
    inputs = [helper.make_tensor_value_info("x", f, ["N", 8])]
    if by_rate:
        inputs.append(helper.make_tensor_value_info("rate", TensorProto.INT64, []))
    g = helper.make_graph(
        nodes, "g", inputs, [helper.make_tensor_value_info("y", f, ["N", 3])],
        [numpy_helper.from_array(w["Wo"], "Wo"), numpy_helper.from_array(w["W3"], "W3"),
         numpy_helper.from_array(np.array(100.0, np.float32), "hundred"),
         numpy_helper.from_array(np.array(12000, np.int64), "twelve_k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Every float initializer / Constant value of rank 2, in any scope, by name."""
    from onnxprune.core.io import proto_graphs

    out = {}
    for g in proto_graphs(model.graph):
        for t in g.initializer:
            out[t.name] = numpy_helper.to_array(t)
        for n in g.node:
            if n.op_type == "Constant":
                out[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    return {k: v for k, v in out.items() if v.ndim == 2}


def _reference(w: dict, x: np.ndarray) -> np.ndarray:
    h = x @ w["Wt"] if x.max() > 100 else np.maximum(x @ w["We"], 0) @ w["Wo"]
    return h @ w["W3"]


def _run(model, x):
    return make_session(model).run(None, {"x": x})[0]  # registers onnxprune's sparse ops


def _inputs(taken: str, n: int = 4, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, 8)).astype(np.float32)
    if taken == "then":
        x[0, 0] = 150.0
    return x


def test_find_layers_reaches_every_scope():
    layers, _ = find_layers(graph_from_model(_model()))
    got = {layer.weight_name: layer.scope for layer in layers}
    assert got == {"Wt": "route/then_branch", "We": "route/else_branch",
                   "Wo": "route/else_branch", "W3": ""}


def test_bridge_weights_cover_branches():
    torch = pytest.importorskip("torch")  # noqa: F841
    from onnxprune.training.torch_bridge import find_weights

    info = find_weights(_model())
    assert {n for n, i in info.items() if i.prunable} == BRANCH_NAMES
    assert info["Wt"].layer == "route/then_branch/then_mm"
    assert info["We"].storage == "initializer" and info["Wt"].storage == "constant"


def _prune(tmp_path, *extra) -> tuple[int, dict, onnx.ModelProto, str]:
    src = tmp_path / "m.onnx"
    onnx.save(_model(), src)
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    out = tmp_path / "p.onnx"
    rep = tmp_path / "p.json"
    code = main(["prune", str(src), "-o", str(out), "--target-sparsity", "0.5", "--json", str(rep),
                 "-q", *extra])
    assert hashlib.sha256(src.read_bytes()).hexdigest() == digest  # the input is never touched
    return code, json.loads(rep.read_text()), onnx.load(str(out)), str(out)


@pytest.mark.parametrize("taken", ["then", "else"])
def test_prune_thresholds_branch_layers_and_the_model_still_runs(tmp_path, taken):
    code, report, pruned, _ = _prune(tmp_path, "--emit", "dense", "--no-remove-dead-neurons")
    assert code == 0
    w = _weights(pruned)
    for name in BRANCH_NAMES:
        assert np.mean(w[name] == 0) == pytest.approx(0.5, abs=0.07), name
    rows = {r["weight"]: r for r in report["layers"]}
    assert set(rows) == BRANCH_NAMES
    assert all(rows[n]["density"] == pytest.approx(0.5, abs=0.07) for n in BRANCH_NAMES)
    x = _inputs(taken)
    np.testing.assert_allclose(_run(pruned, x), _reference(w, x), rtol=1e-4, atol=1e-4)
    # The storage place of each branch weight is kept: a Constant stays a Constant in its branch.
    branches = {a.name: a.g for a in pruned.graph.node[2].attribute}
    assert [n.op_type for n in branches["then_branch"].node] == ["Constant", "MatMul"]
    assert [t.name for t in branches["else_branch"].initializer] == ["We"]


def test_sparse_ops_lowers_main_graph_layers_only(tmp_path):
    code, report, lowered, _ = _prune(tmp_path, "--emit", "sparse-ops", "--lower-for", "size",
                                      "--no-remove-dead-neurons")
    assert code == 0
    rows = {r["weight"]: r for r in report["sparse_ops"]["layers"]}
    for name in ("Wt", "We", "Wo"):
        assert not rows[name]["lowered"] and "subgraph" in rows[name]["reason"], rows[name]
    assert rows["W3"]["lowered"]  # the main-graph head is (lowered for size)
    _, _, dense, _ = _prune(tmp_path, "--emit", "dense", "--no-remove-dead-neurons")
    for taken in ("then", "else"):
        x = _inputs(taken)
        np.testing.assert_allclose(_run(lowered, x), _run(dense, x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("taken", ["then", "else"])
def test_module_matches_ort_and_gradients_reach_the_taken_branch(taken):
    torch = pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import build_module

    model = _model()
    module = build_module(model)
    assert set(module.param_keys) == BRANCH_NAMES
    x = _inputs(taken)
    out = module(torch.from_numpy(x))
    np.testing.assert_allclose(out.detach().numpy(), _run(model, x), rtol=1e-5, atol=1e-5)
    out.sum().backward()
    reached = {n for n in BRANCH_NAMES if module.parameter(n).grad is not None
               and bool(module.parameter(n).grad.any())}
    assert reached == ({"Wt", "W3"} if taken == "then" else {"We", "Wo", "W3"})


def test_finetune_trains_branch_weights_holds_masks_and_reports_the_untaken_branch(tmp_path):
    pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import FinetuneConfig, finetune, read_weights

    _, _, pruned, _ = _prune(tmp_path, "--emit", "dense", "--no-remove-dead-neurons")
    rng = np.random.default_rng(2)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64).astype(np.int64)
    res = finetune(pruned, (x, y), config=FinetuneConfig(epochs=2, batch_size=16, lr=0.05, seed=0))
    before, after = read_weights(pruned), read_weights(res.model)
    assert set(before) >= BRANCH_NAMES
    for name in ("We", "Wo", "W3"):
        zero = before[name] == 0
        assert np.all(after[name][zero] == 0), name  # pruned stays pruned, inside branches too
        assert np.any(after[name][~zero] != before[name][~zero]), name  # survivors trained
    np.testing.assert_array_equal(after["Wt"], before["Wt"])  # never taken: unchanged...
    assert res.unreached == ["Wt"]  # ...and said so
    # Written back in place: the same graph, only values differ, still runs both ways.
    for taken in ("then", "else"):
        xi = _inputs(taken)
        np.testing.assert_allclose(_run(res.model, xi), _reference(_weights(res.model), xi),
                                   rtol=1e-4, atol=1e-4)


def test_compress_notes_layers_the_data_never_reaches(tmp_path, capsys):
    pytest.importorskip("torch")
    src = tmp_path / "m.onnx"
    onnx.save(_model(), src)
    rng = np.random.default_rng(3)
    for split, n in (("train", 96), ("val", 48)):
        np.savez(tmp_path / f"{split}.npz", x=rng.normal(size=(n, 8)).astype(np.float32))
    rep = tmp_path / "c.json"
    code = main(["compress", str(src), "-o", str(tmp_path / "c.onnx"), "--train", str(tmp_path / "train.npz"),
                 "--val", str(tmp_path / "val.npz"), "--target-sparsity", "0.5", "--iterations", "1",
                 "--epochs", "1", "--no-remove-dead-neurons", "--json", str(rep)])
    assert code == 0
    rounds = [r for r in json.loads(rep.read_text())["history"] if r["stage"] == "iteration"]
    assert rounds[-1]["not_retrained"] == ["Wt"]
    assert "not retrained (Wt)" in capsys.readouterr().err


def test_a_branch_weight_shadowing_an_outer_name_stays_fixed_and_the_outer_one_trains():
    torch = pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import build_module, find_weights

    from tests.test_reliability_io2 import _if_model

    m, w, w_branch = _if_model(np.random.default_rng(3))
    assert {n for n, i in find_weights(m).items() if i.prunable} == {"W"}
    module = build_module(m)
    x = np.ones((1, 4), np.float32)
    y, z = module(torch.from_numpy(x), torch.tensor(True))
    np.testing.assert_allclose(y.detach().numpy(), x @ w, rtol=1e-5)
    np.testing.assert_allclose(z.detach().numpy(), x @ w_branch, rtol=1e-5)  # the branch's own W


def _rate_data(tmp_path, rate) -> tuple[str, str]:
    rng = np.random.default_rng(4)
    paths = []
    for split, n in (("train", 64), ("val", 32)):
        path = tmp_path / f"{split}_rate.npz"
        np.savez(path, x=rng.normal(size=(n, 8)).astype(np.float32), rate=np.asarray(rate, np.int64))
        paths.append(str(path))
    return paths[0], paths[1]


@pytest.mark.parametrize("rate, untaken", [(16000, "We"), (8000, "Wt")])
def test_a_scalar_input_is_one_setting_for_every_run_and_picks_the_branch_trained(tmp_path, rate, untaken):
    pytest.importorskip("torch")
    src = tmp_path / "m.onnx"
    onnx.save(_model(by_rate=True), src)
    train, val = _rate_data(tmp_path, rate)
    rep = tmp_path / "c.json"
    code = main(["compress", str(src), "-o", str(tmp_path / "c.onnx"), "--train", train, "--val", val,
                 "--target-sparsity", "0.5", "--iterations", "1", "--epochs", "1",
                 "--no-remove-dead-neurons", "--json", str(rep), "-q"])
    assert code == 0
    rounds = [r for r in json.loads(rep.read_text())["history"] if r["stage"] == "iteration"]
    # The other branch's weights got no gradient (Wo goes with We in the else branch).
    assert rounds[-1]["not_retrained"] == (["We", "Wo"] if untaken == "We" else ["Wt"])
    out = onnx.load(str(tmp_path / "c.onnx"))
    x = _inputs("else")
    y = make_session(out).run(None, {"x": x, "rate": np.array(rate, np.int64)})[0]
    assert y.shape == (4, 3) and np.all(np.isfinite(y))


def test_a_scalar_input_given_per_sample_is_refused_before_training(tmp_path, capsys):
    pytest.importorskip("torch")
    src = tmp_path / "m.onnx"
    onnx.save(_model(by_rate=True), src)
    train, val = _rate_data(tmp_path, np.full(64, 16000))
    code = main(["compress", str(src), "-o", str(tmp_path / "c.onnx"), "--train", train, "--val", val,
                 "--target-sparsity", "0.5", "--iterations", "1", "--epochs", "1", "-q"])
    err = capsys.readouterr().err
    assert code == 2 and "'rate' is a scalar (rank 0)" in err and "0-d array" in err
    assert not (tmp_path / "c.onnx").exists()


def test_sensitivity_measures_branch_layers_and_flags_the_branch_the_data_skips(tmp_path, capsys):
    """Two branches storing weights under one name (as silero's do) are analysed separately."""
    src = tmp_path / "m.onnx"
    model = _model(by_rate=True)
    # Store the else-branch weight under the then-branch Constant's tensor name as well.
    else_g = next(a.g for a in model.graph.node[2].attribute if a.name == "else_branch")
    else_g.initializer[0].name = "Wt"
    for node in else_g.node:
        node.input[:] = ["Wt" if i == "We" else i for i in node.input]
    onnx.save(model, src)
    _, val = _rate_data(tmp_path, 8000)  # the else branch only
    code = main(["sensitivity", str(src), "--val", val, "-o", str(tmp_path / "sens"), "--budget", "1",
                 "--json", str(tmp_path / "s.json")])
    err = capsys.readouterr().err
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads((tmp_path / "s.json").read_text())["layers"]}
    assert rows["then_mm"]["scope"] == "route/then_branch" and rows["else_mm1"]["scope"] == "route/else_branch"
    assert any(p["drop_pp"] > 0 for p in rows["else_mm1"]["points"])  # the taken branch matters
    assert all(p["drop_pp"] == 0 for p in rows["then_mm"]["points"])  # the other one cannot
    assert "1 layer(s) inside subgraphs changed nothing" in err and "then_mm" in err


def test_lower_keeps_sparse_storage_of_weights_inside_branches(tmp_path):
    """Nothing in a branch is lowered; the branch weights pruned to sparse_value must not come
    back dense (the file would grow)."""
    src, pruned, lowered = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "l.onnx"
    model = _model()
    then_g = next(a.g for a in model.graph.node[2].attribute if a.name == "then_branch")
    big = np.random.default_rng(5).normal(size=(8, 8)).astype(np.float32)
    then_g.node[0].attribute[0].t.CopyFrom(numpy_helper.from_array(np.tile(big, (1, 1)), "Wt"))
    onnx.save(model, src)
    assert main(["prune", str(src), "-o", str(pruned), "--target-sparsity", "0.95",
                 "--no-remove-dead-neurons", "-q"]) == 0
    then_p = next(a.g for a in onnx.load(str(pruned)).graph.node[2].attribute if a.name == "then_branch")
    assert then_p.node[0].attribute[0].name == "sparse_value"
    assert main(["lower", str(pruned), "-o", str(lowered), "--input-shape", "x=4x8", "-q"]) == 0
    out = onnx.load(str(lowered))
    then_l = next(a.g for a in out.graph.node[2].attribute if a.name == "then_branch")
    assert then_l.node[0].attribute[0].name == "sparse_value"
    # Wo, a main-graph weight read only in the else branch, stays a main-graph (sparse) tensor.
    assert "Wo" in {s.values.name for s in out.graph.sparse_initializer} | {t.name for t in out.graph.initializer}
    x = _inputs("else")
    np.testing.assert_allclose(_run(out, x), _run(onnx.load(str(pruned)), x), rtol=1e-5, atol=1e-5)


def test_finetune_says_which_pruned_weights_it_could_not_retrain(tmp_path, capsys):
    pytest.importorskip("torch")
    src, pruned = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(_model(by_rate=True), src)
    assert main(["prune", str(src), "-o", str(pruned), "--target-sparsity", "0.5", "--emit", "dense",
                 "--no-remove-dead-neurons", "-q"]) == 0
    rng = np.random.default_rng(6)
    paths = []
    for split, n in (("train", 64), ("val", 32)):
        path = tmp_path / f"{split}_y.npz"
        np.savez(path, x=rng.normal(size=(n, 8)).astype(np.float32), rate=np.asarray(16000, np.int64),
                 y=rng.integers(0, 3, n).astype(np.int64))
        paths.append(str(path))
    rep = tmp_path / "f.json"
    code = main(["finetune", str(pruned), "-o", str(tmp_path / "f.onnx"), "--train", paths[0],
                 "--val", paths[1], "--epochs", "1", "--json", str(rep)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert json.loads(rep.read_text())["not_retrained"] == ["We", "Wo"]  # rate 16000: then-branch
    assert "note: 2 pruned weight(s) got no gradient" in err and "not retrained (We, Wo)" in err
