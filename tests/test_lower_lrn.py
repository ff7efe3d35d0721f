"""Lowering for speed rewrites LRN into Mul, a 1x1 window Conv (lowered to CsrConv with it),
Sqrt/Pow and Div (passes/lower_to_sparse_ops/lrn.py): the result matches a float64 reference
of ONNX's LRN and ONNX Runtime's own LRN; an LRN the rewrite cannot take stays, with the
reason; the measured decision times each LRN against its rewrite and keeps only winners."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.api import lower
from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps, lrn
from tests.conftest import run_cli
from tests.test_lower_measure import fake_timer


def reference_lrn(x: np.ndarray, size: int, alpha: float, beta: float, bias: float) -> np.ndarray:
    """ONNX LRN in float64, written from the operator's definition, one channel at a time."""
    x = x.astype(np.float64)
    c_count = x.shape[1]
    y = np.empty_like(x)
    for c in range(c_count):
        lo = max(0, c - (size - 1) // 2)
        hi = min(c_count - 1, c + int(np.ceil((size - 1) / 2)))
        square_sum = (x[:, lo:hi + 1] ** 2).sum(axis=1)
        y[:, c] = x[:, c] / (bias + alpha / size * square_sum) ** beta
    return y


def lrn_model(c=16, hw=7, batch=1, size=5, alpha=1e-4, beta=0.75, bias=1.0, dtype=TensorProto.FLOAT,
              rank=4, channels=None, conv_after=True, output_too=False, opset=13):
    """x → LRN "norm" [→ Conv (c→4, 1x1, 60% zeros) "conv"] → y; ``channels`` replaces the
    declared channel dim (e.g. a symbol); ``output_too`` makes the LRN's output a graph output."""
    rng = np.random.default_rng(2)
    shape = [batch, channels if channels is not None else c] + [hw] * (rank - 2)
    attrs = {"size": size, "alpha": alpha, "beta": beta, "bias": bias}
    nodes = [helper.make_node("LRN", ["x"], ["n"], name="norm", **attrs)]
    inits = []
    outputs = []
    if conv_after:
        w = rng.standard_normal((4, c, 1, 1)).astype(np.float32)
        w[rng.random(w.shape) < 0.6] = 0.0
        inits.append(numpy_helper.from_array(w, "W"))
        nodes.append(helper.make_node("Conv", ["n", "W"], ["y"], name="conv"))
        outputs.append(helper.make_tensor_value_info("y", dtype, [shape[0], 4] + shape[2:]))
    if output_too or not conv_after:
        outputs.append(helper.make_tensor_value_info("n", dtype, shape))
    graph = helper.make_graph(nodes, "lrn", [helper.make_tensor_value_info("x", dtype, shape)], outputs,
                              initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _rewrite(model, **options):
    result = LowerToSparseOps({"decompose-lrn": ["*"], **options})(graph_from_model(model))
    return graph_to_model(result.graph, model), result.stats


def _run(model, x):
    sess = runtime_ops.InferenceSession(model.SerializeToString())
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))


# --------------------------------------------------------------------------- the numeric core


@pytest.mark.parametrize("c", [1, 2, 5, 16])
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 9, 40])
def test_window_weight_is_the_onnx_window(c, size):
    w = lrn.window_weight(c, size, 0.5)
    assert w.shape == (c, c, 1, 1) and w.dtype == np.float32
    for row in range(c):
        lo = max(0, row - (size - 1) // 2)
        hi = min(c - 1, row + int(np.ceil((size - 1) / 2)))
        want = np.zeros(c, np.float32)
        want[lo:hi + 1] = np.float32(0.5 / size)
        np.testing.assert_array_equal(w[row, :, 0, 0], want)


def test_power_steps():
    assert lrn.power_steps(1.0) == []
    assert lrn.power_steps(0.5) == ["Sqrt"]
    assert lrn.power_steps(0.25) == ["Sqrt", "Sqrt"]
    assert lrn.power_steps(0.75) == ["Sqrt", "Sqrt", "Mul"]
    assert lrn.power_steps(0.6) == ["Pow"] and lrn.power_steps(2.0) == ["Pow"]


# --------------------------------------------------------------------------- the rewrite


@pytest.mark.parametrize("c,size", [(1, 1), (3, 5), (16, 5), (16, 1), (20, 7), (4, 41)])
@pytest.mark.parametrize("beta", [0.75, 0.5, 0.25, 1.0, 0.6, 2.0])
@pytest.mark.parametrize("batch", [1, 3])
def test_rewrite_matches_the_reference_and_onnx_runtime(c, size, beta, batch):
    model = lrn_model(c=c, batch=batch, size=size, beta=beta, alpha=0.5, bias=1.5, conv_after=False)
    lowered, stats = _rewrite(model)
    assert [r["rewritten"] for r in stats["rewrites"]] == [True]
    assert "LRN" not in [n.op_type for n in lowered.graph.node]
    assert stats["lowered"] == ["norm/window"]  # the window runs as CsrConv
    x = np.random.default_rng(c + size).standard_normal((batch, c, 7, 7)).astype(np.float32) * 3
    got = _run(lowered, x)["n"]
    want = reference_lrn(x, size, 0.5, beta, 1.5)
    np.testing.assert_allclose(got, want, rtol=2e-6, atol=1e-7)
    # ONNX Runtime's LRN is itself up to ~3e-6 from the float64 reference (its power in float32)
    ort_lrn = _run(model, x)["n"]
    np.testing.assert_allclose(got, ort_lrn, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("alpha,bias", [(1e-4, 1.0), (1.0, 2.0), (1e-9, 1.0), (2e-5, 0.5), (1.0, 0.0)])
def test_alexnet_parameters_and_a_dense_window(alpha, bias):
    """Also with the window kept a dense Conv (never list): the rewrite alone is exact."""
    model = lrn_model(c=32, hw=9, size=5, alpha=alpha, bias=bias)
    x = np.random.default_rng(1).standard_normal((1, 32, 9, 9)).astype(np.float32) * 20
    want = _run(model, x)
    for never in ([], ["norm/window"]):
        lowered, stats = _rewrite(model, never=never, force=["conv"])
        assert ("norm/window" in stats["lowered"]) == (not never)
        got = _run(lowered, x)
        for k in want:
            np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6 * np.abs(want[k]).max())


def test_the_lrn_output_stays_the_graph_output_and_feeds_its_users():
    model = lrn_model(c=8, output_too=True)
    lowered, stats = _rewrite(model)
    assert [o.name for o in lowered.graph.output] == ["y", "n"]
    writers = [n for n in lowered.graph.node if "n" in n.output]
    assert [n.op_type for n in writers] == ["Div"]
    onnx.checker.check_model(model)
    onnx.checker.check_model(lowered)
    x = np.random.default_rng(0).standard_normal((1, 8, 7, 7)).astype(np.float32)
    want, got = _run(model, x), _run(lowered, x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=1e-7)
    # topologically sorted: every input is produced before it is read
    seen = {"x", *(i.name for i in lowered.graph.initializer)}
    for n in lowered.graph.node:
        assert all(i in seen for i in n.input if i), n.name
        seen.update(n.output)


@pytest.mark.parametrize("opset", [7, 11])
def test_older_opsets_and_names_already_taken(opset):
    model = lrn_model(c=8, opset=opset)
    # a tensor already named like the rewrite's first choice
    model.graph.node.append(helper.make_node("Identity", ["y"], ["norm.square"], name="norm/square"))
    model.graph.output.append(helper.make_tensor_value_info("norm.square", TensorProto.FLOAT, None))
    lowered, stats = _rewrite(model)
    assert stats["rewrites"][0]["rewritten"]
    names = [n.name for n in lowered.graph.node]
    assert len(names) == len(set(names))
    x = np.random.default_rng(0).standard_normal((1, 8, 7, 7)).astype(np.float32)
    want, got = _run(model, x), _run(lowered, x)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=2e-6, atol=1e-7)


@pytest.mark.parametrize("case,reason", [
    ("float16", "not known to be float32"),
    ("rank3", "not known to be 4-D"),
    ("symbolic_c", "channel count is unknown"),
    ("even", "even size 4"),
    ("too_many", "channels > 3"),
    ("nan_alpha", "alpha nan is not a finite number"),
    ("zero_size", "size 0 is not an integer >= 1"),
    ("zero_alpha", "alpha 0 <= 0"),
    ("negative_beta", "beta -0.5 <= 0"),
    ("int_alpha", "alpha 1 is not a float attribute"),
    ("opset6", "op-set 6 is below 7"),
])
def test_an_lrn_the_rewrite_cannot_take_stays_with_the_reason(case, reason, monkeypatch):
    kw = {"float16": dict(dtype=TensorProto.FLOAT16, conv_after=False), "rank3": dict(rank=3, conv_after=False),
          "symbolic_c": dict(channels="C", conv_after=False), "even": dict(size=4),
          "too_many": dict(c=4), "nan_alpha": dict(alpha=float("nan")), "zero_size": dict(size=0),
          "zero_alpha": dict(alpha=0.0), "negative_beta": dict(beta=-0.5), "int_alpha": dict(alpha=1),
          "opset6": dict(opset=6)}[case]
    if case == "too_many":
        monkeypatch.setattr(lrn, "MAX_CHANNELS", 3)
    model = lrn_model(**kw)
    lowered, stats = _rewrite(model)
    (row,) = stats["rewrites"]
    assert not row["rewritten"] and reason in row["reason"], row["reason"]
    assert [n.op_type for n in lowered.graph.node].count("LRN") == 1


def test_an_unnamed_lrn_goes_by_its_output():
    model = lrn_model(c=8)
    model.graph.node[0].name = ""
    lowered, stats = _rewrite(model)
    (row,) = stats["rewrites"]
    assert row["node"] == "n" and row["rewritten"] and row["window"] == "n/window"
    x = np.random.default_rng(0).standard_normal((1, 8, 7, 7)).astype(np.float32)
    np.testing.assert_allclose(_run(lowered, x)["y"], _run(model, x)["y"], rtol=1e-5, atol=1e-6)


def test_fp16_values_keep_the_window_in_fp32():
    """α/size = 2e-5 is subnormal in float16 (and 1e-8 / 5 rounds to zero)."""
    model = lrn_model(c=16, alpha=1e-8)
    lowered, stats = _rewrite(model, values="fp16", force=["conv"])
    rows = {r["name"]: r for r in stats["layers"]}
    assert rows["norm/window"]["values_dtype"] == "float32"
    assert "values kept fp32: an LRN window" in rows["norm/window"]["reason"]
    assert rows["conv"]["values_dtype"] == "float16"
    alone = lrn_model(c=16, alpha=1e-8, conv_after=False)
    lowered, _ = _rewrite(alone, values="fp16")
    x = np.random.default_rng(0).standard_normal((1, 16, 7, 7)).astype(np.float32) * 1e4
    np.testing.assert_allclose(_run(lowered, x)["n"], reference_lrn(x, 5, 1e-8, 0.75, 1.0), rtol=2e-6)


def test_an_lrn_inside_a_subgraph_is_left_alone():
    body_lrn = helper.make_node("LRN", ["x"], ["b"], name="inner", size=3)
    then = helper.make_graph([body_lrn], "then", [], [helper.make_tensor_value_info("b", TensorProto.FLOAT, None)])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                              [helper.make_tensor_value_info("e", TensorProto.FLOAT, None)])
    graph = helper.make_graph(
        [helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then, else_branch=other)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 5]),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    lowered, stats = _rewrite(model)
    assert stats["rewrites"] == []  # only main-graph LRNs are considered
    (if_node,) = lowered.graph.node
    then_branch = next(a.g for a in if_node.attribute if a.name == "then_branch")
    assert [n.op_type for n in then_branch.node] == ["LRN"]


def test_not_asked_means_not_rewritten():
    model = lrn_model(c=8)
    result = LowerToSparseOps({"force": ["*"]})(graph_from_model(model))
    assert result.stats["rewrites"][0]["reason"] == "not in the decompose-lrn list"
    assert "LRN" in [n.op for n in result.graph.nodes]
    result = LowerToSparseOps({"decompose-lrn": ["other*"]})(graph_from_model(model))
    assert not result.stats["rewrites"][0]["rewritten"]


# --------------------------------------------------------------------------- the decision


def _pruned_lrn_model(tmp_path):
    model = lrn_model(c=16, hw=9)
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    return model, path


@pytest.mark.parametrize("speedup,rewritten", [(5.0, True), (1.09, False)])
def test_the_measured_decision_times_each_lrn_against_its_rewrite(tmp_path, speedup, rewritten):
    model, path = _pruned_lrn_model(tmp_path)
    calls = []
    report = lower(str(path), str(tmp_path / "o.onnx"),
                   timer=fake_timer({"conv": 2.0, "norm": speedup}, 3.0, calls))
    assert "norm" in calls
    (row,) = report["lowering"]["rewrites"]
    assert row["rewritten"] is rewritten and row["speedup"] == pytest.approx(speedup)
    assert row["reason"].startswith(f"measured {speedup:.2f}x")
    ops = _ops(tmp_path / "o.onnx")
    assert ("LRN" in ops) is not rewritten
    assert ("norm/window" in report["sparse_ops"]["lowered"]) is rewritten
    x = np.random.default_rng(0).standard_normal((1, 16, 9, 9)).astype(np.float32)
    want, got = _run(model, x), _run(onnx.load(str(tmp_path / "o.onnx")), x)
    np.testing.assert_allclose(got["y"], want["y"], rtol=2e-6, atol=1e-6)


def test_a_slower_whole_model_drops_the_rewrite_with_the_layers(tmp_path):
    _, path = _pruned_lrn_model(tmp_path)
    report = lower(str(path), str(tmp_path / "o.onnx"),
                   timer=fake_timer({"conv": 2.0, "norm": 5.0}, [0.9, 0.9, 0.8]))
    assert report["lowering"]["whole_model"]["kept"] == "dense"
    (row,) = report["lowering"]["rewrites"]
    assert not row["rewritten"] and "so the dense model was kept" in row["reason"]
    assert _ops(tmp_path / "o.onnx") == ["LRN", "Conv"]


def test_the_lrn_rewrites_alone_are_tried_last(tmp_path):
    """Every layer set slower than dense, the rewrite alone faster: that is written."""
    _, path = _pruned_lrn_model(tmp_path)
    report = lower(str(path), str(tmp_path / "o.onnx"),
                   timer=fake_timer({"conv": 1.2, "norm": 5.0}, [0.9, 1.3]))
    whole = report["lowering"]["whole_model"]
    assert whole["kept"] == "lowered" and whole["min_layer_speedup"] is None
    assert [a["min_layer_speedup"] for a in whole["attempts"]] == [1.1, None]
    assert "only the LRN rewrites" in whole["reason"]
    assert report["sparse_ops"]["lowered"] == ["norm/window"]
    conv = next(r for r in report["sparse_ops"]["layers"] if r["name"] == "conv")
    assert conv["reason"].endswith("whole model ran 0.90x of dense; only the LRN rewrites are kept")
    assert "LRN" not in _ops(tmp_path / "o.onnx") and "Conv" in _ops(tmp_path / "o.onnx")


def test_the_cost_model_rewrites_and_size_does_not(tmp_path):
    _, path = _pruned_lrn_model(tmp_path)
    report = lower(str(path), str(tmp_path / "c.onnx"), decide="model")
    (row,) = report["lowering"]["rewrites"]
    assert row["rewritten"] and "not timed" in row["reason"] and row["speedup"] is None
    report = lower(str(path), str(tmp_path / "s.onnx"), lower_for="size")
    assert "LRN" in _ops(tmp_path / "s.onnx")
    assert not report["sparse_ops"]["rewrites"][0]["rewritten"]


def test_cli_says_what_it_rewrote(tmp_path, capsys):
    _, path = _pruned_lrn_model(tmp_path)
    before = path.read_bytes()
    code, _, err = run_cli(["lower", str(path), "-o", str(tmp_path / "o.onnx"), "--decide", "model",
                            "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    assert "sparse-ops: rewrote norm (LRN: rewritten: 16-channel window of 5" in err
    assert json.loads((tmp_path / "r.json").read_text())["sparse_ops"]["rewrites"][0]["rewritten"]
    assert path.read_bytes() == before
    code, _, _ = run_cli(["lower", str(path), "-o", str(tmp_path / "o2.onnx"), "--decide", "model"], capsys)
    assert (tmp_path / "o.onnx").read_bytes() == (tmp_path / "o2.onnx").read_bytes()


def test_cli_says_why_an_lrn_was_kept_without_any_layer(tmp_path, capsys):
    model = lrn_model(c=16, channels="C", conv_after=False)
    onnx.save(model, str(tmp_path / "m.onnx"))
    code, _, err = run_cli(["lower", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"),
                            "--decide", "model"], capsys)
    assert code == 0, err
    assert "no prunable layer found; the model was written unchanged" in err
    assert "sparse-ops: kept    norm (LRN: its channel count is unknown" in err


def test_the_measured_decision_names_an_unnamed_lrn_by_its_output(tmp_path):
    model = lrn_model(c=16, hw=9)
    model.graph.node[0].name = ""
    onnx.save(model, str(tmp_path / "m.onnx"))
    report = lower(str(tmp_path / "m.onnx"), str(tmp_path / "o.onnx"), timer=fake_timer({"conv": 2.0, "n": 5.0}, 3.0))
    (row,) = report["lowering"]["rewrites"]
    assert row["node"] == "n" and row["rewritten"] and row["speedup"] == pytest.approx(5.0)


def _ops(path):
    return [n.op_type for n in onnx.load(str(path)).graph.node if n.op_type != "Constant"]
