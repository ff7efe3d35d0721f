"""bench/winograd_probe.py: a small layer built, run and checked against float64; bad layers refused."""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "winograd_probe.py"


def _run(*args):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("layers", ["64x64", "16x12x8", "16x16x10", "0x16x8", "abc"])
def test_a_layer_it_cannot_run_is_a_usage_error(layers):
    p = _run("--layers", layers)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines()[-1].startswith("winograd_probe.py: error: --layers item")


def _has_avx512f() -> bool:
    try:
        return "avx512f" in pathlib.Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


@pytest.mark.skipif(shutil.which("c++") is None or not _has_avx512f(), reason="needs a C++ compiler and AVX-512F")
def test_a_small_layer_runs_and_matches_a_direct_convolution(tmp_path):
    out = tmp_path / "probe.json"
    p = _run("--layers", "16x16x8,8x24x12", "--rounds", "2", "--json", out)
    assert p.returncode == 0, p.stderr
    rows = json.loads(out.read_text())["layers"]
    assert [r["layer"] for r in rows] == ["16x16x8", "8x24x12"]
    for r in rows:
        assert 0 <= r["rel_err"] < 1e-4  # F(4x4, 3x3) against float64: ~1e-6 to 1e-5 here
        assert r["median_ms"] > 0 and r["ort_dense_ms"] > 0 and r["speedup_vs_ort"] > 0
        assert r["input_ms"] + r["products_ms"] + r["output_ms"] > 0
    assert "3x3 16 -> 16 on 8x8" in p.stdout and "3x3 8 -> 24 on 12x12" in p.stdout
