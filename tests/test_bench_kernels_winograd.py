"""bench/bench_kernels.py --winograd: each 3x3 unit-stride conv case timed with CsrConv's
Winograd path too, beside its dense reference; other cases untouched."""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_kernels.py"


def _bench_kernels():
    """bench/bench_kernels.py as a module, imported from its folder (it imports bench_models)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import bench_kernels
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return bench_kernels


def _rows(tmp_path, match, *extra):
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--threads", "1", "--quick", "--json", str(out),
                        "--deepsparse-python", "none", "--match", match, *extra],
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(out.read_text())["results"], p.stdout


def test_a_3x3_case_gets_a_winograd_timing(tmp_path):
    rows, stdout = _rows(tmp_path, "512->512 3x3 7x7", "--winograd")
    assert len(rows) == 1
    r = rows[0]
    assert r["winograd_ms"] > 0 and r["winograd_speedup"] > 0
    assert r["best_met"] is None  # the case has no target
    assert "winograd" in stdout


def test_other_cases_and_runs_without_the_flag_have_none(tmp_path):
    rows, _ = _rows(tmp_path, "1x1/2", "--winograd")
    assert rows and all("winograd_ms" not in r for r in rows)
    rows, stdout = _rows(tmp_path, "512->512 3x3 7x7")
    assert rows and all("winograd_ms" not in r for r in rows) and "winograd" not in stdout


def test_the_winograd_model_is_the_csr_model_with_the_path_asked():
    import numpy as np
    import onnx

    from onnxprune import runtime_ops

    bench_kernels = _bench_kernels()
    _, sparse = bench_kernels.conv_models(16, 16, 3, 0.5, np.random.default_rng(0))
    wino = bench_kernels.with_winograd(sparse)
    a, b = onnx.load_from_string(sparse), onnx.load_from_string(wino)
    assert [at for n in a.graph.node for at in n.attribute if at.name == "winograd"] == []
    assert [at.i for n in b.graph.node for at in n.attribute if at.name == "winograd"] == [1]
    assert list(a.graph.initializer) == list(b.graph.initializer)  # the same weights
    x = {"X": np.random.default_rng(1).standard_normal((1, 16, 12, 12)).astype(np.float32)}
    (ya,) = runtime_ops.InferenceSession(sparse).run(None, x)
    (yb,) = runtime_ops.InferenceSession(wino).run(None, x)
    assert np.max(np.abs(ya - yb)) <= 1e-4 * np.max(np.abs(ya))
