"""`onnxprune check --data` reads the file compress trained on: samples on axis 0.

A state input ``[2, N, 4]`` (samples on axis 1, like silero's LSTM state) cannot take such a
file as it stands; check then reads it the way compress does (each input's samples moved to its
sample axis) instead of refusing it.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli.app import main


def _model(scale: float = 1.0) -> onnx.ModelProto:
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Gather", ["state", "zero"], ["s0"], axis=0),
             helper.make_node("Add", ["x", "s0"], ["t"]),
             helper.make_node("Mul", ["t", "k"], ["y"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", f, ["N", 4]),
                                       helper.make_tensor_value_info("state", f, [2, "N", 4])],
                          [helper.make_tensor_value_info("y", f, ["N", 4])],
                          [numpy_helper.from_array(np.array(0, np.int64), "zero"),
                           numpy_helper.from_array(np.array(scale, np.float32), "k")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _files(tmp_path, scale: float):
    ref, cand = tmp_path / "ref.onnx", tmp_path / "cand.onnx"
    onnx.save(_model(), ref)
    onnx.save(_model(scale), cand)
    return str(ref), str(cand)


def test_samples_first_data_is_read_as_compress_reads_it(tmp_path, capsys):
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.normal(size=(6, 4)).astype(np.float32),
             state=rng.normal(size=(6, 2, 4)).astype(np.float32))  # samples first
    ref, cand = _files(tmp_path, 1.0)
    assert main(["check", ref, cand, "--data", str(data)]) == 0
    assert "samples on axis 0" in capsys.readouterr().err
    ref, cand = _files(tmp_path, 1.5)
    assert main(["check", ref, cand, "--data", str(data)]) == 3  # a real difference still fails


def test_data_that_fits_neither_layout_keeps_the_plain_error(tmp_path, capsys):
    data = tmp_path / "d.npz"
    np.savez(data, x=np.zeros((6, 4), np.float32), state=np.zeros((6, 2, 5), np.float32))
    ref, cand = _files(tmp_path, 1.0)
    assert main(["check", ref, cand, "--data", str(data)]) == 2
    assert "array 'state': dim 0 is 6, the model fixes it at 2" in capsys.readouterr().err


def test_a_batch_dim_of_minus_one_is_a_free_size(tmp_path, capsys):
    """Paddle exports write -1 for the batch (rapidocr's models): compress, finetune and
    check --data read it as a free size (they read it as a fixed size and failed with an
    internal IndexError); FLOP counts and the class count treat it as unknown, never negative."""
    from onnxprune.core.graph import infer_shapes
    from onnxprune.runtime.datasets import input_specs, n_classes

    f = TensorProto.FLOAT
    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", f, [-1, 4])],
                          [helper.make_tensor_value_info("y", f, [-1, 3])], [w])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert input_specs(m)[0].shape == (None, 4)
    assert infer_shapes(m)["x"] == [None, 4] and n_classes(m) == 3
    ref = tmp_path / "ref.onnx"
    onnx.save(m, ref)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32))
    assert main(["check", str(ref), str(ref), "--data", str(data)]) == 0
    assert "internal error" not in capsys.readouterr().err
