"""Reliability of the runtime side: ONNX Runtime sessions, numerics of the passes, reports.

Each test pins one promise of README "Exit codes and guarantees" / docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import main
from tests.models import mlp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _clean_env(home) -> dict:
    """The environment of a fresh user process: a private HOME, no telemetry switch set."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME", "PYTEST_CURRENT_TEST")}
    env["HOME"] = str(home)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _telemetry_files(home) -> list[str]:
    return [os.path.relpath(os.path.join(d, f), home)
            for d, _, files in os.walk(home) for f in files]


# --------------------------------------------------------------------------- telemetry


def test_no_telemetry_store_from_cli_and_library(tmp_path):
    """ONNX Runtime's Linux wheel writes an event store under ~/.cache when it is imported and
    tries to upload it ~10 s later.  A CLI run and a library session, in a process that stays
    alive past that delay, must leave HOME empty."""
    home = tmp_path / "home"
    home.mkdir()
    model = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(8, 6, 4)), model)
    script = textwrap.dedent(f"""
        import time
        import onnx
        from onnxprune.cli import main
        from onnxprune.check import make_session, random_inputs, run_session
        rc = main(["check", {str(model)!r}, {str(model)!r}, "-q"])
        assert rc == 0, rc
        m = onnx.load({str(model)!r})
        run_session(make_session(m), random_inputs(m))
        time.sleep(12.5)
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_clean_env(home), cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _telemetry_files(home) == []


def test_library_session_without_cli_sends_nothing(tmp_path):
    """The library alone (no CLI entry point) opens sessions with telemetry off."""
    home = tmp_path / "home"
    home.mkdir()
    script = textwrap.dedent("""
        from onnxprune import runtime_ops
        from onnxprune.evaluate import evaluate
        from tests.models import mlp
        import numpy as np
        m = mlp(sizes=(8, 6, 4))
        x = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
        evaluate(m, (x, np.zeros(5, np.int64)))
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=_clean_env(home), cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert _telemetry_files(home) == []
