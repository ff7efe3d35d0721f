"""`--junit PATH` on prune, check and compress: one test case per gate or checked output, valid
against the JUnit schema CI reporters read (tests/data/junit.xsd), counts and messages right."""

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from tests.conftest import run_cli
from tests.models import mlp

XSD = os.path.join(os.path.dirname(__file__), "data", "junit.xsd")


def _schema_errors(path) -> list[str]:
    """Reasons the file does not match tests/data/junit.xsd (xmlschema, else lxml)."""
    try:
        import xmlschema
    except ImportError:
        xmlschema = None
    if xmlschema is not None:
        return [str(e.reason) for e in xmlschema.XMLSchema(XSD).iter_errors(str(path))]
    etree = pytest.importorskip("lxml.etree", reason="xmlschema or lxml validates JUnit XML")
    schema = etree.XMLSchema(etree.parse(XSD))
    ok = schema.validate(etree.parse(str(path)))
    return [] if ok else [str(e) for e in schema.error_log]


def _read(path):
    """The validated file: (suite element, [(case name, failure message or None)])."""
    assert _schema_errors(path) == []
    root = ET.parse(path).getroot()
    assert root.tag == "testsuites"
    (suite,) = root.findall("testsuite")
    cases = []
    for c in suite.findall("testcase"):
        f = c.find("failure")
        cases.append((c.get("name"), None if f is None else f.get("message")))
    failures = sum(m is not None for _, m in cases)
    for el in (root, suite):  # the counts match the cases
        assert (el.get("tests"), el.get("failures"), el.get("errors")) == \
            (str(len(cases)), str(failures), "0")
        assert float(el.get("time")) >= 0
    return suite, cases


def test_schema_rejects_a_file_without_counts(tmp_path):
    bad = tmp_path / "bad.xml"
    bad.write_text('<testsuites name="x"><testsuite name="s"><testcase name="c"/></testsuite>'
                   "</testsuites>")
    assert _schema_errors(bad)


def test_prune_gates_are_test_cases(mlp_path, tmp_path, capsys):
    junit, rep = tmp_path / "prune.xml", tmp_path / "prune.json"
    code, _, err = run_cli(["prune", mlp_path, "-o", str(tmp_path / "p.onnx"), "--quality", "1",
                            "--min-sparsity", "0.1", "--max-size-mb", "0.000001",
                            "--junit", str(junit), "--json", str(rep), "-q"], capsys)
    assert code == 3, err  # the exit code stays the contract
    report = json.loads(rep.read_text())
    suite, cases = _read(junit)
    assert suite.get("name") == "onnxprune prune"
    assert [n for n, _ in cases] == ["min-sparsity", "max-size-mb"]
    assert cases[0][1] is None
    size = report["gates"][1]["actual"]
    msg = cases[1][1]
    assert f"{size:.6g}" in msg and "at most 1e-06" in msg


def test_prune_without_gates_is_one_passing_case(mlp_path, tmp_path, capsys):
    junit = tmp_path / "prune.xml"
    code, _, err = run_cli(["prune", mlp_path, "-o", str(tmp_path / "p.onnx"),
                            "--junit", str(junit), "-q"], capsys)
    assert code == 0, err
    assert _read(junit)[1] == [("prune", None)]


def _two_outputs(seed):
    """x -> (x·W1, x·W2): two checked outputs."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), n)
             for n in ("w1", "w2")]
    g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w1"], ["a"]), helper.make_node("MatMul", ["x", "w2"],
                                                                          ["b"])],
        "two", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info(n, onnx.TensorProto.FLOAT, ["N", 3]) for n in "ab"],
        inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_check_one_case_per_output(tmp_path, capsys):
    ref, cand = tmp_path / "r.onnx", tmp_path / "c.onnx"
    onnx.save(_two_outputs(0), ref)
    model = _two_outputs(0)  # the second output differs, the first is equal
    model.graph.initializer[1].CopyFrom(numpy_helper.from_array(
        numpy_helper.to_array(model.graph.initializer[1]) + 0.5, "w2"))
    onnx.save(model, cand)
    junit, rep = tmp_path / "check.xml", tmp_path / "check.json"
    code, _, err = run_cli(["check", str(ref), str(cand), "--atol", "0.001", "--rtol", "0",
                            "--junit", str(junit), "--json", str(rep), "-q"], capsys)
    assert code == 3, err
    report = json.loads(rep.read_text())
    suite, cases = _read(junit)
    assert suite.get("name") == "onnxprune check"
    assert [n for n, _ in cases] == ["output 0", "output 1"]
    assert cases[0][1] is None
    err1 = report["outputs"][1]["max_abs_error"]
    assert f"max abs error {err1:.6g}" in cases[1][1] and "atol 0.001" in cases[1][1]


def test_check_passing_writes_passing_cases(tmp_path, capsys):
    ref = tmp_path / "r.onnx"
    onnx.save(_two_outputs(0), ref)
    junit = tmp_path / "check.xml"
    code, _, err = run_cli(["check", str(ref), str(ref), "--junit", str(junit), "-q"], capsys)
    assert code == 0, err
    assert _read(junit)[1] == [("output 0", None), ("output 1", None)]


@pytest.mark.parametrize("junit,why", [("input", "refusing to overwrite the input"),
                                       ("-", "--junit -: outputs are files"),
                                       ("json", "are the same file")])
def test_junit_path_is_checked_before_anything_is_written(mlp_path, tmp_path, capsys, junit,
                                                          why):
    out, rep = tmp_path / "p.onnx", tmp_path / "r.json"
    target = {"input": mlp_path, "-": "-", "json": str(rep)}[junit]
    before = open(mlp_path, "rb").read()
    code, _, err = run_cli(["prune", mlp_path, "-o", str(out), "--json", str(rep),
                            "--junit", target], capsys)
    assert code == 2
    assert err.startswith("onnxprune: error:") and why in err
    assert not out.exists() and not rep.exists()
    assert open(mlp_path, "rb").read() == before


def test_compress_gate_is_a_test_case(tmp_path, capsys):
    pytest.importorskip("torch")
    # The labels are this model's own argmax (top-1 100%): pruning 90% of its dense random
    # weights, with next to no retraining (lr 1e-9), costs far more than the 1 pp allowed.
    model = mlp(sizes=(10, 10), seed=0)
    weight = numpy_helper.to_array(model.graph.initializer[0])  # fc1.weight (transB: out, in)
    bias = numpy_helper.to_array(model.graph.initializer[1])
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    rng = np.random.default_rng(0)
    for name in ("train", "val"):
        x = rng.normal(size=(200, 10)).astype(np.float32)
        np.savez(tmp_path / f"{name}.npz", x=x, y=(x @ weight.T + bias).argmax(1).astype(np.int64))
    junit, rep = tmp_path / "c.xml", tmp_path / "c.json"
    code, _, err = run_cli(["compress", str(path), "-o", str(tmp_path / "c.onnx"),
                            "--train", str(tmp_path / "train.npz"),
                            "--val", str(tmp_path / "val.npz"), "--iterations", "1",
                            "--epochs", "1", "--lr", "1e-9", "--target-sparsity", "0.9",
                            "--max-accuracy-drop", "1", "--junit", str(junit),
                            "--json", str(rep), "-q"], capsys)
    assert code == 3, err
    report = json.loads(rep.read_text())
    suite, cases = _read(junit)
    assert suite.get("name") == "onnxprune compress"
    ((name, msg),) = cases
    assert name == "max-accuracy-drop"
    assert f"dropped {report['accuracy_drop_pp']:.6g} pp" in msg
    assert "at most 1 pp" in msg
    assert "val top-1 dropped" in msg


def test_a_label_free_gate_names_what_it_measured():
    """A label-free compress gates on fidelity, not top-1: the failure message says which
    (it said "val top-1 dropped" whatever was measured)."""
    from onnxprune.cli.junit import compress_cases
    from onnxprune.runtime.evaluate import AGREEMENT, ONE_MINUS_ERROR

    gate = {"name": "max-accuracy-drop", "passed": False, "actual": 7.75, "required": 2.0}
    for measure, words in ((None, "val top-1 dropped"), (AGREEMENT, "val agreement dropped"),
                           (ONE_MINUS_ERROR, "val 1 - rel. error dropped")):
        dense = {"top1": 1.0} if measure is None else {"top1": 1.0, "measure": measure}
        (case,) = compress_cases({"gates": [gate], "accuracy_dense": dense})
        assert words in str(case), case


def test_the_report_tradeoff_figure_names_a_label_free_measure():
    from onnxprune.cli.analysis import _tradeoff_figure
    from onnxprune.runtime.evaluate import ONE_MINUS_ERROR

    history = {"accuracy_dense": {"top1": 1.0, "measure": ONE_MINUS_ERROR},
               "history": [{"stage": "dense", "top1": 1.0, "params": 100, "nonzero": 100},
                           {"stage": "round 1", "top1": 0.92, "params": 100, "nonzero": 50}]}
    fig = _tradeoff_figure(history, "t", False, {})
    assert "1 - rel. error drop" in fig["caption"] and fig["points_table"][0][3] == "1 - rel. error"
