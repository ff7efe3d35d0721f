"""Several named inputs, bad data refused before training, and models whose batch is fixed at 1."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from tests.models import mlp

pytest.importorskip("torch")

VOCAB, LENGTH, DIM, CLASSES = 20, 6, 8, 3


def token_classifier(seed=0):
    """input_ids int64 [N, 6] and attention_mask float [N, 6] -> embedding (Gather) masked and
    summed over the tokens -> Gemm 16 -> Relu -> Gemm 3 "logits"."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (VOCAB, DIM)).astype(np.float32), "emb"),
             numpy_helper.from_array(np.array([2], np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    for name, (o, i) in {"fc1": (16, DIM), "fc2": (CLASSES, 16)}.items():
        inits.append(numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(i), (o, i)).astype(np.float32),
                                             f"{name}.weight"))
        inits.append(numpy_helper.from_array(np.zeros(o, np.float32), f"{name}.bias"))
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("Unsqueeze", ["attention_mask", "axis2"], ["m"]),
             helper.make_node("Mul", ["e", "m"], ["em"]),
             helper.make_node("ReduceSum", ["em", "axis1"], ["pooled"], keepdims=0),
             helper.make_node("Gemm", ["pooled", "fc1.weight", "fc1.bias"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "fc2.weight", "fc2.bias"], ["logits"], name="fc2", transB=1)]
    graph = helper.make_graph(
        nodes, "tokens",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", LENGTH]),
         helper.make_tensor_value_info("attention_mask", TensorProto.FLOAT, ["N", LENGTH])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", CLASSES])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def token_data(n, seed, labels=True):
    """Token ids, a mask hiding a random tail, and a label that depends on the visible ids."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, VOCAB, (n, LENGTH)).astype(np.int64)
    mask = (np.arange(LENGTH)[None, :] < rng.integers(2, LENGTH + 1, (n, 1))).astype(np.float32)
    arrays = {"input_ids": ids, "attention_mask": mask}
    if labels:
        arrays["y"] = (((ids < VOCAB // 2) * mask).sum(1).astype(np.int64) % CLASSES)
    return arrays


def _weights(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def test_two_inputs_train_and_evaluate(tmp_path, capsys):
    from onnxprune.runtime.datasets import Dataset
    from onnxprune.runtime.evaluate import evaluate

    model = tmp_path / "m.onnx"
    onnx.save(token_classifier(), model)
    np.savez(tmp_path / "train.npz", **token_data(256, 1))
    np.savez(tmp_path / "val.npz", **token_data(128, 2))
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(["compress", str(model), "-o", str(out), "--train", str(tmp_path / "train.npz"),
                                 "--val", str(tmp_path / "val.npz"), "--target-sparsity", "0.5",
                                 "--iterations", "1", "--epochs", "3", "--lr", "0.05", "--json", "-", "-q"],
                                capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["objective"]["mode"] == "labels"
    before, after = _weights(model), _weights(out)
    assert not np.allclose(before["fc1.weight"], after["fc1.weight"])
    assert np.mean(after["fc1.weight"] == 0) >= 0.4  # pruned, and the zeros held
    val = token_data(128, 2)
    acc = evaluate(onnx.load(str(out)), Dataset({k: val[k] for k in ("input_ids", "attention_mask")}, val["y"]))
    assert acc["n"] == 128 and acc["top1"] == pytest.approx(report["accuracy_final"]["top1"])


def test_two_inputs_label_free(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(token_classifier(), model)
    np.savez(tmp_path / "t.npz", **token_data(64, 1, labels=False))
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(["compress", str(model), "-o", str(out), "--train", str(tmp_path / "t.npz"),
                                 "--val", str(tmp_path / "t.npz"), "--target-sparsity", "0.5",
                                 "--iterations", "1", "--epochs", "1", "--lr", "0.01", "--json", "-", "-q"],
                                capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["objective"]["mode"] == "match"
    # "logits" is 2-D [N, 3] and named like scores: followed by KL, validated by agreement
    assert report["objective"]["outputs"][0]["treatment"].startswith("KL")
    assert "agreement" in report["accuracy_final"]["outputs"]["logits"]


# What the one-line error names, per case.
SAYS = {"a misnamed input": "'mask'", "a wrong fixed dim": "axis 1 differs",
        "labels for some samples only": "10 labels", "inputs of different lengths": "sample counts"}


def _bad(case):
    """The arrays of a training set with ``case`` wrong."""
    good = token_data(16, 3)
    cases = {
        "a misnamed input": {**{k: v for k, v in good.items() if k != "attention_mask"},
                             "mask": good["attention_mask"]},
        "a wrong fixed dim": {**good, "input_ids": np.zeros((16, LENGTH + 1), np.int64),
                              "attention_mask": np.ones((16, LENGTH + 1), np.float32)},
        "labels for some samples only": {**good, "y": good["y"][:10]},
        "inputs of different lengths": {**good, "attention_mask": good["attention_mask"][:12]},
    }
    return cases[case]


@pytest.mark.parametrize("case", ["a misnamed input", "a wrong fixed dim", "labels for some samples only",
                                  "inputs of different lengths"])
@pytest.mark.parametrize("command", ["compress", "finetune"])
def test_bad_data_is_refused_before_training(tmp_path, capsys, case, command):
    model = tmp_path / "m.onnx"
    onnx.save(token_classifier(), model)
    np.savez(tmp_path / "bad.npz", **_bad(case))
    np.savez(tmp_path / "good.npz", **token_data(16, 4))
    out = tmp_path / "out.onnx"
    code, _, err = run_cli([command, str(model), "-o", str(out), "--train", str(tmp_path / "bad.npz"),
                            "--val", str(tmp_path / "good.npz"), "-q"], capsys)
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:")
    assert SAYS[case] in lines[0]
    assert not out.exists()


def test_sensitivity_takes_several_inputs(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(token_classifier(), model)
    np.savez(tmp_path / "val.npz", **token_data(64, 2, labels=False))
    code, _, err = run_cli(["sensitivity", str(model), "-o", str(tmp_path / "sens"), "--val",
                            str(tmp_path / "val.npz"), "--grid", "0.5,0.9", "--no-plot", "-q"], capsys)
    assert code == 0, err
    data = json.loads((tmp_path / "sens" / "sensitivity.json").read_text())
    assert data["dense"]["top1"] == 1.0  # the unpruned model agrees with itself


def _train_mlp(batch, objective):
    """One epoch of SGD (batch 8, momentum) on the same data, seed and starting weights."""
    from onnxprune.runtime.datasets import Dataset
    from onnxprune.training.torch_bridge import FinetuneConfig, finetune

    model = mlp(sizes=(6, 10, 3), seed=5, batch=batch)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((40, 6)).astype(np.float32)
    y = rng.integers(0, 3, 40).astype(np.int64) if objective == "labels" else None
    config = FinetuneConfig(epochs=1, batch_size=8, lr=0.1, seed=11, objective=objective)
    teacher = mlp(sizes=(6, 10, 3), seed=6, batch=batch) if objective == "match" else None
    result = finetune(model, Dataset(x, y), config=config, teacher=teacher)
    return {t.name: numpy_helper.to_array(t) for t in result.model.graph.initializer}, result


@pytest.mark.parametrize("objective", ["labels", "match"])
def test_batch_fixed_at_one_equals_the_batched_gradient(objective):
    """Fed one sample at a time with gradients accumulated to the batch, a model whose input
    is [1, 6] takes the same steps as the same model with a free batch axis."""
    one, r1 = _train_mlp(1, objective)
    many, rn = _train_mlp("N", objective)
    assert r1.history[0]["samples"] == rn.history[0]["samples"] == 40
    start = {t.name: numpy_helper.to_array(t) for t in mlp(sizes=(6, 10, 3), seed=5).graph.initializer}
    for name in many:
        assert not np.allclose(many[name], start[name])  # it trained
        np.testing.assert_allclose(one[name], many[name], rtol=1e-5, atol=1e-6)


def test_fixed_batch_output_without_a_sample_axis_is_kept_whole():
    """A batch-1 model whose output is [3, 1] (classes first, as a detector's [boxes, 6]):
    run sample by sample, each run's whole output is kept, in ONNX Runtime and in torch."""
    import torch

    from onnxprune.runtime.evaluate import reference
    from onnxprune.training.torch_bridge import build_module
    from onnxprune.training.torch_bridge.objective import forward_padded

    model = mlp(sizes=(6, 10, 3), seed=5, batch=1)
    model.graph.node.append(helper.make_node("Transpose", ["y"], ["t"], perm=[1, 0]))
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("t", TensorProto.FLOAT, [3, 1]))
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    assert reference(model, x).outputs["t"].shape == (12, 1)
    from onnxprune.runtime.datasets import input_specs

    got = forward_padded(build_module(model), {"x": torch.from_numpy(x)}, ["t"],
                         input_specs(model))["t"]
    assert tuple(got.shape) == (12, 1)
