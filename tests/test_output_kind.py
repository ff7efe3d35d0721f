"""``--output-kind NAME=scores|values``: the user says how label-free retraining follows an output.

The rule (:func:`onnxprune.runtime.datasets.output_kinds`) judges the test MLP's output ``y``
(a Gemm behind an Identity, no Softmax, no score-like name) to be values; the override makes it
class scores — KL in the loss, top-1 agreement in validation (label-free ``sensitivity`` too) —
and the report says where the treatment came from.  Bad overrides stop with exit 2 before
anything is written.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli
from tests.models import mlp

SIZES = (8, 12, 4)  # x[N, 8] -> fc1 -> Relu -> fc2 -> Identity "y"[N, 4]


def _npz(path, n, seed, shape=(SIZES[0],)):
    np.savez(path, x=np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32))
    return str(path)


def _files(tmp_path, model=None, shape=(SIZES[0],)):
    """(model path, label-free train .npz, label-free val .npz)."""
    path = tmp_path / "m.onnx"
    onnx.save(model if model is not None else mlp(sizes=SIZES), path)
    return str(path), _npz(tmp_path / "train.npz", 32, 1, shape), _npz(tmp_path / "val.npz", 16, 2, shape)


def sequence_model(seed=0):
    """x[N, 5, 8] -> MatMul W[8, 3] -> "out"[N, 5, 3]: a float output that is not 2-D."""
    w = np.random.default_rng(seed).normal(0, 0.3, (8, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["out"], name="proj")], "seq",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 5, 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 5, 3])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _compress(model, train, val, out, *extra):
    return ["compress", model, "-o", str(out), "--train", train, "--val", val,
            "--target-sparsity", "0.5", "--iterations", "1", "--epochs", "1", "--lr", "0.01",
            "--json", "-", "-q", *extra]


def _rows(report):
    return {r["output"]: r for r in report["objective"]["outputs"]}


# --------------------------------------------------------------------------- the rule, overridden


def test_override_wins_over_the_rule():
    from onnxprune.runtime.datasets import output_kinds

    model = mlp(sizes=SIZES)
    assert output_kinds(model, {"y": (6, 4)}) == {"y": "values"}  # the rule
    assert output_kinds(model, {"y": (6, 4)}, {"y": "scores"}) == {"y": "scores"}
    assert output_kinds(model, {"y": (6, 4)}, [("y", "values")]) == {"y": "values"}


@pytest.mark.parametrize("overrides, shapes, words", [
    ({"nope": "scores"}, {"y": (6, 4)}, "'nope' is not a floating-point output"),
    ({"y": "logits"}, {"y": (6, 4)}, "must be one of scores, values"),
    ({"y": "scores"}, {"y": (6, 4, 2)}, "2-D [N, C]"),
    ({"y": "scores"}, {"y": (6, 1)}, "C >= 2"),
])
def test_bad_override_is_a_value_error(overrides, shapes, words):
    from onnxprune.runtime.datasets import output_kinds

    with pytest.raises(ValueError) as err:
        output_kinds(mlp(sizes=SIZES), shapes, overrides)
    assert words in str(err.value)


# --------------------------------------------------------------------------- the loss actually used


def test_override_changes_the_loss_term():
    """The objective built for retraining compares ``y`` with KL at the temperature (not the
    variance-normalised squared error of the rule), and its loss is that KL."""
    import torch

    from onnxprune.runtime.datasets import input_specs
    from onnxprune.training.torch_bridge.module import build_module
    from onnxprune.training.torch_bridge.objective import distill_loss, match_objective

    dense, student = mlp(sizes=SIZES, seed=0), mlp(sizes=SIZES, seed=1)
    x = {"x": torch.from_numpy(np.random.default_rng(3).standard_normal((16, 8)).astype(np.float32))}

    def objective(overrides):
        module = build_module(student, ["y"])
        return module, match_objective("match", student, module, dense, input_specs(student),
                                       [x], None, 2.0, overrides)

    _, by_rule = objective(())
    assert [(t.kind, t.source) for t in by_rule.terms] == [("mse", "rule")]
    module, chosen = objective({"y": "scores"})
    assert [(t.kind, t.source) for t in chosen.terms] == [("kl", "--output-kind")]
    loss, outs = chosen.loss(module, x, None)
    with torch.no_grad():
        target = chosen.teacher(x, outputs=["y"])
    assert float(loss.detach()) == pytest.approx(float(distill_loss(outs["y"].detach(), target, 2.0)), rel=1e-5)
    row = chosen.report()["outputs"][0]
    assert row["treatment"].startswith("KL divergence at temperature 2") and row["source"] == "--output-kind"


# --------------------------------------------------------------------------- the command line


def test_compress_report_says_the_override(tmp_path, capsys):
    pytest.importorskip("torch")
    model, train, val = _files(tmp_path)
    code, out, err = run_cli(_compress(model, train, val, tmp_path / "rule.onnx"), capsys)
    assert code == 0, err
    rule = json.loads(out)
    assert _rows(rule)["y"]["treatment"].startswith("squared error")
    assert _rows(rule)["y"]["source"] == "rule"
    assert rule["accuracy_dense"]["measure"] == "1 - mean relative error"

    code, out, err = run_cli(_compress(model, train, val, tmp_path / "kl.onnx",
                                       "--output-kind", "y=scores"), capsys)
    assert code == 0, err
    chosen = json.loads(out)
    assert _rows(chosen)["y"]["treatment"].startswith("KL divergence")
    assert _rows(chosen)["y"]["source"] == "--output-kind"
    assert chosen["config"]["output-kind"] == [["y", "scores"]]
    # validation follows the same choice: top-1 agreement with the dense model
    assert chosen["accuracy_dense"]["measure"] == "top-1 agreement with the dense model"
    assert chosen["accuracy_final"]["outputs"]["y"]["kind"] == "scores"


@pytest.mark.parametrize("flag, words", [
    ("nope=scores", "'nope' is not a floating-point output of the model"),
    ("y=logits", "must be one of scores, values"),
])
@pytest.mark.parametrize("command", ["compress", "finetune"])
def test_bad_name_or_kind_exits_2(tmp_path, capsys, command, flag, words):
    pytest.importorskip("torch")
    model, train, val = _files(tmp_path)
    out = tmp_path / "out.onnx"
    argv = _compress(model, train, val, out, "--output-kind", flag)
    if command == "finetune":
        argv = ["finetune", model, "-o", str(out), "--train", train, "--val", val,
                "--teacher", model, "--output-kind", flag, "-q"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("onnxprune: error: ") and words in err, err
    assert stdout == "" and not out.exists()


def test_scores_on_a_3d_output_exits_2(tmp_path, capsys):
    pytest.importorskip("torch")
    model, train, val = _files(tmp_path, sequence_model(), shape=(5, 8))
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(_compress(model, train, val, out, "--output-kind", "out=scores"), capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("onnxprune: error: ") and "2-D [N, C]" in err, err
    assert stdout == "" and not out.exists()


def test_override_with_labels_objective_exits_2(tmp_path, capsys):
    """With labels nothing follows the dense model: the flag would be silently unused."""
    pytest.importorskip("torch")
    model, train, val = _files(tmp_path)
    out = tmp_path / "out.onnx"
    rng = np.random.default_rng(4)
    np.savez(train, x=rng.standard_normal((32, 8)).astype(np.float32), y=rng.integers(0, 4, 32))
    np.savez(val, x=rng.standard_normal((16, 8)).astype(np.float32), y=rng.integers(0, 4, 16))
    code, stdout, err = run_cli(_compress(model, train, val, out, "--output-kind", "y=scores"), capsys)
    assert code == 2
    assert err.count("\n") == 1 and "objective labels follows none" in err, err
    assert not out.exists()


# --------------------------------------------------------------------------- the Python API


def test_api_keyword(tmp_path):
    pytest.importorskip("torch")
    import onnxprune

    model, train, val = _files(tmp_path)
    report = onnxprune.finetune(model, str(tmp_path / "ft.onnx"), train=train, val=val,
                                teacher=model, epochs=1, lr=0.01, output_kind={"y": "scores"})
    assert _rows(report)["y"]["treatment"].startswith("KL divergence")
    assert _rows(report)["y"]["source"] == "--output-kind"
    assert report["accuracy_after"]["outputs"]["y"]["kind"] == "scores"
    with pytest.raises(ValueError, match="not a floating-point output"):
        onnxprune.compress(model, str(tmp_path / "c.onnx"), train=train, val=val,
                           output_kind={"z": "values"})
    assert not (tmp_path / "c.onnx").exists()


# --------------------------------------------------------------------------- sensitivity


def _sensitivity(tmp_path, name, *extra):
    model, _, val = _files(tmp_path)
    return ["sensitivity", model, "--val", val, "-o", str(tmp_path / name), "--grid", "50,90",
            "--no-plot", "-q", *extra]


def test_sensitivity_measures_the_chosen_kind(tmp_path, capsys):
    """Label-free sensitivity compares ``y`` as scores when told: every top-1 is then an
    agreement, a whole number of the 16 val samples; by the rule it is 1 − relative error."""
    code, _, err = run_cli(_sensitivity(tmp_path, "rule"), capsys)
    assert code == 0, err
    code, _, err = run_cli(_sensitivity(tmp_path, "kl", "--output-kind", "y=scores"), capsys)
    assert code == 0, err

    def top1s(name):
        report = json.loads((tmp_path / name / "sensitivity.json").read_text())
        return [p["top1"] for layer in report["layers"] for p in layer["points"]]

    agreements, by_rule = top1s("kl"), top1s("rule")
    assert all(abs(16 * t - round(16 * t)) < 1e-9 for t in agreements)
    assert any(abs(16 * t - round(16 * t)) > 1e-6 for t in by_rule)


def test_sensitivity_bad_override_exits_2(tmp_path, capsys):
    code, stdout, err = run_cli(_sensitivity(tmp_path, "out", "--output-kind", "nope=scores"), capsys)
    assert code == 2
    assert err.count("\n") == 1 and "'nope' is not a floating-point output" in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("chain", [["Identity"], ["Identity", "Identity"], ["Dropout"], []])
def test_the_rule_sees_a_softmax_through_pass_through_nodes(chain):
    """Paddle exports end Softmax -> Identity -> output: class scores, as without the Identity
    (the rule read the output's own producer only and took it as values). A Relu is no
    pass-through: behind it the output is values."""
    from onnxprune.runtime.datasets import output_kinds

    def model(tail_ops):
        nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["t0"], axis=1)]
        for i, op in enumerate(tail_ops):
            nodes.append(helper.make_node(op, [f"t{i}"], [f"t{i + 1}"]))
        nodes.append(helper.make_node("Identity", [f"t{len(tail_ops)}"], ["out"]) if tail_ops else
                     helper.make_node("Identity", ["t0"], ["out"]))
        g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3])],
                              [numpy_helper.from_array(np.ones((8, 3), np.float32), "w")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    assert output_kinds(model(chain), {"out": (4, 3)}) == {"out": "scores"}
    assert output_kinds(model(["Relu", *chain]), {"out": (4, 3)}) == {"out": "values"}
