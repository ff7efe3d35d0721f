"""Transposed chains (passes/lower_to_sparse_ops/chains.py): a lowered product whose output only
feeds the next lowered product's X writes it transposed (CsrGemm matmul=2, op-set 7) and the
next reads it so (transA=1), a Reshape restoring the output's leading dims; or, where X's
batches have a known number of rows that is a multiple of 64, each batch transposed (matmul=3
and 4, op-set 8), with no Reshape. The rewritten model computes what the dense one does; the pairs
that must not be rewritten are not."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps, op_set_needed
from onnxprune.runtime.check import run_model
from onnxprune.runtime_ops import DOMAIN
from tests.models import run


def _w(rng, k, n, density=0.3):
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[rng.random((k, n)) >= density] = 0.0
    return w


def ffn(opset=17, seq=16, hidden=32, inner=64, extra_use=False, fixed_batch=None, residual=True):
    """x [N, seq, hidden] -> MatMul + b1 -> Relu -> MatMul + b2 (+ x) -> y."""
    rng = np.random.default_rng(opset + (seq if isinstance(seq, int) else 0))
    inits = [numpy_helper.from_array(_w(rng, hidden, inner), "w1"),
             numpy_helper.from_array(rng.standard_normal(inner).astype(np.float32), "b1"),
             numpy_helper.from_array(_w(rng, inner, hidden), "w2"),
             numpy_helper.from_array(rng.standard_normal(hidden).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="fc1_bias"),
             helper.make_node("Relu", ["a1"], ["h"], name="act"),
             helper.make_node("MatMul", ["h", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["a2" if residual else "y"], name="fc2_bias")]
    if residual:
        nodes.append(helper.make_node("Add", ["a2", "x"], ["y"], name="residual"))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [fixed_batch or "N", seq, hidden])]
    if extra_use:  # h is read by a second node too
        nodes.append(helper.make_node("ReduceSum", ["h"], ["s"], name="sum", keepdims=0))
        outputs.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, None))
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                            [fixed_batch or "N", seq, hidden])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def mlp3(rows="N"):
    """x [rows, 24] -> Gemm -> Relu -> Gemm -> Relu -> Gemm -> y (Gemm style, transB=1)."""
    rng = np.random.default_rng(3)
    inits, nodes, x = [], [], "x"
    for i, (k, n) in enumerate(((24, 48), (48, 40), (40, 10))):
        inits += [numpy_helper.from_array(_w(rng, k, n).T.copy(), f"w{i}"),
                  numpy_helper.from_array(rng.standard_normal(n).astype(np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"g{i}"], name=f"fc{i}", transB=1))
        x = f"g{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, 24])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [rows, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def lowered(model, **options):
    result = LowerToSparseOps({"force": ["*"], **options})(graph_from_model(model))
    return graph_to_model(result.graph, model), result.stats


def csr_nodes(model):
    return {n.name: n for n in model.graph.node if n.domain == DOMAIN}


def attrs(node):
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def same_as_dense(model, low, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    want = run(model, {"x": x})
    got = run_model(low, {"x": x})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("opset", [17, 11], ids=["shape_end", "shape_slice"])
def test_an_ffn_pair_of_unknown_sequence_is_chained_over_the_whole_m(opset):
    """A symbolic sequence axis (or none known to be long enough): one transpose of all rows."""
    model = ffn(opset=opset, seq="S")
    low, stats = lowered(model)
    assert stats["transposed_chains"] == [{"producer": "fc1", "consumer": "fc2"}]
    nodes = csr_nodes(low)
    assert attrs(nodes["fc1"])["matmul"] == 2 and attrs(nodes["fc1"])["activation"] == b"Relu"
    assert attrs(nodes["fc2"])["matmul"] == 0 and attrs(nodes["fc2"])["transA"] == 1
    ops = [n.op_type for n in low.graph.node]
    assert ops.count("Reshape") == 2  # Z to (M, N), the output back to (N, seq, hidden)
    assert ("Slice" in ops) == (opset < 15)
    assert next(o.version for o in low.opset_import if o.domain == DOMAIN) == 7
    rows = {r["name"]: r for r in stats["layers"]}
    assert "output written transposed for fc2" in rows["fc1"]["reason"]
    assert "reads fc1's transposed output" in rows["fc2"]["reason"]
    onnx.checker.check_model(low)
    for batch in (1, 3):
        same_as_dense(model, low, (batch, 16, 32))
        same_as_dense(model, low, (batch, 5, 32))


@pytest.mark.parametrize("opset, seq, per_batch", [(17, 64, True), (13, 128, True), (17, 16, False), (17, 96, False),
                                                   (11, 64, False)],
                         ids=["64_rows", "128_rows", "16_rows_too_few", "96_rows_not_read_in_place",
                              "opset_11_no_einsum"])
def test_an_ffn_pair_of_known_sequence_transposes_each_batch(opset, seq, per_batch):
    model = ffn(opset=opset, seq=seq)
    low, stats = lowered(model)
    assert stats["transposed_chains"] == [{"producer": "fc1", "consumer": "fc2"}]
    nodes = csr_nodes(low)
    ops = [n.op_type for n in low.graph.node]
    if per_batch:
        assert attrs(nodes["fc1"])["matmul"] == 3 and attrs(nodes["fc1"])["activation"] == b"Relu"
        assert attrs(nodes["fc2"])["matmul"] == 4 and "transA" not in attrs(nodes["fc2"])
        assert list(nodes["fc2"].input)[5] == "x"  # the residual as it was: Y's shape
        assert "Reshape" not in ops and "Shape" not in ops
        assert next(o.version for o in low.opset_import if o.domain == DOMAIN) == 8
        rows = {r["name"]: r for r in stats["layers"]}
        assert "output written per batch transposed for fc2 (matmul=3)" in rows["fc1"]["reason"]
        assert "reads fc1's output per batch transposed (matmul=4)" in rows["fc2"]["reason"]
    else:
        assert attrs(nodes["fc1"])["matmul"] == 2 and attrs(nodes["fc2"])["transA"] == 1
    onnx.checker.check_model(low)
    for batch in (1, 3, 0):
        same_as_dense(model, low, (batch, seq, 32))


def test_a_gemm_mlp_chains_its_first_pair_and_needs_no_reshape():
    """At the expected batch of 8 (at the default of 1 an MLP's products have one row)."""
    model = mlp3()
    assert lowered(model)[1]["transposed_chains"] == []
    low, stats = lowered(model, batch=8)
    assert stats["transposed_chains"] == [{"producer": "fc0", "consumer": "fc1"}]
    assert attrs(csr_nodes(low)["fc2"]).get("transA", 0) == 0  # fc1 took part already
    assert "Reshape" not in [n.op_type for n in low.graph.node]
    for rows in (1, 2, 40):
        same_as_dense(model, low, (rows, 24))


@pytest.mark.parametrize("model, why", [
    (ffn(extra_use=True), "the producer's output has another reader"),
    (ffn(fixed_batch=1, seq=1), "one row: nothing to save"),
    (mlp3(rows=1), "one row, whatever the expected batch"),
])
def test_pairs_that_must_not_chain_are_left(model, why):
    low, stats = lowered(model, batch=8)
    assert stats["transposed_chains"] == [], why
    assert all(attrs(n).get("matmul", 0) != 2 for n in csr_nodes(low).values())
    assert max(op_set_needed(n) for n in graph_from_model(low).nodes if n.domain == DOMAIN) < 7


def test_chains_can_be_turned_off():
    low, stats = lowered(ffn(), **{"transposed-chains": False})
    assert stats["transposed_chains"] == []
    assert next(o.version for o in low.opset_import if o.domain == DOMAIN) == 6  # Z on fc2


def _unnamed(model):
    for n in model.graph.node:
        n.name = ""
    return model


def test_unnamed_nodes_are_told_apart():
    """Keyed by name, every unnamed product shared one entry: a rank-3 consumer took a rank-2
    one's and lost its Reshape (the output came out (M, N))."""
    model = _unnamed(ffn())
    # a second, rank-2 product after the FFN: y [N, 16, 32] -> reshape [-1, 32] -> MatMul
    rng = np.random.default_rng(9)
    model.graph.initializer.extend([numpy_helper.from_array(_w(rng, 32, 8), "w3"),
                                    numpy_helper.from_array(np.array([-1, 32], np.int64), "flat")])
    model.graph.node.extend([helper.make_node("Reshape", ["y", "flat"], ["yf"]),
                             helper.make_node("MatMul", ["yf", "w3"], ["z"])])
    model.graph.output.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, None))
    low, stats = lowered(model)
    assert len(stats["transposed_chains"]) == 1
    same_as_dense(model, low, (2, 16, 32))


def test_a_branch_reading_the_output_keeps_the_pair_apart():
    """An If branch that reads fc1's output from the outer graph is one of its readers."""
    model = ffn(residual=False)
    branch = helper.make_graph([helper.make_node("Identity", ["h"], ["hb"])], "b", [],
                               [helper.make_tensor_value_info("hb", TensorProto.FLOAT, None)])
    model.graph.initializer.append(numpy_helper.from_array(np.array(True), "cond"))
    model.graph.node.append(helper.make_node("If", ["cond"], ["hif"], then_branch=branch, else_branch=branch))
    model.graph.output.append(helper.make_tensor_value_info("hif", TensorProto.FLOAT, None))
    low, stats = lowered(model)
    assert stats["transposed_chains"] == []
    same_as_dense(model, low, (2, 16, 32))


def test_a_partly_lowered_model_lowered_again_leaves_its_csr_nodes_alone():
    """fc1 lowered first (alone); lowering again lowers fc2 and pairs nothing with fc1."""
    model = ffn()
    first, _ = lowered(model, force=["fc1"])
    low, stats = lowered(first, batch=8)
    assert stats["transposed_chains"] == [] and stats["lowered"] == ["fc2"]
    same_as_dense(model, low, (2, 16, 32))


def test_an_empty_inner_dim_keeps_its_zero():
    """A Reshape with allowzero (op-set 14 on): an empty sequence gives an empty output, where
    the 0 would otherwise copy a dimension of the (M, N) product."""
    model = ffn()
    for vi in (model.graph.input[0], model.graph.output[0]):
        vi.type.tensor_type.shape.dim[1].dim_param = "S"
    low, stats = lowered(model, **{"input-shapes": {"x": [1, 16, 32]}})
    assert len(stats["transposed_chains"]) == 1
    x = np.zeros((2, 0, 32), np.float32)
    (got,) = run_model(low, {"x": x})
    assert got.shape == (2, 0, 32)


def test_a_bias_behind_identity_still_chains():
    """PyTorch aliases equal biases through Identity (its cloned encoder layers): the
    consumer's bias is then a Variable whose shape only the constant behind it tells."""
    model = ffn()
    for n in model.graph.node:
        if n.name == "fc2_bias":
            n.input[1] = "b2_alias"
    model.graph.node.insert(0, helper.make_node("Identity", ["b2"], ["b2_alias"], name="alias"))
    low, stats = lowered(model)
    assert stats["transposed_chains"] == [{"producer": "fc1", "consumer": "fc2"}]
    same_as_dense(model, low, (2, 16, 32))


@pytest.mark.parametrize("bad", ["yes", 1, None])
def test_the_option_takes_a_boolean_only(bad):
    from onnxprune.core.errors import UsageError
    with pytest.raises(UsageError, match="transposed-chains: expected true or false"):
        LowerToSparseOps({"transposed-chains": bad})
