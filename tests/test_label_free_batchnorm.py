"""BatchNormalization statistics while retraining a model to follow its dense version, or a
model fed in micro-batches (batch fixed at 1):

* label-free (objective match/mixed), the teacher normalises with its running statistics; the
  student keeps them too (its scale and shift still train) — updating them from a few
  production inputs' batch statistics changes the function being reproduced whatever the
  weights do (rapidocr's PP-OCRv4 detector lost 9.5 pp of 1 − rel. error at a rate of 1e-12);
* batch fixed at B below the batch size: statistics of one B-sample micro-batch are not the
  batch's (at B = 1, one image's), so they stay fixed too;
* with labels and a free batch, training mode updates them as before."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")

RUNNING = {"bn.mean": np.array([0.5, -0.3, 0.2, 0.0], np.float32),
           "bn.var": np.array([2.0, 0.5, 1.5, 1.0], np.float32)}


def conv_bn(batch="N", seed=0):
    """x[batch, 2, 6, 6] -> Conv 4x2x3x3 -> BatchNormalization (running stats unlike the data's)
    -> Relu -> GlobalAveragePool -> Flatten -> Gemm 3 -> "logits"."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, (4, 2, 3, 3)).astype(np.float32), "conv.weight"),
             numpy_helper.from_array(np.ones(4, np.float32), "bn.scale"),
             numpy_helper.from_array(np.zeros(4, np.float32), "bn.bias"),
             *(numpy_helper.from_array(v, k) for k, v in RUNNING.items()),
             numpy_helper.from_array(rng.normal(0, 0.5, (3, 4)).astype(np.float32), "fc.weight"),
             numpy_helper.from_array(np.zeros(3, np.float32), "fc.bias")]
    nodes = [helper.make_node("Conv", ["x", "conv.weight"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "bn.scale", "bn.bias", "bn.mean", "bn.var"],
                              ["b"], name="bn"),
             helper.make_node("Relu", ["b"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "fc.weight", "fc.bias"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "conv_bn",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 2, 6, 6])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _running(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer if t.name in RUNNING}


def _finetune(model, objective, y=None, bn_statistics=None):
    from onnxprune.runtime.datasets import Dataset
    from onnxprune.training.torch_bridge import FinetuneConfig, finetune

    x = np.random.default_rng(3).normal(2.0, 1.0, (8, 2, 6, 6)).astype(np.float32)
    config = FinetuneConfig(epochs=1, batch_size=4, lr=1e-12, objective=objective, adjust_dropout=False,
                            bn_statistics=bn_statistics)
    return finetune(model, Dataset(x=x, y=y), config=config,
                    teacher=model if objective != "labels" else None).model


@pytest.mark.parametrize("batch,objective", [("N", "match"), (1, "match"), ("N", "mixed"), (1, "labels")])
def test_running_statistics_kept(batch, objective):
    model = conv_bn(batch)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1]) if objective != "match" else None
    out = _running(_finetune(model, objective, y))
    for name, value in RUNNING.items():
        np.testing.assert_array_equal(out[name], value, err_msg=f"{name} ({batch}, {objective})")


def test_labels_with_a_free_batch_update_them():
    out = _running(_finetune(conv_bn("N"), "labels", np.array([0, 1, 2, 0, 1, 2, 0, 1])))
    assert not np.allclose(out["bn.mean"], RUNNING["bn.mean"])


@pytest.mark.parametrize("objective", ["match", "mixed"])
def test_update_when_asked_follows_the_batches_label_free(objective):
    """bn_statistics="update": label-free data that is a fair sample of the inputs renormalises."""
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1]) if objective != "match" else None
    out = _running(_finetune(conv_bn("N"), objective, y, bn_statistics="update"))
    assert not np.allclose(out["bn.mean"], RUNNING["bn.mean"])
    assert not np.allclose(out["bn.var"], RUNNING["bn.var"])


def test_keep_when_asked_holds_them_with_labels():
    out = _running(_finetune(conv_bn("N"), "labels", np.array([0, 1, 2, 0, 1, 2, 0, 1]),
                             bn_statistics="keep"))
    for name, value in RUNNING.items():
        np.testing.assert_array_equal(out[name], value, err_msg=name)


def test_update_is_refused_for_one_sample_micro_batches():
    from onnxprune.core.errors import UsageError

    with pytest.raises(UsageError, match="bn-statistics update needs batches of more than one sample"):
        _finetune(conv_bn(1), "match", bn_statistics="update")


def test_bn_statistics_is_validated():
    from onnxprune.core.errors import UsageError
    from onnxprune.training.torch_bridge import FinetuneConfig

    with pytest.raises(UsageError, match="bn-statistics must be one of keep, update"):
        FinetuneConfig(lr=0.01, bn_statistics="freeze").validate()


def test_cli_flag_reaches_the_report(tmp_path, capsys):
    import json

    import onnx

    from tests.conftest import run_cli

    model = conv_bn("N")
    onnx.save(model, tmp_path / "m.onnx")
    x = np.random.default_rng(5).normal(2.0, 1.0, (16, 2, 6, 6)).astype(np.float32)
    np.savez(tmp_path / "train.npz", x=x)
    np.savez(tmp_path / "val.npz", x=x[:8])
    code, _, err = run_cli(["finetune", str(tmp_path / "m.onnx"), "--teacher", str(tmp_path / "m.onnx"),
                            "--train", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
                            "-o", str(tmp_path / "o.onnx"), "--epochs", "1", "--batch-size", "8",
                            "--bn-statistics", "update", "--json", str(tmp_path / "r.json")], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["config"]["bn-statistics"] == "update"
    written = _running(onnx.load(str(tmp_path / "o.onnx")))
    assert not np.allclose(written["bn.mean"], RUNNING["bn.mean"])
