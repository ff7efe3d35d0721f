"""AdjustDropout: D_r = D_o · sqrt(C_ir / C_io) for the layer each Dropout feeds."""

import math

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes import AdjustDropout, ThresholdByStd
from tests.models import mlp, random_feeds, run


def _ratios(model):
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    out = {}
    for n in model.graph.node:
        if n.op_type == "Dropout":
            out[n.name] = float(inits[n.input[1]]) if len(n.input) > 1 else \
                next(a.f for a in n.attribute if a.name == "ratio")
    return out


def test_ratio_follows_the_paper_formula():
    m = mlp(sizes=(32, 24, 16, 4), dropout=0.5)
    g = graph_from_model(m)
    t = ThresholdByStd({"quality": 1.0})(g)
    r = AdjustDropout()(g)
    out = graph_to_model(r.graph, m)
    onnx.checker.check_model(out)
    rows = {row["node"]: row for row in r.stats["dropouts"]}
    nnz = {row["name"]: row["nonzero_after"] for row in t.stats["layers"]}
    # drop1 drops fc1's outputs (32x24 weights), drop2 drops fc2's (24x16).
    assert rows["drop1"]["layer"] == "fc1" and rows["drop2"]["layer"] == "fc2"
    for node, layer, size in (("drop1", "fc1", 32 * 24), ("drop2", "fc2", 24 * 16)):
        expected = 0.5 * math.sqrt(nnz[layer] / size)
        assert rows[node]["new_ratio"] == expected
        assert _ratios(out)[node] == np.float32(expected)
    # Inference is unchanged: Dropout is the identity outside training.
    feeds = random_feeds(m)
    pruned_only = graph_to_model(t.graph, m)
    np.testing.assert_array_equal(run(out, feeds)[0], run(pruned_only, feeds)[0])


def test_attribute_ratio_in_old_opsets_and_unpruned_layer_unchanged():
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32), "W1")
    w2 = numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32), "W2")
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Dropout", ["r"], ["d"], name="drop", ratio=0.4),
             helper.make_node("MatMul", ["d", "W2"], ["y"], name="fc2")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 8])],
                          [helper.make_tensor_value_info("y", 1, ["N", 4])], [w1, w2])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 10)])
    m.ir_version = 5
    r = AdjustDropout()(graph_from_model(m))
    assert r.modified is False  # nothing pruned: C_ir = C_io
    graph = graph_from_model(m)
    ThresholdByStd({"quality": 1.0, "skip": ["fc2"]})(graph)
    r = AdjustDropout()(graph)
    out = graph_to_model(r.graph, m)
    row = r.stats["dropouts"][0]
    assert row["layer"] == "fc1" and row["new_ratio"] < 0.4
    assert math.isclose(_ratios(out)["drop"], row["new_ratio"], rel_tol=1e-6)


def test_dropout_after_no_layer_is_reported():
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    ratio = numpy_helper.from_array(np.array(0.3, np.float32), "ratio")
    nodes = [helper.make_node("Dropout", ["x", "ratio"], ["h"], name="drop"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="fc")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 4])],
                          [helper.make_tensor_value_info("y", 1, ["N", 3])], [w, ratio])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    r = AdjustDropout()(graph_from_model(m))
    assert r.modified is False
    assert r.stats["dropouts"] == [{"node": "drop", "ratio": np.float32(0.3).item(),
                                    "new_ratio": None, "reason": "no prunable layer before it"}]
