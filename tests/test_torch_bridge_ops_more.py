"""Ops for detectors, sequence models and transformers: the torch interpreter against ONNX
Runtime (forward within 1e-4 relative) and torch autograd (gradients reach float inputs)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
from onnxprune.training.torch_bridge import UnsupportedOpError, build_module  # noqa: E402
from tests.test_torch_bridge_ops import Case, f, i64, make_model, one, run_both  # noqa: E402

pytestmark = pytest.mark.torch

R = np.random.default_rng(11)


def g(*shape, scale=0.5):
    return (R.standard_normal(shape) * scale).astype(np.float32)


def _lstm(direction="forward", layout=0, lens=False, peep=False, init=False, D=1, **attrs):
    T, B, In, H = 5, 3, 4, 6
    x = g(B, T, In) if layout else g(T, B, In)
    ins = [x, g(D, 4 * H, In), g(D, 4 * H, H), g(D, 8 * H)]
    ins.append(np.array([5, 2, 4], np.int32) if lens else None)
    h0 = (g(B, D, H) if layout else g(D, B, H)) if init else None
    c0 = (g(B, D, H) if layout else g(D, B, H)) if init else None
    ins += [h0, c0, g(D, 3 * H) if peep else None]
    while ins[-1] is None:
        ins.pop()
    return ins, dict(hidden_size=H, direction=direction, layout=layout, **attrs)


def _gru(direction="forward", lens=False, D=1, **attrs):
    T, B, In, H = 4, 2, 3, 5
    ins = [g(T, B, In), g(D, 3 * H, In), g(D, 3 * H, H), g(D, 6 * H),
           np.array([4, 2], np.int32) if lens else None, g(D, B, H)]
    return ins, dict(hidden_size=H, direction=direction, **attrs)


def _rnn_case(id, op, spec, n_out):
    ins, attrs = spec
    return one(id, op, ins, attrs, opset=14, n_out=n_out, init=(1, 2, 3, 4, 7))


RNN_CASES = [
    _rnn_case("lstm_forward", "LSTM", _lstm(), 3),
    _rnn_case("lstm_reverse_lens", "LSTM", _lstm("reverse", lens=True, init=True), 3),
    _rnn_case("lstm_bidir_peep_lens", "LSTM", _lstm("bidirectional", lens=True, peep=True, init=True, D=2), 3),
    _rnn_case("lstm_clip_input_forget", "LSTM", _lstm(clip=0.7, input_forget=1), 3),
    _rnn_case("gru_forward", "GRU", _gru(), 2),
    _rnn_case("gru_linear_before_reset", "GRU", _gru(linear_before_reset=1), 2),
    _rnn_case("gru_bidir_lens", "GRU", _gru("bidirectional", lens=True, D=2, linear_before_reset=1), 2),
    _rnn_case("rnn_relu_bidir", "RNN", (
        [g(4, 2, 3), g(2, 5, 3), g(2, 5, 5), g(2, 10)],
        dict(hidden_size=5, direction="bidirectional", activations=["Relu", "Tanh"])), 2),
]

IMG = f(1, 2, 5, 7)
EMPTY = np.zeros(0, np.float32)


def _resize(id, attrs, scales=None, sizes=None, x=IMG, opset=13):
    ins = [x, EMPTY, np.array(scales, np.float32) if scales else EMPTY]
    if sizes:
        ins.append(i64(*sizes))
    return one(id, "Resize", ins, attrs, opset=opset, init=(1, 2, 3))


RESIZE_CASES = [
    _resize("nearest_asym_floor_x2", dict(mode="nearest", coordinate_transformation_mode="asymmetric",
                                          nearest_mode="floor"), [1, 1, 2, 2]),
    _resize("nearest_half_pixel_down", dict(mode="nearest"), [1, 1, 0.6, 0.45]),
    _resize("nearest_round_ceil_sizes", dict(mode="nearest", nearest_mode="round_prefer_ceil"),
            sizes=[1, 2, 8, 11]),
    _resize("nearest_ceil_align", dict(mode="nearest", nearest_mode="ceil",
                                       coordinate_transformation_mode="align_corners"), [1, 1, 1.5, 1.7]),
    _resize("linear_half_pixel_up", dict(mode="linear"), [1, 1, 2, 3]),
    _resize("linear_half_pixel_down", dict(mode="linear"), [1, 1, 0.5, 0.6]),
    _resize("linear_pytorch_half_pixel_sizes", dict(mode="linear", coordinate_transformation_mode="pytorch_half_pixel"),
            sizes=[1, 2, 1, 9]),
    _resize("linear_align_corners", dict(mode="linear", coordinate_transformation_mode="align_corners"),
            sizes=[1, 2, 9, 4]),
    _resize("linear_asymmetric", dict(mode="linear", coordinate_transformation_mode="asymmetric"), [1, 1, 2.5, 1.5]),
    _resize("cubic_half_pixel", dict(mode="cubic"), [1, 1, 1.6, 2]),
    _resize("cubic_align_exclude", dict(mode="cubic", coordinate_transformation_mode="align_corners",
                                        exclude_outside=1, cubic_coeff_a=-0.5), sizes=[1, 2, 7, 5]),
    _resize("cubic_asymmetric_down", dict(mode="cubic", coordinate_transformation_mode="asymmetric"),
            [1, 1, 0.8, 0.5]),
    _resize("linear_3d_tensor", dict(mode="linear"), [1, 1, 2.0], x=f(2, 3, 6)),
    one("resize_v10_scales", "Resize", [IMG, np.array([1, 1, 2, 2], np.float32)], dict(mode="nearest"),
        opset=10, init=(1,)),
    one("resize_v18_axes", "Resize", [IMG, EMPTY, np.array([2.0, 1.5], np.float32)],
        dict(mode="linear", axes=[2, 3]), opset=18, init=(1, 2)),
    one("resize_v11_half_pixel_symmetric", "Resize", [IMG, EMPTY, np.array([1, 1, 1.7, 0.7], np.float32)],
        dict(mode="linear", coordinate_transformation_mode="half_pixel_symmetric"), opset=19, init=(1, 2)),
    one("resize_v10_down", "Resize", [IMG, np.array([1, 1, 0.6, 0.45], np.float32)], dict(mode="nearest"),
        opset=10, init=(1,)),
    one("upsample_v9_linear", "Upsample", [IMG, np.array([1, 1, 2, 1.5], np.float32)], dict(mode="linear"),
        opset=9, init=(1,)),
    one("upsample_v9", "Upsample", [IMG, np.array([1, 1, 2, 3], np.float32)], dict(mode="nearest"),
        opset=9, init=(1,)),
]

X3 = f(2, 7, 6)
OTHER_CASES = [
    one("split_attr_v11", "Split", [X3], dict(axis=1, split=[2, 5]), opset=11, n_out=2),
    one("split_input_v13", "Split", [X3, i64(3, 1, 2)], dict(axis=-1), opset=13, n_out=3, init=(1,)),
    one("split_equal_v13", "Split", [X3], dict(axis=2), opset=13, n_out=3),
    one("split_num_outputs_v18", "Split", [X3], dict(axis=1, num_outputs=3), opset=18, n_out=3),
    one("range_int", "Range", [np.array(2, np.int64), np.array(11, np.int64), np.array(3, np.int64)],
        out_type=TensorProto.INT64),
    one("range_float_neg", "Range", [np.array(1.5, np.float32), np.array(-1.0, np.float32),
                                     np.array(-0.4, np.float32)]),
    one("layernorm_last", "LayerNormalization", [X3, f(6), f(6)], dict(epsilon=1e-3), init=(1, 2)),
    one("layernorm_axis1_outputs", "LayerNormalization", [X3, f(7, 6)], dict(axis=1), init=(1,), n_out=3),
    one("instance_norm", "InstanceNormalization", [IMG, f(2), f(2)], init=(1, 2)),
    one("tile", "Tile", [f(2, 3), i64(2, 1)], init=(1,)),
    one("einsum_attention", "Einsum", [f(2, 3, 4), f(2, 5, 4)], dict(equation="bik,bjk->bij"), opset=12),
    one("argmax_last", "ArgMax", [np.array([[1, 3, 3], [2, 2, 0]], np.float32)],
        dict(axis=1, select_last_index=1, keepdims=0), out_type=TensorProto.INT64),
    one("argmin", "ArgMin", [f(3, 4)], out_type=TensorProto.INT64),
    one("cumsum_rev_excl", "CumSum", [f(3, 4), np.array(1, np.int64)], dict(reverse=1, exclusive=1), init=(1,)),
    one("topk", "TopK", [f(3, 6), i64(2)], dict(largest=0), init=(1,), n_out=2,
        out_type=[TensorProto.FLOAT, TensorProto.INT64]),
    one("gather_elements", "GatherElements", [f(3, 4), i64(0, -1, 2, 1, 1, 0).reshape(3, 2)], dict(axis=1),
        init=(1,)),
    one("scatter_nd", "ScatterND", [f(4, 3), i64(2, 0).reshape(2, 1), f(2, 3)], init=(1,)),
    one("trilu_lower", "Trilu", [f(4, 5), np.array(1, np.int64)], dict(upper=0), opset=14, init=(1,)),
    one("mod_int", "Mod", [i64(-7, 7, 9), i64(3, -3, 4)], out_type=TensorProto.INT64),
    one("mod_fmod", "Mod", [f(5) * 4, np.array([1.5] * 5, np.float32)], dict(fmod=1)),
    one("reduce_l2", "ReduceL2", [X3, i64(1)], init=(1,), opset=18),
    one("reduce_sum_square_v13", "ReduceSumSquare", [X3], dict(axes=[2], keepdims=0), opset=13),
    one("less_equal", "LessOrEqual", [i64(1, 2, 3), i64(2, 2, 2)], out_type=TensorProto.BOOL),
    one("and", "And", [np.array([True, False, True]), np.array([True, True, False])], out_type=TensorProto.BOOL),
    one("sin", "Sin", [f(3, 4)]),
    one("pad_reflect_2d_last_axis", "Pad", [f(2, 9), i64(0, 3, 0, 3)], dict(mode="reflect"), init=(1,)),
    one("pad_edge_batch_axis", "Pad", [f(2, 3, 4), i64(1, 0, 2, 0, 0, 1)], dict(mode="edge"), init=(1,)),
    one("pad_reflect_axes_v18", "Pad", [f(2, 3, 5), i64(2, 4), None, i64(-1)], dict(mode="reflect"),
        opset=18, init=(1, 3)),
    one("round_half_even", "Round", [np.array([0.5, 1.5, -2.5, 2.4], np.float32)]),
]

CASES = RNN_CASES + RESIZE_CASES + OTHER_CASES


def _close(ref, got):
    assert len(ref) == len(got)
    for r, t in zip(ref, got):
        assert r.shape == t.shape
        if r.dtype.kind == "f":
            np.testing.assert_allclose(t, r, rtol=1e-4, atol=1e-5)
        else:
            np.testing.assert_array_equal(t, r)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_onnxruntime(case):
    model = make_model(case)
    _close(*run_both(model, case.feeds))


GRAD_CASES = [c for c in CASES if c.id in {
    "lstm_bidir_peep_lens", "gru_bidir_lens", "rnn_relu_bidir", "linear_half_pixel_up",
    "cubic_align_exclude", "nearest_half_pixel_down", "split_input_v13", "layernorm_axis1_outputs",
    "einsum_attention", "scatter_nd", "pad_reflect_2d_last_axis", "cumsum_rev_excl", "gather_elements",
}]


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c.id for c in GRAD_CASES])
def test_gradients_reach_every_float_input(case):
    """With every float initializer fed as a graph input, d(Σ outputs·probe)/d(input) is nonzero
    for each of them (weights of recurrent ops included)."""
    fixed = set(case.nodes[0].input[1:]) if case.nodes[0].op_type == "Resize" else set()  # scales
    feeds = {**case.feeds, **{k: v for k, v in case.inits.items()
                              if v.dtype == np.float32 and v.size and k not in fixed}}
    inits = {k: v for k, v in case.inits.items() if k not in feeds}
    model = make_model(Case(case.id, case.nodes, feeds, inits, case.opset, case.out_types, case.outputs))
    module = build_module(model)
    args = [torch.tensor(v, requires_grad=v.dtype == np.float32) for v in feeds.values()]
    outs = module(*args)
    outs = outs if isinstance(outs, tuple) else (outs,)
    probe = torch.Generator().manual_seed(3)
    loss = sum((o * torch.randn(o.shape, generator=probe)).sum() for o in outs if o.is_floating_point())
    loss.backward()
    for name, a in zip(feeds, args):
        if a.requires_grad:
            assert a.grad is not None and a.grad.abs().sum() > 0, name


def test_lstm_layout1_is_layout0_with_batch_first():
    """ORT refuses batch-first LSTM, so layout 1 is checked against the layout-0 result on the
    same values with the batch and time (or direction) axes swapped."""
    ins, attrs = _lstm("bidirectional", D=2, layout=1, init=True, peep=True)
    x, w, r, b, _, h0, c0, p = ins
    with torch.no_grad():
        m1 = build_module(make_model(one("l1", "LSTM", ins, attrs, n_out=3, init=(1, 2, 3, 7))))
        y1 = m1(*[torch.tensor(v) for v in (x, h0, c0)])
        ins0 = [x.transpose(1, 0, 2), w, r, b, None, h0.transpose(1, 0, 2), c0.transpose(1, 0, 2), p]
        m0 = build_module(make_model(one("l0", "LSTM", ins0, {**attrs, "layout": 0}, n_out=3, init=(1, 2, 3, 7))))
        y0 = m0(*[torch.tensor(v) for v in (ins0[0], ins0[5], ins0[6])])
    np.testing.assert_allclose(y1[0].numpy(), y0[0].permute(2, 0, 1, 3).numpy(), rtol=1e-6)
    for a, c in zip(y1[1:], y0[1:]):
        np.testing.assert_allclose(a.numpy(), c.transpose(0, 1).numpy(), rtol=1e-6)


# --- If: branch subgraphs reading the enclosing scope ---------------------------------------

def _if_model(nested=False):
    """y = If(sum(x) > 0) then relu(x @ W) [nested: another If on the same test] else (x @ W)·k."""
    w = f(4, 3)
    then_out = helper.make_tensor_value_info("t_out", TensorProto.FLOAT, None)
    then_nodes = [helper.make_node("MatMul", ["x", "W"], ["t_mm"]), helper.make_node("Relu", ["t_mm"], ["t_out"])]
    if nested:
        inner = helper.make_graph([helper.make_node("Relu", ["t_mm"], ["i_out"])], "inner_then", [],
                                  [helper.make_tensor_value_info("i_out", TensorProto.FLOAT, None)])
        inner_else = helper.make_graph([helper.make_node("Neg", ["t_mm"], ["e_out"])], "inner_else", [],
                                       [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)])
        then_nodes[1] = helper.make_node("If", ["cond"], ["t_out"], then_branch=inner, else_branch=inner_else)
    else_nodes = [
        helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.array(-2.0, np.float32))),
        helper.make_node("MatMul", ["x", "W"], ["e_mm"]), helper.make_node("Mul", ["e_mm", "k"], ["e_out"]),
    ]
    then_g = helper.make_graph(then_nodes, "then", [], [then_out])
    else_out = helper.make_tensor_value_info("e_out", TensorProto.FLOAT, None)
    else_g = helper.make_graph(else_nodes, "else", [], [else_out])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["y"], then_branch=then_g, else_branch=else_g),
    ]
    graph = helper.make_graph(
        nodes, "if_model", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.array(0.0, np.float32), "zero")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("nested", [False, True])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_if_runs_the_chosen_branch_with_outer_scope(nested, sign):
    model = _if_model(nested)
    x = np.abs(f(2, 4)) * sign
    _close(*run_both(model, {"x": x}))


def test_if_gradient_reaches_an_outer_weight_only_through_the_taken_branch():
    from onnxprune.training.torch_bridge.weights import find_weights

    model = _if_model()
    # MatMul inside a branch is not a layer of the main graph: make W a parameter by hand
    # is not possible, so feed it as an input and check its gradient instead.
    model.graph.input.append(helper.make_tensor_value_info("W", TensorProto.FLOAT, [4, 3]))
    w = numpy_helper.to_array(model.graph.initializer[0])
    del model.graph.initializer[0]
    assert "W" not in find_weights(model)
    module = build_module(model)
    wt = torch.tensor(w, requires_grad=True)
    x = torch.tensor(-np.abs(f(2, 4)))  # else branch: (x @ W)·(−2)
    module(x, wt).sum().backward()
    expected = -2.0 * x.sum(0, keepdim=True).t().expand(4, 3)
    np.testing.assert_allclose(wt.grad.numpy(), expected.numpy(), rtol=1e-5)


def test_unsupported_op_inside_a_branch_is_named_at_build():
    model = _if_model()
    model.graph.node[2].attribute[0].g.node[1].op_type = "Celu2"
    with pytest.raises(UnsupportedOpError, match="Celu2"):
        build_module(model)


# --- refusals -------------------------------------------------------------------------------

def test_quantized_graph_is_refused_in_one_line_naming_the_op():
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quant_in"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "q", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.uint8), "z")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    with pytest.raises(UnsupportedOpError) as info:
        build_module(model)
    msg = str(info.value)
    assert "QuantizeLinear" in msg and "quant_in" in msg and "\n" not in msg
    assert info.value.exit_code == 4


@pytest.mark.parametrize("attrs, why", [
    (dict(mode="linear", coordinate_transformation_mode="tf_crop_and_resize"), "tf_crop_and_resize"),
    (dict(mode="linear", antialias=1), "antialias"),
])
def test_resize_features_outside_the_table_are_refused_at_build(attrs, why):
    model = make_model(_resize("refused", attrs, [1, 1, 0.5, 0.5], opset=18))
    with pytest.raises(UnsupportedOpError, match=why):
        build_module(model)


def test_lstm_activation_with_parameters_is_refused_at_build():
    ins, attrs = _lstm(activations=["HardSigmoid", "Tanh", "Tanh"])
    with pytest.raises(UnsupportedOpError, match="HardSigmoid"):
        build_module(make_model(one("lstm_hs", "LSTM", ins, attrs, n_out=3, init=(1, 2, 3))))
