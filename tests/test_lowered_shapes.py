"""Shape inference over a lowered model (core/graph.py ``_stand_ins``): onnxprune's CsrGemm and
CsrConv nodes stand in as the ONNX op they compute, so the shapes a lowered model's tools read
(re-lowering's residual folds, FLOPs) do not stop at the first lowered node; the If of a
streamed prefix keeps the shapes the lowering recorded."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxprune.api import lower
from onnxprune.core.graph import graph_from_model, graph_to_model, infer_shapes
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps
from onnxprune.runtime.bench import capture_shapes
from tests.test_batch_stream import _feeds, _timer, residual_cnn
from tests.test_runtime_ops import DOMAIN, sparse_weight
from tests.test_runtime_ops_transposed import transposed_model


def _run_shapes(model, names, feeds):
    return {n: list(s) for n, s in capture_shapes(model, names, feeds, 1).items()}


def test_a_lowered_cnn_has_the_shapes_it_runs_with():
    model = residual_cnn()
    lowered = graph_to_model(LowerToSparseOps({"force": ["*"]})(graph_from_model(model)).graph, model)
    csr = [n.output[0] for n in lowered.graph.node if n.domain == DOMAIN]
    assert {n.op_type for n in lowered.graph.node if n.domain == DOMAIN} == {"CsrConv", "CsrGemm", "MaxPool"}
    inferred = infer_shapes(lowered, {"x": [2, 3, 16, 16]})
    ran = _run_shapes(lowered, [o for n in lowered.graph.node for o in n.output], _feeds(2))
    assert {n: inferred.get(n) for n in ran} == ran
    # without a CSR width (a file of op-sets before `columns`) the node is left as it was
    csr = [n.output[0] for n in lowered.graph.node if n.op_type == "CsrConv"]
    for node in lowered.graph.node:
        kept = [a for a in node.attribute if a.name != "columns"]
        del node.attribute[:]
        node.attribute.extend(kept)
    assert infer_shapes(lowered, {"x": [2, 3, 16, 16]}).get(csr[0]) is None


@pytest.mark.parametrize("matmul, x_shape, y_shape", [
    (0, [6, 20], [6, 12]), (1, [2, 5, 20], [2, 5, 12]), (3, [2, 5, 20], [2, 12, 5]), (4, [2, 20, 5], [2, 5, 12]),
    (2, [2, 5, 20], None),  # a flattened, transposed Y: no stand-in
])
def test_each_product_style_stands_in_as_its_onnx_op(matmul, x_shape, y_shape):
    w = sparse_weight(np.random.default_rng(0), 12, 20, 0.3)
    model = transposed_model(w, matmul=matmul, x_shape=x_shape)
    model.graph.node[0].attribute.append(helper.make_attribute("columns", 20))
    model.opset_import[0].version = 17
    assert infer_shapes(model).get("Y") == y_shape
    if y_shape is not None:
        x = np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)
        assert _run_shapes(model, ["Y"], {"X": x})["Y"] == y_shape


def test_a_streamed_files_shapes_go_on_past_the_stream(tmp_path, monkeypatch):
    """The If's outputs carry the frontier's shape, so the layers after a streamed prefix have
    theirs (a residual Add after it can be folded when the file is lowered again)."""
    from onnxprune.runtime import lowering

    monkeypatch.setattr(lowering, "STREAM_BUDGET_L2S", (1,))
    path, out = tmp_path / "m.onnx", tmp_path / "s.onnx"
    onnx.save(residual_cnn(), path)
    r = lower(str(path), str(out), expected_batch=4, timer=_timer(1.3))
    assert r["lowering"]["batch_stream"]["kept"]
    written = onnx.load(str(out))
    guard = next(n for n in written.graph.node if n.op_type == "If")
    inferred = infer_shapes(written)
    ran = _run_shapes(written, [*guard.output, "y"], _feeds(4))
    for name in guard.output:
        assert inferred[name][1:] == ran[name][1:] and inferred[name][0] is None
    assert inferred["y"] == [None, 5]
