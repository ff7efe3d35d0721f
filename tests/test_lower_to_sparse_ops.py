"""LowerToSparseOps and its cost model: every lowering is checked numerically in ONNX Runtime
(the lowered model with onnxprune's library against the dense masked model)."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.core.errors import UsageError
from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes import REGISTRY
from onnxprune.passes.lower_to_sparse_ops import cost_model as cm
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps
from tests.models import cnn, mlp, random_feeds, run


def _mask(model, density, seed=0, only=None):
    """Zero weights (rank >= 2 initializers) at random, keeping ``density`` of them."""
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        a = numpy_helper.to_array(t)
        if a.ndim >= 2 and (only is None or t.name in only):
            a = np.where(rng.random(a.shape) < density, a, 0).astype(a.dtype)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    return model


def _lower(model, **options):
    graph = graph_from_model(model)
    result = LowerToSparseOps(options)(graph)
    return graph_to_model(result.graph, model), result


def _assert_same(dense, lowered, batch, seed=1):
    feeds = random_feeds(dense, batch=batch, seed=seed)
    ref = run(dense, feeds)
    sess = runtime_ops.InferenceSession(lowered.SerializeToString())
    got = sess.run(None, feeds)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        scale = max(float(np.abs(r).max()), 1e-6)
        np.testing.assert_allclose(g, r, rtol=0, atol=1e-5 * scale)


def _ops(model):
    return [(n.op_type, n.domain) for n in model.graph.node]


def _gemm_model(trans_b, k=24, n=10, batch="N", dtype=np.float32, alpha=1.0, beta=1.0, bias=True):
    rng = np.random.default_rng(3)
    w = rng.normal(size=(n, k) if trans_b else (k, n)).astype(dtype)
    inits = [numpy_helper.from_array(w, "W")]
    inputs = ["x", "W"]
    if bias:
        inits.append(numpy_helper.from_array(rng.normal(size=(n,)).astype(dtype), "b"))
        inputs.append("b")
    et = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    g = helper.make_graph(
        [helper.make_node("Gemm", inputs, ["y"], name="gemm", transB=trans_b, alpha=alpha,
                          beta=beta)],
        "g", [helper.make_tensor_value_info("x", et, [batch, k])],
        [helper.make_tensor_value_info("y", et, [batch, n])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


# --------------------------------------------------------------------------- numerics


@pytest.mark.parametrize("batch", [1, 5])
@pytest.mark.parametrize("form", ["gemm-transB1", "gemm-transB0", "matmul"])
def test_mlp_lowered_matches_dense(form, batch):
    if form == "matmul":
        model = mlp(sizes=(40, 32, 24, 6), gemm=False)
    elif form == "gemm-transB1":
        model = mlp(sizes=(40, 32, 24, 6))
    else:
        model = _gemm_model(trans_b=0, alpha=0.5, beta=2.0)
    model = _mask(model, 0.2)
    lowered, result = _lower(model, force=["*"])
    assert result.modified and all(r["lowered"] for r in result.stats["layers"])
    ops = _ops(lowered)
    assert ("Gemm", "") not in ops and ("MatMul", "") not in ops
    assert ("Add", "") not in ops  # MatMul's bias Add is folded into CsrGemm
    # the hidden layers' Relu too, as CsrGemm's activation: op-set 3 (runtime_ops/README.md)
    relus = sum(n.op_type == "Relu" for n in model.graph.node)
    assert ("Relu", "") not in ops
    assert sum(any(a.name == "activation" and a.s == b"Relu" for a in n.attribute)
               for n in lowered.graph.node if n.op_type == "CsrGemm") == relus
    assert any(o.domain == runtime_ops.DOMAIN and o.version == (3 if relus else 1) for o in lowered.opset_import)
    assert [o for o in lowered.opset_import if o.domain == ""] == \
        [o for o in model.opset_import if o.domain == ""]
    inits = {t.name: t for t in lowered.graph.initializer}
    for node in lowered.graph.node:
        if node.op_type == "CsrGemm":
            v, c, p = (inits[n] for n in node.input[1:4])
            assert (v.data_type, c.data_type, p.data_type) == \
                (TensorProto.FLOAT, TensorProto.INT16, TensorProto.INT32)
    _assert_same(model, lowered, batch)


@pytest.mark.parametrize("batch", [1, 3])
def test_cnn_lowered_matches_dense(batch):
    model = _mask(cnn(hw=12), 0.3)
    lowered, result = _lower(model, force=["*"])
    assert sorted(n.op_type for n in lowered.graph.node if n.domain) == \
        ["CsrConv", "CsrConv", "CsrGemm"]
    _assert_same(model, lowered, batch)


@pytest.mark.parametrize("attrs", [
    dict(strides=[2, 2], pads=[1, 0, 2, 1]),
    dict(strides=[1, 2], dilations=[2, 1], pads=[1, 1, 1, 1], group=2),
    dict(strides=[2, 2], auto_pad="SAME_UPPER"),
    dict(auto_pad="SAME_LOWER", strides=[2, 1]),
    dict(auto_pad="VALID"),
])
def test_conv_attributes_lowered_exactly(attrs):
    rng = np.random.default_rng(5)
    group = attrs.get("group", 1)
    w = rng.normal(size=(6, 4 // group, 3, 3)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["y"], name="conv", **attrs)], "c",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 11, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(w, "W"),
         numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "B")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = _mask(model, 0.4)
    lowered, result = _lower(model, force=["*"])
    assert _ops(lowered) == [("CsrConv", runtime_ops.DOMAIN)]
    _assert_same(model, lowered, batch=2)


def test_fully_zero_layer_lowers_to_empty_csr():
    model = _mask(mlp(sizes=(32, 16, 8)), 0.0, only={"fc1.weight"})
    lowered, result = _lower(model, force=["fc1"])
    row = result.stats["layers"][0]
    assert row["name"] == "fc1" and row["lowered"] and row["nonzero"] == 0
    values = next(t for t in lowered.graph.initializer if t.name == "fc1.weight.csr_values")
    assert list(values.dims) == [0]
    _assert_same(model, lowered, batch=3)


def test_cost_model_keeps_a_dense_layer_and_lowers_a_sparse_one():
    model = _mask(mlp(sizes=(1024, 1024, 16)), 0.02, only={"fc1.weight"})
    lowered, result = _lower(model)
    rows = {r["name"]: r for r in result.stats["layers"]}
    assert rows["fc1"]["lowered"] and rows["fc1"]["estimated_speedup"] >= cm.MIN_SPEEDUP
    assert rows["fc1"]["csr_bytes"] < rows["fc1"]["dense_bytes"] / 5
    assert not rows["fc2"]["lowered"] and "100%" in rows["fc2"]["reason"]
    assert _ops(lowered)[0] == ("CsrGemm", runtime_ops.DOMAIN)
    assert ("Gemm", "") in _ops(lowered)
    for batch in (1, 7):
        _assert_same(model, lowered, batch)


def test_wide_rows_use_int32_indices():
    model = _mask(_gemm_model(trans_b=1, k=40000, n=3), 0.05)
    lowered, _ = _lower(model, force=["gemm"])
    idx = next(t for t in lowered.graph.initializer if t.name.endswith("csr_col_idx"))
    assert idx.data_type == TensorProto.INT32
    _assert_same(model, lowered, batch=2)


def test_shared_weight_lowered_once_for_both_nodes():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(8, 8)).astype(np.float32)
    w[rng.random(w.shape) < 0.7] = 0
    g = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["h"], name="a", transB=1),
         helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("Gemm", ["r", "W"], ["y"], name="b", transB=0)], "s",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [numpy_helper.from_array(w, "W")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    lowered, result = _lower(model, force=["*"])
    # a's Relu is folded into a's CsrGemm (its activation), b has none
    assert [n.op_type for n in lowered.graph.node] == ["CsrGemm", "CsrGemm"]
    assert [[a.s for a in n.attribute if a.name == "activation"] for n in lowered.graph.node] == [[b"Relu"], []]
    assert "W" not in {t.name for t in lowered.graph.initializer}
    _assert_same(model, lowered, batch=3)
    # one layer, one decision, two nodes: the report and the console say so
    from onnxprune.cli.lower import layer_lines, lowered_count
    rows = result.stats["layers"]
    assert [(r["name"], r["nodes"], r["lowered"]) for r in rows] == [("a", ["a", "b"], True)]
    assert layer_lines(rows)[0].startswith("sparse-ops: lowered a and 1 more node(s) sharing its weight (")
    assert lowered_count(rows) == "1 layer(s) lowered, 2 nodes"
    rows[0]["nodes"] = ["a"]
    assert lowered_count(rows) == "1 layer(s) lowered"
    assert "sharing" not in layer_lines(rows)[0]


def test_matmul_bias_from_a_constant_node_is_folded_in():
    model = _mask(mlp(sizes=(40, 32, 6), gemm=False), 0.3)
    add = next(n for n in model.graph.node if n.op_type == "Add")
    bias_name = next(i for i in add.input if any(t.name == i for t in model.graph.initializer))
    bias = next(t for t in model.graph.initializer if t.name == bias_name)
    model.graph.initializer.remove(bias)
    model.graph.node.insert(0, helper.make_node("Constant", [], [bias_name], value=bias))
    lowered, _ = _lower(model, force=["*"])
    assert ("Add", "") not in _ops(lowered)
    _assert_same(model, lowered, batch=3)


@pytest.mark.parametrize("attrs", [
    dict(pads=[1, 1]),
    dict(strides=[2], pads=[1, 0], dilations=[2]),
    dict(auto_pad="SAME_UPPER", strides=[2]),
    dict(auto_pad="VALID", group=2),
    dict(),
])
def test_1d_conv_lowers_to_the_1d_csr_conv(attrs):
    """Conv1d (audio front ends: whisper, wav2vec2) → op-set 4's CsrConv with kernel_shape [k],
    with its BatchNormalization and activation folded in, exactly as the dense model computes."""
    rng = np.random.default_rng(11)
    group = attrs.get("group", 1)
    w = rng.normal(size=(6, 4 // group, 3)).astype(np.float32)
    tensors = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(rng.normal(size=6).astype(np.float32), "B")]
    tensors += [numpy_helper.from_array(rng.uniform(0.5, 2, 6).astype(np.float32), n) for n in ("g", "v")]
    tensors += [numpy_helper.from_array(rng.normal(size=6).astype(np.float32), n) for n in ("b", "m")]
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", **attrs),
         helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
         helper.make_node("Relu", ["n"], ["y"], name="relu")], "c1d",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 23])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], tensors)
    model = _mask(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), 0.4,
                  only={"W"})
    lowered, result = _lower(model, force=["*"])
    assert _ops(lowered) == [("CsrConv", runtime_ops.DOMAIN)]
    node = lowered.graph.node[0]
    got = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    assert len(got["kernel_shape"]) == 1 and len(got["pads"]) == 2 and got["activation"] == b"Relu"
    assert got["columns"] == 4 // group * 3  # K, recorded for readers without shapes
    assert {(o.domain, o.version) for o in lowered.opset_import} >= {(runtime_ops.DOMAIN, 4)}
    _assert_same(model, lowered, batch=2)


def test_3d_conv_is_kept_with_a_reason():
    w = np.zeros((2, 3, 3, 3, 3), np.float32)
    w[0, 0, 1, 1, 1] = 1.0
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], name="c3")], "c3",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 5, 5, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W")])
    lowered, result = _lower(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
                             force=["*"])
    assert _ops(lowered) == [("Conv", "")]
    assert result.stats["layers"][0]["reason"] == "3-D convolution; CsrConv is 1-D or 2-D"


@pytest.mark.parametrize("kernel, strides, lowers", [((1, 1), [1, 1], True), ((3, 3), [1, 1], True),
                                                     ((3, 3), [2, 2], False)])
def test_same_padding_on_an_unsized_input_lowers_where_the_stride_is_1(kernel, strides, lowers):
    """SAME padding with stride 1 is (k - 1)·d in total whatever the input size (EfficientNet's
    1x1 expand and project convs behind a Pad shape inference cannot size); with a stride it
    depends on the size, which an input of symbolic height and width does not give."""
    rng = np.random.default_rng(12)
    w = rng.normal(size=(6, 4, *kernel)).astype(np.float32)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", auto_pad="SAME_UPPER", strides=strides)], "s",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [numpy_helper.from_array(w, "W")])
    model = _mask(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), 0.4)
    lowered, result = _lower(model, force=["*"])
    row = result.stats["layers"][0]
    if not lowers:
        assert not row["lowered"] and "unknown spatial size" in row["reason"]
        return
    assert _ops(lowered) == [("CsrConv", runtime_ops.DOMAIN)]
    feeds = {"x": rng.normal(size=(2, 4, 7, 10)).astype(np.float32)}
    got = runtime_ops.InferenceSession(lowered.SerializeToString()).run(None, feeds)[0]
    want = run(model, feeds)[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def _conv_bn_model(bias=True, constant_nodes=False, second_use=False, eps=1e-3):
    """Conv(6→5, 3×3) → BatchNormalization (inference), random statistics; the BN tensors
    (and the bias) as initializers or as Constant nodes; ``second_use`` also sends the conv's
    output to the graph."""
    rng = np.random.default_rng(7)
    w = np.where(rng.random((5, 6, 3, 3)) < 0.3, rng.normal(size=(5, 6, 3, 3)), 0).astype(np.float32)
    w[2] = 0.0  # a channel with no weight left: only the folded bias remains
    tensors = {"W": w, "gamma": rng.uniform(0.5, 2, 5), "beta": rng.normal(size=5),
               "mean": rng.normal(size=5), "var": rng.uniform(0.1, 3, 5)}
    tensors["gamma"][1] = 0.0  # a channel the BN zeroes
    if bias:
        tensors["B"] = rng.normal(size=5)
    arrays = [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in tensors.items()]
    nodes = [helper.make_node("Conv", ["x", "W"] + (["B"] if bias else []), ["c"], name="conv", pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["y"],
                              name="bn", epsilon=eps)]
    inits = arrays
    if constant_nodes:
        nodes = [helper.make_node("Constant", [], [a.name], value=a) for a in arrays if a.name != "W"] + nodes
        inits = [a for a in arrays if a.name == "W"]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)]
    if second_use:
        outputs.append(helper.make_tensor_value_info("c", TensorProto.FLOAT, None))
    g = helper.make_graph(nodes, "cbn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6, 9, 7])],
                          outputs, inits)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("constant_nodes", [False, True])
def test_batchnorm_after_a_lowered_conv_is_folded_in(bias, constant_nodes):
    model = _conv_bn_model(bias=bias, constant_nodes=constant_nodes)
    lowered, result = _lower(model, force=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["CsrConv"]  # BN and its constants gone
    assert "BatchNormalization bn folded in" in result.stats["layers"][0]["reason"]
    assert lowered.graph.node[0].output == ["y"]
    _assert_same(model, lowered, batch=2)
    # zeros stay zeros: the pruned weights, and the channel whose gamma is 0 as well
    values = next(t for t in lowered.graph.initializer if t.name.endswith("csr_values"))
    w = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "W")).copy()
    w[1] = 0.0
    assert numpy_helper.to_array(values).size == np.count_nonzero(w)


def test_batchnorm_is_kept_where_folding_would_change_the_graph():
    # the conv's output is also a graph output: folding would change it
    model = _conv_bn_model(second_use=True)
    lowered, result = _lower(model, force=["*"])
    assert sorted(n.op_type for n in lowered.graph.node) == ["BatchNormalization", "CsrConv"]
    assert "folded" not in result.stats["layers"][0]["reason"]
    _assert_same(model, lowered, batch=2)
    # not lowered (the never list): nothing is folded either
    model = _conv_bn_model()
    lowered, _ = _lower(model, never=["*"])
    assert [n.op_type for n in lowered.graph.node] == ["Conv", "BatchNormalization"]
    # a BN statistic computed at run time (not a constant) cannot be folded
    model = _conv_bn_model()
    model.graph.node.insert(0, helper.make_node("Identity", ["var_in"], ["var2"]))
    model.graph.input.append(helper.make_tensor_value_info("var_in", TensorProto.FLOAT, [5]))
    model.graph.node[-1].input[4] = "var2"
    lowered, result = _lower(model, force=["*"])
    assert "BatchNormalization" in [n.op_type for n in lowered.graph.node]
    assert "folded" not in result.stats["layers"][0]["reason"]
    # a variance + epsilon <= 0 gives no finite scale: the BN stays and computes what it did
    model = _conv_bn_model(eps=0.0)
    var = next(t for t in model.graph.initializer if t.name == "var")
    var.CopyFrom(numpy_helper.from_array(np.array([1, 1, 0, 1, 1], np.float32), "var"))
    lowered, result = _lower(model, force=["*"])
    assert sorted(n.op_type for n in lowered.graph.node) == ["BatchNormalization", "CsrConv"]
    assert "folded" not in result.stats["layers"][0]["reason"]


def test_weight_from_constant_node_is_removed_with_its_node():
    model = _mask(mlp(sizes=(12, 6)), 0.5)
    w = next(t for t in model.graph.initializer if t.name == "fc1.weight")
    model.graph.initializer.remove(w)
    model.graph.node.insert(0, helper.make_node("Constant", [], ["fc1.weight"], value=w))
    lowered, _ = _lower(model, force=["*"])
    assert "Constant" not in [n.op_type for n in lowered.graph.node]
    _assert_same(model, lowered, batch=2)


# --------------------------------------------------------------------------- what is skipped


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_non_float32_weights_are_kept_with_a_reason(dtype):
    model = _mask(_gemm_model(trans_b=1, dtype=dtype), 0.1)
    lowered, result = _lower(model, force=["*"])
    row = result.stats["layers"][0]
    assert not row["lowered"] and "float32 only" in row["reason"]
    assert not result.modified
    assert not any(o.domain == runtime_ops.DOMAIN for o in lowered.opset_import)


def test_left_and_batched_matmul_weights_are_kept():
    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("MatMul", ["W", "x"], ["h"], name="left"),
         helper.make_node("MatMul", ["h", "W3"], ["y"], name="batched")], "m",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(rng.normal(size=(5, 4)).astype(np.float32), "W"),
         numpy_helper.from_array(rng.normal(size=(2, 3, 3)).astype(np.float32), "W3")])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    _, result = _lower(model, force=["*"])
    reasons = {r["name"]: r["reason"] for r in result.stats["layers"]}
    assert "left" in reasons["left"] and "batched" in reasons["batched"]
    assert not result.modified


def test_force_never_and_max_density_options():
    model = _mask(mlp(sizes=(64, 64, 64, 8)), 0.3, only={"fc1.weight", "fc2.weight"})
    _, res = _lower(model, **{"max-density": 0.5, "never": ["fc2"]})
    lowered = {r["name"]: r for r in res.stats["layers"]}
    assert lowered["fc1"]["lowered"] and "max-density" in lowered["fc1"]["reason"]
    assert not lowered["fc2"]["lowered"] and lowered["fc2"]["reason"] == "in the never list"
    assert not lowered["fc3"]["lowered"]  # 100% > 50%
    _, res = _lower(model, **{"max-density": 0.1})
    assert not any(r["lowered"] for r in res.stats["layers"])
    _, res = _lower(model, force=["fc3"], never=["fc1"])
    got = {r["name"]: (r["lowered"], r["reason"]) for r in res.stats["layers"]}
    assert got["fc3"] == (True, "forced") and got["fc1"] == (False, "in the never list")


@pytest.mark.parametrize("options", [{"batch": 0}, {"threads": "2"}, {"max-density": 1.5},
                                     {"force": "fc*", "unknown": 1}, {"never": [""]}])
def test_bad_options_are_usage_errors(options):
    with pytest.raises(UsageError):
        REGISTRY["lower-to-sparse-ops"](options)


# --------------------------------------------------------------------------- the cost model


SHAPES = [("fc", 300, 784, None), ("fc", 4096, 9216, None), ("fc", 1000, 4096, None),
          ("conv", 64, 576, (56, 56)), ("conv", 50, 500, (8, 8))]


@pytest.mark.parametrize("kind,n,k,hw", SHAPES)
@pytest.mark.parametrize("batch,threads", [(1, 1), (8, 2), (64, 1), (3, 4)])
def test_speedup_is_monotone_in_density_and_never_lowers_dense(kind, n, k, hw, batch, threads):
    speedups = [cm.estimate(kind, n, k, int(d * n * k), batch=batch, threads=threads,
                            out_hw=hw).speedup for d in np.linspace(0, 1, 41)]
    assert all(a >= b for a, b in zip(speedups, speedups[1:]))
    assert speedups[-1] < cm.MIN_SPEEDUP
    # index width matters only through bytes: int32 indices never look faster
    for d in (0.05, 0.3):
        nnz = int(d * n * k)
        assert cm.estimate(kind, n, k, nnz, batch=batch, index_bytes=4, out_hw=hw).speedup <= \
            cm.estimate(kind, n, k, nnz, batch=batch, index_bytes=2, out_hw=hw).speedup


def test_model_agrees_with_the_measurements_it_was_fitted_to():
    for kind, n, k, d, batch, hw, dense_ms, csr_ms in cm.CALIBRATION:
        e = cm.estimate(kind, n, k, int(round(d * n * k)), batch=batch, out_hw=hw)
        predicted = (e.dense_s + cm.RUN_OVERHEAD_S) / (e.sparse_s + cm.RUN_OVERHEAD_S)
        measured = dense_ms / csr_ms
        case = (kind, n, k, d, batch)
        if measured >= 1.5:
            assert predicted >= cm.MIN_SPEEDUP, case
        if measured <= 0.85:
            assert predicted < cm.MIN_SPEEDUP, case
        assert 0.4 < predicted / measured < 2.5, case


def test_break_even_density_is_the_decision_boundary():
    for kind, n, k, hw in SHAPES:
        d = cm.break_even_density(kind, n, k, out_hw=hw, batch=8)
        assert 0 < d < 1
        nnz = int(round(d * n * k))
        assert cm.estimate(kind, n, k, nnz, batch=8, out_hw=hw).speedup >= cm.MIN_SPEEDUP
        assert cm.estimate(kind, n, k, nnz + 1, batch=8, out_hw=hw).speedup < cm.MIN_SPEEDUP


def test_more_batch_moves_small_layers_towards_lowering():
    # LeNet-300-100 fc1 at 8%: a wash at batch 1 on 1 thread, a clear win at batch 64
    nnz = int(0.08 * 300 * 784)
    assert cm.estimate("fc", 300, 784, nnz, batch=64).speedup > \
        cm.estimate("fc", 300, 784, nnz, batch=1).speedup


@pytest.mark.parametrize("bad", [dict(kind="lstm"), dict(nnz=-1), dict(batch=0),
                                 dict(kind="conv", out_hw=None)])
def test_estimate_rejects_bad_input(bad):
    args = dict(kind="fc", rows=4, cols=4, nnz=3, batch=1, out_hw=None)
    args.update(bad)
    with pytest.raises(ValueError):
        cm.estimate(args.pop("kind"), args.pop("rows"), args.pop("cols"), args.pop("nnz"), **args)


def test_objective_size_lowers_wherever_csr_is_smaller():
    """objective=size: lowered iff CSR bytes < dense bytes, whatever the cost model says."""
    m = mlp(sizes=(64, 48, 32, 10), seed=3)
    rng = np.random.default_rng(0)
    for t, keep in zip([t for t in m.graph.initializer if t.name.endswith("weight")],
                       (0.3, 0.9, 0.2)):
        a = numpy_helper.to_array(t)
        a = np.where(rng.random(a.shape) < keep, a, 0).astype(np.float32)
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    g = graph_from_model(m)
    r = LowerToSparseOps({"objective": "size"})(g)
    rows = {row["name"]: row for row in r.stats["layers"]}
    for row in rows.values():
        assert row["lowered"] == (row["csr_bytes"] < row["dense_bytes"]), row
    assert rows["fc1"]["lowered"] and not rows["fc2"]["lowered"] and rows["fc3"]["lowered"]
    lowered = graph_to_model(r.graph, m)
    feeds = random_feeds(m, batch=5)
    got = runtime_ops.InferenceSession(lowered.SerializeToString()).run(None, feeds)[0]
    np.testing.assert_allclose(got, run(m, feeds)[0], rtol=1e-5, atol=1e-5)
