"""Per-op forward equality: the torch interpreter against ONNX Runtime on one-node graphs."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
from onnxprune.training.torch_bridge import UnsupportedOpError, build_module  # noqa: E402

pytestmark = pytest.mark.torch

R = np.random.default_rng(0)


def f(*shape):
    return R.standard_normal(shape).astype(np.float32)


def pos(*shape):
    return (np.abs(R.standard_normal(shape)) + 0.1).astype(np.float32)


def i64(*vals):
    return np.array(vals, dtype=np.int64)


class Case:
    """One graph: ``nodes``; ``feeds`` are graph inputs, ``inits`` initializers."""

    def __init__(self, id, nodes, feeds, inits=None, opset=17, out_types=None, outputs=None):
        self.id, self.nodes, self.feeds, self.inits, self.opset = id, nodes, feeds, inits or {}, opset
        self.outputs = outputs or [nodes[-1].output[0]]
        self.out_types = out_types or [TensorProto.FLOAT] * len(self.outputs)


def one(id, op, inputs, attrs=None, opset=17, out_type=TensorProto.FLOAT, n_out=1, init=()):
    """A single-node case; ``inputs`` is a list of arrays (None = omitted optional input)."""
    names, feeds, inits = [], {}, {}
    for k, arr in enumerate(inputs):
        if arr is None:
            names.append("")
            continue
        name = f"in{k}"
        names.append(name)
        (inits if k in init else feeds)[name] = arr
    outs = [f"out{j}" for j in range(n_out)]
    node = helper.make_node(op, names, outs, name=f"{op}_node", **(attrs or {}))
    types = out_type if isinstance(out_type, list) else [out_type] * n_out
    return Case(id, [node], feeds, inits, opset, types, outs)


def make_model(case: Case) -> onnx.ModelProto:
    def vi(name, arr):
        return helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(arr.dtype), arr.shape)

    graph = helper.make_graph(
        case.nodes, case.id,
        [vi(n, a) for n, a in case.feeds.items()],
        [helper.make_tensor_value_info(o, t, None) for o, t in zip(case.outputs, case.out_types)],
        [numpy_helper.from_array(a, n) for n, a in case.inits.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", case.opset)])
    model.ir_version = 8 if case.opset < 19 else 9

    return model


def run_both(model, feeds):
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)
    module = build_module(model).eval()
    with torch.no_grad():
        got = module(*[torch.from_numpy(v) for v in feeds.values()])
    got = got if isinstance(got, tuple) else (got,)
    return ref, [g.numpy() for g in got]


X4 = f(2, 4, 7, 6)
CASES = [
    one("gemm_all_attrs", "Gemm", [f(4, 3), f(5, 4), f(5)], dict(alpha=0.5, beta=2.0, transA=1, transB=1), init=(1, 2)),
    one("gemm_no_c", "Gemm", [f(3, 4), f(4, 5)], init=(1,)),
    one("matmul_3d", "MatMul", [f(2, 3, 4), f(4, 5)], init=(1,)),
    one("matmul_const_left", "MatMul", [f(5, 3), f(3, 4)], init=(0,)),
    one("add_broadcast", "Add", [f(2, 3, 4), f(4)], init=(1,)),
    one("sub", "Sub", [f(2, 3), f(2, 3)]),
    one("mul", "Mul", [f(2, 3), f(1, 3)]),
    one("div", "Div", [f(2, 3), pos(2, 3)]),
    one("div_int_trunc", "Div", [i64(-7, 7, 9), i64(2, 2, -4)], out_type=TensorProto.INT64),
    one("pow", "Pow", [pos(2, 3), f(2, 3)]),
    one("conv2d_groups_asym_pads", "Conv", [X4, f(6, 2, 3, 2), f(6)],
        dict(group=2, pads=[1, 0, 0, 2], strides=[2, 1], dilations=[1, 2]), init=(1, 2)),
    one("conv2d_same_upper", "Conv", [X4, f(3, 4, 3, 3)], dict(auto_pad="SAME_UPPER", strides=[2, 2]), init=(1,)),
    one("conv2d_same_lower", "Conv", [X4, f(3, 4, 2, 2)], dict(auto_pad="SAME_LOWER"), init=(1,)),
    one("conv2d_valid", "Conv", [X4, f(3, 4, 3, 3)], dict(auto_pad="VALID", kernel_shape=[3, 3]), init=(1,)),
    one("conv1d", "Conv", [f(2, 3, 9), f(4, 3, 3), f(4)], dict(pads=[1, 1], strides=[2]), init=(1, 2)),
    one("conv3d", "Conv", [f(1, 2, 4, 5, 4), f(3, 2, 2, 3, 2)], dict(pads=[1, 0, 1, 1, 0, 1]), init=(1,)),
    one("convT_groups_pads_outpad", "ConvTranspose", [f(2, 4, 5, 4), f(4, 3, 3, 3), f(6)],
        dict(group=2, strides=[2, 2], pads=[1, 0, 0, 1], output_padding=[1, 0]), init=(1, 2)),
    one("convT_output_shape", "ConvTranspose", [f(1, 2, 4, 4), f(2, 3, 3, 3)],
        dict(strides=[2, 2], output_shape=[9, 8]), init=(1,)),
    one("convT_same_upper", "ConvTranspose", [f(1, 2, 4, 5), f(2, 3, 3, 3)],
        dict(strides=[2, 2], auto_pad="SAME_UPPER"), init=(1,)),
    one("convT_1d_dilated", "ConvTranspose", [f(2, 3, 6), f(3, 2, 3)], dict(dilations=[2], strides=[3]), init=(1,)),
    one("batchnorm_4d", "BatchNormalization", [X4, pos(4), f(4), f(4), pos(4)], dict(epsilon=1e-3), init=(1, 2, 3, 4)),
    one("batchnorm_2d", "BatchNormalization", [f(5, 3), pos(3), f(3), f(3), pos(3)], init=(1, 2, 3, 4)),
    one("relu", "Relu", [f(3, 4)]),
    one("leaky_relu", "LeakyRelu", [f(3, 4)], dict(alpha=0.2)),
    one("prelu", "PRelu", [f(2, 3, 4), pos(3, 1)], init=(1,)),
    one("elu", "Elu", [f(3, 4)], dict(alpha=0.7)),
    one("selu", "Selu", [f(3, 4)]),
    one("sigmoid", "Sigmoid", [f(3, 4)]),
    one("hard_sigmoid", "HardSigmoid", [f(3, 4)], dict(alpha=0.3, beta=0.4)),
    one("hard_swish", "HardSwish", [f(3, 4) * 4], opset=14),
    one("tanh", "Tanh", [f(3, 4)]),
    one("softplus", "Softplus", [f(3, 4)]),
    one("softsign", "Softsign", [f(3, 4)]),
    one("gelu_tanh", "Gelu", [f(3, 4)], dict(approximate="tanh"), opset=20),
    one("softmax_v11_coerce", "Softmax", [f(2, 3, 4)], dict(axis=1), opset=11),
    one("softmax_v13_axis1", "Softmax", [f(2, 3, 4)], dict(axis=1)),
    one("log_softmax", "LogSoftmax", [f(3, 5)]),
    one("log_softmax_v11", "LogSoftmax", [f(2, 3, 4)], opset=11),
    one("abs", "Abs", [f(3, 4)]),
    one("neg", "Neg", [f(3, 4)]),
    one("exp", "Exp", [f(3, 4)]),
    one("log", "Log", [pos(3, 4)]),
    one("sqrt", "Sqrt", [pos(3, 4)]),
    one("reciprocal", "Reciprocal", [pos(3, 4)]),
    one("floor", "Floor", [f(3, 4) * 3]),
    one("ceil", "Ceil", [f(3, 4) * 3]),
    one("erf", "Erf", [f(3, 4)]),
    one("clip_inputs", "Clip", [f(3, 4), np.array(-0.5, np.float32), np.array(0.3, np.float32)], init=(1, 2)),
    one("clip_min_only", "Clip", [f(3, 4), np.array(-0.5, np.float32)], init=(1,)),
    one("clip_attrs_v6", "Clip", [f(3, 4)], dict(min=-0.2, max=0.1), opset=6),
    one("sum3", "Sum", [f(2, 3), f(3), f(2, 1)]),
    one("max3", "Max", [f(2, 3), f(3), f(2, 1)]),
    one("min2", "Min", [f(2, 3), f(2, 3)]),
    one("mean3", "Mean", [f(2, 3), f(3), f(2, 1)]),
    one("maxpool_pads", "MaxPool", [X4], dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    one("maxpool_asym_pads", "MaxPool", [X4], dict(kernel_shape=[2, 3], pads=[0, 2, 1, 0])),
    one("maxpool_ceil", "MaxPool", [X4], dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    one("maxpool_dilated", "MaxPool", [X4], dict(kernel_shape=[2, 2], dilations=[2, 1])),
    one("maxpool_same_upper", "MaxPool", [X4], dict(kernel_shape=[3, 2], strides=[2, 2], auto_pad="SAME_UPPER")),
    one("maxpool_1d", "MaxPool", [f(2, 3, 9)], dict(kernel_shape=[3], strides=[2])),
    one("avgpool_pads_exclude", "AveragePool", [X4], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    one("avgpool_pads_include", "AveragePool", [X4], dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
    one("avgpool_asym_exclude", "AveragePool", [X4], dict(kernel_shape=[3, 2], pads=[2, 0, 0, 1])),
    one("avgpool_asym_include", "AveragePool", [X4], dict(kernel_shape=[3, 2], pads=[2, 0, 0, 1], count_include_pad=1)),
    one("avgpool_ceil", "AveragePool", [X4], dict(kernel_shape=[2, 2], strides=[2, 2], ceil_mode=1)),
    one("global_avgpool", "GlobalAveragePool", [X4]),
    one("global_maxpool", "GlobalMaxPool", [X4]),
    one("lrn_odd", "LRN", [X4], dict(size=3, alpha=1e-2, beta=0.75, bias=2.0)),
    one("flatten_axis2", "Flatten", [X4], dict(axis=2)),
    one("flatten_neg_axis", "Flatten", [X4], dict(axis=-1)),
    one("reshape_zero_minus1", "Reshape", [X4, i64(0, -1, 3)], init=(1,)),
    one("transpose", "Transpose", [X4], dict(perm=[0, 2, 3, 1])),
    one("transpose_default", "Transpose", [f(2, 3, 4)]),
    one("concat", "Concat", [f(2, 3), f(2, 5)], dict(axis=1)),
    one("identity", "Identity", [f(2, 3)]),
    one("dropout_v11_eval", "Dropout", [f(2, 3)], dict(ratio=0.3), opset=11),
    one("dropout_v13_ratio_input", "Dropout", [f(2, 3), np.array(0.4, np.float32)], init=(1,)),
    one("dropout_mask", "Dropout", [f(2, 3)], n_out=2, out_type=[TensorProto.FLOAT, TensorProto.BOOL]),
    one("shape_start", "Shape", [X4], dict(start=1), opset=15, out_type=TensorProto.INT64),
    one("size", "Size", [X4], out_type=TensorProto.INT64),
    one("gather_scalar", "Gather", [X4, np.array(-1, np.int64)], dict(axis=1), init=(1,)),
    one("gather_matrix", "Gather", [f(5, 3), i64(0, 4, 2, 2).reshape(2, 2)], init=(1,)),
    one("unsqueeze_v11", "Unsqueeze", [f(2, 3)], dict(axes=[0, -1]), opset=11),
    one("unsqueeze_v13", "Unsqueeze", [f(2, 3), i64(1, 3)], init=(1,)),
    one("squeeze_v11", "Squeeze", [f(2, 1, 3, 1)], dict(axes=[1]), opset=11),
    one("squeeze_v13_all", "Squeeze", [f(2, 1, 3, 1)]),
    one("squeeze_v13_axes", "Squeeze", [f(2, 1, 3, 1), i64(-1)], init=(1,)),
    one("cast_to_int", "Cast", [f(3, 4) * 5], dict(to=TensorProto.INT32), out_type=TensorProto.INT32),
    one("cast_to_float", "Cast", [i64(1, -2, 3)], dict(to=TensorProto.FLOAT)),
    one("pad_constant", "Pad", [X4, i64(0, 0, 1, 2, 0, 0, 2, 0), np.array(1.5, np.float32)], init=(1, 2)),
    one("pad_reflect", "Pad", [X4, i64(0, 0, 1, 2, 0, 0, 2, 1)], dict(mode="reflect"), init=(1,)),
    one("pad_edge", "Pad", [X4, i64(0, 0, 1, 0, 0, 0, 0, 3)], dict(mode="edge"), init=(1,)),
    one("pad_v2_attrs", "Pad", [X4], dict(pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.5), opset=10),
    one("reduce_mean_v13", "ReduceMean", [X4], dict(axes=[2, 3], keepdims=0), opset=13),
    one("reduce_mean_v18", "ReduceMean", [X4, i64(1)], init=(1,), opset=18),
    one("reduce_mean_all", "ReduceMean", [X4]),
    one("reduce_sum_v13", "ReduceSum", [X4, i64(-1)], dict(keepdims=0), init=(1,), opset=13),
    one("reduce_max_v13", "ReduceMax", [X4], dict(axes=[1]), opset=13),
    one("slice_v13_neg_step", "Slice", [X4, i64(5, 1), i64(0, 100), i64(2, 3), i64(-2, 2)], init=(1, 2, 3, 4)),
    one("slice_v13_basic", "Slice", [X4, i64(1), i64(-1)], init=(1, 2)),
    one("slice_v9_attrs", "Slice", [X4], dict(starts=[1, 0], ends=[3, 4], axes=[1, 3]), opset=9),
    one("constant_of_shape", "ConstantOfShape", [i64(2, 3)],
        dict(value=numpy_helper.from_array(np.array([1.5], np.float32))), init=(0,)),
    one("expand", "Expand", [f(3, 1), i64(2, 3, 4)], init=(1,)),
    one("where", "Where", [f(3, 4) > 0, f(3, 4), f(4)]),
    one("equal", "Equal", [i64(1, 2, 3), i64(1, 0, 3)], out_type=TensorProto.BOOL),
    one("less", "Less", [f(3), f(3)], out_type=TensorProto.BOOL),
    one("greater", "Greater", [f(3), f(3)], out_type=TensorProto.BOOL),
    one("not", "Not", [f(3) > 0], out_type=TensorProto.BOOL),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_op_matches_onnxruntime(case):
    model = make_model(case)
    ref, got = run_both(model, case.feeds)
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        if r.dtype.kind == "f":
            np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5)
        else:
            np.testing.assert_array_equal(g, r)


def test_constant_node_feeding_an_op():
    w = f(4, 3)
    nodes = [
        helper.make_node("Constant", [], ["w"], value=numpy_helper.from_array(w)),
        helper.make_node("Constant", [], ["s"], value_float=2.0),
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Mul", ["h", "s"], ["y"]),
    ]
    case = Case("constants", nodes, {"x": f(2, 4)})
    model = make_model(case)
    ref, got = run_both(model, case.feeds)
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5, atol=1e-5)
    # The Constant feeding MatMul's weight slot is trainable; the scalar is not.
    module = build_module(model)
    assert list(module.param_keys) == ["w"]


def test_dropout_is_active_in_train_mode_only():
    case = one("dropout_train", "Dropout", [np.ones((64, 64), np.float32), np.array(0.5, np.float32)], init=(1,))
    module = build_module(make_model(case))
    x = torch.ones(64, 64)
    module.eval()
    assert torch.equal(module(x), x)
    module.train()
    y = module(x)
    kept = (y != 0).float().mean().item()
    assert 0.4 < kept < 0.6 and torch.allclose(y[y != 0], torch.full_like(y[y != 0], 2.0))
    module.dropout_ratio["Dropout_node"] = 0.0
    assert torch.equal(module(x), x)


def test_batchnorm_train_mode_updates_running_stats():
    case = one("bn", "BatchNormalization", [f(8, 3, 4, 4), pos(3), f(3), np.zeros(3, np.float32),
                                            np.ones(3, np.float32)], dict(momentum=0.8), init=(1, 2, 3, 4))
    module = build_module(make_model(case)).train()
    x = torch.randn(8, 3, 4, 4) * 2 + 1
    module(x)
    mean = module.onnx_tensor("in3")
    # ONNX momentum 0.8: running = 0.8·running + 0.2·batch_mean
    expected = 0.2 * x.mean(dim=(0, 2, 3))
    torch.testing.assert_close(mean, expected, rtol=1e-5, atol=1e-6)
    assert "in3" in module.onnx_state() and "in4" in module.onnx_state()


def test_unsupported_ops_are_named_with_their_nodes():
    nodes = [
        helper.make_node("Relu", ["x"], ["a"], name="ok"),
        helper.make_node("NonMaxSuppression", ["a", "a"], ["b"], name="nms_1"),
        helper.make_node("Custom", ["b"], ["y"], name="mine", domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(UnsupportedOpError) as err:
        build_module(model)
    msg = str(err.value)
    assert "NonMaxSuppression" in msg and "nms_1" in msg and "com.example::Custom" in msg and "mine" in msg
    assert err.value.exit_code == 4


def test_unsupported_feature_is_rejected_at_build():
    case = one("maxpool_indices", "MaxPool", [X4], dict(kernel_shape=[2, 2]), n_out=2,
               out_type=[TensorProto.FLOAT, TensorProto.INT64])
    with pytest.raises(UnsupportedOpError, match="Indices"):
        build_module(make_model(case))


def test_unsorted_graph_is_rejected():
    nodes = [helper.make_node("Relu", ["a"], ["y"], name="second"),
             helper.make_node("Relu", ["x"], ["a"], name="first")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="topologically"):
        build_module(model)
