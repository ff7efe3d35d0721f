"""The Python API verbs return what the command writes with --json and raise its errors."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxprune
from onnxprune.cli import main
from onnxprune.core.errors import InvalidModelError, UsageError
from tests.models import mlp

VOLATILE = {"versions", "tool", "wall_seconds", "outputs"}  # versions, timings, written paths


def _stable(o):
    """``o`` without the fields that differ between two identical runs (recursively: the
    training history records each epoch's seconds)."""
    if isinstance(o, dict):
        return {k: _stable(v) for k, v in o.items() if k not in VOLATILE and "second" not in k}
    return [_stable(v) for v in o] if isinstance(o, list) else o


def _cli(tmp_path, *argv):
    """The report `onnxprune ARGV --json` writes, and the exit code."""
    out = tmp_path / f"cli-{len(list(tmp_path.iterdir()))}.json"
    code = main([*argv, "--json", str(out), "-q"])
    return code, json.loads(out.read_text())


def _as_json(report):
    """The report as the CLI serialises it (tuples become lists, NaN null)."""
    return json.loads(json.dumps(report, default=lambda o: o.item() if hasattr(o, "item") else list(o)))


@pytest.fixture
def models(tmp_path):
    ref = mlp(seed=3)
    cand = onnx.ModelProto()
    cand.CopyFrom(ref)
    w = cand.graph.initializer[0]
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) + np.float32(0.5), w.name))
    onnx.save(ref, tmp_path / "ref.onnx")
    onnx.save(cand, tmp_path / "cand.onnx")
    return tmp_path / "ref.onnx", tmp_path / "cand.onnx"


def test_the_root_imports_the_verbs_on_first_use():
    code = ("import sys, onnxprune; assert 'onnxruntime' not in sys.modules; "
            "assert 'torch' not in sys.modules; from onnxprune import api; "
            "assert onnxprune.check is api.check and onnxprune.inspect is api.inspect; "
            "assert onnxprune.compress is api.compress and onnxprune.finetune is api.finetune")
    subprocess.run([sys.executable, "-c", code], check=True)
    with pytest.raises(AttributeError):
        onnxprune.no_such_verb


def test_inspect_returns_the_cli_report(models, tmp_path):
    ref, _ = models
    code, written = _cli(tmp_path, "inspect", str(ref))
    report = onnxprune.inspect(str(ref))
    assert code == 0 and _stable(_as_json(report)) == _stable(written)
    assert [r["weight"] for r in report["layers"]] == ["fc1.weight", "fc2.weight", "fc3.weight"]


def test_inspect_takes_a_model_in_memory(models):
    ref, _ = models
    from_file = onnxprune.inspect(str(ref))
    proto = onnx.load(ref)
    before = proto.SerializeToString()
    in_memory = onnxprune.inspect(proto)
    assert in_memory["input"] is None and in_memory["layers"] == from_file["layers"]
    assert proto.SerializeToString() == before  # the caller's model is not touched


def test_inspect_refuses_what_is_not_a_model(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(InvalidModelError):
        onnxprune.inspect(str(bad))
    with pytest.raises(UsageError, match="expected a path or an onnx.ModelProto"):
        onnxprune.inspect(42)
    broken = mlp()
    del broken.graph.node[:]
    with pytest.raises(InvalidModelError, match="no nodes"):
        onnxprune.inspect(broken)


def test_check_returns_the_cli_report_and_does_not_raise_on_a_difference(models, tmp_path):
    ref, cand = models
    code, written = _cli(tmp_path, "check", str(ref), str(cand), "--atol", "1e-3", "--seed", "5")
    report = onnxprune.check(str(ref), str(cand), atol=1e-3, seed=5)
    assert code == 3 and report["passed"] is False and report["status"] == "mismatch"
    assert _stable(_as_json(report)) == _stable(written)
    assert report["inputs"] == "random (seed 5, batch 2)"


def test_check_passes_a_model_against_itself_in_memory(models):
    ref, _ = models
    proto = onnx.load(ref)
    report = onnxprune.check(proto, str(ref))
    assert report["passed"] is True and report["max_abs_error"] == 0.0 and report["status"] == "ok"
    assert report["reference"] is None and report["candidate"] == str(ref)


def test_check_raises_the_documented_errors(models, tmp_path):
    ref, cand = models
    np.savez(tmp_path / "x.npz", x=np.zeros((2, 16), np.float32))
    with pytest.raises(UsageError, match="use one of them"):
        onnxprune.check(str(ref), str(cand), data=str(tmp_path / "x.npz"),
                        input_shapes={"x": (2, 16)})
    with pytest.raises(InvalidModelError):
        onnxprune.check(str(ref), str(tmp_path / "missing.onnx"))
    with pytest.raises(UsageError, match="candidate"):
        onnxprune.check(str(ref), b"bytes")


def test_check_runs_the_callers_path_check_before_running(models):
    ref, cand = models
    seen = []

    def refuse(reads):
        seen.extend(reads)
        raise UsageError("refused")

    with pytest.raises(UsageError, match="refused"):
        onnxprune.check(str(ref), str(cand), before_run=refuse)
    assert seen == [str(ref.resolve()), str(cand.resolve())]


@pytest.fixture
def data(tmp_path):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(96, 16)).astype(np.float32)
    y = (x[:, :4].argmax(axis=1)).astype(np.int64)
    np.savez(tmp_path / "train.npz", x=x[:64], y=y[:64])
    np.savez(tmp_path / "val.npz", x=x[64:], y=y[64:])
    return str(tmp_path / "train.npz"), str(tmp_path / "val.npz")


def test_finetune_returns_the_cli_report(models, data, tmp_path):
    pytest.importorskip("torch")
    ref, _ = models
    train, val = data
    code, written = _cli(tmp_path, "finetune", str(ref), "-o", str(tmp_path / "a.onnx"),
                         "--train", train, "--val", val, "--epochs", "1", "--lr", "0.05")
    report = onnxprune.finetune(str(ref), str(tmp_path / "b.onnx"), train=train, val=val,
                                epochs=1, lr=0.05)
    assert code == 0 and _stable(_as_json(report)) == _stable(written)
    assert (tmp_path / "a.onnx").read_bytes() == (tmp_path / "b.onnx").read_bytes()
    with pytest.raises(UsageError, match="--distill needs --teacher"):
        onnxprune.finetune(str(ref), str(tmp_path / "c.onnx"), train=train, val=val, distill=0.5)
    with pytest.raises(UsageError, match="unknown training option 'epoch'"):
        onnxprune.finetune(str(ref), str(tmp_path / "c.onnx"), train=train, val=val, epoch=1)
    assert not (tmp_path / "c.onnx").exists()


def test_compress_returns_the_cli_report_with_its_gate(models, data, tmp_path):
    pytest.importorskip("torch")
    ref, _ = models
    train, val = data
    argv = ["--train", train, "--val", val, "--epochs", "1", "--iterations", "2",
            "--target-sparsity", "0.5", "--max-accuracy-drop", "0"]
    code, written = _cli(tmp_path, "compress", str(ref), "-o", str(tmp_path / "a.onnx"), *argv)
    report = onnxprune.compress(str(ref), str(tmp_path / "b.onnx"), train=train, val=val,
                                epochs=1, iterations=2, target_sparsity=0.5,
                                max_accuracy_drop=0.0)
    assert _stable(_as_json(report)) == _stable(written)
    assert code == (3 if report["status"] == "gate-failed" else 0)
    assert report["status"] == ("ok" if report["accuracy_drop_pp"] <= 0 else "gate-failed")
    with pytest.raises(UsageError, match="not both"):
        onnxprune.compress(str(ref), str(tmp_path / "c.onnx"), train=train, val=val,
                           quality=1.0, target_sparsity=0.5)
