"""bench/ab_library.py on a small lowered convolution: both builds run, outputs compared."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnxprune import runtime_ops
from onnxprune.core.graph import graph_from_model, graph_to_model
from onnxprune.passes.lower_to_sparse_ops import LowerToSparseOps

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "ab_library.py"


def _models(tmp_path, dims=(1, 8, 12, 12)):
    rng = np.random.default_rng(3)
    w = rng.standard_normal((16, 8, 1, 1)).astype(np.float32)
    w[rng.random(w.shape) < 0.8] = 0.0
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(dims))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dims[0], 16, *dims[2:]])],
        initializer=[numpy_helper.from_array(w, "w")])
    dense = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    lowered = graph_to_model(LowerToSparseOps({"force": ["*"]})(graph_from_model(dense)).graph, dense)
    assert any(n.op_type == "CsrConv" for n in lowered.graph.node)
    paths = tmp_path / "dense.onnx", tmp_path / "lowered.onnx"
    onnx.save(dense, paths[0])
    onnx.save(lowered, paths[1])
    return paths


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def test_the_same_build_on_both_sides_gives_identical_outputs(tmp_path):
    dense, lowered = _models(tmp_path)
    done = _run("--dense", dense, "--lowered", lowered, "--baseline-lib", runtime_ops.library_path(),
                "--rounds", 3)
    assert done.returncode == 0, done.stderr
    assert "baseline and current outputs identical" in done.stdout
    assert "current / baseline speed" in done.stdout
    for line in done.stdout.splitlines():
        if "max relative difference from dense" in line:
            assert float(line.rsplit(" ", 1)[1]) < 1e-5


def test_a_missing_baseline_library_is_a_usage_error(tmp_path):
    dense, lowered = _models(tmp_path)
    done = _run("--dense", dense, "--lowered", lowered, "--baseline-lib", tmp_path / "nope.so")
    assert done.returncode == 2
    assert "no such file" in done.stderr


def test_symbolic_image_sizes_take_input_shape(tmp_path):
    dense, lowered = _models(tmp_path, dims=("n", 8, "h", "w"))
    done = _run("--dense", dense, "--lowered", lowered, "--baseline-lib", runtime_ops.library_path(),
                "--rounds", 2, "--input-shape", "x=1x8x9x7")
    assert done.returncode == 0, done.stderr
    assert "baseline and current outputs identical" in done.stdout
    wrong = _run("--dense", dense, "--lowered", lowered, "--baseline-lib", runtime_ops.library_path(),
                 "--input-shape", "images=1x3x8x8")
    assert wrong.returncode == 2
    assert "no such input" in wrong.stderr and "Traceback" not in wrong.stderr


def test_two_lowerings_on_the_installed_library(tmp_path):
    dense, lowered = _models(tmp_path)
    other = tmp_path / "other.onnx"
    model = onnx.load(lowered)
    for node in model.graph.node:
        if node.op_type == "CsrConv":  # the same function, said explicitly
            node.attribute.append(helper.make_attribute("winograd", 0))
    onnx.save(model, other)
    done = _run("--dense", dense, "--lowered", lowered, "--baseline-lowered", other, "--rounds", 2)
    assert done.returncode == 0, done.stderr
    assert "baseline and current outputs identical" in done.stdout
    both = _run("--dense", dense, "--lowered", lowered, "--baseline-lowered", other,
                "--baseline-lib", runtime_ops.library_path())
    assert both.returncode == 2 and "not allowed with" in both.stderr
    missing = _run("--dense", dense, "--lowered", lowered, "--baseline-lowered", tmp_path / "nope.onnx")
    assert missing.returncode == 2 and "no such file" in missing.stderr
