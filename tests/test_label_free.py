"""Label-free retraining (objective match): the pruned model follows the dense model's outputs.

The two-head model has a class-score output (Softmax "probs"), a regression output ("box")
and an integer output (ArgMax "label"): scores are followed with KL, the box with
variance-normalised squared error, the label is ignored — and validation measures fidelity.
"""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli

pytest.importorskip("torch")


def two_head(seed=0, features=8, hidden=32):
    """x[N, 8] -> Gemm 32 -> Relu -> Gemm 32 -> Relu -> {Gemm 4 -> Softmax "probs" (+ ArgMax
    "label"), Gemm 3 "box"}; random float32 weights."""
    rng = np.random.default_rng(seed)
    shapes = {"fc1": (hidden, features), "fc2": (hidden, hidden), "cls": (4, hidden), "reg": (3, hidden)}
    inits = []
    for name, (o, i) in shapes.items():
        inits.append(numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(i), (o, i)).astype(np.float32),
                                             f"{name}.weight"))
        inits.append(numpy_helper.from_array(rng.normal(0, 0.1, (o,)).astype(np.float32), f"{name}.bias"))

    def gemm(name, x, y):
        return helper.make_node("Gemm", [x, f"{name}.weight", f"{name}.bias"], [y], name=name, transB=1)

    nodes = [gemm("fc1", "x", "h1"), helper.make_node("Relu", ["h1"], ["r1"]),
             gemm("fc2", "r1", "h2"), helper.make_node("Relu", ["h2"], ["r2"]),
             gemm("cls", "r2", "logits"), helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("ArgMax", ["probs"], ["label"], axis=1, keepdims=0),
             gemm("reg", "r2", "box")]
    graph = helper.make_graph(
        nodes, "two_head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("box", TensorProto.FLOAT, ["N", 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def prune_magnitude(model, share):
    """A copy of ``model`` with the smallest ``share`` of each Gemm weight set to zero."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name.endswith(".weight"):
            w = numpy_helper.to_array(t).copy()
            w[np.abs(w) < np.quantile(np.abs(w), share)] = 0.0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
    return out


def inputs(n, seed):
    return np.random.default_rng(seed).standard_normal((n, 8)).astype(np.float32)


def test_output_kinds_rule():
    from onnxprune.runtime.datasets import output_kinds

    kinds = output_kinds(two_head(), {"probs": (5, 4), "box": (5, 3)})
    assert kinds == {"probs": "scores", "box": "values"}  # label: integer, not followed
    # A rank-2 output that is neither produced by a Softmax nor named like scores is values
    # (an embedding); a one-column one is never scores.
    assert output_kinds(two_head(), {"probs": (5, 1), "box": (5, 3)})["probs"] == "values"


def test_fidelity_measures_agreement_and_relative_error():
    from onnxprune.runtime.datasets import Reference
    from onnxprune.runtime.evaluate import fidelity

    dense = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    box = np.array([[3.0, 4.0]] * 4)
    ref = Reference({"probs": dense, "box": box}, {"probs": "scores", "box": "values"})
    got = fidelity({"probs": dense[[0, 1, 3, 3]], "box": 1.5 * box}, ref)
    assert got["outputs"]["probs"]["agreement"] == pytest.approx(0.75)
    assert got["outputs"]["box"]["relative_error"] == pytest.approx(0.5)
    assert got["top1"] == pytest.approx(0.75)
    only_values = Reference({"box": box}, {"box": "values"})
    assert fidelity({"box": 1.25 * box}, only_values)["top1"] == pytest.approx(0.75)


def test_match_recovers_fidelity_after_pruning():
    """Pruned to 80 %, the model drifts from the dense one; retraining without labels brings
    both heads back: agreement up, box relative error down, pruned weights still zero."""
    import dataclasses

    from onnxprune.runtime.datasets import Dataset
    from onnxprune.runtime.evaluate import evaluate, reference
    from onnxprune.training.torch_bridge import FinetuneConfig, finetune

    dense = two_head()
    pruned = prune_magnitude(dense, 0.8)
    train, val_x = inputs(512, 1), inputs(256, 2)
    val = Dataset(val_x, None, reference(dense, val_x))
    before = evaluate(pruned, val)
    config = FinetuneConfig(epochs=30, batch_size=32, lr=0.02, weight_decay=0.0, seed=3)
    result = finetune(pruned, Dataset(train), val, config=config, teacher=dense)
    after = evaluate(result.model, val)
    assert result.objective["mode"] == "match"
    rows = {r["output"]: r["treatment"] for r in result.objective["outputs"]}
    assert rows["probs"].startswith("KL") and rows["box"].startswith("squared error")
    assert rows["label"].startswith("ignored")
    assert after["outputs"]["box"]["relative_error"] < 0.6 * before["outputs"]["box"]["relative_error"]
    assert after["top1"] > before["top1"] + 0.15
    # torch's per-epoch validation and ONNX Runtime's measure the same agreement
    assert result.history[-1]["val_top1"] == pytest.approx(after["top1"], abs=2 / 256)
    for t_before, t_after in zip(pruned.graph.initializer, result.model.graph.initializer):
        a, b = numpy_helper.to_array(t_before), numpy_helper.to_array(t_after)
        assert np.all(b[a == 0] == 0)
    assert dataclasses.asdict(config)["objective"] is None  # resolved from the data, not set


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def test_compress_label_free_end_to_end(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(two_head(), model)
    train = _npz(tmp_path / "train.npz", x=inputs(128, 1))
    val = _npz(tmp_path / "val.npz", x=inputs(64, 2))
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(["compress", str(model), "-o", str(out), "--train", train, "--val", val,
                                 "--target-sparsity", "0.5", "--iterations", "1", "--epochs", "2",
                                 "--lr", "0.01", "--max-accuracy-drop", "100", "--json", "-", "-q"],
                                capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["config"]["objective"] == "match"
    assert report["objective"]["mode"] == "match"
    assert report["accuracy_dense"]["top1"] == 1.0  # the dense model agrees with itself
    assert report["accuracy_final"]["measure"].startswith("top-1 agreement")
    assert report["gates"][0]["actual"] == pytest.approx(100 * (1 - report["accuracy_final"]["top1"]))
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    probs = sess.run(["probs"], {"x": inputs(4, 9)})[0]
    assert probs.shape == (4, 4) and np.allclose(probs.sum(1), 1, atol=1e-5)


@pytest.mark.parametrize("objective", ["labels", "mixed"])
def test_objective_with_labels_needs_labels(tmp_path, capsys, objective):
    model = tmp_path / "m.onnx"
    onnx.save(two_head(), model)
    train = _npz(tmp_path / "train.npz", x=inputs(16, 1))
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["compress", str(model), "-o", str(out), "--train", train, "--val", train,
                            "--objective", objective, "-q"], capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:") and "labels" in lines[0]
    assert not out.exists()


def test_finetune_label_free_needs_a_teacher(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(two_head(), model)
    train = _npz(tmp_path / "train.npz", x=inputs(16, 1))
    out = tmp_path / "out.onnx"
    code, _, err = run_cli(["finetune", str(model), "-o", str(out), "--train", train, "--val", train,
                            "-q"], capsys)
    assert code == 2 and "--teacher" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
