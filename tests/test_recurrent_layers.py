"""LSTM / GRU / RNN weights are layers: W and R pruned, retrained under their masks, written back.

Two ways a recurrent weight is stored:

* ``direct``: W [1, G·H, IN] and R [1, G·H, H] initializers feed the op (torch's exporter with
  constant folding, most converters);
* ``reordered``: W [G·H, IN] is stored once and the op reads Unsqueeze(Concat(Slice(W) …)), the
  gate reorder torch writes without folding (silero-vad).  The rows the slices cover must be
  each row of W exactly once for W to count as the layer's weight.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.app import main
from onnxprune.core.graph import find_layers, graph_from_model
from onnxprune.runtime.check import make_session

T, B, IN, H = 5, 2, 6, 8
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def _model(op: str = "LSTM", store: str = "direct", blocks=None, seed: int = 0) -> onnx.ModelProto:
    g = GATES[op]
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(g * H, IN)).astype(np.float32)
    r = rng.normal(size=(g * H, H)).astype(np.float32)
    bias = rng.normal(size=(1, 2 * g * H)).astype(np.float32) * 0.1
    head = rng.normal(size=(H, 3)).astype(np.float32)
    inits = [numpy_helper.from_array(r[None], "R"), numpy_helper.from_array(bias, "Bias"),
             numpy_helper.from_array(head, "Whead")]
    nodes = []
    if store == "direct":
        inits.append(numpy_helper.from_array(w[None], "W"))
        w_in = "W"
    else:  # torch's gate reorder: Unsqueeze(Concat(Slice(W2d, a, b) for (a, b) in blocks))
        inits.append(numpy_helper.from_array(w, "W2d"))
        parts = []
        for k, (a, b) in enumerate(blocks or [(0, H), (3 * H, 4 * H), (H, 3 * H)]):
            inits += [numpy_helper.from_array(np.array([a], np.int64), f"s{k}"),
                      numpy_helper.from_array(np.array([b], np.int64), f"e{k}"),
                      numpy_helper.from_array(np.array([0], np.int64), f"a{k}")]
            nodes.append(helper.make_node("Slice", ["W2d", f"s{k}", f"e{k}", f"a{k}"], [f"p{k}"]))
            parts.append(f"p{k}")
        inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero_axis"))
        nodes += [helper.make_node("Concat", parts, ["Wcat"], axis=0),
                  helper.make_node("Unsqueeze", ["Wcat", "zero_axis"], ["W3d"])]
        w_in = "W3d"
    nodes += [
        helper.make_node(op, ["x", w_in, "R", "Bias"], ["", "h"], name="rnn", hidden_size=H),
        helper.make_node("Squeeze", ["h", "zero_axis2"], ["h2"]),
        helper.make_node("MatMul", ["h2", "Whead"], ["y"], name="head"),
    ]
    inits.append(numpy_helper.from_array(np.array([0], np.int64), "zero_axis2"))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [T, "N", IN])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m, full_check=True)
    return m


def _x(seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(T, B, IN)).astype(np.float32)


def _init(model: onnx.ModelProto, name: str) -> np.ndarray:
    return numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


@pytest.mark.parametrize("op", sorted(GATES))
def test_w_and_r_are_layers_of_kind_fc_with_per_step_flops(op):
    layers, _ = find_layers(graph_from_model(_model(op)))
    got = {layer.name: (layer.weight_name, layer.kind, layer.out_axis, layer.in_axis) for layer in layers}
    assert got == {"rnn:W": ("W", "fc", 1, 2), "rnn:R": ("R", "fc", 1, 2), "head": ("Whead", "fc", 1, 0)}


def test_the_gate_reorder_view_finds_the_stored_weight():
    layers, _ = find_layers(graph_from_model(_model("LSTM", "reordered")))
    w = next(layer for layer in layers if layer.name == "rnn:W")
    assert (w.weight_name, w.shape, w.out_axis, w.in_axis) == ("W2d", (4 * H, IN), 0, 1)


@pytest.mark.parametrize("blocks", [[(0, 2 * H), (H, 3 * H)],  # rows read twice, rows missing
                                    [(0, H), (2 * H, 4 * H), (2 * H, 3 * H)]])
def test_slices_that_are_not_a_reorder_of_every_row_are_not_followed(blocks):
    layers, _ = find_layers(graph_from_model(_model("LSTM", "reordered", blocks)))
    assert "rnn:W" not in {layer.name for layer in layers}
    pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import find_weights

    assert "W2d" not in find_weights(_model("LSTM", "reordered", blocks))


@pytest.mark.parametrize("store", ["direct", "reordered"])
def test_prune_zeroes_w_and_r_and_the_model_runs(tmp_path, store):
    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(_model("LSTM", store), src)
    assert main(["prune", str(src), "-o", str(out), "--target-sparsity", "0.75", "--emit", "dense",
                 "--no-remove-dead-neurons", "-q"]) == 0
    before, after = onnx.load(str(src)), onnx.load(str(out))
    for name in ("W" if store == "direct" else "W2d", "R"):
        w0, w1 = _init(before, name), _init(after, name)
        assert np.mean(w1 == 0) == pytest.approx(0.75, abs=0.02), name
        kept = w1 != 0
        np.testing.assert_array_equal(w1[kept], w0[kept])  # survivors untouched
        assert np.abs(w0[~kept]).max() <= np.abs(w0[kept]).min()  # the smallest went
    y = make_session(after).run(None, {"x": _x()})[0]
    assert y.shape == (B, 3) and np.all(np.isfinite(y))


def test_lowering_leaves_recurrent_layers_dense_with_a_reason(tmp_path):
    import json

    src, out, rep = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "r.json"
    onnx.save(_model("GRU"), src)
    assert main(["prune", str(src), "-o", str(out), "--target-sparsity", "0.9", "--emit", "sparse-ops",
                 "--input-shape", f"x={T}x{B}x{IN}", "--no-remove-dead-neurons", "--json", str(rep),
                 "-q"]) == 0
    rows = {r["name"]: r for r in json.loads(rep.read_text())["sparse_ops"]["layers"]}
    assert not rows["rnn:W"]["lowered"] and "GRU has no sparse op" in rows["rnn:W"]["reason"]


@pytest.mark.parametrize("store", ["direct", "reordered"])
def test_bridge_trains_recurrent_weights_under_their_masks(tmp_path, store):
    torch = pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import FinetuneConfig, build_module, finetune, read_weights

    src, out = tmp_path / "m.onnx", tmp_path / "p.onnx"
    onnx.save(_model("LSTM", store), src)
    assert main(["prune", str(src), "-o", str(out), "--target-sparsity", "0.5", "--emit", "dense",
                 "--no-remove-dead-neurons", "-q"]) == 0
    pruned = onnx.load(str(out))
    w_name = "W" if store == "direct" else "W2d"
    module = build_module(pruned)
    prunable = {n for n, i in module.weight_info.items() if i.prunable}
    assert prunable == {w_name, "R", "Whead"}
    x = _x()
    got = module(torch.from_numpy(x)).detach().numpy()
    np.testing.assert_allclose(got, make_session(pruned).run(None, {"x": x})[0], rtol=1e-5, atol=1e-5)

    xs = np.random.default_rng(2).normal(size=(32, T, IN)).astype(np.float32)  # samples on axis 0
    ys = np.random.default_rng(3).integers(0, 3, 32).astype(np.int64)
    # Samples come first in the data; the model takes them on axis 1 of [T, N, IN].
    res = finetune(pruned, (xs, ys),
                   config=FinetuneConfig(epochs=2, batch_size=8, lr=0.05, seed=0))
    before, after = read_weights(pruned), read_weights(res.model)
    for name in (w_name, "R"):
        zero = before[name] == 0
        assert np.all(after[name][zero] == 0), name
        assert np.any(after[name][~zero] != before[name][~zero]), name
    assert res.unreached == []


@pytest.mark.parametrize("rows, n, want", [
    ([(0, 8), (24, 2**63 - 1), (8, 24)], 32, True),  # "to the end" as INT64_MAX
    ([(0, 8), (-8, 32), (8, 24)], 32, True),  # negative start counts from the end
    ([(0, 16), (8, 32)], 32, False),  # rows 8..15 twice
    ([(0, 8), (16, 32)], 32, False),  # rows 8..15 missing
    ([(0, 4), (4, 4), (4, 8)], 8, False),  # an empty slice is not a gate block
    ([], 4, False),
])
def test_rows_partition(rows, n, want):
    from onnxprune.core.graph import rows_partition

    assert rows_partition(rows, n) is want
