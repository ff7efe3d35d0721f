"""RemoveDeadNeurons: every test runs the model through ONNX Runtime before and after the pass,
compares outputs, and checks that the weights really shrank (or, for the unsafe cases, that
nothing changed and a reason was reported)."""

from __future__ import annotations

import io

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes import RemoveDeadNeurons
from onnxprune.passes.remove_dead_neurons import UNARY
from tests.models import cnn, mlp, random_feeds, run

# --------------------------------------------------------------------------- helpers


def prune(model: onnx.ModelProto):
    """Run the pass; return the exported model (checked) and the stats."""
    graph = graph_from_model(model)
    result = RemoveDeadNeurons()(graph)
    out = graph_to_model(result.graph, model)
    onnx.checker.check_model(out, full_check=False)
    return out, result


def inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def set_init(model: onnx.ModelProto, name: str, values: np.ndarray) -> None:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(values, name))
            return
    raise KeyError(name)


def edit(model: onnx.ModelProto, name: str, fn) -> None:
    arr = inits(model)[name].copy()
    fn(arr)
    set_init(model, name, arr)


def assert_same_outputs(before, after, atol=1e-5, rtol=1e-5, batch=5):
    feeds = random_feeds(before, batch=batch)
    want = run(before, feeds)
    got = run(after, feeds)
    assert len(want) == len(got)
    for w, g in zip(want, got):
        assert w.shape == g.shape
        np.testing.assert_allclose(g, w, atol=atol, rtol=rtol)


def make_model(nodes, initializers, inputs, outputs, opset=17):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def init(name, arr):
    return numpy_helper.from_array(np.asarray(arr), name)


def fc_pair(act="Relu", act_attrs=None, consumer_bias=True, k=6, h=10, o=4, seed=0,
            extra_act_inputs=(), opset=17):
    """x(k) -> Gemm(transB=1) -> act -> Gemm(transB=1, optional C) -> y(o)."""
    rng = np.random.default_rng(seed)
    ins = [init("w1", rng.normal(size=(h, k)).astype(np.float32)),
           init("b1", rng.normal(size=h).astype(np.float32)),
           init("w2", rng.normal(size=(o, h)).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1)]
    act_inputs = ["h"]
    for i, value in enumerate(extra_act_inputs):
        ins.append(init(f"act_in{i}", np.asarray(value, np.float32)))
        act_inputs.append(f"act_in{i}")
    nodes.append(helper.make_node(act, act_inputs, ["a"], name="act", **(act_attrs or {})))
    c = ["b2"] if consumer_bias else []
    if consumer_bias:
        ins.append(init("b2", rng.normal(size=o).astype(np.float32)))
    nodes.append(helper.make_node("Gemm", ["a", "w2", *c], ["y"], name="fc2", transB=1))
    return make_model(nodes, ins, [vi("x", ["N", k])], [vi("y", ["N", o])], opset=opset)


def to_transb0(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same network with every Gemm weight stored (K, N) and transB=0."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for node in model.graph.node:
        if node.op_type == "Gemm":
            for a in node.attribute:
                if a.name == "transB":
                    a.i = 0
            w = inits(model)[node.input[1]]
            set_init(model, node.input[1], w.T.copy())
    return model


def to_constant_nodes(model: onnx.ModelProto, through_identity=True) -> onnx.ModelProto:
    """Move every initializer into a Constant node (optionally behind an Identity), the way
    legacy exporters and some frameworks write weights."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    new_nodes = []
    for t in model.graph.initializer:
        if through_identity:
            new_nodes.append(helper.make_node("Constant", [], [t.name + "_c"], value=t,
                                              name=t.name + "_const"))
            new_nodes.append(helper.make_node("Identity", [t.name + "_c"], [t.name],
                                              name=t.name + "_id"))
        else:
            new_nodes.append(helper.make_node("Constant", [], [t.name], value=t,
                                              name=t.name + "_const"))
    del model.graph.initializer[:]
    nodes = list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(new_nodes + nodes)
    return model


def const_values(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by (initializer / Constant output) name."""
    out = inits(model)
    for node in model.graph.node:
        if node.op_type == "Constant":
            out[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return out


# --------------------------------------------------------------------------- MLPs


def test_mlp_gemm_transb1_zero_incoming_and_outgoing():
    model = mlp((16, 12, 8, 4), seed=3)
    # fc1 units 2 and 7: no inputs, positive bias -> constant relu(b) folded into fc2's bias.
    edit(model, "fc1.weight", lambda w: w.__setitem__([2, 7], 0.0))
    edit(model, "fc1.bias", lambda b: b.__setitem__([2, 7], [0.5, 0.8]))
    # fc1 units 1 and 4: no outgoing weights (fc2 is (8, 12) with transB=1: columns).
    edit(model, "fc2.weight", lambda w: w.__setitem__((slice(None), [1, 4]), 0.0))
    out, result = prune(model)
    w = inits(out)
    assert w["fc1.weight"].shape == (8, 16)
    assert w["fc1.bias"].shape == (8,)
    assert w["fc2.weight"].shape == (8, 8)
    assert w["fc2.bias"].shape == (8,)
    assert result.modified
    assert result.stats["removed"] == {"fc1": 4}
    row = next(r for r in result.stats["layers"] if r["producer"] == "fc1")
    assert row["folded"] == 2 and row["units_before"] == 12 and row["units_after"] == 8
    assert_same_outputs(model, out)


def test_mlp_gemm_transb0():
    model = to_transb0(mlp((16, 12, 8, 4), seed=4))
    assert inits(model)["fc1.weight"].shape == (16, 12)
    edit(model, "fc1.weight", lambda w: w.__setitem__((slice(None), [0, 5]), 0.0))  # no inputs
    edit(model, "fc1.bias", lambda b: b.__setitem__([0, 5], [0.3, -0.3]))
    edit(model, "fc2.weight", lambda w: w.__setitem__([3, 9], 0.0))  # no outputs
    edit(model, "fc2.weight", lambda w: w.__setitem__((slice(None), 6), 0.0))  # fc2 unit 6
    out, result = prune(model)
    w = inits(out)
    assert w["fc1.weight"].shape == (16, 8)
    assert w["fc2.weight"].shape == (8, 7)
    assert w["fc3.weight"].shape == (7, 4)
    assert result.stats["removed"] == {"fc1": 4, "fc2": 1}
    assert_same_outputs(model, out)


def test_mlp_matmul_add_form():
    model = mlp((16, 12, 8, 4), seed=5, gemm=False)
    edit(model, "fc1.weight", lambda w: w.__setitem__((slice(None), [1, 2, 3]), 0.0))
    edit(model, "fc1.bias", lambda b: b.__setitem__([1, 2, 3], [0.4, 0.0, -1.0]))
    edit(model, "fc2.weight", lambda w: w.__setitem__([10, 11], 0.0))
    out, result = prune(model)
    w = inits(out)
    assert w["fc1.weight"].shape == (16, 7)
    assert w["fc1.bias"].shape == (7,)
    assert w["fc2.weight"].shape == (7, 8)
    assert_same_outputs(model, out)


@pytest.mark.parametrize("act,attrs,extra,opset", [
    ("Relu", None, (), 17),
    ("LeakyRelu", {"alpha": 0.2}, (), 17),
    ("Sigmoid", None, (), 17),
    ("Tanh", None, (), 17),
    ("Elu", {"alpha": 0.7}, (), 17),
    ("Selu", None, (), 17),
    ("Celu", {"alpha": 0.5}, (), 17),
    ("HardSigmoid", None, (), 17),
    ("HardSwish", None, (), 17),
    ("Softplus", None, (), 17),
    ("Softsign", None, (), 17),
    ("Mish", None, (), 18),
    ("ThresholdedRelu", {"alpha": 0.1}, (), 17),
    ("Clip", None, (-0.2, 0.6), 17),
    ("Gelu", None, (), 20),
    ("Gelu", {"approximate": "tanh"}, (), 20),
])
def test_fold_constant_through_activation(act, attrs, extra, opset):
    """A unit with zero inputs and a nonzero bias emits act(b): folded into the next bias."""
    model = fc_pair(act, attrs, extra_act_inputs=extra, opset=opset, seed=7)
    edit(model, "w1", lambda w: w.__setitem__([0, 3, 8], 0.0))
    edit(model, "b1", lambda b: b.__setitem__([0, 3, 8], [0.9, -0.6, 0.25]))
    before_b2 = inits(model)["b2"]
    out, result = prune(model)
    w = inits(out)
    assert w["w1"].shape == (7, 6)
    assert w["w2"].shape == (4, 7)
    values = np.array([0.9, -0.6, 0.25])
    const = (UNARY[act](values, gs.Node(op=act, attrs=dict(attrs or {}))) if act != "Clip"
             else np.clip(values, -0.2, 0.6))
    if np.any(const != 0):
        assert not np.allclose(w["b2"], before_b2)
    assert_same_outputs(model, out, atol=1e-5)


def test_fold_respects_gemm_alpha_beta():
    model = fc_pair("Sigmoid", seed=26)
    for node in model.graph.node:
        if node.op_type == "Gemm":
            node.attribute.extend([helper.make_attribute("alpha", 0.5),
                                   helper.make_attribute("beta", 2.0)])
    edit(model, "w1", lambda w: w.__setitem__([1, 6], 0.0))
    out, result = prune(model)
    assert inits(out)["w2"].shape == (4, 8)
    assert_same_outputs(model, out)


def test_per_unit_ops_in_chain():
    """Gemm -> BatchNormalization -> Mul(scale) -> PRelu(slope) -> Add(shift) -> Gemm: every
    per-unit constant loses the removed entries and the constant is folded through all."""
    rng = np.random.default_rng(27)
    h = 9
    w1 = rng.normal(size=(h, 5)).astype(np.float32)
    w1[[2, 7]] = 0.0
    w2 = rng.normal(size=(3, h)).astype(np.float32)
    w2[:, 4] = 0.0
    f32 = np.float32
    ins = [init("w1", w1), init("b1", rng.normal(size=h).astype(f32)),
           init("s", rng.uniform(.5, 1.5, h).astype(f32)),
           init("bb", rng.normal(size=h).astype(f32)),
           init("m", rng.normal(size=h).astype(f32)),
           init("v", rng.uniform(.5, 1.5, h).astype(f32)),
           init("scale", rng.normal(size=(1, h)).astype(f32)), init("slope", np.full(h, .1, f32)),
           init("shift", rng.normal(size=h).astype(f32)), init("two", np.array(2.0, f32)),
           init("w2", w2), init("b2", rng.normal(size=3).astype(f32))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("BatchNormalization", ["h", "s", "bb", "m", "v"], ["n"], name="bn"),
             helper.make_node("Mul", ["scale", "n"], ["k"], name="mul"),
             helper.make_node("PRelu", ["k", "slope"], ["p"], name="prelu"),
             helper.make_node("Sub", ["shift", "p"], ["q"], name="shift"),
             helper.make_node("Div", ["q", "two"], ["r"], name="half"),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    model = make_model(nodes, ins, [vi("x", ["N", 5])], [vi("y", ["N", 3])])
    out, result = prune(model)
    w = inits(out)
    for name in ("b1", "s", "bb", "m", "v", "slope", "shift"):
        assert w[name].shape == (6,), name
    assert w["scale"].shape == (1, 6) and w["two"].shape == ()
    assert w["w1"].shape == (6, 5) and w["w2"].shape == (3, 6)
    assert_same_outputs(model, out)


def test_matmul_on_3d_activations():
    """Token-wise MLP: x (N, T, K) · W1 -> Relu -> · W2; units live on the last axis."""
    rng = np.random.default_rng(28)
    w1 = rng.normal(size=(6, 10)).astype(np.float32)
    w1[:, [0, 3]] = 0.0
    w2 = rng.normal(size=(10, 4)).astype(np.float32)
    w2[7] = 0.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "b1"], ["h"], name="add1"),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("MatMul", ["a", "w2"], ["h2"], name="mm2"),
             helper.make_node("Add", ["h2", "b2"], ["y"], name="add2")]
    b1 = np.abs(rng.normal(size=10)).astype(np.float32)
    model = make_model(nodes, [init("w1", w1), init("b1", b1), init("w2", w2),
                               init("b2", rng.normal(size=4).astype(np.float32))],
                       [vi("x", ["N", 7, 6])], [vi("y", ["N", 7, 4])])
    out, result = prune(model)
    w = inits(out)
    assert w["w1"].shape == (6, 7) and w["w2"].shape == (7, 4)
    assert_same_outputs(model, out)


def test_fold_adds_gemm_bias_when_missing():
    model = fc_pair("Sigmoid", consumer_bias=False, seed=8)
    edit(model, "w1", lambda w: w.__setitem__([4], 0.0))
    out, result = prune(model)
    fc2 = next(n for n in out.graph.node if n.name == "fc2")
    assert len(fc2.input) == 3
    assert const_values(out)["w2"].shape == (4, 9)
    assert_same_outputs(model, out)


def test_fold_inserts_add_after_matmul_without_bias():
    rng = np.random.default_rng(9)
    w1 = rng.normal(size=(6, 10)).astype(np.float32)
    w1[:, [2, 5]] = 0.0
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h0"], name="mm1"),
             helper.make_node("Add", ["h0", "b1"], ["h"], name="add1"),
             helper.make_node("Tanh", ["h"], ["a"], name="tanh"),
             helper.make_node("MatMul", ["a", "w2"], ["y"], name="mm2")]
    model = make_model(nodes, [init("w1", w1), init("b1", rng.normal(size=10).astype(np.float32)),
                               init("w2", rng.normal(size=(10, 3)).astype(np.float32))],
                       [vi("x", ["N", 6])], [vi("y", ["N", 3])])
    out, result = prune(model)
    assert [n.op_type for n in out.graph.node] == ["MatMul", "Add", "Tanh", "MatMul", "Add"]
    assert out.graph.output[0].name == "y"
    w = inits(out)
    assert w["w1"].shape == (6, 8) and w["b1"].shape == (8,) and w["w2"].shape == (8, 3)
    assert_same_outputs(model, out)


def test_zero_outgoing_removed_even_without_bias():
    model = fc_pair("Relu", consumer_bias=False, seed=10)
    edit(model, "w2", lambda w: w.__setitem__((slice(None), [1, 2, 9]), 0.0))
    out, result = prune(model)
    w = inits(out)
    assert w["w1"].shape == (7, 6) and w["b1"].shape == (7,) and w["w2"].shape == (4, 7)
    fc2 = next(n for n in out.graph.node if n.name == "fc2")
    assert len(fc2.input) == 2  # nothing to fold: no bias was added
    assert result.stats["layers"][0]["dead_out"] == 3
    assert_same_outputs(model, out)


def test_dropout_in_chain():
    model = mlp((16, 12, 8, 4), seed=11, dropout=0.3, opset=17)
    edit(model, "fc1.weight", lambda w: w.__setitem__([0, 1], 0.0))
    edit(model, "fc1.bias", lambda b: b.__setitem__([0, 1], 0.7))
    edit(model, "fc3.weight", lambda w: w.__setitem__((slice(None), [5]), 0.0))
    out, result = prune(model)
    w = inits(out)
    assert w["fc1.weight"].shape == (10, 16)
    assert w["fc2.weight"].shape == (7, 10)
    assert w["fc3.weight"].shape == (4, 7)
    assert_same_outputs(model, out)


def test_all_units_dead_keeps_one():
    model = fc_pair("Relu", seed=12)
    edit(model, "w2", lambda w: w.__setitem__(slice(None), 0.0))
    out, result = prune(model)
    assert inits(out)["w1"].shape == (1, 6)
    assert any("one is kept" in k["reason"] for k in result.stats["kept_unsafe"])
    assert_same_outputs(model, out)


# --------------------------------------------------------------------------- fixed point


def test_fixed_point_backward_through_three_layers():
    """fc2 unit 3 has no outgoing weights; fc1 unit 5 feeds only fc2 unit 3, so it is dead
    once fc2 unit 3 is gone (a second sweep)."""
    model = mlp((16, 12, 8, 6, 4), seed=13)
    edit(model, "fc3.weight", lambda w: w.__setitem__((slice(None), 3), 0.0))
    def only_to_3(w):
        keep = w[3, 5]
        w[:, 5] = 0.0
        w[3, 5] = keep
    edit(model, "fc2.weight", only_to_3)
    out, result = prune(model)
    w = inits(out)
    assert w["fc1.weight"].shape == (11, 16)
    assert w["fc2.weight"].shape == (7, 11)
    assert w["fc3.weight"].shape == (6, 7)
    assert result.stats["sweeps"] >= 2
    assert_same_outputs(model, out)


def test_fixed_point_forward_fold_chain():
    """fc1 unit 2 has no inputs; fc2 unit 4 reads only fc1 unit 2, so after the fold it has no
    inputs either and is folded into fc3 — the output stays the same throughout."""
    model = mlp((16, 12, 8, 6, 4), seed=14)
    edit(model, "fc1.weight", lambda w: w.__setitem__(2, 0.0))
    edit(model, "fc1.bias", lambda b: b.__setitem__(2, 0.6))
    def only_from_2(w):
        keep = w[4, 2]
        w[4, :] = 0.0
        w[4, 2] = keep
    edit(model, "fc2.weight", only_from_2)
    edit(model, "fc2.bias", lambda b: b.__setitem__(4, 0.1))
    out, result = prune(model)
    w = inits(out)
    assert w["fc1.weight"].shape == (11, 16)
    assert w["fc2.weight"].shape == (7, 11)
    assert w["fc3.weight"].shape == (6, 7)
    assert_same_outputs(model, out)
    # Running again finds nothing: the result is a fixed point.
    again, result2 = prune(out)
    assert not result2.modified


# --------------------------------------------------------------------------- convolutions


def test_conv_bn_relu_conv():
    model = cnn(seed=15, channels=(3, 8, 16), bn=True)
    # conv1 channels 1 and 6: no inputs; BN pushes them negative so relu gives exactly 0.
    edit(model, "conv1.weight", lambda w: w.__setitem__([1, 6], 0.0))
    edit(model, "bn1.bias", lambda b: b.__setitem__([1, 6], -5.0))
    # conv1 channel 3: no outgoing weights in conv2.
    edit(model, "conv2.weight", lambda w: w.__setitem__((slice(None), 3), 0.0))
    # conv2 channels 0 and 9: no inputs, positive constant -> folded through GAP into fc.
    edit(model, "conv2.weight", lambda w: w.__setitem__([0, 9], 0.0))
    edit(model, "bn2.bias", lambda b: b.__setitem__([0, 9], 2.0))
    # conv2 channel 12: fc never reads it.
    edit(model, "fc.weight", lambda w: w.__setitem__((slice(None), 12), 0.0))
    out, result = prune(model)
    w = inits(out)
    assert w["conv1.weight"].shape == (5, 3, 3, 3) and w["conv1.bias"].shape == (5,)
    for p in ("scale", "bias", "mean", "var"):
        assert w[f"bn1.{p}"].shape == (5,)
        assert w[f"bn2.{p}"].shape == (13,)
    assert w["conv2.weight"].shape == (13, 5, 3, 3)
    assert w["fc.weight"].shape == (5, 13)
    assert_same_outputs(model, out)


def test_conv_padded_consumer_cannot_take_a_fold():
    """A nonzero constant channel meets conv2's zero padding at the border: not foldable."""
    model = cnn(seed=16, channels=(3, 8, 16), bn=True)
    edit(model, "conv1.weight", lambda w: w.__setitem__([2], 0.0))
    edit(model, "bn1.bias", lambda b: b.__setitem__([2], 3.0))
    out, result = prune(model)
    assert inits(out)["conv1.weight"].shape == (8, 3, 3, 3)
    kept = result.stats["kept_unsafe"]
    assert any(k["producer"] == "conv1" and "pads" in k["reason"] for k in kept)
    assert_same_outputs(model, out)


def conv_chain(pads2=(0, 0, 0, 0), seed=17, pool=None):
    """x -> Conv(3x3, pad 1) -> Relu [-> pool] -> Conv(k2) -> Relu -> GAP -> Flatten -> Gemm."""
    rng = np.random.default_rng(seed)
    k2 = 1 if not any(pads2) else 3
    ins = [init("c1.w", rng.normal(0, .3, (6, 2, 3, 3)).astype(np.float32)),
           init("c1.b", rng.normal(0, .3, 6).astype(np.float32)),
           init("c2.w", rng.normal(0, .3, (5, 6, k2, k2)).astype(np.float32)),
           init("c2.b", rng.normal(0, .3, 5).astype(np.float32)),
           init("fc.w", rng.normal(0, .3, (3, 5)).astype(np.float32)),
           init("fc.b", rng.normal(0, .3, 3).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "c1.w", "c1.b"], ["h1"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["h1"], ["r1"], name="r1")]
    x = "r1"
    if pool:
        nodes.append(helper.make_node(pool, [x], ["p1"], name="pool", kernel_shape=[2, 2],
                                      strides=[2, 2]))
        x = "p1"
    nodes += [helper.make_node("Conv", [x, "c2.w", "c2.b"], ["h2"], name="c2", pads=list(pads2)),
              helper.make_node("Relu", ["h2"], ["r2"], name="r2"),
              helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flat"),
              helper.make_node("Gemm", ["f", "fc.w", "fc.b"], ["y"], name="fc", transB=1)]
    return make_model(nodes, ins, [vi("x", ["N", 2, 8, 8])], [vi("y", ["N", 3])])


@pytest.mark.parametrize("pool", [None, "MaxPool", "AveragePool"])
def test_conv_relu_conv_without_bn_folds_into_unpadded_conv(pool):
    model = conv_chain(pool=pool)
    edit(model, "c1.w", lambda w: w.__setitem__([0, 4], 0.0))
    edit(model, "c1.b", lambda b: b.__setitem__([0, 4], [0.5, 0.2]))
    edit(model, "c2.w", lambda w: w.__setitem__((slice(None), 2), 0.0))
    out, result = prune(model)
    w = inits(out)
    assert w["c1.w"].shape == (3, 2, 3, 3) and w["c1.b"].shape == (3,)
    assert w["c2.w"].shape == (5, 3, 1, 1)
    assert result.stats["layers"][0]["folded"] == 2
    assert_same_outputs(model, out)


def test_average_pool_counting_pads_blocks_the_fold():
    """AveragePool(count_include_pad=1) averages zeros in at the border: a constant channel is
    no longer constant, so only channels whose constant is 0 may go."""
    model = conv_chain(seed=29)
    relu = next(i for i, n in enumerate(model.graph.node) if n.name == "r1")
    model.graph.node[relu].output[0] = "r1_pre"
    model.graph.node.insert(relu + 1, helper.make_node(
        "AveragePool", ["r1_pre"], ["r1"], name="avg", kernel_shape=[3, 3], pads=[1] * 4,
        count_include_pad=1))
    edit(model, "c1.w", lambda w: w.__setitem__([0, 4], 0.0))
    edit(model, "c1.b", lambda b: b.__setitem__([0, 4], [0.5, -0.5]))  # 4: relu -> exactly 0
    out, result = prune(model)
    assert inits(out)["c1.w"].shape == (5, 2, 3, 3)
    assert any("AveragePool" in k["reason"] and k["dead_units"] == 1
               for k in result.stats["kept_unsafe"])
    assert_same_outputs(model, out)


def test_conv_without_bias_gets_one_for_the_fold():
    model = conv_chain()
    node = next(n for n in model.graph.node if n.name == "c2")
    del node.input[2]
    edit(model, "c1.w", lambda w: w.__setitem__([1], 0.0))
    edit(model, "c1.b", lambda b: b.__setitem__([1], 0.9))
    out, result = prune(model)
    c2 = next(n for n in out.graph.node if n.name == "c2")
    assert len(c2.input) == 3
    assert inits(out)["c2.w"].shape == (5, 5, 1, 1)
    assert_same_outputs(model, out)


def test_conv_maxpool_flatten_gemm_blocks():
    """LeNet-5 style: Conv -> Relu -> MaxPool -> Flatten -> Gemm; channel c owns H·W columns."""
    rng = np.random.default_rng(18)
    ins = [init("c.w", rng.normal(0, .3, (4, 1, 3, 3)).astype(np.float32)),
           init("c.b", rng.normal(0, .3, 4).astype(np.float32)),
           init("fc.w", rng.normal(0, .3, (4 * 3 * 3, 5)).astype(np.float32)),
           init("fc.b", rng.normal(0, .3, 5).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "c.w", "c.b"], ["h"], name="conv"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2, 2],
                              strides=[2, 2]),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "fc.w"], ["m"], name="fc"),
             helper.make_node("Add", ["m", "fc.b"], ["y"], name="fc_add")]
    model = make_model(nodes, ins, [vi("x", ["N", 1, 8, 8])], [vi("y", ["N", 5])])
    edit(model, "c.w", lambda w: w.__setitem__(1, 0.0))  # constant channel, folded
    edit(model, "c.b", lambda b: b.__setitem__(1, 0.8))
    edit(model, "fc.w", lambda w: w.__setitem__(slice(18, 27), 0.0))  # channel 2 unread
    # Without shape information the block size is unknown: left alone with a reason.
    out, result = prune(model)
    assert inits(out)["c.w"].shape == (4, 1, 3, 3)
    assert any("spatial size" in k["reason"] for k in result.stats["kept_unsafe"])
    # With inferred shapes the block is 9 columns per channel.
    model = onnx.shape_inference.infer_shapes(model)
    out, result = prune(model)
    w = inits(out)
    assert w["c.w"].shape == (2, 1, 3, 3)
    assert w["fc.w"].shape == (18, 5)
    assert_same_outputs(model, out)


# --------------------------------------------------------------------------- left alone


def _unsafe_model(kind):
    """fc1 -> Relu -> fc2 with fc1 units 0 and 1 dead, plus one hazard."""
    rng = np.random.default_rng(19)
    w1 = rng.normal(size=(8, 6)).astype(np.float32)
    w1[[0, 1]] = 0.0
    b1 = np.full(8, 0.5, np.float32)
    ins = [init("w1", w1), init("b1", b1), init("w2", rng.normal(size=(8, 8)).astype(np.float32)),
           init("b2", rng.normal(size=8).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["a"], name="relu"),
             helper.make_node("Gemm", ["a", "w2", "b2"], ["z"], name="fc2", transB=1)]
    outputs = [vi("y", ["N", 8])]
    if kind == "residual":
        nodes.append(helper.make_node("Add", ["z", "a"], ["y"], name="res"))
    elif kind == "graph_output":
        nodes.append(helper.make_node("Identity", ["z"], ["y"], name="out"))
        outputs.append(vi("a", ["N", 8]))
    elif kind == "shared_weight":
        # fc3 applies fc2's weight again: shrinking its input axis would break fc3.
        nodes.append(helper.make_node("Relu", ["z"], ["a2"], name="relu2"))
        nodes.append(helper.make_node("Gemm", ["a2", "w2"], ["y"], name="fc3", transB=1))
    elif kind == "concat":
        nodes.append(helper.make_node("Concat", ["a", "z"], ["c"], name="cat", axis=1))
        ins.append(init("w3", rng.normal(size=(8, 16)).astype(np.float32)))
        nodes.append(helper.make_node("Gemm", ["c", "w3"], ["y"], name="fc3", transB=1))
    elif kind == "reshape":
        ins.append(init("shape", np.array([0, 2, 4], np.int64)))
        nodes.append(helper.make_node("Identity", ["z"], ["y"], name="out"))
        nodes[1] = helper.make_node("Reshape", ["h", "shape"], ["h3"], name="reshape")
        nodes.insert(2, helper.make_node("Reshape", ["h3", "shape2"], ["a"], name="back"))
        ins.append(init("shape2", np.array([0, 8], np.int64)))
    else:
        raise ValueError(kind)
    return make_model(nodes, ins, [vi("x", ["N", 6])], outputs)


@pytest.mark.parametrize("kind,needle", [
    ("residual", "several readers"),
    ("graph_output", "graph output"),
    ("shared_weight", "shared"),
    ("concat", "several readers"),
    ("reshape", "Reshape"),
])
def test_left_alone_with_reason(kind, needle):
    model = _unsafe_model(kind)
    out, result = prune(model)
    assert inits(out)["w1"].shape == (8, 6)
    assert inits(out)["w2"].shape == (8, 8)
    assert not result.modified
    kept = [k for k in result.stats["kept_unsafe"] if k["producer"] == "fc1"]
    assert kept and needle in kept[0]["reason"], result.stats["kept_unsafe"]
    assert kept[0]["dead_units"] == 2
    assert_same_outputs(model, out)


def test_grouped_conv_left_alone():
    rng = np.random.default_rng(20)
    w1 = rng.normal(size=(4, 1, 3, 3)).astype(np.float32)
    w1[1] = 0.0
    ins = [init("w1", w1), init("w2", rng.normal(size=(3, 4, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="dw", group=2),
             helper.make_node("Conv", ["h", "w2"], ["y"], name="pw")]
    model = make_model(nodes, ins, [vi("x", ["N", 2, 6, 6])], [vi("y", ["N", 3, 4, 4])])
    out, result = prune(model)
    assert inits(out)["w1"].shape == (4, 1, 3, 3)
    assert any("grouped" in k["reason"] for k in result.stats["kept_unsafe"])


# --------------------------------------------------------------------------- storage forms


def test_constant_node_weights_behind_identity():
    model = mlp((16, 12, 8, 4), seed=21)
    edit(model, "fc1.weight", lambda w: w.__setitem__([3], 0.0))
    edit(model, "fc1.bias", lambda b: b.__setitem__([3], 0.4))
    edit(model, "fc2.weight", lambda w: w.__setitem__((slice(None), [7]), 0.0))
    legacy = to_constant_nodes(model)
    out, result = prune(legacy)
    c = const_values(out)
    assert c["fc1.weight_c"].shape == (10, 16)
    assert c["fc1.bias_c"].shape == (10,)
    assert c["fc2.weight_c"].shape == (8, 10)
    assert_same_outputs(legacy, out)
    plain = to_constant_nodes(model, through_identity=False)
    out, _ = prune(plain)
    assert const_values(out)["fc1.weight"].shape == (10, 16)
    assert_same_outputs(plain, out)


def test_fp16_model():
    model = mlp((16, 12, 8, 4), seed=22)
    edit(model, "fc1.weight", lambda w: w.__setitem__([0, 9], 0.0))
    edit(model, "fc1.bias", lambda b: b.__setitem__([0, 9], 0.5))
    edit(model, "fc2.weight", lambda w: w.__setitem__((slice(None), [4]), 0.0))
    half = onnx.ModelProto.FromString(model.SerializeToString())
    for t in list(half.graph.initializer):
        set_init(half, t.name, numpy_helper.to_array(t).astype(np.float16))
    for v in (*half.graph.input, *half.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT16
    out, result = prune(half)
    w = inits(out)
    assert w["fc1.weight"].shape == (9, 16) and w["fc1.weight"].dtype == np.float16
    assert w["fc2.bias"].dtype == np.float16
    feeds = {k: v.astype(np.float16) for k, v in random_feeds(model, batch=4).items()}
    np.testing.assert_allclose(run(out, feeds)[0].astype(np.float32),
                               run(half, feeds)[0].astype(np.float32), atol=1e-2, rtol=1e-2)


def test_shapes_cleared_on_hidden_tensors_only():
    model = onnx.shape_inference.infer_shapes(mlp((16, 12, 8, 4), seed=23))
    edit(model, "fc2.weight", lambda w: w.__setitem__((slice(None), [0]), 0.0))
    out, _ = prune(model)
    infos = {v.name: v for v in out.graph.value_info}
    for name in ("fc1_out", "relu1"):  # hidden tensors of the shrunk link: no stale shape
        if name in infos:
            assert not infos[name].type.tensor_type.HasField("shape")
    assert [d.dim_value for d in infos["fc2_out"].type.tensor_type.shape.dim][1] == 8
    assert out.graph.input[0] == model.graph.input[0]
    assert out.graph.output[0] == model.graph.output[0]
    assert_same_outputs(model, out)


def test_deterministic():
    model = cnn(seed=24, channels=(3, 8, 16), bn=True)
    edit(model, "conv2.weight", lambda w: w.__setitem__([0, 5], 0.0))
    edit(model, "fc.weight", lambda w: w.__setitem__((slice(None), 3), 0.0))
    a, _ = prune(model)
    b, _ = prune(model)
    assert a.SerializeToString() == b.SerializeToString()
    assert inits(a)["conv2.weight"].shape[0] < 16


def test_untouched_graph_is_not_modified():
    model = mlp((16, 12, 8, 4), seed=25)
    out, result = prune(model)
    assert not result.modified
    assert result.stats["removed"] == {} and result.stats["kept_unsafe"] == []
    shapes = {k: v.shape for k, v in inits(model).items()}
    assert {k: v.shape for k, v in inits(out).items()} == shapes


def test_rejects_non_graph():
    from onnxprune.passes import PassError
    with pytest.raises(PassError):
        RemoveDeadNeurons()(mlp())


def test_unknown_option_rejected():
    from onnxprune.core.errors import UsageError
    with pytest.raises(UsageError):
        RemoveDeadNeurons({"dry-run": True})


# --------------------------------------------------------------------------- torch exports


def _lenet_300_100():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Linear(784, 300), torch.nn.ReLU(),
        torch.nn.Linear(300, 100), torch.nn.ReLU(),
        torch.nn.Linear(100, 10),
    ).eval()
    with torch.no_grad():
        net[0].weight[:40] = 0.0           # 40 hidden units of fc1 without inputs
        net[0].bias[:20] = 0.3             # half of them emit a positive constant
        net[2].weight[:, 250:] = 0.0       # 50 fc1 units never read by fc2
        net[2].weight[90:] = 0.0           # 10 fc2 units without inputs ...
        net[4].weight[:, :5] = 0.0         # ... and 5 fc2 units never read by fc3
    return torch, net


@pytest.mark.parametrize("dynamo", [False, True])
def test_torch_lenet_300_100(dynamo, tmp_path):
    torch, net = _lenet_300_100()
    x = torch.randn(2, 784)
    buf = io.BytesIO() if not dynamo else tmp_path / "lenet.onnx"
    try:
        torch.onnx.export(net, (x,), buf, dynamo=dynamo, input_names=["x"], output_names=["y"],
                          dynamic_axes=None if dynamo else {"x": {0: "N"}, "y": {0: "N"}})
    except Exception as err:  # the dynamo exporter needs extra packages (onnxscript)
        if dynamo:
            pytest.skip(f"dynamo export unavailable: {type(err).__name__}: {err}")
        raise
    model = onnx.load_from_string(buf.getvalue()) if not dynamo else onnx.load(str(buf))
    out, result = prune(model)
    # fc1: 40 without inputs + 50 unread; fc2: 10 without inputs + 5 unread.
    assert sorted(result.stats["removed"].values()) == [15, 90], result.stats
    weights = sorted((v for v in const_values(out).values() if v.ndim == 2), key=lambda w: -w.size)
    dims = sorted({d for w in weights for d in w.shape})
    assert 300 not in dims and 100 not in dims, dims
    feeds = {model.graph.input[0].name: np.random.default_rng(0).normal(
        size=(2, 784)).astype(np.float32)}
    np.testing.assert_allclose(run(out, feeds)[0], run(model, feeds)[0], atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        ref = net(torch.from_numpy(feeds[model.graph.input[0].name])).numpy()
    np.testing.assert_allclose(run(out, feeds)[0], ref, atol=1e-4, rtol=1e-4)
