"""Determinism: the same input and options give byte-identical files, across runs and across
processes (with different hash seeds), for external data, portable sparse output and torch
exports; and the report's sha256 and size of every file it wrote match the files.

tests/test_cli.py already covers an embedded CNN (in process and across two processes).
"""

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import data_file, save_external
from tests.models import cnn, mlp


def _prune_in_subprocess(src, out, hash_seed, *extra):
    env = dict(os.environ, PYTHONHASHSEED=str(hash_seed))
    report = str(out) + ".json"
    r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", str(src), "-o", str(out),
                        "--json", report, "-q", *extra], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    with open(report) as f:
        return json.load(f)


def _files(report):
    return {os.path.basename(o["path"]): open(o["path"], "rb").read() for o in report["outputs"]}


def _assert_report_hashes(report):
    assert report["outputs"], "the report lists no files"
    for o in report["outputs"]:
        data = open(o["path"], "rb").read()
        assert hashlib.sha256(data).hexdigest() == o["sha256"], o["path"]
        assert len(data) == o["bytes"] == os.path.getsize(o["path"])
    assert report["size"]["output_bytes"] == sum(o["bytes"] for o in report["outputs"])


def _twice(tmp_path, src, *extra):
    reports = []
    for i, seed in enumerate((1, 2)):
        d = tmp_path / f"run{i}"
        d.mkdir()
        reports.append(_prune_in_subprocess(src, d / "out.onnx", seed, *extra))
    for rep in reports:
        _assert_report_hashes(rep)
    a, b = (_files(r) for r in reports)
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], f"{name} differs between two processes"
    return reports


def test_external_data_output_is_deterministic(tmp_path):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = src_dir / "m.onnx"
    save_external(mlp(sizes=(256, 128, 64, 10)), str(src))
    # Dense storage: portable would embed every (sparse) weight and need no data file.
    reports = _twice(tmp_path, src, "--target-sparsity", "0.8", "--emit", "dense")
    names = [os.path.basename(o["path"]) for o in reports[0]["outputs"]]
    assert names[0] == "out.onnx" and names[1].startswith("out.onnx.") and names[1].endswith(".data")
    assert names[1].split(".")[2] == reports[0]["outputs"][1]["sha256"][:16]


def test_portable_sparse_output_is_deterministic(tmp_path):
    src = tmp_path / "cnn.onnx"
    onnx.save(cnn(channels=(3, 16, 32), classes=10), src)
    reports = _twice(tmp_path, src, "--target-sparsity", "0.9", "--emit", "portable")
    assert reports[0]["sparse_initializers"], "nothing was stored sparse"
    model = onnx.load(reports[0]["outputs"][0]["path"])
    for sp in model.graph.sparse_initializer:
        idx = numpy_helper.to_array(sp.indices)
        assert idx.dtype == np.int64 and np.all(np.diff(idx) > 0)


def test_same_process_repeated_runs_are_identical(tmp_path):
    from onnxprune.cli import main

    src_dir = tmp_path / "in"
    src_dir.mkdir()
    save_external(mlp(sizes=(128, 64, 10)), str(src_dir / "m.onnx"))
    blobs = []
    for i in range(3):
        out = tmp_path / f"o{i}" / "out.onnx"
        out.parent.mkdir()
        assert main(["prune", str(src_dir / "m.onnx"), "-o", str(out), "-q",
                     "--target-sparsity", "0.95", "--emit", "dense"]) == 0
        blobs.append((out.read_bytes(), open(data_file(out), "rb").read()))
    assert blobs[0] == blobs[1] == blobs[2]


@pytest.mark.torch
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_torch_export_prune_is_deterministic(tmp_path, exporter):
    pytest.importorskip("torch")
    from tests.corpus import export_torch, torch_architectures

    _, factory, shape, dtype = next(a for a in torch_architectures() if a[0] == "residual-bn")
    src = tmp_path / "src" / "model.onnx"
    src.parent.mkdir()
    try:
        export_torch(factory, shape, dtype, exporter == "dynamo", str(src))
    except Exception as e:  # the exporter itself, not onnxprune
        pytest.skip(f"torch export failed: {type(e).__name__}")
    _twice(tmp_path, src, "--quality", "0.8")
