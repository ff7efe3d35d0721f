"""bench/bridge_coverage.py on models built in code: a row per model, offline included."""

from __future__ import annotations

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bridge_coverage.py"


@pytest.fixture(scope="module")
def cov():
    spec = importlib.util.spec_from_file_location("bridge_coverage", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _resize_detector(elem=TensorProto.FLOAT):
    """Conv → Resize ×2 (symbolic H, W) → Conv: a detector's upsampling neck in miniature."""
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Resize", ["c1", "", "scales"], ["up"], mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Conv", ["up", "w2"], ["y"], pads=[1, 1, 1, 1]),
    ]
    inits = [numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((2, 4, 3, 3)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    graph = helper.make_graph(nodes, "det", [helper.make_tensor_value_info("x", elem, ["n", 3, "h", "w"])],
                              [helper.make_tensor_value_info("y", elem, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_a_model_that_builds_matches_and_trains_is_ok(cov):
    row = cov.check_model("det", "code", _resize_detector(), {"h": 16, "w": 20})
    assert row.builds == "yes" and row.rel_err <= cov.TOL and row.grads == "2/2" and row.ok


def test_an_unsupported_op_is_a_failed_row_naming_it(cov):
    model = _resize_detector()
    model.graph.node[1].op_type = "GridSample"
    row = cov.check_model("det", "code", model, {})
    assert row.builds == "no" and "GridSample" in row.note and not row.ok
    assert "FAIL" in cov.markdown([row], "cmd")


def test_offline_download_is_a_skipped_row(cov, tmp_path, monkeypatch):
    monkeypatch.setattr(cov.subprocess, "run",
                        lambda *a, **k: subprocess.CompletedProcess(a, 1, b"", b"no network"))
    rows = list(cov.pypi_models(str(tmp_path), "silero"))
    assert rows == [("silero-vad==6.2.3", "silero-vad==6.2.3", None, "not downloaded (offline?)")]
