"""Accuracy with ONNX Runtime: top-1/top-5, symbolic and fixed batch axes."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.runtime.datasets import DataMismatchError
from onnxprune.core.errors import UsageError
from onnxprune.runtime.evaluate import evaluate


def linear(classes=6, batch="n"):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, classes)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, classes])],
                              [numpy_helper.from_array(w, "W")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), w


def reference(x, y, w):
    scores = x @ w
    order = np.argsort(-scores, axis=1)
    return (order[:, 0] == y).mean(), (order[:, :5] == y[:, None]).any(1).mean()


@pytest.mark.parametrize("batch", ["n", 1, 4])
def test_accuracy_matches_numpy_for_any_batch_axis(batch):
    model, w = linear(batch=batch)
    rng = np.random.default_rng(2)
    x = rng.standard_normal((23, 8)).astype(np.float32)
    y = rng.integers(0, 6, 23)
    res = evaluate(model, (x, y), batch_size=5)
    top1, top5 = reference(x, y, w)
    assert res["n"] == 23 and res["top1"] == pytest.approx(top1) and res["top5"] == pytest.approx(top5)
    assert res["batch_size"] == (5 if batch == "n" else batch) and res["classes"] == 6


def test_top5_is_none_below_five_classes():
    model, _ = linear(classes=3)
    x = np.zeros((4, 8), np.float32)
    res = evaluate(model, (x, np.array([0, 1, 2, 0])))
    assert res["top5"] is None and res["top1"] == pytest.approx(0.5)


def test_bad_inputs():
    model, _ = linear()
    with pytest.raises(DataMismatchError, match="label 6"):
        evaluate(model, (np.zeros((2, 8), np.float32), np.array([0, 6])))
    with pytest.raises(UsageError, match="batch-size"):
        evaluate(model, (np.zeros((2, 8), np.float32), np.array([0, 1])), batch_size=0)


def test_evaluate_runs_models_lowered_to_sparse_ops():
    """Sessions register onnxprune's CSR ops when the model uses them (one session builder)."""
    from onnxprune.runtime.check import run_model
    from onnxprune.core.graph import graph_from_model, graph_to_model
    from onnxprune.passes import LowerToSparseOps, ThresholdByStd
    from tests.models import mlp

    m = mlp(sizes=(64, 48, 10))
    g = graph_from_model(m)
    ThresholdByStd({"target-sparsity": 0.9})(g)
    dense = graph_to_model(g, m)
    LowerToSparseOps({"objective": "size"})(g)
    lowered = graph_to_model(g, m)
    assert any(o.domain == "ai.onnxprune" for o in lowered.opset_import)
    x = np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32)
    y = run_model(dense, {"x": x})[0].argmax(1)
    assert evaluate(lowered, (x, y))["top1"] == 1.0
