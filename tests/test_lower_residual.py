"""LowerToSparseOps folds a residual Add after a lowered convolution into CsrConv's input Z
(op-set 5): a ResNet block (conv → BN → Add(shortcut) → Relu, the shortcut computed by a node
listed after the convolution) becomes one CsrConv that computes what the block did, in a node
list that stays topologically sorted; every Add that would broadcast, or whose operand's shape
is not known to match, stays a node. ``dense_from_lowered`` rebuilds the Add."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime.bench import dense_from_lowered
from tests.test_lower_to_sparse_ops import _assert_same, _lower


def _block(*, shortcut_shape=None, batch="N", bn=True, relu=True, shortcut_first=False, add_is_output=False,
           bias=True, shortcut_after=True):
    """x (batch, 8, 10, 10) → conv 3×3 (8→8, pad 1) [→ BN] → Add(·, s) [→ Relu] → y, with the
    shortcut s = conv 1×1 of x listed after the Add's convolution (or a constant of
    ``shortcut_shape`` when given)."""
    rng = np.random.default_rng(7)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    ws = rng.standard_normal((8, 8, 1, 1)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(ws, "Ws")]
    conv_in = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "B"))
        conv_in.append("B")
    nodes = [helper.make_node("Conv", conv_in, ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
    t = "c"
    if bn:
        for name, v in (("g", rng.random(8) + 0.5), ("b", rng.standard_normal(8)), ("m", rng.standard_normal(8)),
                        ("v", rng.random(8) + 0.5)):
            inits.append(numpy_helper.from_array(v.astype(np.float32), name))
        nodes.append(helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"))
        t = "n"
    shortcut = [helper.make_node("Conv", ["x", "Ws"], ["s"], name="shortcut", kernel_shape=[1, 1])]
    if shortcut_shape is not None:
        inits.append(numpy_helper.from_array(rng.standard_normal(shortcut_shape).astype(np.float32), "s"))
        shortcut = []
    add_out = "a" if relu else "y"
    nodes.append(helper.make_node("Add", ["s", t] if shortcut_first else [t, "s"], [add_out], name="add"))
    if relu:
        nodes.append(helper.make_node("Relu", ["a"], ["y"], name="relu"))
    nodes = nodes + shortcut if shortcut_after else shortcut + nodes
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if add_is_output and relu:
        outputs.append(helper.make_tensor_value_info("a", TensorProto.FLOAT, None))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 8, 10, 10])
    graph = helper.make_graph(nodes, "block", [x], outputs, initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _topological(model) -> bool:
    """Every node input is a graph input, an initializer, empty, or written by an earlier node."""
    known = {i.name for i in model.graph.input} | {t.name for t in model.graph.initializer} | {""}
    for node in model.graph.node:
        if any(i not in known for i in node.input):
            return False
        known.update(node.output)
    return True


def _op_set(model):
    return {o.domain: o.version for o in model.opset_import}.get(runtime_ops.DOMAIN)


@pytest.mark.parametrize("batch", ["N", 2])
@pytest.mark.parametrize("shortcut_first", [False, True])
def test_a_resnet_block_becomes_one_csrconv_reading_z(batch, shortcut_first):
    model = _block(batch=batch, shortcut_first=shortcut_first)
    lowered, result = _lower(model, force=["conv"])
    ops = [n.op_type for n in lowered.graph.node]
    assert ops == ["Conv", "CsrConv"]  # the shortcut moved ahead of the node that reads it
    node = lowered.graph.node[1]
    assert node.input[5] == "s" and node.output[0] == "y"
    assert [a.s for a in node.attribute if a.name == "activation"] == [b"Relu"]
    assert _op_set(lowered) == 5
    assert not _topological(model) and _topological(lowered)  # the source lists the shortcut last
    assert "residual Add add folded in" in result.stats["layers"][0]["reason"]
    _assert_same(model, lowered, batch=2)


@pytest.mark.parametrize("options", [dict(bn=False, relu=False, bias=False), dict(bn=False), dict(relu=False)],
                         ids=["bare", "no_bn", "no_relu"])
def test_the_add_is_folded_with_or_without_bias_bn_and_activation(options):
    model = _block(**options)
    lowered, _ = _lower(model, force=["conv"])
    node = next(n for n in lowered.graph.node if n.op_type == "CsrConv")
    assert len(node.input) == 6 and node.input[5] == "s"
    if not options.get("bias", True) and not options.get("bn", True):
        assert node.input[4] == ""  # Z after an empty bias slot
    assert "Add" not in [n.op_type for n in lowered.graph.node]
    _assert_same(model, lowered, batch=2)


@pytest.mark.parametrize("case", [dict(shortcut_shape=(1, 8, 1, 1)), dict(shortcut_shape=(1, 8, 10, 10)),
                                  dict(shortcut_shape=(8, 10, 10))],
                         ids=["per_channel", "batch_of_one", "lower_rank"])
def test_an_add_that_broadcasts_stays_a_node(case):
    model = _block(**case)
    lowered, _ = _lower(model, force=["conv"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv", "Add", "Relu"]
    assert _op_set(lowered) == 1  # the BN folded, nothing that needs a later op-set
    _assert_same(model, lowered, batch=2)


def test_an_add_whose_output_is_read_elsewhere_keeps_its_activation_outside():
    model = _block(add_is_output=True)
    lowered, _ = _lower(model, force=["conv"])
    ops = [n.op_type for n in lowered.graph.node]
    assert ops.count("Relu") == 1 and "Add" not in ops  # Z folded, the Relu reads the output "a"
    _assert_same(model, lowered, batch=2)


@pytest.mark.parametrize("force", [["*"], ["shortcut"]])
def test_an_add_of_two_lowered_convolutions_is_folded_into_one(force):
    """Main path and projection shortcut both end in the Add: the first lowered takes it as Z,
    the other is lowered without it; with only the shortcut lowered, the shortcut takes it."""
    model = _block()
    lowered, result = _lower(model, force=force)
    ops = [n.op_type for n in lowered.graph.node]
    assert "Add" not in ops and "Relu" not in ops
    z_nodes = [n for n in lowered.graph.node if n.op_type == "CsrConv" and len(n.input) > 5]
    assert len(z_nodes) == 1 and z_nodes[0].output[0] == "y"
    reasons = [r["reason"] for r in result.stats["layers"] if r["lowered"]]
    assert sum("residual Add add folded in" in r for r in reasons) == 1
    assert sum("activation Relu folded in" in r for r in reasons) == 1
    assert _topological(lowered)
    _assert_same(model, lowered, batch=2)


def test_a_layer_left_dense_keeps_its_add():
    model = _block()
    lowered, _ = _lower(model, never=["*"])
    assert [n.op_type for n in lowered.graph.node] == [n.op_type for n in model.graph.node]


def test_dense_from_lowered_rebuilds_the_add():
    model = _block(batch=2)
    lowered, _ = _lower(model, force=["conv"])
    dense = dense_from_lowered(lowered, {"x": (2, 8, 10, 10)})
    assert runtime_ops.DOMAIN not in {o.domain for o in dense.opset_import}
    assert [n.op_type for n in dense.graph.node].count("Add") == 1
    assert _topological(dense)
    _assert_same(model, dense, batch=2)


def _conv_then(nodes, inits=(), inputs=()):
    """x (N, 8, 10, 10) → conv 3×3 → "c", then ``nodes``, writing "y"."""
    rng = np.random.default_rng(11)
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0.0
    conv = helper.make_node("Conv", ["x", "W"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    graph = helper.make_graph([conv, *nodes], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 10, 10]), *inputs],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), *inits])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _if(then_nodes, then_out):
    out = helper.make_tensor_value_info
    then_g = helper.make_graph(then_nodes, "then", [], [out(then_out, TensorProto.FLOAT, None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                               [out("e", TensorProto.FLOAT, None)])
    return helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_g, else_branch=else_g)


@pytest.mark.parametrize("inside", ["add", "relu_of_conv", "relu_of_add"])
def test_nothing_is_folded_from_inside_an_if_branch(inside):
    """A node of an If body that reads the conv's output (or the folded Add's) is one of its
    users to onnx-graphsurgeon: it is never folded, and the lowering does not fail on it."""
    then = {"add": [helper.make_node("Add", ["c", "x"], ["t"])],
            "relu_of_conv": [helper.make_node("Relu", ["c"], ["t"])],
            "relu_of_add": [helper.make_node("Relu", ["a"], ["t"])]}[inside]
    main = [helper.make_node("Add", ["c", "x"], ["a"], name="add")] if inside == "relu_of_add" else []
    cond = helper.make_tensor_value_info("cond", TensorProto.BOOL, [])
    model = _conv_then([*main, _if(then, "t")], inputs=[cond])
    lowered, _ = _lower(model, force=["conv"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv", "If"]
    import onnxruntime as ort

    rng = np.random.default_rng(2)
    for flag in (True, False):
        feeds = {"x": rng.standard_normal((2, 8, 10, 10)).astype(np.float32), "cond": np.array(flag)}
        ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
        got = runtime_ops.InferenceSession(lowered.SerializeToString()).run(None, feeds)
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)


def test_pinned_input_shapes_do_not_decide_the_fold():
    """With --input-shape x=1x8x10x10 (which only sizes the cost model) a (1, 8, 10, 10)
    operand matches the conv's output; over the model's symbolic batch it broadcasts: kept."""
    pos = np.random.default_rng(4).standard_normal((8, 10, 10)).astype(np.float32)
    nodes = [helper.make_node("Unsqueeze", ["P", "ax"], ["p4"]), helper.make_node("Add", ["c", "p4"], ["y"])]
    inits = [numpy_helper.from_array(pos, "P"), numpy_helper.from_array(np.array([0], np.int64), "ax")]
    model = _conv_then(nodes, inits=inits)
    lowered, _ = _lower(model, force=["conv"], **{"input-shapes": {"x": [1, 8, 10, 10]}})
    assert "Add" in [n.op_type for n in lowered.graph.node]
    _assert_same(model, lowered, batch=2)
