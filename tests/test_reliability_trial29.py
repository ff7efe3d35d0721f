"""What two user trials on real models found (RELIABILITY round 29), each test failing before
its fix: inputs that share a symbolic batch, checks that cannot tell models apart, bench's
tolerance on tiny outputs, detectors whose near-tied detections swap places, the counts and
notes of prune / lower / bench on lowered files, and the storage of `--emit sparse-ops`.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.lower import lowered_count, whole_model_line
from onnxprune.runtime.bench import compare_outputs, error_text
from onnxprune.runtime.check import compare, random_inputs
from tests.conftest import run_cli
from tests.models import mlp


def _save(model, path) -> str:
    model.ir_version = 8
    onnx.save(model, str(path))
    return str(path)


def _two_inputs(tmp_path) -> str:
    """y = ReduceSum(x · W, axis 1) + n, x [batch, L, 8], n [batch, 4]: a waveform and its
    lengths, both led by one batch symbol."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32), "W")
    ax = numpy_helper.from_array(np.array([1], np.int64), "ax")
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["m"]),
         helper.make_node("ReduceSum", ["m", "ax"], ["s"], keepdims=0),
         helper.make_node("Add", ["s", "n"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "L", 8]),
         helper.make_tensor_value_info("n", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4])], [w, ax])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "two.onnx")


def test_input_shape_binds_the_symbols_other_inputs_share(tmp_path, capsys):
    path = _two_inputs(tmp_path)
    feeds = random_inputs(onnx.load(path), shapes={"x": (1, 5, 8)}, strict=True)
    assert feeds["n"].shape == (1, 4)  # was (2, 4): --batch's default beside the given batch 1
    report = tmp_path / "c.json"
    code, _, err = run_cli(["check", path, path, "--input-shape", "x=3x5x8", "--json", str(report)], capsys)
    assert code == 0, err
    assert json.loads(report.read_text())["inputs"] == "random (seed 0, batch 3)"


def test_a_placeholder_symbol_of_several_sizes_binds_nothing(tmp_path):
    """Paddle writes "?" for every unknown dim: [?, 3, ?, ?] given as 1x3x8x16 is no clash."""
    w = numpy_helper.from_array(np.ones((2, 3, 3, 3), np.float32), "W")
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1, 1, 1, 1])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["?", 3, "?", "?"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
    assert random_inputs(model, shapes={"x": (1, 3, 8, 16)}, strict=True)["x"].shape == (1, 3, 8, 16)


def test_every_input_missing_a_shape_is_named_at_once(tmp_path, capsys):
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", "H", "W"]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", "H", "W2"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    path = _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "ab.onnx")
    code, _, err = run_cli(["check", path, path], capsys)
    assert code == 2 and "Traceback" not in err
    assert "--input-shape a=2xHxW --input-shape b=2xHxW2" in err  # was: 'a' alone, then 'b' next run
    # one given: the other's hint carries the sizes it binds (N = 1, H = 4)
    code, _, err = run_cli(["check", path, path, "--input-shape", "a=1x4x5"], capsys)
    assert code == 2 and "--input-shape b=1x4xW2" in err and "'a'" not in err


def _sigmoid_model(path, shift: float) -> str:
    """Sigmoid(x · W - shift): on random inputs ~e^-shift everywhere, as a text detector's map
    is on noise."""
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32) * 0.1, "W")
    s = numpy_helper.from_array(np.array(shift, np.float32), "s")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "W"], ["m"]), helper.make_node("Sub", ["m", "s"], ["z"]),
                           helper.make_node("Sigmoid", ["z"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])], [w, s])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)


def test_a_check_on_outputs_within_atol_of_zero_cannot_pass(tmp_path, capsys):
    ref = _sigmoid_model(tmp_path / "ref.onnx", 12.0)   # ~6e-6
    cand = _sigmoid_model(tmp_path / "cand.onnx", 40.0)  # ~4e-18: "says nothing", and matched
    code, _, err = run_cli(["check", ref, cand], capsys)
    assert code == 3, err  # was 0, PASS
    assert "cannot tell the models apart" in err and "within 0.0001 of zero" in err
    assert "--data" in err and "smaller --atol" in err
    # an atol below the outputs' scale tells them apart
    code, _, err = run_cli(["check", ref, cand, "--atol", "1e-9", "--rtol", "0"], capsys)
    assert code == 3 and "outputs differ beyond tolerance" in err
    # a loose --atol asked for on purpose does not make outputs of 0.4 "zero"
    loose = _sigmoid_model(tmp_path / "loose.onnx", 0.0)
    assert run_cli(["check", loose, loose, "--atol", "10"], capsys)[0] == 0


def test_bench_tolerance_has_a_float32_floor():
    ref = [np.full((1, 4, 8), 1.5e-5, np.float32)]
    ref[0][0, 0, 0] = 1.46e-5
    assert compare_outputs(ref, [ref[0] + np.float32(2.1e-7)])["passed"]  # 1e-4 of 1.5e-5 had failed it
    assert not compare_outputs(ref, [ref[0] + np.float32(5e-6)])["passed"]
    assert compare_outputs([np.full(4, 30.0, np.float32)], [np.full(4, 30.0029, np.float32)])["atol"] == \
        pytest.approx(3e-3)  # a large output keeps its relative tolerance


def test_rows_reordered_at_near_ties_are_named():
    scores = np.array([0.9, 0.5893682, 0.5893671, 0.1], np.float32)
    boxes = np.arange(16, dtype=np.float32).reshape(4, 4)
    labels = np.array([3, 1, 2, 0])
    swap = [0, 2, 1, 3]
    result = compare([scores, boxes, labels], [scores, boxes[swap], labels[swap]], 1e-4, 1e-3)
    assert not result["passed"] and result["reordered"] == [1, 2]
    other = compare([scores, boxes, labels], [scores, boxes[swap], np.array([3, 2, 1, 1])], 1e-4, 1e-3)
    assert other["reordered"] is None  # a label changed: not only an order
    check = compare_outputs([boxes], [boxes[swap]])
    assert not check["passed"] and "hold the dense model's rows in another order" in error_text(check)


def test_check_names_reordered_detections(tmp_path, capsys):
    """Two models whose only difference is the order of two rows (a detector's NMS ranking two
    near-equal scores the other way round after the summation order changed)."""
    rows = numpy_helper.from_array(np.arange(12, dtype=np.float32).reshape(3, 4), "R")
    paths = []
    for name, order in (("a", [0, 1, 2]), ("b", [0, 2, 1])):
        idx = numpy_helper.from_array(np.array(order, np.int64), "i")
        nodes = [helper.make_node("Gather", ["R", "i"], ["g"]), helper.make_node("Add", ["g", "x"], ["y"])]
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 4])], [rows, idx])
        model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])
        paths.append(_save(model, tmp_path / f"{name}.onnx"))
    code, _, err = run_cli(["check", *paths], capsys)
    assert code == 3 and "output(s) 0 hold the reference's rows in another order" in err


def test_prune_of_its_own_lowered_file_counts_the_lowered_layers(tmp_path, capsys):
    src = _save(mlp(sizes=(64, 48, 32, 8), seed=3), tmp_path / "m.onnx")
    low = tmp_path / "low.onnx"
    args = ["--target-sparsity", "0.9", "--emit", "sparse-ops", "--lower-for", "size"]
    code, _, err = run_cli(["prune", src, "-o", str(low), *args], capsys)
    assert code == 0, err
    again = tmp_path / "again.json"
    code, out, err = run_cli(["prune", str(low), "-o", str(tmp_path / "x.onnx"), *args,
                              "--min-sparsity", "0.85", "--json", str(again)], capsys)
    assert code == 0, err  # was 3: the gate had counted only the layers left dense
    report = json.loads(again.read_text())
    inspected = tmp_path / "i.json"
    assert run_cli(["inspect", str(low), "--json", str(inspected)], capsys)[0] == 0
    assert report["total"]["params"] == json.loads(inspected.read_text())["total"]["params"]
    assert report["total"]["sparsity"] >= 0.85


def test_relowering_counts_what_the_file_holds():
    rows = [{"lowered": True, "nodes": ["a"]}, {"lowered": True}, {"lowered": False}]
    assert lowered_count(rows) == "2 layer(s) lowered"
    assert lowered_count(rows, before=31) == "2 more layer(s) lowered; 33 sparse-op node(s) in all"
    kept = {"whole_model": {"speedup": 0.93, "kept": "dense", "attempts": []}}
    assert whole_model_line(kept, [{"lowered": False}], 0).endswith("wrote the dense model (no layer lowered)")
    assert "its 31 sparse-op node(s) kept as they were" in whole_model_line(kept, [{"lowered": False}], 31)
    assert "1 forced layer(s) lowered" in whole_model_line(kept, [{"lowered": True}], 0)


def test_emit_sparse_ops_stores_what_it_leaves_dense_sparse(tmp_path, capsys):
    src = _save(mlp(sizes=(96, 96, 8), seed=5), tmp_path / "m.onnx")
    portable, sparse_ops = tmp_path / "p.onnx", tmp_path / "s.onnx"
    recipe = tmp_path / "r.yaml"  # no layer lowered, whatever the timing
    recipe.write_text("passes:\n  - threshold-by-std: {quality: 1.5}\n"
                      "  - lower-to-sparse-ops: {never: ['*']}\nemit: sparse-ops\n")
    code, _, err = run_cli(["prune", src, "-o", str(sparse_ops), "--recipe", str(recipe)], capsys)
    assert code == 0, err
    recipe.write_text("passes:\n  - threshold-by-std: {quality: 1.5}\nemit: portable\n")
    code, _, err = run_cli(["prune", src, "-o", str(portable), "--recipe", str(recipe)], capsys)
    assert code == 0, err
    written = onnx.load(str(sparse_ops), load_external_data=False)
    assert not any(n.domain == "ai.onnxprune" for n in written.graph.node)
    assert len(written.graph.sparse_initializer) > 0  # was none: every weight dense, 2.5x the size
    assert sparse_ops.stat().st_size <= portable.stat().st_size + 512


def _conv3d(tmp_path, batch="N") -> str:
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((4, 2, 3, 3, 3)) * (rng.random((4, 2, 3, 3, 3)) > 0.8)).astype(np.float32)
    g = helper.make_graph([helper.make_node("Conv", ["x", "W"], ["y"], pads=[1] * 6)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 4, 8, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          [numpy_helper.from_array(w, "W")])
    return _save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), tmp_path / "c3d.onnx")


def test_bench_says_nothing_could_be_lowered_and_no_unasked_batch_note(tmp_path, capsys):
    path = _conv3d(tmp_path)
    code, out, err = run_cli(["bench", path, "--repeats", "2", "--warmup", "1", "--no-layers",
                              "--input-shape", "x=1x2x4x8x8"], capsys)
    assert code == 0, err
    text = out + err
    assert "nothing lowered (no layer could be lowered)" in text
    assert "--batch is not used" not in text  # --batch was never given
    code, out, err = run_cli(["bench", path, "--repeats", "2", "--warmup", "1", "--no-layers",
                              "--input-shape", "x=1x2x4x8x8", "--batch", "4"], capsys)
    assert code == 0 and "batch 1 from --input-shape; --batch is not used" in out + err


def _quantized_at_run_time(dynamic: bool) -> onnx.ModelProto:
    """A Conv whose float weight is quantized when the model runs: onnxruntime's
    quantize_dynamic (Constant → DynamicQuantizeLinear → ConvInteger) or quantize_static's QDQ
    (W → QuantizeLinear → DequantizeLinear → Conv, the bias dequantized too)."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 2, 3, 3)).astype(np.float32), "W")
    s = numpy_helper.from_array(np.array(0.02, np.float32), "s")
    z = numpy_helper.from_array(np.array(0, np.int8), "z")
    b = numpy_helper.from_array(np.arange(4, dtype=np.int32), "bq")
    bs = numpy_helper.from_array(np.array(1e-3, np.float32), "bs")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    if dynamic:
        nodes = [helper.make_node("Constant", [], ["Wc"], value=w, name="weight"),
                 helper.make_node("DynamicQuantizeLinear", ["Wc"], ["Wq", "Ws", "Wz"], name="quant_w"),
                 helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="quant_x"),
                 helper.make_node("ConvInteger", ["xq", "Wq", "xz", "Wz"], ["acc"], name="conv_quant"),
                 helper.make_node("Cast", ["acc"], ["y"], to=TensorProto.FLOAT)]
        g = helper.make_graph(nodes, "g", [x], [y])
    else:
        nodes = [helper.make_node("QuantizeLinear", ["W", "s", "z"], ["Wq"], name="w_q"),
                 helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["Wd"], name="w_dq"),
                 helper.make_node("DequantizeLinear", ["bq", "bs"], ["bd"], name="b_dq"),
                 helper.make_node("Conv", ["x", "Wd", "bd"], ["y"], name="conv")]
        g = helper.make_graph(nodes, "g", [x], [y], [w, s, z, b, bs])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("dynamic", [True, False], ids=["quantize_dynamic", "qdq"])
def test_weights_quantized_at_run_time_are_noted_once(tmp_path, capsys, dynamic):
    path = _save(_quantized_at_run_time(dynamic), tmp_path / "q.onnx")
    report = tmp_path / "i.json"
    code, _, err = run_cli(["inspect", path, "--json", str(report)], capsys)
    assert code == 0, err
    notes = json.loads(report.read_text())["notes"]
    assert [(n["node"], n["reason"]) for n in notes] == \
        [("conv_quant" if dynamic else "w_dq", "quantized weights: not pruned")]  # was none (the bias: no note)
