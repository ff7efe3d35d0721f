"""The progress lines of ``compress`` name what they measure: top-1 accuracy with labels,
agreement with the dense model without them (class scores), 1 − relative error when the model
has no class-score output."""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tests.conftest import run_cli
from tests.test_label_free import inputs, two_head

pytest.importorskip("torch")


def _compress(tmp_path, capsys, model, **arrays):
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    data = tmp_path / "d.npz"
    np.savez(data, **arrays)
    code, _, err = run_cli(["compress", str(path), "-o", str(tmp_path / "out.onnx"), "--train", str(data),
                            "--val", str(data), "--target-sparsity", "0.5", "--iterations", "1",
                            "--epochs", "1", "--lr", "0.01"], capsys)
    assert code == 0, err
    return [line for line in err.splitlines() if line.startswith(("dense:", "iteration 1:",
                                                                   "remove-dead-neurons:"))]


def _box_only():
    """two_head without its score outputs: x -> ... -> Gemm 3 "box" (values only)."""
    model = two_head()
    graph = model.graph
    keep = [n for n in graph.node if n.op_type not in ("Softmax", "ArgMax") and n.name != "cls"]
    del graph.node[:]
    graph.node.extend(keep)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 3]))
    return model


def test_stage_lines_say_agreement_without_labels(tmp_path, capsys):
    lines = _compress(tmp_path, capsys, two_head(), x=inputs(32, 1))
    assert len(lines) == 3
    for line in lines:
        assert "val agreement " in line and "top-1" not in line, line
    assert "val agreement 100.00%" in lines[0]  # the dense model agrees with itself


def test_stage_lines_say_relative_error_for_values_only(tmp_path, capsys):
    lines = _compress(tmp_path, capsys, _box_only(), x=inputs(32, 1))
    assert lines and all("val 1 - rel. error " in line for line in lines), lines


def test_stage_lines_say_top1_with_labels(tmp_path, capsys):
    y = np.random.default_rng(0).integers(0, 4, 32)
    lines = _compress(tmp_path, capsys, two_head(), x=inputs(32, 1), y=y)
    assert lines and all("val top-1 " in line and "agreement" not in line for line in lines), lines
