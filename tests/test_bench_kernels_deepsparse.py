"""bench/bench_kernels.py's DeepSparse column, run against a stand-in `deepsparse` package.

DeepSparse itself lives in its own virtual environment (bench/deepsparse_ref.py), so these tests
give bench_kernels an interpreter whose `deepsparse` is a few lines over ONNX Runtime: the whole
path runs (the model written with a static input shape, the subprocess, the outputs compared
with ONNX Runtime's) without the engine.
"""

from __future__ import annotations

import json
import os
import pathlib
import stat
import subprocess
import sys

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "bench_kernels.py"

# compile_model refuses a model whose input has a symbolic or missing dimension, as the real
# engine compiles for fixed shapes; ONNXPRUNE_TEST_DS_SCALE scales its outputs (a wrong engine).
FAKE = '''
import os
import onnxruntime as ort
__version__ = "0.0-stand-in"

def compile_model(path, batch_size, num_cores):
    s = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for i in s.get_inputs():
        if not all(isinstance(d, int) and d > 0 for d in i.shape):
            raise ValueError(f"input {i.name} is not static: {i.shape}")
        if i.shape[0] != batch_size:
            raise ValueError("batch size")
    scale = float(os.environ.get("ONNXPRUNE_TEST_DS_SCALE", "1"))

    class Engine:
        def run(self, xs):
            outs = s.run(None, {i.name: x for i, x in zip(s.get_inputs(), xs)})
            return [o * scale for o in outs]

    return Engine()
'''


def _interpreter(tmp_path: pathlib.Path) -> pathlib.Path:
    pkg = tmp_path / "site" / "deepsparse"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(FAKE)
    wrapper = tmp_path / "ds-python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH="{tmp_path / "site"}" exec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    return wrapper


def _run(tmp_path, *args, env=None, stderr=False):
    out = tmp_path / "out.json"
    p = subprocess.run([sys.executable, str(SCRIPT), "--threads", "1", "--quick", "--json", str(out), *args],
                       capture_output=True, text=True, timeout=600, env={**os.environ, **(env or {})})
    assert p.returncode == 0, p.stderr[-2000:]
    if stderr:
        return p.stdout, json.loads(out.read_text()), p.stderr
    return p.stdout, json.loads(out.read_text())


def test_each_row_has_deepsparse_timing_of_the_static_dense_model(tmp_path):
    py = _interpreter(tmp_path)
    stdout, report = _run(tmp_path, "--match", "Conv 128->128 3x3 28x28", "--deepsparse-python", py)
    assert report["machine"]["deepsparse_python"] == str(py)
    rows = report["results"]
    assert len(rows) == 1
    ds = rows[0]["deepsparse"]
    assert ds["status"] == "ok", ds
    assert ds["batch"] == 1 and ds["threads"] == 1 and ds["median_ms"] > 0
    assert ds["max_abs_error"] <= ds["atol"]
    assert "DeepSparse" in stdout and f"{ds['median_ms']:.3f} ms" in stdout


def test_wrong_outputs_are_reported_not_timed_as_ok(tmp_path):
    py = _interpreter(tmp_path)
    stdout, report = _run(tmp_path, "--match", "Conv 128->128 3x3 28x28", "--deepsparse-python", py,
                          env={"ONNXPRUNE_TEST_DS_SCALE": "1.5"})
    assert report["results"][0]["deepsparse"]["status"] == "MISMATCH"
    assert "DeepSparse MISMATCH" in stdout


def test_no_column_without_an_interpreter(tmp_path):
    stdout, report = _run(tmp_path, "--match", "Conv 128->128 3x3 28x28", "--deepsparse-python", "none")
    assert report["machine"]["deepsparse_python"] is None
    assert "deepsparse" not in report["results"][0]
    assert "DeepSparse" not in stdout


def test_an_unusable_interpreter_is_named_and_skipped(tmp_path):
    not_executable = tmp_path / "python-not-executable"
    not_executable.write_text("#!/bin/sh\n")
    for path in (not_executable, tmp_path / "missing" / "python"):
        stdout, report, err = _run(tmp_path, "--match", "Conv 128->128 3x3 28x28", "--deepsparse-python", path,
                                   stderr=True)
        assert report["machine"]["deepsparse_python"] is None
        assert "deepsparse" not in report["results"][0]
        assert f"deepsparse: {path} is not an interpreter with deepsparse; column skipped" in err
