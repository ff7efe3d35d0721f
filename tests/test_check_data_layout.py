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
