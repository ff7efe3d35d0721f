"""LowerToSparseOps folds a residual Add after a lowered MatMul or Gemm into CsrGemm's input Z
(op-set 6): a transformer sublayer (MatMul → Add(bias) → Add(input) → LayerNormalization)
becomes one CsrGemm reading Z, then the LayerNormalization, computing what the sublayer did;
an Add that would broadcast, or whose operand's shape is not known to match, stays a node;
an activation after the Add is folded after Z; ``dense_from_lowered`` rebuilds the Add."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime.bench import dense_from_lowered
from tests.test_lower_residual import _op_set, _topological
from tests.test_lower_to_sparse_ops import _assert_same, _lower


def _sublayer(*, seq=16, batch="N", bias=True, z="input", layernorm=True, relu=False, z_first=False,
              add_is_output=False, gemm=False):
    """h (batch, seq, 32) → MatMul (32→32, 70% zeros) [→ Add(·, b)] → Add(·, z) [→ Relu]
    [→ LayerNormalization] → y; ``z``: "input" (h itself), "branch" (another MatMul of h,
    listed after the Add), or a shape for a constant. ``gemm``: a 2-D Gemm on h (batch, 32)."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    w2 = rng.standard_normal((32, 32)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w2, "W2")]
    if gemm:
        nodes = [helper.make_node("Gemm", ["h", "W", "b"] if bias else ["h", "W"], ["t"], name="proj")]
        t = "t"
    else:
        nodes = [helper.make_node("MatMul", ["h", "W"], ["p"], name="proj")]
        t = "p"
        if bias:
            nodes.append(helper.make_node("Add", ["p", "b"], ["t"], name="bias_add"))
            t = "t"
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "b"))
    after = []
    if z == "input":
        z_name = "h"
    elif z == "branch":
        z_name = "s"
        after = [helper.make_node("MatMul", ["h", "W2"], ["s"], name="branch")]
    else:
        z_name = "zc"
        inits.append(numpy_helper.from_array(rng.standard_normal(z).astype(np.float32), "zc"))
    last = "y" if not (relu or layernorm) else "a"
    nodes.append(helper.make_node("Add", [z_name, t] if z_first else [t, z_name], [last], name="residual"))
    if relu:
        out = "y" if not layernorm else "r"
        nodes.append(helper.make_node("Relu", [last], [out], name="relu"))
        last = out
    if layernorm:
        inits += [numpy_helper.from_array((rng.random(32) + 0.5).astype(np.float32), "g"),
                  numpy_helper.from_array(rng.standard_normal(32).astype(np.float32), "beta")]
        nodes.append(helper.make_node("LayerNormalization", [last, "g", "beta"], ["y"], name="ln", axis=-1))
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if add_is_output:
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    shape = [batch, 32] if gemm else [batch, seq, 32]
    graph = helper.make_graph(nodes + after, "sublayer", [helper.make_tensor_value_info("h", TensorProto.FLOAT, shape)],
                              outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _csr(model):
    return [n for n in model.graph.node if n.domain == runtime_ops.DOMAIN]


@pytest.mark.parametrize("batch", ["N", 2])
@pytest.mark.parametrize("z_first", [False, True])
@pytest.mark.parametrize("seq", [1, 16, 40])  # batch 1 vector, panels, the tiled path (2 x 40 rows)
def test_a_transformer_sublayer_becomes_one_csrgemm_reading_z(batch, z_first, seq):
    model = _sublayer(batch=batch, z_first=z_first, seq=seq)
    lowered, result = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "LayerNormalization"]
    (node,) = _csr(lowered)
    assert node.input[4] == "b" and node.input[5] == "h"
    assert _op_set(lowered) == 6
    (row,) = [r for r in result.stats["layers"] if r["lowered"]]
    assert "residual Add residual folded in" in row["reason"]
    _assert_same(model, lowered, batch=2)


@pytest.mark.parametrize("options", [dict(bias=False), dict(relu=True), dict(relu=True, layernorm=False),
                                     dict(gemm=True), dict(gemm=True, bias=False, relu=True)],
                         ids=["no_bias", "relu", "relu_no_layernorm", "gemm", "gemm_relu_no_bias"])
def test_the_add_is_folded_with_or_without_bias_and_activation(options):
    model = _sublayer(**options)
    lowered, _ = _lower(model, force=["proj"])
    (node,) = _csr(lowered)
    assert node.input[5] == "h" and (node.input[4] == "" or options.get("bias", True))
    ops = [n.op_type for n in lowered.graph.node]
    assert "Add" not in ops and "Relu" not in ops
    if options.get("relu"):
        assert dict((a.name, a.s) for a in node.attribute)["activation"] == b"Relu"
    _assert_same(model, lowered, batch=2)


@pytest.mark.parametrize("z", [(32,), (1, 16, 32), (16, 32), (16, 1)],
                         ids=["feature_vector", "batch_of_one", "rank_2", "column"])
def test_an_add_that_broadcasts_stays_a_node(z):
    model = _sublayer(z=z)
    lowered, _ = _lower(model, force=["proj"])
    (node,) = _csr(lowered)
    assert len(node.input) < 6 or not node.input[5]
    assert "Add" in [n.op_type for n in lowered.graph.node]
    assert _op_set(lowered) < 6
    _assert_same(model, lowered, batch=2)


def test_an_add_whose_output_is_read_elsewhere_keeps_its_activation_outside():
    model = _sublayer(add_is_output=True, layernorm=False, relu=True)
    lowered, _ = _lower(model, force=["proj"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "Relu"]
    (node,) = _csr(lowered)
    assert list(node.output) == ["a"] and "activation" not in {a.name for a in node.attribute}
    _assert_same(model, lowered, batch=2)


def test_a_product_read_elsewhere_keeps_its_add():
    model = _sublayer(layernorm=False, bias=False)
    model.graph.output.append(helper.make_tensor_value_info("p", TensorProto.FLOAT, None))
    lowered, _ = _lower(model, force=["proj"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "Add"]
    _assert_same(model, lowered, batch=2)


@pytest.mark.parametrize("force,never,adds", [(["*"], [], 0), (["proj"], ["branch"], 0), (["branch"], ["proj"], 1)],
                         ids=["both", "proj", "branch"])
def test_an_add_of_two_products_is_folded_into_the_first_lowered(force, never, adds):
    """The branch, listed after the Add, is lowered too (or alone): one CsrGemm takes the Add as
    its Z (the branch alone takes the projection's bias Add output, which stays a node), and the
    node list is put back in topological order."""
    model = _sublayer(z="branch")
    lowered, _ = _lower(model, force=force, never=never)
    assert sum(1 for n in _csr(lowered) if len(n.input) > 5 and n.input[5]) == 1
    assert [n.op_type for n in lowered.graph.node].count("Add") == adds
    assert _topological(lowered)
    _assert_same(model, lowered, batch=2)


def test_dense_from_lowered_rebuilds_the_add():
    model = _sublayer(batch=2)
    lowered, _ = _lower(model, force=["*"])
    dense = dense_from_lowered(lowered, {"h": (2, 16, 32)})
    assert runtime_ops.DOMAIN not in {o.domain for o in dense.opset_import}
    assert [n.op_type for n in dense.graph.node].count("Add") == 2  # the bias, then Z
    assert _topological(dense)
    _assert_same(model, dense, batch=2)


def test_a_shared_weight_folds_each_nodes_add_and_the_reason_names_them_all():
    """Two MatMul nodes on one weight (torch's cloned layers export so), each followed by its
    own residual Add: both are folded, and the layer's reason names both."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    nodes = [helper.make_node("MatMul", ["h", "W"], ["p1"], name="mm1"),
             helper.make_node("Add", ["p1", "h"], ["a1"], name="res1"),
             helper.make_node("MatMul", ["a1", "W"], ["p2"], name="mm2"),
             helper.make_node("Add", ["a1", "p2"], ["y"], name="res2")]
    graph = helper.make_graph(nodes, "shared", [helper.make_tensor_value_info("h", TensorProto.FLOAT, ["N", 8, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lowered, result = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "CsrGemm"]
    assert [n.input[5] for n in lowered.graph.node] == ["h", "a1"]
    (row,) = [r for r in result.stats["layers"] if r["lowered"]]
    assert "residual Adds res1, res2 folded in" in row["reason"]
    _assert_same(model, lowered, batch=2)


def test_an_add_left_unfolded_for_an_unknown_shape_is_named_in_the_reason():
    """A fixed-shape export whose residual operand lost a dimension to shape inference (a
    Where-computed Expand in Hugging Face's BERT embeddings): the Add stays a node, and the
    lowered layer's reason says which and why; an Add that broadcasts by design is not named."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((32, 32)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    for z_dims, named in (([None, 16, 32], True), (["unk__7", 16, 32], True), ([1, 1, 32], False),
                          (["batch", 16, 32], False)):
        nodes = [helper.make_node("MatMul", ["h", "W"], ["p"], name="proj"),
                 helper.make_node("Add", ["p", "z"], ["y"], name="residual")]
        graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 16, 32]),
                                               helper.make_tensor_value_info("z", TensorProto.FLOAT, z_dims)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                                  [numpy_helper.from_array(w, "W")])
        lowered, result = _lower(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                                 force=["*"])
        assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "Add"]
        (row,) = [r for r in result.stats["layers"] if r["lowered"]]
        assert ("residual Add residual left as node(s): shape inference cannot show" in row["reason"]) == named


def test_a_shared_weights_two_products_into_one_add_fold_it_once():
    """One weight, two MatMul nodes whose outputs meet in one Add: each node's plan claims it,
    the first lowered takes it as Z and the second keeps its plain output."""
    rng = np.random.default_rng(12)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0.0
    nodes = [helper.make_node("MatMul", ["a", "W"], ["p1"], name="mm1"),
             helper.make_node("MatMul", ["b", "W"], ["p2"], name="mm2"),
             helper.make_node("Add", ["p1", "p2"], ["y"], name="sum")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["N", 8]) for n in "ab"],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "CsrGemm"]
    assert sum(1 for n in _csr(lowered) if len(n.input) > 5 and n.input[5]) == 1
    assert _topological(lowered)
    _assert_same(model, lowered, batch=2)
