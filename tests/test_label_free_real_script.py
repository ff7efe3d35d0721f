"""bench/label_free_real.py on a model built in code: the label-free compress row (exit code,
the written model run in ONNX Runtime, held-out fidelity) and an offline case skipped."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import numpy as np
import pytest

from tests.test_label_free import inputs, two_head

pytest.importorskip("torch")
pytestmark = pytest.mark.torch

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "bench" / "label_free_real.py"


@pytest.fixture(scope="module")
def lf():
    sys.path.insert(0, str(SCRIPT.parent))  # the script imports bridge_coverage beside it
    spec = importlib.util.spec_from_file_location("label_free_real", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_row_of_a_label_free_run(lf, tmp_path):
    case = lf.Case("two_head", "built in the test", "Gaussian rows", lambda _c: two_head(),
                   lambda model, n, seed: {"x": inputs(n, seed)}, (64, 32, 32))
    row = lf.run_case(case, str(tmp_path), str(tmp_path / "work"), epochs=1, iterations=1, threads=1,
                      retrain=["--lr", "0.01"])
    assert row.exit_code == 0, row.note
    assert row.runs_in_ort == "yes"
    assert row.sparsity == pytest.approx(0.5, abs=0.02) and row.ratio == pytest.approx(2.0, rel=0.05)
    assert row.objective.startswith("match (probs: KL") and "box: squared error" in row.objective
    assert row.fidelity.startswith("probs: agreement ") and "box: rel. err " in row.fidelity
    assert "label" not in row.fidelity.split(";")[-1].split(":")[0]  # integer output left out
    assert (tmp_path / "work" / "two_head" / "pruned.onnx").exists()


def test_offline_case_is_skipped(lf, tmp_path):
    case = lf.Case("gone", "a wheel", "-", lambda _c: None, lambda *a: {})
    row = lf.run_case(case, str(tmp_path), str(tmp_path / "work"), 1, 1, 1, [])
    assert row.exit_code is None and row.note.startswith("skipped")
    assert "| gone |" in lf.markdown([row], "cmd", 1)


def test_fidelity_measures(lf):
    dense = {"p": np.array([[0.9, 0.1], [0.2, 0.8]]), "v": np.array([3.0, 4.0])}
    pruned = {"p": np.array([[0.6, 0.4], [0.7, 0.3]]), "v": np.array([3.0, 4.5])}
    text = lf.fidelity(dense, pruned, {"p": "scores", "v": "values"}, two_head())
    assert text == "p: agreement 50.0%; v: rel. err 0.100"
