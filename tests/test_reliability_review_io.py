"""A hostile second pass over the output checks and the model loader.

* an output path that can only name a folder (``out.json/``) is refused before anything is
  written, with exit 2 — not after the model has been written;
* ``finetune``, which torchrun runs as ``python -m onnxprune.cli finetune``, runs the same checks
  as the CLI: ``--json`` never overwrites an input or the model it writes, and a bad number is
  the CLI's one-line error with exit 2.
"""

import os

import numpy as np
import onnx
import pytest

from tests.models import mlp
from tests.conftest import labelled_npz, run_cli


def _run(argv, capsys):
    return run_cli(argv, capsys)


def _model(tmp_path, name="m.onnx"):
    path = tmp_path / name
    onnx.save(mlp(sizes=(16, 12, 8, 4)), str(path))
    return str(path)


_npz = labelled_npz


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --------------------------------------------------------------------------- folder-only names


@pytest.mark.parametrize("option", ["-o", "--json"])
def test_a_path_ending_in_a_separator_is_refused_before_any_write(tmp_path, capsys, option):
    """``x/`` names a folder that does not exist: exit 2 before the model is written (the model
    written and then the report refused would be a partial output)."""
    src = _model(tmp_path)
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    argv = ["prune", src, "-o", str(out), "--json", str(report), "-q"]
    argv[argv.index(option) + 1] += os.sep
    code, _, err = _run(argv, capsys)
    assert code == 2, err
    assert "onnxprune: error:" in _one_error_line(err)
    assert sorted(os.listdir(tmp_path)) == ["m.onnx"]


# --------------------------------------------------------------------------- finetune (torchrun runs it too)


@pytest.mark.parametrize("target", ["model", "train", "val", "output", "output_data"])
def test_finetune_json_never_overwrites_an_input_or_its_output(tmp_path, capsys, target):
    pytest.importorskip("torch")
    src, train, val = _model(tmp_path), _npz(tmp_path, "t.npz"), _npz(tmp_path, "v.npz", seed=1)
    out = str(tmp_path / "o.onnx")
    json_path = {"model": src, "train": train, "val": val, "output": out,
                 "output_data": out + ".data"}[target]
    before = {p: open(p, "rb").read() for p in (src, train, val)}
    code, _, err = _run(["finetune", src, "--train", train, "--val", val, "-o", out, "--json", json_path,
                            "--epochs", "1", "--lr", "0.01"], capsys)
    assert code == 2, err
    assert _one_error_line(err).startswith("onnxprune: error:")
    assert {p: open(p, "rb").read() for p in before} == before
    assert not os.path.exists(out)


@pytest.mark.parametrize("args", [["--seed", "-1"], ["--seed", str(2**32)]])
def test_finetune_bad_numbers_are_one_line_exit_2(tmp_path, capsys, args):
    pytest.importorskip("torch")
    src, train = _model(tmp_path), _npz(tmp_path, "t.npz")
    code, _, err = _run(["finetune", src, "--train", train, "-o", str(tmp_path / "o.onnx"),
                            "--lr", "0.01", *args], capsys)
    assert code == 2, err
    assert _one_error_line(err).startswith("onnxprune: error:")
    assert not os.path.exists(tmp_path / "o.onnx")


# --------------------------------------------------------------------------- data-file deletion


@pytest.mark.parametrize("other", ["B.ONNX", "b.Onnx", "a.onnx.bak", "a.onnx.orig"])
def test_a_data_file_a_model_under_another_extension_uses_is_kept(tmp_path, other):
    """A copy of an earlier output saved as ``B.ONNX`` or ``a.onnx.bak`` is a model too: its data
    file stays when ``a.onnx`` is rewritten."""
    import glob

    from onnxprune.core import io

    a = tmp_path / "a.onnx"
    io.save(mlp(sizes=(64, 48, 10), seed=0), a, external_data=True)
    (first,) = glob.glob(str(a) + ".*.data")
    (tmp_path / other).write_bytes(a.read_bytes())
    io.save(mlp(sizes=(64, 48, 10), seed=1), a, external_data=True)
    assert os.path.exists(first)
    copy = onnx.load(str(tmp_path / other))  # onnx reads the data file beside it
    assert copy.graph.initializer[0].raw_data


# --------------------------------------------------------------------------- names in subgraphs


def _if_model(then_nodes, after=()):
    """y = x·W, z = If(c, then: ``then_nodes`` ending in t_out, else: x), then ``after``."""
    from onnx import TensorProto, helper, numpy_helper

    vi = lambda n: helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4])  # noqa: E731
    then = helper.make_graph(then_nodes, "then", [], [vi("t_out")])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["e_out"])], "else", [],
                              [vi("e_out")])
    nodes = [helper.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
             helper.make_node("If", ["c"], ["z"], then_branch=then, else_branch=other),
             *after]
    g = helper.make_graph(nodes, "g", [vi("x"), helper.make_tensor_value_info(
        "c", TensorProto.BOOL, [])], [vi("y"), vi("z"), *(vi(n.output[0]) for n in after)],
        [numpy_helper.from_array(np.eye(4, dtype=np.float32), "W")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


@pytest.mark.parametrize("name", ["W", "x", "y"])  # initializer, graph input, earlier output
def test_a_subgraph_node_rewriting_an_outer_name_is_refused(tmp_path, capsys, name):
    """onnx.checker and ONNX Runtime refuse a branch node whose output reuses a name already
    defined around it (single assignment): so does onnxprune, with exit 4."""
    from onnx import helper

    source = "W" if name == "x" else "x"
    m = _if_model([helper.make_node("Identity", [source], [name]),
                   helper.make_node("Identity", [name], ["t_out"])])
    with pytest.raises(onnx.checker.ValidationError):
        onnx.checker.check_model(m)
    src = tmp_path / "m.onnx"
    onnx.save(m, str(src))
    code, _, err = _run(["prune", str(src), "-o", str(tmp_path / "o.onnx"), "-q"], capsys)
    assert code == 4, err
    assert repr(name) in _one_error_line(err)
    assert not os.path.exists(tmp_path / "o.onnx")


def test_subgraph_names_defined_after_their_node_stay_valid(tmp_path, capsys):
    """A branch may name a value like the If's own output or like a later node's output: both
    load in onnx and ONNX Runtime, and are carried through."""
    from onnx import helper

    m = _if_model([helper.make_node("Identity", ["x"], ["z"]),
                   helper.make_node("Identity", ["x"], ["q"]),
                   helper.make_node("Add", ["z", "q"], ["t_out"])],
                  after=[helper.make_node("Identity", ["z"], ["q"])])
    onnx.checker.check_model(m)
    src = tmp_path / "m.onnx"
    onnx.save(m, str(src))
    code, _, err = _run(["prune", str(src), "-o", str(tmp_path / "o.onnx"), "-q"], capsys)
    assert code == 0, err
