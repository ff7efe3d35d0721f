"""The CLI contract: exit codes, one-line errors, no partial outputs, gates, determinism."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnxprune.cli import main
from tests.conftest import save_external
from tests.models import mlp, random_feeds, run


def _run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def _files(folder):
    return sorted(os.listdir(folder))


def test_prune_writes_model_and_report(tmp_path, mlp_path, capsys):
    out = tmp_path / "out.onnx"
    code, stdout, err = _run(["prune", mlp_path, "-o", str(out), "--json", "-", "--quality", "1.0",
                              "--no-remove-dead-neurons"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["status"] == "ok"
    assert {"params", "nonzero"} <= set(report["total"])
    row = report["layers"][0]
    for key in ("name", "op", "weight_shape", "params", "nonzero", "density", "flops",
                "flops_remaining", "threshold"):
        assert key in row
    assert report["total"]["nonzero"] < report["total"]["params"]
    assert report["outputs"][0]["sha256"] and report["versions"]["onnx"] == onnx.__version__
    # The written model computes exactly what the masked dense model computes.
    pruned = onnx.load(str(out))
    onnx.checker.check_model(pruned)
    dense = onnx.load(mlp_path)
    for t in dense.graph.initializer:
        r = next((x for x in report["layers"] if x["weight"] == t.name), None)
        if r:
            a = numpy_helper.to_array(t)
            t.CopyFrom(numpy_helper.from_array(np.where(np.abs(a) >= r["threshold"], a, 0), t.name))
    feeds = random_feeds(dense)
    np.testing.assert_array_equal(run(pruned, feeds)[0], run(dense, feeds)[0])
    assert "layer" in err and "total" in err  # the human table went to stderr


def test_prune_says_why_its_file_is_not_smaller(tmp_path, mlp_path, capsys):
    """A light prune (the default q on a model where it zeroes under half) writes dense
    weights, plus its stamp: a file a little larger than the input with nothing said. A
    heavier one is smaller and says nothing."""
    out = tmp_path / "out.onnx"
    code, stdout, err = _run(["prune", mlp_path, "-o", str(out), "--quality", "0.2", "--json", "-"], capsys)
    size = json.loads(stdout)["size"]
    assert code == 0 and size["output_bytes"] >= size["input_bytes"], err
    assert "note: the file is not smaller" in err and "--lower-for size" in err
    code, stdout, err = _run(["prune", mlp_path, "-o", str(out), "--quality", "2.0", "--json", "-"], capsys)
    size = json.loads(stdout)["size"]
    assert code == 0 and size["output_bytes"] < size["input_bytes"] and "not smaller" not in err


def test_prune_is_deterministic_and_idempotent(tmp_path, cnn_path, capsys):
    a, b, c = (tmp_path / n for n in ("a.onnx", "b.onnx", "c.onnx"))
    assert _run(["prune", cnn_path, "-o", str(a), "-q"], capsys)[0] == 0
    assert _run(["prune", cnn_path, "-o", str(b), "-q"], capsys)[0] == 0
    assert a.read_bytes() == b.read_bytes()
    # The same recipe on its own output changes nothing.
    code, stdout, _ = _run(["prune", str(a), "-o", str(c), "--json", "-", "-q"], capsys)
    assert code == 0 and json.loads(stdout)["already_applied"] is True
    assert c.read_bytes() == a.read_bytes()
    # A different recipe is applied.
    code, stdout, _ = _run(["prune", str(a), "-o", str(c), "--quality", "1.5", "--json", "-", "-q"],
                           capsys)
    assert json.loads(stdout)["already_applied"] is False


def test_determinism_across_processes(tmp_path, cnn_path):
    outs = []
    for i in range(2):
        out = tmp_path / f"p{i}.onnx"
        r = subprocess.run([sys.executable, "-m", "onnxprune.cli", "prune", cnn_path, "-o", str(out),
                            "--target-sparsity", "0.7", "-q"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]


def test_gate_failure_exits_3_and_still_reports(tmp_path, mlp_path, capsys):
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, err = _run(["prune", mlp_path, "-o", str(out), "--json", str(rep),
                         "--min-sparsity", "0.99"], capsys)
    assert code == 3
    assert "min-sparsity" in err.strip().splitlines()[-1]
    report = json.loads(rep.read_text())
    assert report["status"] == "gate-failed"
    assert report["gates"][0]["passed"] is False
    code, _, _ = _run(["prune", mlp_path, "-o", str(out), "--max-size-mb", "0.000001", "-q"], capsys)
    assert code == 3
    code, _, _ = _run(["prune", mlp_path, "-o", str(out), "--min-sparsity", "0.1",
                       "--max-size-mb", "100", "-q"], capsys)
    assert code == 0


def test_target_sparsity_per_layer_and_global(tmp_path, mlp_path, capsys):
    out = tmp_path / "o.onnx"
    code, stdout, _ = _run(["prune", mlp_path, "-o", str(out), "--target-sparsity", "0.9",
                            "--json", "-", "-q", "--no-remove-dead-neurons"], capsys)
    rows = json.loads(stdout)["layers"]
    for r in rows:
        assert 1 - r["density"] == pytest.approx(0.9, abs=0.01)
    code, stdout, _ = _run(["prune", mlp_path, "-o", str(out), "--target-sparsity", "0.9",
                            "--target-scope", "global", "--json", "-", "-q",
                            "--no-remove-dead-neurons"], capsys)
    report = json.loads(stdout)
    assert report["total"]["sparsity"] == pytest.approx(0.9, abs=0.002)
    assert len({round(r["quality"], 9) for r in report["layers"]}) == 1


def test_recipe_file_and_cli_override(tmp_path, mlp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - threshold-by-std:\n      quality: {fc: 0.5}\n"
                      "      layers: {fc3: 0.1}\nemit: dense\n")
    out = tmp_path / "o.onnx"
    code, stdout, _ = _run(["prune", mlp_path, "-o", str(out), "--recipe", str(recipe),
                            "--json", "-", "-q"], capsys)
    report = json.loads(stdout)
    assert code == 0 and report["emit"] == "dense"
    q = {r["name"]: r["quality"] for r in report["layers"]}
    assert q == {"fc1": 0.5, "fc2": 0.5, "fc3": 0.1}
    code, stdout, _ = _run(["prune", mlp_path, "-o", str(out), "--recipe", str(recipe),
                            "--fc-quality", "0.7", "--json", "-", "-q"], capsys)
    q = {r["name"]: r["quality"] for r in json.loads(stdout)["layers"]}
    assert q == {"fc1": 0.7, "fc2": 0.7, "fc3": 0.1}


@pytest.mark.parametrize("text,match", [
    ("passes: []\nbogus: 1\n", "unknown key"),
    ("passes:\n  - threshold-by-std: {qualty: 1}\n", "unknown option"),
    ("passes:\n  - threshold-by-std: {quality: -1}\n", ">= 0"),
    ("passes:\n  - threshold-by-std: {target-sparsity: 1.5}\n", "must be <"),
    ("passes:\n  - no-such-pass: {}\n", "unknown pass"),
    ("emit: zip\n", "emit"),
    ("!!python/object/apply:os.system ['echo pwned']\n", "invalid YAML"),
    ("passes: [\n", "invalid YAML"),
    ("gates: {min-sparsity: yes}\n", "expected a number"),
])
def test_bad_recipe_is_usage_error(tmp_path, mlp_path, capsys, text, match):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    out = tmp_path / "o.onnx"
    code, _, err = _run(["prune", mlp_path, "-o", str(out), "--recipe", str(recipe)], capsys)
    assert code == 2
    assert match in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()


def _bad_inputs(tmp_path):
    cases = {}
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases["empty"] = tmp_path / "empty.onnx"
    good = mlp().SerializeToString()
    (tmp_path / "trunc.onnx").write_bytes(good[: len(good) // 3])
    cases["truncated"] = tmp_path / "trunc.onnx"
    (tmp_path / "rand.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    cases["random"] = tmp_path / "rand.onnx"
    (tmp_path / "tensor.onnx").write_bytes(
        numpy_helper.from_array(np.ones(4, np.float32), "t").SerializeToString())
    cases["not-a-model"] = tmp_path / "tensor.onnx"
    sub = tmp_path / "ext"
    sub.mkdir()
    save_external(mlp(), str(sub / "esc.onnx"))
    m = onnx.load(str(sub / "esc.onnx"), load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "../esc.onnx.data"
    onnx.save(m, str(sub / "esc.onnx"))
    os.rename(sub / "esc.onnx.data", tmp_path / "esc.onnx.data")
    cases["escape"] = sub / "esc.onnx"
    return cases


@pytest.mark.parametrize("case", ["empty", "truncated", "random", "not-a-model", "escape"])
def test_bad_inputs_exit_4_without_output(tmp_path, capsys, case):
    src = _bad_inputs(tmp_path)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    before = src.read_bytes()
    code, _, err = _run(["prune", str(src), "-o", str(out_dir / "o.onnx")], capsys)
    assert code == 4, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:")
    assert _files(out_dir) == []
    assert src.read_bytes() == before


def test_missing_input_and_output_is_input(tmp_path, mlp_path, capsys):
    code, _, err = _run(["prune", str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == 4 and "no such file" in err
    before = open(mlp_path, "rb").read()
    code, _, err = _run(["prune", mlp_path, "-o", mlp_path], capsys)
    assert code == 2 and "overwrite the input" in err
    assert open(mlp_path, "rb").read() == before
    code, _, _ = _run(["prune", mlp_path, "-o", mlp_path, "--in-place", "-q"], capsys)
    assert code == 0 and open(mlp_path, "rb").read() != before


def test_usage_errors_exit_2(tmp_path, mlp_path, capsys):
    for argv in (["prune", mlp_path], ["prune", mlp_path, "-o", "x.onnx", "--quality", "abc"],
                 ["prune", mlp_path, "-o", "x.onnx", "--layer", "noequals"],
                 ["prune", mlp_path, "-o", "x.onnx", "--target-sparsity", "1"],
                 ["frobnicate"], []):
        with pytest.raises(SystemExit) as e:
            main(argv) if argv else (_ for _ in ()).throw(SystemExit(main(argv)))
        assert e.value.code == 2, argv
        capsys.readouterr()
    code, _, err = _run(["prune", mlp_path, "-o", str(tmp_path / "nodir" / "o.onnx")], capsys)
    assert code == 2 and "does not exist" in err


def test_no_prunable_layer_exits_0(tmp_path, capsys):
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", 1, ["N", 3])],
                          [helper.make_tensor_value_info("y", 1, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    p = tmp_path / "relu.onnx"
    onnx.save(m, p)
    code, _, err = _run(["prune", str(p), "-o", str(tmp_path / "o.onnx")], capsys)
    assert code == 0 and "no prunable layer" in err
    assert (tmp_path / "o.onnx").exists()


def test_inspect_json(cnn_path, capsys):
    code, stdout, err = _run(["inspect", cnn_path, "--json", "-"], capsys)
    assert code == 0
    report = json.loads(stdout)
    conv1 = report["layers"][0]
    # conv1: 8x3x3x3 weights applied at 12x12 output positions, 2 FLOPs per multiply-add.
    assert conv1["params"] == 216 and conv1["flops"] == 2 * 216 * 144
    assert report["total"]["params"] == 216 + 1152 + 80
    assert "compression" in report["total"]


def test_check_pass_fail_and_tolerance_hint(tmp_path, mlp_path, capsys):
    out = tmp_path / "o.onnx"
    assert _run(["prune", mlp_path, "-o", str(out), "-q"], capsys)[0] == 0
    code, _, err = _run(["check", mlp_path, mlp_path], capsys)
    assert code == 0 and "PASS" in err
    code, stdout, err = _run(["check", mlp_path, str(out), "--json", "-"], capsys)
    assert code == 3 and "would pass with --atol" in err
    needed = json.loads(stdout)["atol_that_passes"]
    code, _, _ = _run(["check", mlp_path, str(out), "--atol", str(needed * 1.01)], capsys)
    assert code == 0
    data = tmp_path / "in.npz"
    np.savez(data, x=np.ones((5, 64), np.float32))
    code, _, _ = _run(["check", mlp_path, mlp_path, "--data", str(data)], capsys)
    assert code == 0
    (tmp_path / "bad.npz").write_bytes(b"nope")
    code, _, err = _run(["check", mlp_path, mlp_path, "--data", str(tmp_path / "bad.npz")], capsys)
    assert code == 4


def test_check_of_outputs_of_another_shape_or_count_says_so(tmp_path, capsys):
    """Models whose outputs differ in shape (or number) have no error to measure: the error
    line says what differs, and the report gives no max error (it said "max abs error 0",
    then that the outputs differ beyond tolerance)."""
    from tests.models import mlp

    a, b, two = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "two.onnx"
    onnx.save(mlp(sizes=(64, 48, 10)), a)
    onnx.save(mlp(sizes=(64, 48, 12)), b)
    code, stdout, err = _run(["check", str(a), str(b), "--json", "-"], capsys)
    report = json.loads(stdout)
    assert code == 3 and err.count("\n") == 1 and "max abs error" not in err
    assert "output 0 has shape [2, 10] in the reference and [2, 12] in the candidate" in err
    assert report["max_abs_error"] is None and report["passed"] is False
    m = mlp(sizes=(64, 48, 10))
    m.graph.output.append(onnx.helper.make_tensor_value_info(m.graph.node[0].output[0], onnx.TensorProto.FLOAT, None))
    onnx.save(m, two)
    code, stdout, err = _run(["check", str(a), str(two), "--json", "-"], capsys)
    assert code == 3 and "the reference has 1 output(s) and the candidate 2" in err
    assert json.loads(stdout)["max_abs_error"] is None
    for op, path in (("Greater", tmp_path / "gt.onnx"), ("Less", tmp_path / "lt.onnx")):
        g = onnx.helper.make_graph(
            [onnx.helper.make_node(op, ["x", "zero"], ["y"])], "b",
            [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2, 3])],
            [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.BOOL, [2, 3])],
            [onnx.numpy_helper.from_array(np.zeros(1, np.float32), "zero")])
        onnx.save(onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)]), path)
    code, stdout, err = _run(["check", str(tmp_path / "gt.onnx"), str(tmp_path / "lt.onnx"), "--json", "-"], capsys)
    assert code == 3 and "non-numeric or sequence output(s) 0 differ" in err and "max abs error" not in err
    assert json.loads(stdout)["max_abs_error"] is None


def _masked_by_length(w_scale: float = 1.0):
    """nemo's front end in miniature: features times a mask from an int64 length input. The
    length is compared with 50, so random lengths in [0, 10) mask everything and the output is
    all zeros whatever the weights."""
    from onnx import TensorProto

    w = (np.random.default_rng(0).standard_normal((8, 4)) * w_scale).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Greater", ["lens", "fifty"], ["keep"]),
             helper.make_node("Cast", ["keep"], ["m"], to=TensorProto.FLOAT),
             helper.make_node("Mul", ["h", "m"], ["y"])]
    g = helper.make_graph(nodes, "masked",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8]),
                           helper.make_tensor_value_info("lens", TensorProto.INT64, ["N", 1])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                          [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array(50, np.int64), "fifty")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def test_check_that_compares_constant_outputs_does_not_pass(tmp_path, capsys):
    """Random lengths masked every frame, so both models gave all zeros and check said PASS
    (exit 0) for a model with most weights zeroed, which differs by 6.7 on real lengths. A match
    of outputs that hold one value throughout proves nothing: exit 3, and the line says why."""
    a, b, data = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "real.npz"
    onnx.save(_masked_by_length(), a)
    onnx.save(_masked_by_length(0.5), b)
    code, stdout, err = _run(["check", str(a), str(b), "--json", "-"], capsys)
    report = json.loads(stdout)
    assert code == 3 and report["passed"] is False and report["max_abs_error"] == 0.0
    assert "cannot tell the models apart" in err and "every floating-point output value is 0" in err
    assert "--data" in report["uninformative"]
    np.savez(data, x=np.ones((2, 8), np.float32), lens=np.full((2, 1), 100, np.int64))
    code, stdout, err = _run(["check", str(a), str(b), "--data", str(data), "--json", "-"], capsys)
    assert code == 3 and "outputs differ beyond tolerance" in err  # real lengths: they differ
    assert json.loads(stdout)["uninformative"] is None
    code, stdout, err = _run(["check", str(a), str(a), "--data", str(data), "--json", "-"], capsys)
    assert code == 0 and json.loads(stdout)["passed"] is True, err
    # an integer output that varies (class ids) tells models apart: no verdict of "constant"
    with_ids = _masked_by_length()
    with_ids.graph.node.append(helper.make_node("ArgMax", ["h"], ["ids"], axis=1, keepdims=0))
    with_ids.graph.output.append(helper.make_tensor_value_info("ids", onnx.TensorProto.INT64, ["N"]))
    onnx.save(with_ids, a)
    code, stdout, err = _run(["check", str(a), str(a), "--batch", "8", "--json", "-"], capsys)
    assert code == 0 and json.loads(stdout)["uninformative"] is None, err
    onnx.save(_masked_by_length(), a)
    # the user's own inputs that mask everything: the match stands, with a note
    np.savez(data, x=np.ones((2, 8), np.float32), lens=np.zeros((2, 1), np.int64))
    code, stdout, err = _run(["check", str(a), str(b), "--data", str(data), "--json", "-"], capsys)
    assert code == 0 and "note: every floating-point output value is 0 on these inputs" in err


def test_external_data_model_keeps_external(tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    save_external(mlp(sizes=(64, 48, 10)), str(src / "m.onnx"))
    out = tmp_path / "o.onnx"
    code, stdout, _ = _run(["prune", str(src / "m.onnx"), "-o", str(out), "--json", "-", "-q"], capsys)
    assert code == 0
    names = [os.path.basename(o["path"]) for o in json.loads(stdout)["outputs"]]
    assert names[0] == "o.onnx" and re.fullmatch(r"o\.onnx\.[0-9a-f]{16}\.data", names[1])
    onnx.checker.check_model(str(out))


def test_console_script_no_traceback(tmp_path):
    p = tmp_path / "bad.onnx"
    p.write_bytes(b"garbage")
    r = subprocess.run(["onnxprune", "inspect", str(p)], capture_output=True, text=True)
    assert r.returncode == 4 and "Traceback" not in r.stderr


def test_no_colour_when_not_a_terminal(tmp_path, mlp_path):
    r = subprocess.run(["onnxprune", "prune", mlp_path, "-o", str(tmp_path / "o.onnx"),
                        "--min-sparsity", "0.1"], capture_output=True, text=True)
    assert r.returncode == 0 and "\x1b[" not in r.stderr and "PASS" in r.stderr


def test_an_argument_error_is_one_line_pointing_at_help(capsys):
    """argparse's refusals are exit 2 on one line, as every other error (they printed its usage
    block first)."""
    from tests.conftest import run_cli

    for argv, words in ((["check", "a.onnx", "b.onnx", "--input-shape", "x=1x3x48x"], "onnxprune check --help"),
                        (["frobnicate"], "onnxprune --help"),
                        (["prune", "m.onnx", "--quality"], "onnxprune prune --help")):
        code, out, err = run_cli(argv, capsys)
        assert code == 2 and out == "", (argv, out)
        assert err.startswith("onnxprune: error: ") and err.count("\n") == 1 and words in err, (argv, err)


def test_bench_takes_debug_after_its_name_as_every_command(tmp_path, capsys):
    from tests.conftest import run_cli

    code, _, err = run_cli(["bench", str(tmp_path / "missing.onnx"), "--debug"], capsys)
    assert code == 4, err  # the missing model, not an unknown flag (exit 2)


def test_a_missing_data_array_is_named_once(tmp_path, capsys):
    import numpy as np
    import onnx

    from tests.conftest import run_cli
    from tests.models import mlp

    model = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(4, 3)), model)
    np.savez(tmp_path / "d.npz", a=np.zeros((2, 4), np.float32), b=np.zeros((2, 4), np.float32))
    code, _, err = run_cli(["check", str(model), str(model), "--data", str(tmp_path / "d.npz")], capsys)
    assert code == 2 and "has no array named 'x'\n" in err, err


def test_a_model_failing_on_random_integers_says_which_inputs_were_random(tmp_path, capsys):
    """silero takes another branch, and fails, on a random sample rate: the error names the
    integer inputs that were random and points at --data (check and bench), exit 1 as before;
    with --data the same model runs."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from tests.conftest import run_cli

    g = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [6]),
                           helper.make_tensor_value_info("shape", TensorProto.INT64, [2])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    for argv in (["check", str(path), str(path)], ["bench", str(path), "--no-layers", "--repeats", "1"]):
        code, _, err = run_cli(argv, capsys)
        assert code == 1 and "on random inputs: 'shape' drew integers in [0, 10)" in err, (argv, err)
        assert "--data" in err and err.count("\n") == 1
    np.savez(tmp_path / "d.npz", x=np.zeros(6, np.float32), shape=np.array([2, 3], np.int64))
    code, _, err = run_cli(["check", str(path), str(path), "--data", str(tmp_path / "d.npz")], capsys)
    assert code == 0, err


def test_check_inputs_that_do_not_fit_are_usage_errors_naming_what(tmp_path, capsys):
    """Two arrays giving the model's batch N two sizes, and a candidate of another input
    rank, reached ONNX Runtime (exit 1, "BroadcastIterator ... 3 by 4", "Invalid rank for
    input: x") without saying which array or which model; both are exit 2 before a run."""
    from tests.models import cnn

    a, data = tmp_path / "a.onnx", tmp_path / "d.npz"
    onnx.save(_masked_by_length(), a)
    np.savez(data, x=np.ones((4, 8), np.float32), lens=np.zeros((3, 1), np.int64))
    code, _, err = _run(["check", str(a), str(a), "--data", str(data)], capsys)
    assert code == 2 and "arrays 'x' and 'lens' give the model's dimension 'N' sizes 4 and 3" in err
    c = tmp_path / "c.onnx"
    onnx.save(cnn(channels=(3, 8)), c)
    code, _, err = _run(["check", str(a), str(c)], capsys)
    assert code == 2 and err.count("\n") == 1
    assert "the candidate takes other inputs than the reference" in err
    # a name repeated inside one input is no shared size: Paddle writes [-1, 3, ?, ?]
    paddle = cnn(channels=(3, 8), hw="?")
    assert [d.dim_param for d in paddle.graph.input[0].type.tensor_type.shape.dim][2:] == ["?", "?"]
    onnx.save(paddle, c)
    np.savez(data, x=np.ones((1, 3, 12, 20), np.float32))
    code, stdout, err = _run(["check", str(c), str(c), "--data", str(data), "--json", "-"], capsys)
    assert code == 0 and json.loads(stdout)["inputs"] == str(data), err


def test_check_and_bench_take_a_model_with_a_sequence_output(tmp_path, capsys):
    """A sequence output (SplitToSequence) failed check and bench with an internal error
    ('list' object has no attribute 'shape'); it is compared element by element, within the
    tolerance."""
    from onnx import TensorProto

    def model(scale):
        w = (np.random.default_rng(0).standard_normal((16, 5)) * scale).astype(np.float32)
        g = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"),
             helper.make_node("SplitToSequence", ["y", "sp"], ["seq"], axis=1)], "seq",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5]),
             helper.make_tensor_sequence_value_info("seq", TensorProto.FLOAT, None)],
            [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.array([2, 3], np.int64), "sp")])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
        m.ir_version = 8
        return m

    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(model(1.0), a)
    onnx.save(model(1.0 + 1e-3), b)
    code, _, err = _run(["check", str(a), str(a)], capsys)
    assert code == 0, err
    code, _, err = _run(["check", str(a), str(b), "--atol", "1e-9", "--rtol", "0"], capsys)
    assert code == 3 and "outputs differ" in err and "internal error" not in err
    code, _, err = _run(["check", str(a), str(b), "--atol", "0.1"], capsys)
    assert code == 0, err
    code, _, err = _run(["bench", str(a), "--repeats", "2", "--no-layers"], capsys)
    assert code == 0 and "internal error" not in err, err


def test_random_index_inputs_stay_inside_the_table_they_look_up(tmp_path, capsys):
    """BERT's token_type_ids index a table of 2 rows (through a Cast and an Unsqueeze here):
    random integers in [0, 10) ran off it, so check, bench and lower failed on every standard
    BERT without --data. An index input now draws below its smallest table's size; other
    integer inputs keep [0, 10)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.runtime.check import random_inputs
    from tests.conftest import run_cli

    rng = np.random.default_rng(0)
    g = helper.make_graph(
        [helper.make_node("Gather", ["words", "ids"], ["we"]),
         helper.make_node("Cast", ["types"], ["t64"], to=TensorProto.INT64),
         helper.make_node("Unsqueeze", ["t64", "ax"], ["t3"]),
         helper.make_node("Gather", ["type_table", "t3"], ["te"], axis=0),
         helper.make_node("Squeeze", ["te", "ax"], ["te2"]),
         helper.make_node("Add", ["we", "te2"], ["y"]),
         helper.make_node("Add", ["count", "count"], ["c2"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 64]),
         helper.make_tensor_value_info("types", TensorProto.INT32, [1, 64]),
         helper.make_tensor_value_info("count", TensorProto.INT64, [3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("c2", TensorProto.INT64, None)],
        initializer=[numpy_helper.from_array(rng.standard_normal((30, 8)).astype(np.float32), "words"),
                     numpy_helper.from_array(rng.standard_normal((2, 8)).astype(np.float32), "type_table"),
                     numpy_helper.from_array(np.array([0], np.int64), "ax")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    feeds = random_inputs(m, seed=3)
    assert feeds["types"].max() == 1 and feeds["types"].min() == 0
    assert feeds["ids"].max() >= 2 and feeds["count"].max() >= 2  # [0, 10): the tables are larger
    path = tmp_path / "m.onnx"
    onnx.save(m, path)
    code, _, err = run_cli(["check", str(path), str(path)], capsys)
    assert code == 0, err
