"""What two user trials on real models found (RELIABILITY round 29), each test failing before
its fix: inputs that share a symbolic batch, checks that cannot tell models apart, bench's
tolerance on tiny outputs, detectors whose near-tied detections swap places, the counts and
notes of prune / lower / bench on lowered files, and the storage of `--emit sparse-ops`.
"""

import json

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.runtime.check import random_inputs
from tests.conftest import run_cli


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
