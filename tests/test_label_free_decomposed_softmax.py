"""Class scores written as ``exp(z) / Σ exp(z)`` (exporters such as jax2tf decompose Softmax:
magika's ``target_label`` is ``Div(Exp(z), Expand(Reshape(ReduceSum(Exp(z)))))``) are scores:
followed with KL on ``z`` and validated by top-1 agreement, as a Softmax output is."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import run_cli

pytest.importorskip("torch")


def decomposed(seed=0, features=8, classes=5, denominator="sum"):
    """x[N, 8] -> Gemm 16 -> Relu -> Gemm 5 = z -> Exp -> Div by (ReduceSum -> Reshape -> Expand)
    -> "target" [N, 5]; ``denominator="const"`` divides by a constant instead (not a softmax)."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 1 / np.sqrt(features), (16, features)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.25, (classes, 16)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1, 1], np.int64), "col"),
             numpy_helper.from_array(np.array([1, classes], np.int64), "wide"),
             numpy_helper.from_array(np.array(3.0, np.float32), "three")]
    nodes = [helper.make_node("Gemm", ["x", "w1"], ["h"], name="fc1", transB=1),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Gemm", ["r", "w2"], ["z"], name="fc2", transB=1),
             helper.make_node("Exp", ["z"], ["e"])]
    if denominator == "sum":
        nodes += [helper.make_node("ReduceSum", ["e", "axes"], ["s"], keepdims=0),
                  helper.make_node("Reshape", ["s", "col"], ["s2"]),
                  helper.make_node("Expand", ["s2", "wide"], ["d"])]
    else:
        nodes.append(helper.make_node("Identity", ["three"], ["d"]))
    nodes.append(helper.make_node("Div", ["e", "d"], ["target"]))
    graph = helper.make_graph(nodes, "decomposed",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
                              [helper.make_tensor_value_info("target", TensorProto.FLOAT, ["N", classes])],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_decomposed_softmax_is_scores():
    from onnxprune.runtime.datasets import output_kinds

    assert output_kinds(decomposed(), {"target": (4, 5)}) == {"target": "scores"}
    # exp(z) / 3 is not a softmax: values
    assert output_kinds(decomposed(denominator="const"), {"target": (4, 5)}) == {"target": "values"}


def test_kl_follows_the_logits_behind_a_decomposed_softmax():
    from onnxprune.training.torch_bridge import build_module
    from onnxprune.training.torch_bridge.objective import logits_name

    assert logits_name(build_module(decomposed()), 17, "target") == "z"
    assert logits_name(build_module(decomposed(denominator="const")), 17, "target") == "target"


def test_compress_label_free_follows_decomposed_scores(tmp_path, capsys):
    path, out = tmp_path / "m.onnx", tmp_path / "out.onnx"
    onnx.save(decomposed(), path)
    data = tmp_path / "d.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32))
    code, stdout, err = run_cli(["compress", str(path), "-o", str(out), "--train", str(data), "--val",
                                 str(data), "--target-sparsity", "0.5", "--iterations", "1", "--epochs",
                                 "1", "--lr", "0.01", "--json", "-", "-q"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    [term] = report["objective"]["outputs"]
    assert term["output"] == "target" and "class scores" in term["treatment"]
    assert report["accuracy_final"]["measure"].startswith("top-1 agreement")
