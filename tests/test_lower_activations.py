"""LowerToSparseOps folds the activation after a lowered convolution into CsrConv: every
pattern it recognises (single ops, SiLU and Hardswish spelled out in several nodes, after a
folded BatchNormalization) computes what the original did, and every near miss stays as it is.
The dense equivalent of a folded node (what the measured lowering times, and what
``onnxprune bench`` rebuilds) computes the same too."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime.bench import dense_from_lowered
from tests.test_lower_to_sparse_ops import _assert_same, _conv_bn_model, _lower


def _c(name, v):
    return numpy_helper.from_array(np.array(v, np.float32), name)


def _spelled(clip_max="six", divisor="six"):
    """y · Clip(y + three, zero, clip_max) / divisor, writing "z"."""
    return [helper.make_node("Add", ["y", "three"], ["a"]), helper.make_node("Clip", ["a", "zero", clip_max], ["cl"]),
            helper.make_node("Mul", ["y", "cl"], ["m"]), helper.make_node("Div", ["m", divisor], ["z"])]


# name -> (nodes after the conv output "y" writing "z", their initializers, folded as)
TAILS = {
    "relu": ([helper.make_node("Relu", ["y"], ["z"])], [], "Relu"),
    "relu6_inputs": ([helper.make_node("Clip", ["y", "lo", "hi"], ["z"])], [_c("lo", 0), _c("hi", 6)], "Clip"),
    "clip_max_only": ([helper.make_node("Clip", ["y", "", "hi"], ["z"])], [_c("hi", 2.5)], "Clip"),
    "leaky": ([helper.make_node("LeakyRelu", ["y"], ["z"], alpha=0.2)], [], "LeakyRelu"),
    "hardsigmoid": ([helper.make_node("HardSigmoid", ["y"], ["z"], alpha=0.3, beta=0.4)], [], "HardSigmoid"),
    "hardswish": ([helper.make_node("HardSwish", ["y"], ["z"])], [], "HardSwish"),
    "hardswish_spelled": ([helper.make_node("Add", ["y", "three"], ["a"]),
                           helper.make_node("Clip", ["a", "zero", "six"], ["cl"]),
                           helper.make_node("Mul", ["y", "cl"], ["m"]),
                           helper.make_node("Div", ["m", "six"], ["z"])],
                          [_c("three", 3), _c("zero", 0), _c("six", 6)], "HardSwish (Add, Clip, Mul, Div)"),
    "hardswish_mul_sixth": ([helper.make_node("Add", ["three", "y"], ["a"]),
                             helper.make_node("Clip", ["a", "zero", "six"], ["cl"]),
                             helper.make_node("Mul", ["cl", "y"], ["m"]),
                             helper.make_node("Mul", ["m", "sixth"], ["z"])],
                            [_c("three", 3), _c("zero", 0), _c("six", 6), _c("sixth", 1 / 6)],
                            "HardSwish (Add, Clip, Mul, Mul)"),
    "hardswish_hardsigmoid": ([helper.make_node("HardSigmoid", ["y"], ["h"], alpha=1 / 6, beta=0.5),
                               helper.make_node("Mul", ["y", "h"], ["z"])], [], "HardSwish (HardSigmoid, Mul)"),
    "sigmoid": ([helper.make_node("Sigmoid", ["y"], ["z"])], [], "Sigmoid"),
    "silu": ([helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["s", "y"], ["z"])], [],
             "Swish (Sigmoid, Mul)"),
}

# Near misses: not the function CsrConv would apply, or a tensor inside the pattern read elsewhere.
KEPT = {
    "div_by_5": (_spelled(divisor="five"), [_c("three", 3), _c("zero", 0), _c("six", 6), _c("five", 5)]),
    "clip_0_5": (_spelled(clip_max="five"), [_c("three", 3), _c("zero", 0), _c("five", 5), _c("six", 6)]),
    "hardsigmoid_mul_other_params": ([helper.make_node("HardSigmoid", ["y"], ["h"]),
                                      helper.make_node("Mul", ["y", "h"], ["z"])], []),
    "mul_by_another_tensor": ([helper.make_node("Sigmoid", ["y"], ["s"]), helper.make_node("Mul", ["s", "s"], ["z2"]),
                               helper.make_node("Add", ["z2", "y"], ["z"])], []),
    "clip_bound_at_run_time": ([helper.make_node("Clip", ["y", "lo_in", "hi"], ["z"])], [_c("hi", 6)]),
    "relu_and_a_second_use": ([helper.make_node("Relu", ["y"], ["r"]), helper.make_node("Add", ["r", "y"], ["z"])], []),
    "sigmoid_output_read_twice": ([helper.make_node("Sigmoid", ["y"], ["s"]),
                                   helper.make_node("Mul", ["y", "s"], ["m"]),
                                   helper.make_node("Add", ["m", "s"], ["z"])], []),
    "per_channel_three": (_spelled(), [_c("three", np.full((5, 1, 1), 3.0)), _c("zero", 0), _c("six", 6)]),
    # one element, but of rank 5: it broadcasts the output to rank 5
    "rank5_three": (_spelled(), [_c("three", np.full((1, 1, 1, 1, 1), 3.0)), _c("zero", 0), _c("six", 6)]),
    # parameters ONNX Runtime runs but CsrConv refuses (not finite as float32)
    "leaky_alpha_inf": ([helper.make_node("LeakyRelu", ["y"], ["z"], alpha=float("inf"))], []),
    "leaky_alpha_beyond_float32": ([helper.make_node("LeakyRelu", ["y"], ["z"], alpha=1e39)], []),
    "hardsigmoid_beta_inf": ([helper.make_node("HardSigmoid", ["y"], ["z"], beta=float("inf"))], []),
}


def _model(tail_nodes, tail_inits, opset=17, extra_inputs=(), outputs=("z",)):
    rng = np.random.default_rng(11)
    w = np.where(rng.random((5, 4, 3, 3)) < 0.4, rng.normal(size=(5, 4, 3, 3)), 0).astype(np.float32)
    b = rng.normal(size=5).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", pads=[1, 1, 1, 1]), *tail_nodes]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 6, 9])]
    inputs += [helper.make_tensor_value_info(n, TensorProto.FLOAT, []) for n in extra_inputs]
    outs = [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs]
    g = helper.make_graph(nodes, "act", inputs, outs,
                          [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B"), *tail_inits])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def _scaled_feeds(model, x_scale=3.0):
    rng = np.random.default_rng(5)
    feeds = {"x": (rng.standard_normal((2, 4, 6, 9)) * x_scale).astype(np.float32)}
    for i in model.graph.input[1:]:
        feeds[i.name] = np.array(-0.5, np.float32)
    return feeds


def _same_on(model, lowered, feeds):
    import onnxruntime as ort

    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    got = runtime_ops.InferenceSession(lowered.SerializeToString()).run(None, feeds)
    for r, g in zip(ref, got):
        finite = np.abs(r[np.isfinite(r)])
        scale = max(1.0, float(finite.max())) if finite.size else 1.0
        np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * scale)  # inf and NaN must match exactly


@pytest.mark.parametrize("name", list(TAILS))
def test_activation_after_a_lowered_conv_is_folded_in(name):
    nodes, inits, described = TAILS[name]
    model = _model(nodes, inits)
    lowered, result = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv"]
    assert lowered.graph.node[0].output == ["z"]
    # the pattern's constants went with it
    assert {t.name for t in lowered.graph.initializer} == {"B"} | {
        t.name for t in lowered.graph.initializer if ".csr_" in t.name}
    assert result.stats["layers"][0]["reason"].endswith(f"; activation {described} folded in")
    assert {o.domain: o.version for o in lowered.opset_import}[runtime_ops.DOMAIN] == 2
    _same_on(model, lowered, _scaled_feeds(model))
    # the dense equivalent (what the measured lowering and `onnxprune bench` run) agrees too
    dense = dense_from_lowered(lowered, {"x": (2, 4, 6, 9)})
    assert not any(n.domain == runtime_ops.DOMAIN for n in dense.graph.node)
    _same_on(model, dense, _scaled_feeds(model))


@pytest.mark.parametrize("name", list(KEPT))
def test_near_misses_keep_their_nodes(name):
    nodes, inits = KEPT[name]
    extra = ["lo_in"] if name == "clip_bound_at_run_time" else []
    model = _model(nodes, inits, extra_inputs=extra)
    lowered, result = _lower(model, force=["*"])
    ops = [n.op_type for n in lowered.graph.node]
    assert ops[0] == "CsrConv" and ops[1:] == [n.op_type for n in nodes]
    assert "activation" not in result.stats["layers"][0]["reason"]
    assert not any(a.name.startswith("activation") for a in lowered.graph.node[0].attribute)
    assert {o.domain: o.version for o in lowered.opset_import}[runtime_ops.DOMAIN] == 1
    _same_on(model, lowered, _scaled_feeds(model))


def test_an_activation_input_that_is_a_graph_output_is_kept():
    model = _model([helper.make_node("Relu", ["y"], ["z"])], [], outputs=("z", "y"))
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv", "Relu"]
    _same_on(model, lowered, _scaled_feeds(model))
    # inside a spelled-out pattern too
    nodes, inits, _ = TAILS["hardswish_spelled"]
    model = _model(nodes, inits, outputs=("z", "cl"))
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node][1:] == ["Add", "Clip", "Mul", "Div"]


def test_activation_is_folded_after_a_folded_batchnorm():
    model = _conv_bn_model()
    bn = model.graph.node[-1]
    bn.output[0] = "t"
    model.graph.node.append(helper.make_node("Relu", ["t"], ["y"]))
    lowered, result = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv"]
    assert "BatchNormalization bn folded in; activation Relu folded in" in result.stats["layers"][0]["reason"]
    _assert_same(model, lowered, batch=2)


def test_nothing_is_folded_into_a_layer_left_dense():
    nodes, inits, _ = TAILS["hardswish_hardsigmoid"]
    model = _model(nodes, inits)
    lowered, _ = _lower(model, never=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["Conv", "HardSigmoid", "Mul"]


@pytest.mark.parametrize("opset", [10, 13])
def test_older_opsets_fold_and_rebuild_with_their_own_ops(opset):
    # opset 10: Clip's bounds are attributes; below 14 there is no HardSwish op to rebuild with
    clip = helper.make_node("Clip", ["y"], ["c"], min=-1.0, max=2.0) if opset < 11 else \
        helper.make_node("Clip", ["y", "lo", "hi"], ["c"])
    inits = [] if opset < 11 else [_c("lo", -1), _c("hi", 2)]
    model = _model([clip, helper.make_node("Relu", ["c"], ["z"])], inits, opset=opset)
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv", "Relu"]
    _same_on(model, lowered, _scaled_feeds(model))
    dense = dense_from_lowered(lowered, {"x": (2, 4, 6, 9)})
    _same_on(model, dense, _scaled_feeds(model))
    nodes, inits, _ = TAILS["hardswish_hardsigmoid"]
    model = _model(nodes, inits, opset=opset)
    lowered, _ = _lower(model, force=["*"])
    dense = dense_from_lowered(lowered, {"x": (2, 4, 6, 9)})
    assert "HardSwish" not in [n.op_type for n in dense.graph.node]
    _same_on(model, dense, _scaled_feeds(model))


def test_lowering_a_partly_lowered_model_raises_its_op_set_to_2():
    # conv1 lowered first (op-set 1: no activation after it); lowering the result again folds
    # conv2's Relu, so the file must now declare op-set 2
    rng = np.random.default_rng(3)
    w2 = np.where(rng.random((5, 5, 3, 3)) < 0.4, rng.normal(size=(5, 5, 3, 3)), 0).astype(np.float32)
    model = _model([helper.make_node("Conv", ["y", "W2"], ["y2"], name="conv2", pads=[1, 1, 1, 1]),
                    helper.make_node("Relu", ["y2"], ["z"])], [numpy_helper.from_array(w2, "W2")])
    first, _ = _lower(model, force=["conv"], never=["conv2"])
    assert {o.domain: o.version for o in first.opset_import}[runtime_ops.DOMAIN] == 1
    second, _ = _lower(first, force=["*"])
    assert [n.op_type for n in second.graph.node] == ["CsrConv", "CsrConv"]
    assert {o.domain: o.version for o in second.opset_import}[runtime_ops.DOMAIN] == 2
    assert [o.domain for o in second.opset_import].count(runtime_ops.DOMAIN) == 1
    _same_on(model, second, _scaled_feeds(model))


@pytest.mark.parametrize("opset,tail,inits", [
    (10, [helper.make_node("Clip", ["y"], ["z"])], []),
    (13, [helper.make_node("Clip", ["y"], ["z"])], []),
    (13, [helper.make_node("Clip", ["y", "", "hi"], ["z"])], [("hi", 1.5)]),
    (13, [helper.make_node("Clip", ["y", "lo"], ["z"])], [("lo", -1.5)]),
], ids=["attrs_absent", "inputs_absent", "min_absent", "max_absent"])
def test_a_clip_bound_left_out_folds_as_onnx_default_not_infinity(opset, tail, inits):
    """ONNX's Clip clamps to float32's lowest / largest finite value where a bound is absent, so
    Clip(±inf) is ±3.4028235e38; the folded CsrGemm must give exactly that (it once passed ±inf
    through), and so must the dense equivalent that measured lowering and bench time."""
    import onnxruntime as ort
    w = np.array([[1.0, 2.0, 0.5, 3.0]], np.float32)  # K = 1, all nonzero: y = ±inf, no NaN
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["y"], name="fc"), *tail], "clip",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 1])],
                          [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W"), *(_c(n, v) for n, v in inits)])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    lowered, _ = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm"]
    x = {"x": np.array([[np.inf], [-np.inf]], np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
    assert np.isfinite(want).any()  # ONNX Runtime's own Clip: the float32 range, not ±inf
    got = runtime_ops.InferenceSession(lowered.SerializeToString()).run(None, x)[0]
    assert np.array_equal(got, want)
    dense = dense_from_lowered(lowered, {"x": (2, 1)})
    assert np.array_equal(runtime_ops.InferenceSession(dense.SerializeToString()).run(None, x)[0], want)
