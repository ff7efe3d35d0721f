"""One npz loader: `check --data` and `sensitivity --val` refuse a bad data file alike."""

import os
import zipfile

import numpy as np
import onnx
import pytest

from onnxprune.cli import main
from tests.models import mlp


def _bad_files(folder) -> dict[str, str]:
    """A missing file, a bare .npy, a truncated archive, an object array, a folder."""
    paths = {}
    paths["missing"] = os.path.join(folder, "missing.npz")
    paths["npy"] = os.path.join(folder, "x.npy")
    np.save(paths["npy"], np.zeros((2, 16), np.float32))
    good = os.path.join(folder, "good.npz")
    np.savez(good, x=np.zeros((2, 16), np.float32), y=np.zeros(2, np.int64))
    paths["truncated"] = os.path.join(folder, "truncated.npz")
    with open(good, "rb") as f, open(paths["truncated"], "wb") as g:
        g.write(f.read()[:40])
    paths["object"] = os.path.join(folder, "object.npz")
    np.savez(paths["object"], x=np.array([{}, None], dtype=object), y=np.zeros(2, np.int64))
    paths["folder"] = os.path.join(folder, "dir.npz")
    os.mkdir(paths["folder"])
    assert zipfile.is_zipfile(paths["object"])
    return paths


def _error(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("onnxprune: error: "), err
    return code, err[0]


@pytest.mark.parametrize("kind", ["missing", "npy", "truncated", "object", "folder"])
def test_check_and_sensitivity_refuse_a_bad_data_file_alike(tmp_path, capsys, kind):
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), model)
    bad = _bad_files(tmp_path)[kind]
    code_check, line_check = _error(capsys, "check", model, model, "--data", bad)
    code_sens, line_sens = _error(capsys, "sensitivity", model, "--val", bad, "-o", tmp_path / "s")
    assert code_check == code_sens == 4
    assert line_check == line_sens
    assert repr(bad) in line_check  # names the file
