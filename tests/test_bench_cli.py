"""`prune --emit sparse-ops` and `bench` through the CLI entry point."""

import json

import numpy as np
import onnx
import pytest

from onnxprune import runtime_ops
from onnxprune.cli import main
from tests.models import mlp, random_feeds, run
from tests.conftest import run_cli


def _run(argv, capsys):
    return run_cli(argv, capsys)


@pytest.fixture
def wide_mlp(tmp_path):
    p = tmp_path / "wide.onnx"
    onnx.save(mlp(sizes=(256, 512, 256, 10)), p)
    return str(p)


def _max_rel_diff(a, b):
    return float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-6))


def test_emit_sparse_ops_matches_portable(tmp_path, wide_mlp, capsys):
    sparse, portable = tmp_path / "s.onnx", tmp_path / "p.onnx"
    code, out, err = _run(["prune", wide_mlp, "-o", str(sparse), "--emit", "sparse-ops",
                           "--fc-quality", "1.5", "--expected-batch", "8", "--decide", "model",
                           "--json", "-"], capsys)
    assert code == 0, err
    report = json.loads(out)
    sp = report["sparse_ops"]
    assert sp["lowered"] == [r["name"] for r in sp["layers"] if r["lowered"]]
    assert sp["lowered"], "the cost model lowers something in this model at batch 8"
    assert {"batch": 8, "threads": 1}.items() <= \
        report["recipe"]["passes"][-1]["lower-to-sparse-ops"].items()
    z = sp["sizes"]
    assert z["sparse_ops_bytes"] == report["size"]["output_bytes"]
    assert z["portable_bytes_estimated"] < z["dense_bytes_estimated"]
    assert z["sparse_ops_bytes"] < z["dense_bytes_estimated"]
    for name in sp["lowered"]:
        assert f"lowered {name}" in err
    # the lowered layer's own counts are in the main table, not the pre-lowering ones
    row = next(r for r in report["layers"] if r["name"] == sp["lowered"][0])
    assert row["density"] < 0.5

    assert _run(["prune", wide_mlp, "-o", str(portable), "--fc-quality", "1.5", "-q"],
                capsys)[0] == 0
    lowered = onnx.load(str(sparse))
    assert any(n.domain == runtime_ops.DOMAIN for n in lowered.graph.node)
    port = onnx.load(str(portable))
    for batch in (1, 8):
        feeds = random_feeds(port, batch=batch)
        want = run(port, feeds)[0]
        got = runtime_ops.InferenceSession(str(sparse)).run(None, feeds)[0]
        assert _max_rel_diff(want, got) < 1e-5


def test_recipe_force_lowers_everything(tmp_path, wide_mlp, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("passes:\n  - threshold-by-std: {quality: 1.0}\n"
                      "  - lower-to-sparse-ops: {force: ['*']}\nemit: sparse-ops\n")
    out = tmp_path / "s.onnx"
    code, stdout, err = _run(["prune", wide_mlp, "-o", str(out), "--recipe", str(recipe),
                              "--json", "-", "-q"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["sparse_ops"]["lowered"] == ["fc1", "fc2", "fc3"]
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("CsrGemm") == 3 and "Gemm" not in ops


@pytest.mark.parametrize("argv, recipe", [
    (["--expected-batch", "8"], None),                       # without --emit sparse-ops
    (["--emit", "sparse-ops", "--threads", "0"], None),
    (["--emit", "portable"], "passes: [lower-to-sparse-ops]\n"),
    (["--emit", "sparse-ops"], "passes: [{lower-to-sparse-ops: {batch: -1}}]\n"),
])
def test_prune_sparse_ops_usage_errors(tmp_path, mlp_path, capsys, argv, recipe):
    extra = []
    if recipe is not None:
        (tmp_path / "r.yaml").write_text(recipe)
        extra = ["--recipe", str(tmp_path / "r.yaml")]
    code, _, err = _run(["prune", mlp_path, "-o", str(tmp_path / "o.onnx"), *argv, *extra],
                        capsys)
    assert code == 2, err
    assert "Traceback" not in err
    assert not (tmp_path / "o.onnx").exists()


def _pruned(tmp_path, capsys, path, emit="portable", extra=()):
    out = tmp_path / f"pruned-{emit}.onnx"
    assert _run(["prune", path, "-o", str(out), "--fc-quality", "1.5", "--emit", emit, "-q",
                 *extra], capsys)[0] == 0
    return str(out)


def test_bench_reports_ratios_and_correctness(tmp_path, wide_mlp, capsys):
    model = _pruned(tmp_path, capsys, wide_mlp)
    code, out, err = _run(["bench", model, "--batch", "1,8", "--threads", "1", "--repeats", "3",
                           "--json", "-"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["status"] == "ok" and not report["lowered_input"]
    assert [(c["batch"], c["threads"]) for c in report["configs"]] == [(1, 1), (8, 1)]
    for cfg in report["configs"]:
        e2e = cfg["end_to_end"]
        assert e2e["dense_ms"] > 0 and e2e["sparse_ms"] > 0
        assert e2e["ratio"] == pytest.approx(e2e["dense_ms"] / e2e["sparse_ms"])
        assert cfg["correctness"]["passed"]
        # every eligible layer is timed alone, lowered or not
        assert [r["name"] for r in cfg["layers"]] == ["fc1", "fc2", "fc3"]
        for r in cfg["layers"]:
            assert r["ratio"] > 0 and 0 < r["density"] < 1 and r["op"] == "Gemm"
            assert r["lowered"] == (r["name"] in e2e["lowered"])
    assert "batch 8, threads 1" in err


def test_bench_accepts_a_lowered_model(tmp_path, wide_mlp, capsys):
    model = _pruned(tmp_path, capsys, wide_mlp, emit="sparse-ops",
                    extra=["--expected-batch", "8", "--decide", "model"])
    lowered = [n.name for n in onnx.load(model).graph.node if n.domain == runtime_ops.DOMAIN]
    assert lowered
    code, out, err = _run(["bench", model, "--batch", "3", "--repeats", "2", "--json", "-"],
                          capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["lowered_input"]
    cfg = report["configs"][0]
    assert cfg["end_to_end"]["lowered"] == lowered and cfg["correctness"]["passed"]
    assert [r["name"] for r in cfg["layers"]] == lowered


def test_bench_uses_a_fixed_batch_and_says_so(tmp_path, capsys):
    p = tmp_path / "fixed.onnx"
    onnx.save(mlp(sizes=(32, 16, 4), batch=2), p)
    code, out, err = _run(["bench", str(p), "--batch", "1,8", "--repeats", "2", "--no-layers",
                           "--json", "-"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["batch_fixed"] and [c["batch"] for c in report["configs"]] == [2]
    assert "fixes its batch" in err


@pytest.mark.parametrize("argv, code", [
    (["--batch", "0"], 2), (["--batch", "x"], 2), (["--threads", "1,-2"], 2),
    (["--repeats", "0"], 2),
])
def test_bench_usage_errors(mlp_path, capsys, argv, code):
    with pytest.raises(SystemExit) as exc:  # argparse rejects the value (exit 2, one line)
        main(["bench", mlp_path, *argv])
    err = capsys.readouterr().err
    assert exc.value.code == code and "Traceback" not in err and "onnxprune: error" in err


def test_bench_rejects_bad_models(tmp_path, capsys):
    assert _run(["bench", str(tmp_path / "missing.onnx")], capsys)[0] == 4
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    code, _, err = _run(["bench", str(junk)], capsys)
    assert code == 4 and "onnxprune: error" in err


def test_bench_lowers_a_pruned_model_as_lower_does(tmp_path, wide_mlp, capsys, monkeypatch):
    """bench's end-to-end model is the one `onnxprune lower` would write: layers timed alone
    here and lowered where they win (it took the cost model's choice, which on another CPU than
    the one it was fitted on can leave every winning layer dense)."""
    from onnxprune.runtime import lowering
    from tests.test_lower_measure import fake_timer

    monkeypatch.setattr(lowering, "ort_timer", lambda: fake_timer({"fc1": 1.05, "fc2": 1.6, "fc3": 2.0}, 1.3))
    model = _pruned(tmp_path, capsys, wide_mlp)
    code, out, err = _run(["bench", model, "--repeats", "3", "--no-layers", "--json", "-"], capsys)
    assert code == 0, err
    cfg = json.loads(out)["configs"][0]
    assert cfg["end_to_end"]["lowered"] == ["fc2", "fc3"]
    low = cfg["lowering"]
    assert low["decided_by"] == "measure" and low["whole_model"]["kept"] == "lowered"
    assert {r["name"]: r["speedup"] for r in low["layers"]} == pytest.approx({"fc1": 1.05, "fc2": 1.6, "fc3": 2.0})


def test_bench_with_nothing_lowered_reports_no_speed_up(tmp_path, wide_mlp, capsys, monkeypatch):
    """With no layer winning, the 'lowered' model is the dense one; bench timed the model
    against itself and printed the noise as a speed-up (1.08x on a model with nothing
    lowered). It times it once and says so: 1.00x."""
    from onnxprune.runtime import lowering
    from tests.test_lower_measure import fake_timer

    monkeypatch.setattr(lowering, "ort_timer", lambda: fake_timer({"fc1": 0.9, "fc2": 0.8, "fc3": 1.0}, 1.0))
    model = _pruned(tmp_path, capsys, wide_mlp)
    code, out, err = _run(["bench", model, "--repeats", "3", "--no-layers", "--json", "-"], capsys)
    assert code == 0, err
    e2e = json.loads(out)["configs"][0]["end_to_end"]
    assert e2e["lowered"] == [] and e2e["nothing_lowered"] and e2e["ratio"] == 1.0
    assert e2e["dense_ms"] == e2e["sparse_ms"] > 0
    assert "nothing lowered" in err and "1.00x" in err


def test_bench_marks_every_node_of_a_shared_weight_lowered(tmp_path, capsys, monkeypatch):
    """A weight that two nodes share (as torch's exporter leaves a TransformerEncoder's cloned
    layers) is one layer of the lowering, named after its first node; the per-layer table said
    "no" for the second node while the summary listed it lowered."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxprune.runtime import lowering
    from tests.test_lower_measure import fake_timer

    rng = np.random.default_rng(0)
    w = rng.standard_normal((128, 128)).astype(np.float32)
    w[rng.random(w.shape) >= 0.1] = 0
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["h"], name="mm1"), helper.make_node("Relu", ["h"], ["r"]),
         helper.make_node("MatMul", ["r", "W"], ["y"], name="mm2")], "shared",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 128])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 128])], [numpy_helper.from_array(w, "W")])
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    monkeypatch.setattr(lowering, "ort_timer", lambda: fake_timer({"mm1": 3.0}, 2.0))
    code, out, err = _run(["bench", str(path), "--repeats", "3", "--json", "-"], capsys)
    assert code == 0, err
    cfg = json.loads(out)["configs"][0]
    assert sorted(cfg["end_to_end"]["lowered"]) == ["mm1", "mm2"]
    rows = {r["name"]: r for r in cfg["layers"]}
    assert set(rows) == {"mm1", "mm2"}
    assert all(r["lowered"] and r["density"] == pytest.approx(0.1, abs=0.02) for r in rows.values())
