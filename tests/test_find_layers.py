"""Finding prunable weights: the op table, weight sources, sharing, dtypes, skips."""

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.core.graph import find_layers, graph_from_model, graph_to_model
from onnxprune.passes import ThresholdByStd
from tests.models import mlp, random_feeds, run


def _model(nodes, inputs, outputs, inits, opset=17):
    g = helper.make_graph(nodes, "g", inputs, outputs, inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    m.ir_version = 8
    return m


def _vi(name, shape, t=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, t, shape)


def _w(name, shape, seed=0, dtype=np.float32):
    return numpy_helper.from_array(
        np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def _prune_and_compare(model, q=1.0):
    """Prune with ThresholdByStd and check ORT outputs equal the hand-masked model."""
    graph = graph_from_model(model)
    result = ThresholdByStd({"quality": q})(graph)
    pruned = graph_to_model(result.graph, model)
    onnx.checker.check_model(pruned)
    # Reference: mask the same weights with numpy directly on the proto.
    ref = onnx.ModelProto()
    ref.CopyFrom(model)
    rows = {r["weight"]: r for r in result.stats["layers"] if r["threshold"] is not None}
    for t in list(ref.graph.initializer):
        if t.name in rows:
            a = numpy_helper.to_array(t)
            a = np.where(np.abs(a.astype(np.float64)) >= rows[t.name]["threshold"], a, 0).astype(a.dtype)
            t.CopyFrom(numpy_helper.from_array(a, t.name))
    feeds = random_feeds(model)
    np.testing.assert_allclose(run(pruned, feeds)[0], run(ref, feeds)[0], rtol=0, atol=0)
    return result, pruned


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_weight_axes(trans_b):
    shape = (6, 4) if trans_b else (4, 6)
    m = _model([helper.make_node("Gemm", ["x", "W"], ["y"], name="g", transB=trans_b)],
               [_vi("x", ["N", 4])], [_vi("y", ["N", 6])], [_w("W", shape)])
    layers, _ = find_layers(graph_from_model(m))
    assert len(layers) == 1
    assert layers[0].out_axis == (0 if trans_b else 1)
    assert layers[0].in_axis == (1 if trans_b else 0)
    assert layers[0].kind == "fc"
    r, _ = _prune_and_compare(m)
    assert r.stats["layers"][0]["nonzero_after"] < 24


def test_gemm_constant_a_with_trans_a():
    # Y = A^T · X with A constant (K=5, M=3): output axis of A is 1.
    m = _model([helper.make_node("Gemm", ["A", "x"], ["y"], name="g", transA=1)],
               [_vi("x", [5, 2])], [_vi("y", [3, 2])], [_w("A", (5, 3))])
    (layer,), _ = find_layers(graph_from_model(m))
    assert (layer.out_axis, layer.in_axis) == (1, 0)
    _prune_and_compare(m)


def test_matmul_weight_on_either_side():
    m = _model([helper.make_node("MatMul", ["x", "W"], ["h"], name="right"),
                helper.make_node("MatMul", ["L", "h"], ["y"], name="left")],
               [_vi("x", [4, 6])], [_vi("y", [3, 5])], [_w("W", (6, 5)), _w("L", (3, 4), 1)])
    layers, _ = find_layers(graph_from_model(m))
    by = {layer.name: layer for layer in layers}
    assert (by["right"].out_axis, by["right"].in_axis) == (1, 0)
    assert (by["left"].out_axis, by["left"].in_axis) == (0, 1)
    _prune_and_compare(m)


def test_conv_grouped_depthwise_and_transpose():
    nodes = [
        helper.make_node("Conv", ["x", "W1"], ["a"], name="grouped", group=2, pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "W2"], ["b"], name="depthwise", group=4, pads=[1, 1, 1, 1]),
        helper.make_node("ConvTranspose", ["b", "W3"], ["y"], name="deconv", strides=[2, 2]),
    ]
    m = _model(nodes, [_vi("x", ["N", 4, 8, 8])], [_vi("y", ["N", 3, 16, 16])],
               [_w("W1", (4, 2, 3, 3)), _w("W2", (4, 1, 3, 3), 1), _w("W3", (4, 3, 2, 2), 2)])
    layers, _ = find_layers(graph_from_model(m))
    by = {layer.name: layer for layer in layers}
    assert by["deconv"].out_axis == 1 and by["deconv"].in_axis == 0
    assert by["grouped"].kind == "conv"
    _prune_and_compare(m, q=0.7)


def test_weight_in_constant_node_and_identity():
    w = np.random.default_rng(3).standard_normal((4, 6)).astype(np.float32)
    nodes = [
        helper.make_node("Constant", [], ["Wc"], value=numpy_helper.from_array(w), name="const"),
        helper.make_node("Identity", ["Wc"], ["Wi"], name="ident"),
        helper.make_node("MatMul", ["x", "Wi"], ["y"], name="mm"),
    ]
    m = _model(nodes, [_vi("x", ["N", 4])], [_vi("y", ["N", 6])], [])
    (layer,), _ = find_layers(graph_from_model(m))
    assert layer.source == "constant-node"
    g = graph_from_model(m)
    r = ThresholdByStd({"quality": 1.0})(g)
    pruned = graph_to_model(r.graph, m)
    assert [n.op_type for n in pruned.graph.node] == ["Constant", "Identity", "MatMul"]
    val = numpy_helper.to_array(pruned.graph.node[0].attribute[0].t)
    assert np.count_nonzero(val) < w.size
    feeds = random_feeds(m)
    np.testing.assert_allclose(run(pruned, feeds)[0], feeds["x"] @ val, rtol=1e-5, atol=1e-5)


def test_shared_weight_is_pruned_once():
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="a"),
             helper.make_node("MatMul", ["h", "W"], ["y"], name="b")]
    m = _model(nodes, [_vi("x", ["N", 5])], [_vi("y", ["N", 5])], [_w("W", (5, 5))])
    layers, _ = find_layers(graph_from_model(m))
    assert len(layers) == 1 and [n.name for n in layers[0].nodes] == ["a", "b"]
    r, pruned = _prune_and_compare(m)
    assert r.stats["layers"][0]["shared_by"] == ["a", "b"]
    assert len(pruned.graph.initializer) == 1


def test_weight_that_is_graph_input_left_alone():
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
               [_vi("x", ["N", 4]), _vi("W", [4, 3])], [_vi("y", ["N", 3])], [_w("W", (4, 3))])
    g = graph_from_model(m)
    layers, notes = find_layers(g)
    assert layers == []
    assert "graph input" in notes[0].reason
    r = ThresholdByStd({"quality": 2.0})(g)
    out = graph_to_model(r.graph, m)
    assert [i.name for i in out.graph.input] == ["x", "W"]
    assert numpy_helper.to_array(out.graph.initializer[0]).tolist() == \
        numpy_helper.to_array(m.graph.initializer[0]).tolist()


@pytest.mark.parametrize("dtype,onnx_type", [(np.float16, TensorProto.FLOAT16),
                                             (np.float64, TensorProto.DOUBLE),
                                             (ml_dtypes.bfloat16, TensorProto.BFLOAT16)])
def test_float_dtypes(dtype, onnx_type):
    w = np.random.default_rng(0).standard_normal((8, 6)).astype(dtype)
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
               [_vi("x", ["N", 8], onnx_type)], [_vi("y", ["N", 6], onnx_type)],
               [numpy_helper.from_array(w, "W")])
    g = graph_from_model(m)
    r = ThresholdByStd({"quality": 1.0})(g)
    out = graph_to_model(r.graph, m)
    new = numpy_helper.to_array(out.graph.initializer[0])
    assert new.dtype == w.dtype
    assert out.graph.initializer[0].data_type == onnx_type
    t = r.stats["layers"][0]["threshold"]
    expected = np.where(np.abs(w.astype(np.float64)) >= t, w, 0)
    assert np.array_equal(new.astype(np.float64), expected.astype(np.float64))


def test_quantized_ops_skipped_with_note():
    nodes = [helper.make_node("MatMulInteger", ["x", "W"], ["y"], name="qmm")]
    m = _model(nodes, [_vi("x", ["N", 4], TensorProto.UINT8)], [_vi("y", ["N", 3], TensorProto.INT32)],
               [numpy_helper.from_array(np.ones((4, 3), np.uint8), "W")])
    layers, notes = find_layers(graph_from_model(m))
    assert layers == [] and notes[0].op == "MatMulInteger" and "quantized" in notes[0].reason


def test_only_quantized_ops_that_hold_weights_are_noted():
    """A quantized LSTM's weights and a QDQ model's stored weights get a note; the ops that
    quantize activations hold no weight, and a note per one of them buried the real ones."""
    w8 = numpy_helper.from_array(np.ones((1, 4, 8), np.int8), "W8")
    nodes = [helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
             helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"], name="dq_act"),
             helper.make_node("DequantizeLinear", ["Wq", "ws"], ["wd"], name="dq_weight"),
             helper.make_node("MatMul", ["xd", "wd"], ["y"], name="mm"),
             helper.make_node("DynamicQuantizeLSTM", ["x3", "W8", "W8"], ["h"], name="qlstm",
                              domain="com.microsoft", hidden_size=2),
             # two activations (attention's Q·Kᵀ): no weight to note
             helper.make_node("QLinearMatMul", ["xq", "xs", "xz", "xq", "xs", "xz", "xs", "xz"], ["qq"],
                              name="q_kt")]
    m = _model(nodes, [_vi("x", ["N", 4], TensorProto.FLOAT), _vi("x3", [1, "N", 4], TensorProto.FLOAT)],
               [_vi("y", ["N", 3], TensorProto.FLOAT), _vi("h", None, TensorProto.FLOAT)],
               [numpy_helper.from_array(np.ones((4, 3), np.int8), "Wq"),
                numpy_helper.from_array(np.float32(0.1), "ws"), w8])
    m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    layers, notes = find_layers(graph_from_model(m))
    assert layers == []
    assert [(n.node, n.reason) for n in notes] == [("dq_weight", "quantized weights: not pruned"),
                                                   ("qlstm", "quantized weights: not pruned")]


def test_a_weight_computed_from_constants_is_noted_not_skipped_silently():
    """torch's dynamo exporter writes weight normalisation as W = g · v / ||v||, computed on
    every run: no stored tensor to prune, so the layer is left alone, with a note saying why
    (it was silently missing from inspect). A product of two activations is no layer at all."""
    rng = np.random.default_rng(1)
    nodes = [helper.make_node("ReduceL2", ["v"], ["n"], keepdims=1),
             helper.make_node("Div", ["v", "n"], ["u"]),
             helper.make_node("Mul", ["u", "g"], ["w"]),
             helper.make_node("Conv", ["x", "w"], ["c"], name="wn_conv", pads=[1, 1]),
             helper.make_node("Relu", ["z"], ["zr"]),
             helper.make_node("MatMul", ["c", "zr"], ["y"], name="act_mm")]
    m = _model(nodes, [_vi("x", [1, 3, 8], TensorProto.FLOAT), _vi("z", [8, 2], TensorProto.FLOAT)],
               [_vi("y", [1, 4, 2], TensorProto.FLOAT)],
               [numpy_helper.from_array(rng.normal(size=(4, 3, 3)).astype(np.float32), "v"),
                numpy_helper.from_array(np.ones((4, 1, 1), np.float32), "g")])
    layers, notes = find_layers(graph_from_model(m))
    assert layers == []
    assert [(n.node, n.op) for n in notes] == [("wn_conv", "Conv")]
    assert "computed from constants" in notes[0].reason


def test_a_weight_sliced_at_run_time_is_noted_not_skipped_silently():
    """torch's cross-attention takes its key/value rows of in_proj_weight by a Slice whose
    bounds come from the query's shape, then Transpose: a sixth of a TransformerDecoder's
    weights were missing from inspect with no word. The layer is noted, naming the weight."""
    rng = np.random.default_rng(2)
    nodes = [helper.make_node("Shape", ["q"], ["qs"], start=2),
             helper.make_node("Slice", ["w_in", "qs", "end"], ["w_kv"]),
             helper.make_node("Transpose", ["w_kv"], ["w_t"]),
             helper.make_node("MatMul", ["mem", "w_t"], ["kv"], name="kv_proj"),
             helper.make_node("Add", ["kv", "q"], ["y"])]
    m = _model(nodes, [_vi("q", [1, 2, 4], TensorProto.FLOAT), _vi("mem", [1, 2, 4], TensorProto.FLOAT)],
               [_vi("y", [1, 2, 4], TensorProto.FLOAT)],
               [numpy_helper.from_array(rng.normal(size=(12, 4)).astype(np.float32), "w_in"),
                numpy_helper.from_array(np.array([8], np.int64), "end")])
    layers, notes = find_layers(graph_from_model(m))
    assert layers == []
    assert [(n.node, n.op) for n in notes] == [("kv_proj", "MatMul")]
    assert "taken from 'w_in' through Slice → Transpose, the part taken chosen at run time" in notes[0].reason


def test_a_weight_passed_into_a_loop_body_is_named_as_such():
    """Paddle's exporter passes a head's weights into its Loop body as loop-carried values:
    the note called them graph inputs a user may override. It says what they are."""
    rng = np.random.default_rng(4)
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]), helper.make_node("Identity", ["w_in"], ["w_out"]),
         helper.make_node("MatMul", ["h_in", "w_in"], ["h_out"], name="step_mm")],
        "body", [_vi("i", [], TensorProto.INT64), _vi("c_in", [], TensorProto.BOOL),
                 _vi("w_in", [4, 4], TensorProto.FLOAT), _vi("h_in", [1, 4], TensorProto.FLOAT)],
        [_vi("c_out", [], TensorProto.BOOL), _vi("w_out", [4, 4], TensorProto.FLOAT),
         _vi("h_out", [1, 4], TensorProto.FLOAT)])
    nodes = [helper.make_node("Loop", ["trip", "go", "w", "x"], ["w_final", "y"], name="loop", body=body)]
    m = _model(nodes, [_vi("x", [1, 4], TensorProto.FLOAT)], [_vi("y", [1, 4], TensorProto.FLOAT)],
               [numpy_helper.from_array(rng.normal(size=(4, 4)).astype(np.float32), "w"),
                numpy_helper.from_array(np.array(3, np.int64), "trip"),
                numpy_helper.from_array(np.array(True), "go")])
    layers, notes = find_layers(graph_from_model(m))
    assert layers == []
    assert [n.node for n in notes] == ["step_mm"]
    assert "'w_in' is an input of the body subgraph" in notes[0].reason and "graph input" not in notes[0].reason


def test_integer_weight_reported_not_pruned():
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
               [_vi("x", ["N", 4], TensorProto.INT32)], [_vi("y", ["N", 3], TensorProto.INT32)],
               [numpy_helper.from_array(np.ones((4, 3), np.int32), "W")])
    (layer,), _ = find_layers(graph_from_model(m))
    assert "not floating point" in layer.skip_reason


def test_skip_min_params_and_overrides():
    m = mlp(sizes=(16, 12, 8, 4))
    g = graph_from_model(m)
    r = ThresholdByStd({"quality": 1.0, "skip": ["fc1"], "min-params": 50,
                        "layers": {"fc2*": 0.2, "fc*2": 1.5}})(g)
    rows = {row["name"]: row for row in r.stats["layers"]}
    assert rows["fc1"]["skipped"] == "in the skip list"
    assert "min-params" in rows["fc3"]["skipped"]
    assert rows["fc2"]["quality"] == 1.5  # the last matching glob wins


def test_model_fields_survive_roundtrip():
    m = mlp()
    m.producer_name = "someone"
    m.doc_string = "doc"
    e = m.metadata_props.add()
    e.key, e.value = "k", "v"
    out = graph_to_model(graph_from_model(m), m)
    assert (out.ir_version, out.producer_name, out.doc_string) == (8, "someone", "doc")
    assert [(p.key, p.value) for p in out.metadata_props] == [("k", "v")]
    assert list(out.opset_import) == list(m.opset_import)


def _tied_lm(head="Gemm"):
    """An embedding table read by a Gather (the lookup) and by the output head (a Gemm with
    transB = 1, or a MatMul through a Transpose, as GPT-2's exporter writes it)."""
    rng = np.random.default_rng(5)
    vocab, dim = 50, 16
    nodes = [helper.make_node("Gather", ["wte", "ids"], ["h"], name="lookup"),
             helper.make_node("MatMul", ["h", "w1"], ["h1"], name="fc")]
    if head == "Gemm":
        nodes.append(helper.make_node("Gemm", ["h1", "wte"], ["logits"], name="lm_head", transB=1))
    else:
        nodes += [helper.make_node("Transpose", ["wte"], ["wte_t"], perm=[1, 0]),
                  helper.make_node("MatMul", ["h1", "wte_t"], ["logits"], name="lm_head")]
    return _model(nodes, [_vi("ids", [8], TensorProto.INT64)], [_vi("logits", [8, vocab])],
                  [numpy_helper.from_array(rng.normal(size=(vocab, dim)).astype(np.float32), "wte"),
                   numpy_helper.from_array(rng.normal(size=(dim, dim)).astype(np.float32), "w1")])


def test_a_weight_an_embedding_lookup_also_reads_is_skipped_with_its_reason():
    """A tied language-model head: the table the Gather looks tokens up in is the head's
    weight. It was pruned as the head's layer, zeroing most of every token's embedding with
    no word, and lowering it kept the dense table for the lookup beside the CSR (a larger
    file). The layer is skipped, naming the other reader; the untied layer is still pruned."""
    m = _tied_lm()
    layers, _ = find_layers(graph_from_model(m))
    by_name = {layer.name: layer for layer in layers}
    assert by_name["lm_head"].skip_reason == "weight also read by Gather 'lookup' (a tied embedding)"
    assert by_name["fc"].skip_reason is None
    result = ThresholdByStd({"quality": 1.0})(graph_from_model(m))
    pruned = graph_to_model(result.graph, m)
    rows = {r["name"]: r for r in result.stats["layers"]}
    assert rows["lm_head"]["threshold"] is None and rows["fc"]["threshold"] is not None
    kept = {t.name: numpy_helper.to_array(t) for t in pruned.graph.initializer}
    original = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    np.testing.assert_array_equal(kept["wte"], original["wte"])
    assert np.count_nonzero(kept["w1"]) < kept["w1"].size


def test_a_tied_head_read_through_a_transpose_is_noted_by_the_weight_it_takes():
    """GPT-2's exporter writes the tied head as MatMul(h, Transpose(wte)): the note called it
    "e.g. weight normalisation"; it names the stored weight and the Transpose."""
    layers, notes = find_layers(graph_from_model(_tied_lm("MatMul")))
    assert [layer.name for layer in layers] == ["fc"]
    assert [(n.node, n.reason) for n in notes] == [
        ("lm_head", "weight taken from 'wte' through Transpose, computed at run time: not pruned; "
                    "fold it into a constant first")]


@pytest.mark.parametrize("between", ["", "Identity"])
def test_a_reader_that_feeds_the_layer_its_data_is_still_another_reader(between):
    """The lookup straight into the head, Gemm(Gather(W, ids), W): the Gather made the Gemm's
    data input and was taken for a view of its weight, so the tied head was pruned."""
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Gather", ["W", "ids"], ["e"], name="emb")]
    if between:
        nodes.append(helper.make_node("Identity", ["e"], ["e2"]))
    nodes.append(helper.make_node("Gemm", ["e2" if between else "e", "W"], ["y"], name="head", transB=1))
    m = _model(nodes, [_vi("ids", [4], TensorProto.INT64)], [_vi("y", [4, 10])],
               [numpy_helper.from_array(rng.normal(size=(10, 6)).astype(np.float32), "W")])
    layers, _ = find_layers(graph_from_model(m))
    assert layers[0].skip_reason == "weight also read by Gather 'emb' (a tied embedding)"


def test_other_readers_are_named_and_dead_ones_ignored():
    """A Mul by the weight on the way in is another reader (no tied-embedding wording); a node
    whose output nothing reads changes nothing."""
    mul = _model([helper.make_node("Mul", ["x", "W"], ["xs"], name="scale"),
                  helper.make_node("Gemm", ["xs", "W"], ["y"], name="fc")],
                 [_vi("x", [4, 4])], [_vi("y", [4, 4])], [_w("W", (4, 4))])
    assert find_layers(graph_from_model(mul))[0][0].skip_reason == "weight also read by Mul 'scale'"
    dead = _model([helper.make_node("Transpose", ["W"], ["unused"], name="dead"),
                   helper.make_node("Gemm", ["x", "W"], ["y"], name="fc")],
                  [_vi("x", [4, 4])], [_vi("y", [4, 4])], [_w("W", (4, 4))])
    assert find_layers(graph_from_model(dead))[0][0].skip_reason is None


def test_a_shape_read_of_a_weight_does_not_keep_it_from_pruning():
    """An exporter's Shape(W) (for a reshape) reads only what pruning keeps."""
    m = _model([helper.make_node("Shape", ["W"], ["ws"]),
                helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
               [_vi("x", [2, 4])], [_vi("y", [2, 3]), _vi("ws", [2], TensorProto.INT64)], [_w("W", (4, 3))])
    layers, _ = find_layers(graph_from_model(m))
    assert layers[0].skip_reason is None


def test_a_weight_that_is_also_a_graph_output_is_skipped():
    m = _model([helper.make_node("Identity", ["W"], ["w_out"]),
                helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
               [_vi("x", [2, 4])], [_vi("y", [2, 3]), _vi("w_out", [4, 3])], [_w("W", (4, 3))])
    layers, _ = find_layers(graph_from_model(m))
    assert layers[0].skip_reason == "weight is also a graph output"


def test_views_of_a_weight_on_the_way_to_its_layer_are_not_other_readers():
    """Identity in front of a Conv, and an LSTM's W reordered by Slices, a Concat of them and an
    Unsqueeze (torch's export): those nodes read the stored weight only to hand it to the layer,
    which stays prunable."""
    rng = np.random.default_rng(6)
    hidden, inp = 3, 2
    w = rng.normal(size=(4 * hidden, inp)).astype(np.float32)
    bounds = [(0, hidden), (2 * hidden, 3 * hidden), (hidden, 2 * hidden), (3 * hidden, 4 * hidden)]
    inits = [numpy_helper.from_array(w, "w"), _w("k", (2, 2, 3, 3), seed=1),
             numpy_helper.from_array(np.array([0], np.int64), "axis0")]
    nodes = [helper.make_node("Identity", ["k"], ["k_id"]),
             helper.make_node("Conv", ["img", "k_id"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    for i, (a, b) in enumerate(bounds):
        inits += [numpy_helper.from_array(np.array([a], np.int64), f"s{i}"),
                  numpy_helper.from_array(np.array([b], np.int64), f"e{i}")]
        nodes.append(helper.make_node("Slice", ["w", f"s{i}", f"e{i}"], [f"w{i}"]))
    nodes += [helper.make_node("Concat", [f"w{i}" for i in range(4)], ["w_cat"], axis=0),
              helper.make_node("Unsqueeze", ["w_cat", "axis0"], ["W"]),
              helper.make_node("LSTM", ["seq", "W", "R"], ["ys"], name="lstm", hidden_size=hidden)]
    inits.append(_w("R", (1, 4 * hidden, hidden), seed=2))
    m = _model(nodes, [_vi("img", [1, 2, 5, 5]), _vi("seq", [4, 1, inp])],
               [_vi("c", [1, 2, 5, 5]), _vi("ys", [4, 1, 1, hidden])], inits)
    layers, _ = find_layers(graph_from_model(m))
    assert {layer.name: layer.skip_reason for layer in layers} == {"conv": None, "lstm:W": None, "lstm:R": None}
