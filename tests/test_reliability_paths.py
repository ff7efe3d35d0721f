"""Output paths: a refused or failed analysis run leaves no folder behind, ``-o -`` is not a
file, and paths echoed in info lines cannot drive the terminal."""

import os

import numpy as np
import onnx

from tests.models import mlp
from tests.conftest import run_cli


def _run(argv, capsys):
    return run_cli(argv, capsys)


def test_report_of_a_missing_model_leaves_no_output_folder(tmp_path, capsys):
    out = tmp_path / "newrep"
    code, _, err = _run(["report", str(tmp_path / "missing.onnx"), "-o", str(out),
                         "--no-figures", "-q"], capsys)
    assert code == 4, err
    assert not out.exists()


def test_sensitivity_refused_for_its_data_leaves_no_output_folder(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), model)
    val = tmp_path / "val.npz"
    np.savez(val, x=np.zeros((4, 16), np.float32), y=np.zeros(3, np.int64))  # 4 rows, 3 labels
    out = tmp_path / "sens"
    code, _, err = _run(["sensitivity", str(model), "--val", str(val), "-o", str(out),
                         "--no-plot", "-q"], capsys)
    assert code in (2, 4), err
    assert not out.exists()


def test_report_writes_into_a_folder_it_creates(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), model)
    out = tmp_path / "rep"
    code, _, err = _run(["report", str(model), "-o", str(out), "--no-figures", "-q"], capsys)
    assert code == 0, err
    assert {"report.md", "report.html", "report.json"} <= set(os.listdir(out))


def test_model_output_to_stdout_is_a_usage_error(tmp_path, capsys, monkeypatch):
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), model)
    monkeypatch.chdir(tmp_path)
    code, _, err = _run(["prune", str(model), "-o", "-", "-q"], capsys)
    assert code == 2, err
    assert "-o -" in err
    assert not (tmp_path / "-").exists()


def test_paths_in_info_lines_are_escaped(tmp_path, capsys):
    model = tmp_path / "m.onnx"
    onnx.save(mlp(), model)
    out = tmp_path / "o\x1b[2JX.onnx"
    code, _, err = _run(["prune", str(model), "-o", str(out)], capsys)
    assert code == 0, err
    assert out.exists()
    assert "\x1b[2J" not in err
    assert "\\x1b[2J" in err
