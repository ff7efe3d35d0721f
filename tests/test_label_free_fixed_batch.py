"""Label-free compress of a model whose batch is fixed at 1 and whose output puts the sample
axis second — a CRNN recogniser's per-frame log-probabilities ``[T, 1, C]`` — runs end to end:
the dense model's outputs, gathered sample by sample, are the reference validation follows."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli

pytest.importorskip("torch")

T, F, C = 5, 6, 7


def frames_first(seed=0):
    """x[1, T, F] -> MatMul [F, 16] -> Relu -> MatMul [16, C] -> Transpose -> [T, 1, C]
    -> LogSoftmax (per frame); batch fixed at 1."""
    rng = np.random.default_rng(seed)
    w1 = numpy_helper.from_array(rng.normal(0, 0.5, (F, 16)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.normal(0, 0.5, (16, C)).astype(np.float32), "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"], name="fc2"),
             helper.make_node("Transpose", ["z"], ["zt"], perm=[1, 0, 2]),
             helper.make_node("LogSoftmax", ["zt"], ["logp"], axis=-1)]
    graph = helper.make_graph(nodes, "frames_first",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, T, F])],
                              [helper.make_tensor_value_info("logp", TensorProto.FLOAT, [T, 1, C])],
                              [w1, w2])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_compress_label_free_batch_one_time_major_output(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(frames_first(), path)
    rng = np.random.default_rng(1)
    data = tmp_path / "d.npz"
    np.savez(data, x=rng.standard_normal((12, T, F)).astype(np.float32))
    code, stdout, err = run_cli(["compress", str(path), "-o", str(out), "--train", str(data), "--val",
                                 str(data), "--target-sparsity", "0.5", "--iterations", "1",
                                 "--epochs", "1", "--lr", "0.01", "--json", "-", "-q"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["accuracy_dense"]["top1"] == 1.0  # the dense model reproduces itself exactly
    assert report["accuracy_final"]["measure"] == "1 - mean relative error"
    assert 0.0 < report["accuracy_final"]["top1"] < 1.0  # pruned: close, not equal
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logp = sess.run(None, {"x": rng.standard_normal((1, T, F)).astype(np.float32)})[0]
    assert logp.shape == (T, 1, C) and np.allclose(np.exp(logp).sum(-1), 1, atol=1e-5)


def test_reference_length_still_checked():
    """A reference whose rows match neither the samples nor whole per-run outputs is refused."""
    from onnxprune.runtime.datasets import (DataMismatchError, Dataset, Reference, check_dataset,
                                            input_specs)

    model = frames_first()
    x = np.zeros((4, T, F), np.float32)
    bad = Reference(outputs={"logp": np.zeros((4 * T + 1, 1, C))}, kinds={"logp": "values"})
    with pytest.raises(DataMismatchError, match="reference"):
        check_dataset(Dataset(x=x, reference=bad), input_specs(model), None, labels=False)
    good = Reference(outputs={"logp": np.zeros((4 * T, 1, C))}, kinds={"logp": "values"})
    assert check_dataset(Dataset(x=x, reference=good), input_specs(model), None, labels=False)
