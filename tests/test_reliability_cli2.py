"""Command-line promises under hostile arguments: no output over an input, bounded work on small
inputs, exit codes and one-line errors as documented, and tables that say what was written.

Each test names the promise it holds (README "Exit codes and guarantees").
"""

import json
import os
import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.cli import app as cli_app
from onnxprune.cli import output as cli_output
from tests.conftest import labelled_npz, run_cli, save_external
from tests.models import mlp


def _run(argv, capsys):
    return run_cli(argv, capsys)


def _error_line(err: str) -> str:
    """The one error line of stderr (usage lines of argparse come before it)."""
    lines = [ln for ln in err.splitlines() if ln.startswith("onnxprune: ")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    return lines[0]


def _model(tmp_path, name="m.onnx", **kw):
    path = tmp_path / name
    onnx.save(mlp(sizes=(16, 12, 8, 4), **kw), str(path))
    return str(path)


def _digest(paths):
    return {p: open(p, "rb").read() for p in paths}


_npz = labelled_npz


# --------------------------------------------------------------------------- no output over an input


def _overwrite_cases(tmp_path):
    m = _model(tmp_path)
    ext = str(tmp_path / "e.onnx")
    save_external(mlp(sizes=(16, 12, 4)), ext)
    ext_data = ext + ".data"
    recipe = tmp_path / "r.yaml"
    recipe.write_text("emit: dense\n")
    data = _npz(tmp_path)
    link = str(tmp_path / "hardlink.onnx")
    os.link(m, link)
    o = str(tmp_path / "o.onnx")
    train = ["--train", data, "--val", data, "--epochs", "1"]
    return {
        "prune --json over the model": (["prune", m, "-o", o, "--json", m], [m]),
        "prune --json over the external data": (["prune", ext, "-o", o, "--json", ext_data],
                                                [ext, ext_data]),
        "prune -o over the recipe": (["prune", m, "-o", str(recipe), "--recipe", str(recipe)],
                                     [m, str(recipe)]),
        "prune --json over the recipe": (["prune", m, "-o", o, "--recipe", str(recipe),
                                          "--json", str(recipe)], [str(recipe)]),
        "prune -o over a hard link of the model": (["prune", m, "-o", link], [m]),
        "prune --in-place --json over the model": (["prune", m, "-o", m, "--in-place",
                                                    "--json", m], [m]),
        "inspect --json over the model": (["inspect", m, "--json", m], [m]),
        "inspect --json over the data file": (["inspect", ext, "--json", ext_data], [ext_data]),
        "check --json over the candidate": (["check", m, link, "--json", link], [m]),
        "check --json over the npz": (["check", m, m, "--data", data, "--json", data], [data]),
        "finetune --json over its own output": (["finetune", m, "-o", o, *train, "--json", o],
                                                [m, data]),
        "finetune --json over the training data": (["finetune", m, "-o", o, *train,
                                                    "--json", data], [data]),
        "compress --json over the model": (["compress", m, "-o", o, *train, "--json", m], [m]),
        "compress -o over the data": (["compress", m, "-o", data, *train], [data]),
        "sensitivity --json over the val set": (["sensitivity", m, "--val", data, "-o",
                                                 str(tmp_path / "s"), "--no-plot",
                                                 "--json", data], [data]),
        "report --json over the baseline": (["report", m, "--baseline", link, "-o",
                                             str(tmp_path / "rep"), "--no-figures",
                                             "--json", link], [m]),
        "bench --json over the model": (["bench", m, "--json", m], [m]),
    }


@pytest.mark.parametrize("case", [
    "prune --json over the model", "prune --json over the external data",
    "prune -o over the recipe", "prune --json over the recipe",
    "prune -o over a hard link of the model", "prune --in-place --json over the model",
    "inspect --json over the model", "inspect --json over the data file",
    "check --json over the candidate", "check --json over the npz",
    "finetune --json over its own output", "finetune --json over the training data",
    "compress --json over the model", "compress -o over the data",
    "sensitivity --json over the val set", "report --json over the baseline",
    "bench --json over the model"])
def test_no_output_overwrites_an_input(tmp_path, capsys, case):
    argv, protected = _overwrite_cases(tmp_path)[case]
    before = _digest(protected)
    code, _, err = _run(argv, capsys)
    line = _error_line(err)
    assert code == 2, (case, err)
    assert "refusing to overwrite the input" in line or "are the same file" in line, line
    assert _digest(protected) == before
    assert not os.path.exists(tmp_path / "o.onnx")


def test_in_place_still_allows_the_model_itself(tmp_path, capsys):
    m = _model(tmp_path)
    before = open(m, "rb").read()
    code, _, err = _run(["prune", m, "-o", m, "--in-place", "-q"], capsys)
    assert code == 0, err
    assert open(m, "rb").read() != before


# --------------------------------------------------------------------------- bounded work


def _alias_bomb(levels=20, fan=9) -> str:
    lines = ['a0: &a0 ["xxxxxxxxxxxxxxxx"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * fan) + "]")
    lines.append(f"passes: *a{levels - 1}")
    return "\n".join(lines) + "\n"


def test_recipe_alias_bomb_is_refused_quickly(tmp_path, capsys):
    recipe = tmp_path / "bomb.yaml"
    recipe.write_text(_alias_bomb())
    assert recipe.stat().st_size < 1100
    t0 = time.perf_counter()
    code, _, err = _run(["prune", _model(tmp_path), "-o", str(tmp_path / "o.onnx"),
                         "--recipe", str(recipe)], capsys)
    assert code == 2
    assert time.perf_counter() - t0 < 10
    line = _error_line(err)
    assert "aliases" in line and len(line) < 300


def test_recipe_self_referencing_alias_is_refused(tmp_path, capsys):
    recipe = tmp_path / "cycle.yaml"
    recipe.write_text("a: &a [*a]\npasses: *a\n")
    code, _, err = _run(["prune", _model(tmp_path), "-o", str(tmp_path / "o.onnx"),
                         "--recipe", str(recipe)], capsys)
    assert code == 2 and "aliases" in _error_line(err)


def test_long_values_are_cut_in_error_messages(tmp_path, capsys):
    recipe = tmp_path / "long.yaml"
    recipe.write_text("passes:\n  - threshold-by-std:\n      min-params: " + "x" * 50_000 + "\n")
    code, _, err = _run(["prune", _model(tmp_path), "-o", str(tmp_path / "o.onnx"),
                         "--recipe", str(recipe)], capsys)
    line = _error_line(err)
    assert code == 2 and "min-params" in line
    assert len(line) < 300 and ("..." in line or "…" in line)


@pytest.mark.parametrize("special", ["fifo", "device", "folder"])
def test_recipe_must_be_a_regular_file(tmp_path, special):
    if special == "fifo":
        path = str(tmp_path / "fifo")
        os.mkfifo(path)
    elif special == "device":
        path = "/dev/zero"
    else:
        path = str(tmp_path)
    # A subprocess with a deadline: reading a FIFO without a writer would block forever.
    r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", _model(tmp_path),
                        "-o", str(tmp_path / "o.onnx"), "--recipe", path],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "not a regular file" in _error_line(r.stderr)


def test_recipe_over_one_mib_is_refused(tmp_path, capsys):
    recipe = tmp_path / "big.yaml"
    recipe.write_text("# " + "x" * (1 << 20) + "\nemit: dense\n")
    code, _, err = _run(["prune", _model(tmp_path), "-o", str(tmp_path / "o.onnx"),
                         "--recipe", str(recipe)], capsys)
    assert code == 2 and "larger than" in _error_line(err)


@pytest.mark.parametrize("option", ["threshold-by-std:\n      quality", "threshold-by-std:\n"
                                    "      target-sparsity", "threshold-by-std:\n      min-params"])
def test_huge_integer_in_a_recipe_is_a_usage_error(tmp_path, capsys, option):
    recipe = tmp_path / "huge.yaml"
    recipe.write_text(f"passes:\n  - {option}: {'9' * 400}\n")
    code, _, err = _run(["prune", _model(tmp_path), "-o", str(tmp_path / "o.onnx"),
                         "--recipe", str(recipe)], capsys)
    line = _error_line(err)
    assert code == 2 and "too large" in line and len(line) < 300
    assert not os.path.exists(tmp_path / "o.onnx")


# --------------------------------------------------------------------------- exit codes


def _int_option_cases(tmp_path):
    m = _model(tmp_path)
    data = _npz(tmp_path)
    o = str(tmp_path / "o.onnx")
    train = ["--train", data, "--val", data]
    return [
        ["check", m, m, "--batch", "0"], ["check", m, m, "--batch", "-2"],
        ["check", m, m, "--seed", "-1"], ["check", m, m, "--seed", str(2**64)],
        ["prune", m, "-o", o, "--min-params", "-1"],
        ["prune", m, "-o", o, "--emit", "sparse-ops", "--expected-batch", "0"],
        ["prune", m, "-o", o, "--emit", "sparse-ops", "--threads", "0"],
        ["prune", m, "-o", o, "--emit", "sparse-ops", "--threads", str(10**12)],
        ["finetune", m, "-o", o, *train, "--epochs", "0"],
        ["finetune", m, "-o", o, *train, "--batch-size", "-1"],
        ["finetune", m, "-o", o, *train, "--seed", "-5"],
        ["compress", m, "-o", o, *train, "--iterations", "0"],
        ["compress", m, "-o", o, *train, "--min-params", "-1"],
        ["compress", m, "-o", o, *train, "--epochs", "-1"],
        ["sensitivity", m, "--val", data, "-o", str(tmp_path / "s"), "--threads", "0"],
        ["bench", m, "--seed", "-1"], ["bench", m, "--threads", str(10**12)],
    ]


@pytest.mark.parametrize("index", range(17))
def test_integer_options_out_of_range_exit_2(tmp_path, capsys, index):
    argv = _int_option_cases(tmp_path)[index]
    code, _, err = _run(argv, capsys)
    line = _error_line(err)
    assert code == 2, (argv, err)
    assert "must be" in line, line
    assert not os.path.exists(tmp_path / "o.onnx")


def test_check_batch_zero_no_longer_passes_two_different_models(tmp_path, capsys):
    a = _model(tmp_path, "a.onnx", seed=0)
    b = _model(tmp_path, "b.onnx", seed=1)
    code, _, err = _run(["check", a, b, "--batch", "0"], capsys)
    assert code == 2 and "PASS" not in err


def test_overlong_output_name_is_a_usage_error(tmp_path, capsys):
    m = _model(tmp_path)
    long_name = str(tmp_path / ("a" * 300 + ".onnx"))
    code, _, err = _run(["prune", m, "-o", long_name], capsys)
    assert code == 2 and "too long" in _error_line(err)
    code, _, err = _run(["inspect", m, "--json", long_name], capsys)
    assert code == 2 and "too long" in _error_line(err)


def test_json_into_an_unwritable_folder_is_a_usage_error(tmp_path, capsys, monkeypatch):
    # Tests may run as root, for whom permission bits do not stop a write: the refusal the
    # kernel gives an ordinary user is simulated at the point the file is created.
    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cli_output.tempfile, "mkstemp", refuse)
    code, _, err = _run(["inspect", _model(tmp_path), "--json", str(tmp_path / "r.json")],
                        capsys)
    line = _error_line(err)
    assert code == 2 and "Permission denied" in line and "internal error" not in line


def test_json_to_a_full_stdout_is_one_line_exit_1(tmp_path):
    with open("/dev/full", "w") as full:
        r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "inspect", _model(tmp_path),
                            "--json", "-"], stdout=full, stderr=subprocess.PIPE, text=True,
                           timeout=120)
    assert r.returncode == 1, r.stderr
    assert "cannot write the report to stdout" in _error_line(r.stderr)
    assert "Exception ignored" not in r.stderr


def test_json_to_a_closed_stdout_is_a_usage_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "inspect", _model(tmp_path),
                        "--json", "-"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                       timeout=120, preexec_fn=lambda: os.close(1))
    assert r.returncode == 2, r.stderr
    assert "stdout is closed" in _error_line(r.stderr)


def test_ctrl_c_while_the_parser_is_built_exits_130(monkeypatch, capsys):
    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_app, "build_parser", interrupted)
    code, _, err = _run(["inspect", "m.onnx"], capsys)
    assert code == 130
    assert err.strip() == "onnxprune: interrupted"


def test_control_characters_in_an_error_stay_on_one_line(tmp_path, capsys):
    bad = str(tmp_path / "a\nb\x1b[2Jc.onnx")
    code, _, err = _run(["inspect", bad], capsys)
    assert code != 0
    assert err.count("\n") == 1 and "\x1b" not in err
    assert "a\\nb\\x1b[2Jc.onnx" in err


def test_terminal_escapes_in_layer_names_are_escaped_in_tables(tmp_path, capsys):
    model = mlp(sizes=(16, 12, 4))
    for node in model.graph.node:
        if node.name == "fc1":
            node.name = "fc1\x1b]0;owned\x07\x1b[31m"
    path = tmp_path / "esc.onnx"
    onnx.save(model, str(path))
    code, _, err = _run(["inspect", str(path)], capsys)
    assert code == 0
    assert "\x1b" not in err and "\x07" not in err
    assert "fc1\\x1b]0;owned\\x07\\x1b[31m" in err


# --------------------------------------------------------------------------- check


def _unary_model(op_chain, path, batch=None):
    """y = op_n(...op_1(x)) over a [batch, 4] float input; ops are (name, extra constant)."""
    nodes, inits, x = [], [], "x"
    for i, (op, const) in enumerate(op_chain):
        inputs = [x]
        if const is not None:
            inits.append(numpy_helper.from_array(np.asarray(const, np.float32), f"c{i}"))
            inputs.append(f"c{i}")
        nodes.append(helper.make_node(op, inputs, [f"t{i}"], name=f"n{i}"))
        x = f"t{i}"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    dim = batch if batch is not None else "N"
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                     [dim, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [dim, 4])],
                          inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return str(path)


def test_check_nan_in_the_same_places_is_equal(tmp_path, capsys):
    m = _unary_model([("Sqrt", None)], tmp_path / "sqrt.onnx")  # NaN for negative inputs
    code, out, err = _run(["check", m, m, "--json", "-"], capsys)
    assert code == 0, err
    assert "NaN in both models" in err
    report = json.loads(out)
    assert report["passed"] and report["outputs"][0]["nan_both"] > 0


def test_check_nan_against_a_number_fails_without_an_atol_suggestion(tmp_path, capsys):
    ref = _unary_model([("Sqrt", None)], tmp_path / "ref.onnx")
    cand = _unary_model([("Abs", None), ("Sqrt", None)], tmp_path / "cand.onnx")
    code, out, err = _run(["check", ref, cand, "--json", "-"], capsys)
    line = _error_line(err)
    assert code == 3
    assert "--atol" in line and "would pass" not in line
    report = json.loads(out)
    assert report["atol_that_passes"] is None and report["outputs"][0]["unfixable"] > 0


def test_check_suggested_atol_passes(tmp_path, capsys):
    ref = _unary_model([("Identity", None)], tmp_path / "ref.onnx")
    cand = _unary_model([("Add", 0.0123456)], tmp_path / "cand.onnx")
    data = tmp_path / "x.npz"
    np.savez(data, x=np.ones((1, 4), np.float32))
    code, _, err = _run(["check", ref, cand, "--data", str(data), "--rtol", "0"], capsys)
    line = _error_line(err)
    assert code == 3 and "would pass with --atol " in line
    suggested = line.rsplit("--atol ", 1)[1].split()[0]
    code, _, err = _run(["check", ref, cand, "--data", str(data), "--rtol", "0",
                         "--atol", suggested], capsys)
    assert code == 0, (suggested, err)


def test_check_names_the_batch_it_used(tmp_path, capsys):
    m = _unary_model([("Relu", None)], tmp_path / "fixed.onnx", batch=1)
    code, out, err = _run(["check", m, m, "--batch", "2", "--json", "-"], capsys)
    assert code == 0
    assert json.loads(out)["inputs"] == "random (seed 0, batch 1)"
    # and says that --batch was not used (bench did; check used batch 1 silently)
    assert "note: the model fixes its batch at 1; --batch 2 was not used" in err
    code, out, err = _run(["check", m, m, "--json", "-"], capsys)
    assert code == 0 and "note:" not in err and json.loads(out)["batch_note"]


# --------------------------------------------------------------------------- what tables say


def _model_with_a_dead_neuron(path):
    """fc1's output neuron 0 has no incoming weights: removing dead neurons shrinks fc1 and
    fc2."""
    model = mlp(sizes=(16, 12, 8, 4))
    for t in model.graph.initializer:
        if t.name == "fc1.weight":
            w = numpy_helper.to_array(t).copy()
            w[0] = 0.0
            t.CopyFrom(numpy_helper.from_array(w, t.name))
        if t.name == "fc1.bias":
            b = numpy_helper.to_array(t).copy()
            b[0] = -1.0  # Relu keeps it at 0: dead
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    onnx.save(model, str(path))
    return str(path)


def test_prune_rows_show_the_output_models_shapes(tmp_path, capsys):
    m = _model_with_a_dead_neuron(tmp_path / "dead.onnx")
    out = tmp_path / "o.onnx"
    code, stdout, err = _run(["prune", m, "-o", str(out), "--quality", "0", "--emit", "dense",
                              "--json", "-"], capsys)
    assert code == 0, err
    written = {t.name: list(t.dims) for t in onnx.load(str(out)).graph.initializer}
    rows = {r["weight"]: r for r in json.loads(stdout)["layers"]}
    assert rows["fc1.weight"]["original_shape"] == [12, 16]
    for name in ("fc1.weight", "fc2.weight"):
        assert rows[name]["weight_shape"] == written[name]
    assert written["fc1.weight"] == [11, 16]
    assert "11x16 (was 12x16)" in err


def test_drop_has_one_sign_in_compress_history_and_report(tmp_path):
    from onnxprune.analysis.report import tradeoff_series

    history = {"accuracy_dense": {"top1": 0.9},
               "history": [{"stage": "dense", "params": 100, "nonzero": 100, "top1": 0.9},
                           {"stage": "iteration", "iteration": 1, "params": 100, "nonzero": 10,
                            "top1": 0.85, "top1_before_retrain": 0.8}]}
    series = tradeoff_series(history)
    after = series[0]["points"][-1]
    # compress reports accuracy_drop_pp = 100 * (dense - final): positive = worse.
    assert after["drop_pp"] == pytest.approx(100 * (0.9 - 0.85))
    assert series[1]["points"][-1]["drop_pp"] == pytest.approx(100 * (0.9 - 0.8))
