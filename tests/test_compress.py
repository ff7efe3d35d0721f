"""`finetune`, `compress` and `demo` end to end on small real digits (torch extra)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
sklearn_datasets = pytest.importorskip("sklearn.datasets")

from onnxprune.cli import main  # noqa: E402
from onnxprune.training.compress import step_sparsity  # noqa: E402
from tests.models import mlp  # noqa: E402


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = sklearn_datasets.load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    tr, va = perm[:1400], perm[1400:]
    folder = tmp_path_factory.mktemp("digits")
    np.savez(folder / "train.npz", x=x[tr], y=y[tr])
    np.savez(folder / "val.npz", x=x[va], y=y[va])
    return folder


@pytest.fixture(scope="module")
def trained(digits, tmp_path_factory):
    """An MLP built with onnx.helper (no torch export), trained by `onnxprune finetune`."""
    folder = tmp_path_factory.mktemp("model")
    onnx.save(mlp(sizes=(64, 128, 64, 10), seed=0), folder / "init.onnx")
    rep = folder / "ft.json"
    code = main(["finetune", str(folder / "init.onnx"), "-o", str(folder / "dense.onnx"),
                 "--train", str(digits / "train.npz"), "--val", str(digits / "val.npz"),
                 "--epochs", "8", "--lr", "0.05", "--json", str(rep), "-q"])
    assert code == 0
    report = json.loads(rep.read_text())
    assert report["accuracy_after"]["top1"] > 0.9 > report["accuracy_before"]["top1"]
    return folder / "dense.onnx"


def _compress(trained, digits, out, *extra):
    rep = out.parent / (out.name + ".json")
    code = main(["compress", str(trained), "-o", str(out), "--train", str(digits / "train.npz"),
                 "--val", str(digits / "val.npz"), "--json", str(rep), "-q", *extra])
    return code, json.loads(rep.read_text()) if rep.exists() else None


def test_compress_end_to_end(trained, digits, tmp_path):
    out = tmp_path / "c.onnx"
    code, report = _compress(trained, digits, out, "--iterations", "3", "--target-sparsity", "0.9",
                             "--allocate", "uniform", "--epochs", "3", "--lr", "0.01",
                             "--max-accuracy-drop", "3")
    assert code == 0, report
    stages = [h["stage"] for h in report["history"]]
    assert stages == ["dense", "iteration", "iteration", "iteration", "remove-dead-neurons"]
    # A rising schedule: each iteration prunes more; the last reaches the target per layer.
    nz = [h["nonzero"] for h in report["history"]]
    assert nz[0] > nz[1] > nz[2] > nz[3] >= nz[4]
    for density in report["history"][3]["density"].values():
        assert density == pytest.approx(0.1, abs=0.002)
    for row in report["layers"]:  # dead-unit removal can only drop more weights
        assert row["density"] <= 0.102
    assert report["accuracy_drop_pp"] <= 3
    # Accuracy is measured by ONNX Runtime on the written file.
    from onnxprune.runtime.evaluate import evaluate
    from onnxprune.runtime.datasets import load_npz

    acc = evaluate(onnx.load(str(out)), load_npz(str(digits / "val.npz")))
    assert acc["top1"] == pytest.approx(report["accuracy_final"]["top1"])


def test_accuracy_gate_fails_loudly(trained, digits, tmp_path, capsys):
    out = tmp_path / "c.onnx"
    code, report = _compress(trained, digits, out, "--iterations", "1", "--target-sparsity", "0.995",
                             "--epochs", "1", "--lr", "0.001", "--max-accuracy-drop", "0.5")
    assert code == 3
    assert report["status"] == "gate-failed" and report["gates"][0]["passed"] is False
    assert "max-accuracy-drop" in capsys.readouterr().err


def test_compress_distills_from_the_dense_input(trained, digits, tmp_path, monkeypatch):
    import onnxprune.training.torch_bridge.train as train_mod
    from onnxprune.training.torch_bridge import read_weights

    dense = read_weights(onnx.load(str(trained)))
    seen = []
    real = train_mod._teacher

    def spy(teacher, *a, **kw):
        seen.append(read_weights(teacher))
        return real(teacher, *a, **kw)

    monkeypatch.setattr(train_mod, "_teacher", spy)
    out = tmp_path / "kd.onnx"
    code, report = _compress(trained, digits, out, "--iterations", "2", "--target-sparsity", "0.8",
                             "--epochs", "1", "--lr", "0.01", "--distill", "0.5",
                             "--distill-temperature", "3", "--lr-schedule", "cosine")
    assert code == 0, report
    assert report["config"]["distill"] == 0.5 and report["config"]["distill-temperature"] == 3.0
    assert report["config"]["lr-schedule"] == "cosine"
    # Every round follows the dense model the run started from, not the previous round.
    assert len(seen) == 2
    for weights in seen:
        assert all(np.array_equal(weights[k], dense[k]) for k in dense)


@pytest.mark.parametrize("extra,message", [
    (["--distill", "0.5"], "--teacher"),
    (["--teacher", "T"], "only used with --distill"),
    (["--distill", "1.5"], "must be <= 1.0"),
    (["--distill", "0.5", "--distill-temperature", "0"], "must be > 0.0"),
    (["--distill", "0.5", "--teacher", "FIVE"], "teacher scores 5 classes, the model 10"),
])
def test_finetune_distill_arguments_checked(trained, digits, tmp_path, capsys, extra, message):
    out = tmp_path / "ft.onnx"
    argv = ["finetune", str(trained), "-o", str(out), "--train", str(digits / "train.npz"),
            "--val", str(digits / "val.npz"), "--lr", "0.01", "-q",
            *[str(trained) if a == "T" else a for a in extra]]
    if "FIVE" in extra:  # a teacher with another class count
        onnx.save(mlp(sizes=(64, 32, 5), seed=1), tmp_path / "five.onnx")
        argv[argv.index("FIVE")] = str(tmp_path / "five.onnx")
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse rejects the value itself
        code = exc.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_schedule_maths():
    assert step_sparsity(0.9, 3, 3) == pytest.approx(0.9)
    s = [step_sparsity(0.9, i, 3) for i in range(1, 4)]
    kept = [1 - x for x in s]
    assert kept[1] / kept[0] == pytest.approx(kept[2] / kept[1])  # same share removed each step


def test_sklearn_model_through_compress(digits, tmp_path):
    skl2onnx = pytest.importorskip("skl2onnx")
    from sklearn.neural_network import MLPClassifier

    with np.load(digits / "train.npz") as z:
        x, y = z["x"], z["y"]
    clf = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, random_state=0).fit(x, y)
    model = skl2onnx.to_onnx(clf, x[:1], options={id(clf): {"zipmap": False}})
    src = tmp_path / "skl.onnx"
    onnx.save(model, src)
    out = tmp_path / "c.onnx"
    code, report = _compress(src, digits, out, "--iterations", "2", "--target-sparsity", "0.7",
                             "--epochs", "3", "--lr", "0.01")
    assert code == 0
    assert report["total"]["nonzero"] <= 0.32 * report["total"]["params"]
    # The label output (ArgMax, ai.onnx.ml ops) still works in the written model.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    label, proba = sess.run(None, {sess.get_inputs()[0].name: x[:5]})
    assert np.array_equal(label, proba.argmax(1))


@pytest.mark.parametrize("case,code", [
    ("wrong-shape", 2), ("wrong-dtype", 2), ("labels-out-of-range", 2), ("missing-key", 2),
    ("not-npz", 4), ("missing-file", 4), ("pickled", 4),
])
def test_bad_data_rejected_before_training(trained, digits, tmp_path, capsys, case, code):
    bad = tmp_path / "bad.npz"
    with np.load(digits / "train.npz") as z:
        x, y = z["x"], z["y"]
    if case == "wrong-shape":
        np.savez(bad, x=x[:, :60], y=y)
    elif case == "wrong-dtype":
        np.savez(bad, x=x.astype(np.int64), y=y)
    elif case == "labels-out-of-range":
        np.savez(bad, x=x, y=y + 10)
    elif case == "missing-key":
        np.savez(bad, inputs=x, y=y)
    elif case == "not-npz":
        bad.write_bytes(b"not a zip file")
    elif case == "pickled":
        np.savez(bad, x=np.array([{"a": 1}] * 3, dtype=object), y=y[:3])
    path = str(bad) if case != "missing-file" else str(tmp_path / "nope.npz")
    out = tmp_path / "o.onnx"
    for cmd in ("finetune", "compress"):
        rc = main([cmd, str(trained), "-o", str(out), "--train", path,
                   "--val", str(digits / "val.npz"), "--epochs", "50"])
        err = capsys.readouterr().err
        assert rc == code, (cmd, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()


def test_finetune_ddp_two_processes(trained, digits, tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    if not os.path.exists(torchrun):
        pytest.skip("torchrun not found")
    pruned = tmp_path / "p.onnx"
    assert main(["prune", str(trained), "-o", str(pruned), "--quality", "1.0", "-q", "--emit", "dense",
                 "--no-remove-dead-neurons"]) == 0
    out = tmp_path / "ddp.onnx"
    r = subprocess.run([torchrun, "--standalone", "--nproc_per_node", "2", "-m", "onnxprune.cli",
                        "finetune", str(pruned), "-o", str(out), "--train", str(digits / "train.npz"),
                        "--val", str(digits / "val.npz"), "--epochs", "1", "--lr", "0.01", "-q",
                        "--json", str(tmp_path / "r.json")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["world_size"] == 2
    from onnx import numpy_helper

    before = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(pruned)).graph.initializer}
    after = {t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for name in ("fc1.weight", "fc2.weight", "fc3.weight"):
        assert np.array_equal(after[name] == 0, before[name] == 0)  # masks held on both ranks
        assert not np.array_equal(after[name], before[name])  # and the survivors trained


def test_demo_reaches_the_paper_compression(capsys):
    code = main(["demo", "--json", "-"])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert code == 0
    params = sum(r["params"] for r in report["layers"])
    nonzero = sum(r["nonzero"] for r in report["layers"])
    assert params / nonzero >= 11.5
    drop = report["accuracy_dense"]["top1"] - report["accuracy_pruned"]["top1"]
    assert drop <= 0.02
