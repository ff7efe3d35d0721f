"""``onnxprune lower`` and ``prune --emit sparse-ops`` deciding by measurement, through the
command line (the timer is replaced, so the decisions do not depend on this machine)."""

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxprune import runtime_ops
from onnxprune.runtime_ops import dense_from_csr
from tests.conftest import run_cli, save_external
from onnxprune.core.stats import layer_rows
from tests.models import cnn, mlp, random_feeds, run
from tests.test_lower_measure import fake_timer, masked


@pytest.fixture
def timed(monkeypatch):
    """Replace the ONNX Runtime timer: ``timed(speedups, whole)`` sets what it reports."""
    from onnxprune.runtime import lowering

    def use(speedups: dict, whole: float, calls=None):
        monkeypatch.setattr(lowering, "ort_timer", lambda: fake_timer(speedups, whole, calls))
    return use


@pytest.fixture
def pruned(tmp_path):
    path = tmp_path / "pruned.onnx"
    onnx.save(masked(mlp(sizes=(64, 48, 32, 10)), density=0.3), path)
    return path


def _weights(model) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_lower_changes_no_weight(tmp_path, pruned, timed, capsys):
    """Every weight of the input is in the output bit for bit: the lowered layer's as its CSR
    arrays, the dense and unpruned ones as they were."""
    src = onnx.load(str(pruned))
    w = src.graph.initializer[0]
    # one layer left unpruned: it must stay exactly as it was
    unpruned = next(t for t in src.graph.initializer if t.name == "fc3.weight")
    unpruned.CopyFrom(numpy_helper.from_array(
        np.random.default_rng(5).standard_normal((10, 32)).astype(np.float32), "fc3.weight"))
    onnx.save(src, pruned)
    timed({"fc1": 1.5, "fc2": 1.0}, 1.2)
    out = tmp_path / "low.onnx"
    code, stdout, err = run_cli(["lower", str(pruned), "-o", str(out), "--json", "-"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["sparse_ops"]["lowered"] == ["fc1"]
    rows = {r["name"]: r for r in report["sparse_ops"]["layers"]}
    assert rows["fc3"]["reason"] == "not pruned (100% dense)"
    before, after = _weights(src), _weights(onnx.load(str(out)))
    assert w.name == "fc1.weight" and w.name not in after
    k = before["fc1.weight"].shape[1]
    rebuilt = dense_from_csr(after["fc1.weight.csr_values"], after["fc1.weight.csr_col_idx"],
                             after["fc1.weight.csr_row_ptr"], k)
    assert rebuilt.tobytes() == before["fc1.weight"].tobytes()
    assert np.count_nonzero(after["fc1.weight.csr_values"]) == \
        np.count_nonzero(before["fc1.weight"])
    for name, value in before.items():
        if name != "fc1.weight":
            assert after[name].tobytes() == value.tobytes(), name
    assert "lowered fc1 (measured 1.50x >= 1.1x" in err


def test_lowered_output_runs_and_matches(tmp_path, pruned, timed, capsys):
    timed({"fc1": 1.5, "fc2": 1.5, "fc3": 1.5}, 1.4)
    out = tmp_path / "low.onnx"
    code, _, err = run_cli(["lower", str(pruned), "-o", str(out), "--expected-batch", "3",
                            "-q"], capsys)
    assert code == 0, err
    assert [n.op_type for n in onnx.load(str(out)).graph.node].count("CsrGemm") == 3
    src = onnx.load(str(pruned))
    for batch in (1, 5):
        feeds = random_feeds(src, batch=batch)
        want = run(src, feeds)[0]
        got = runtime_ops.InferenceSession(str(out)).run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_slower_whole_model_is_written_dense_and_said(tmp_path, pruned, timed, capsys):
    timed({"fc1": 1.5, "fc2": 1.5, "fc3": 1.5}, 0.8)
    out, rep = tmp_path / "low.onnx", tmp_path / "r.json"
    code, _, err = run_cli(["lower", str(pruned), "-o", str(out), "--json", str(rep)], capsys)
    assert code == 0, err
    assert "ran 0.80x of the dense one" in err and "wrote the dense model" in err
    report = json.loads(rep.read_text())
    assert report["lowering"]["whole_model"]["kept"] == "dense"
    assert report["sparse_ops"]["lowered"] == []
    assert not any(n.domain == runtime_ops.DOMAIN for n in onnx.load(str(out)).graph.node)


def test_a_faster_subset_is_written_and_said(tmp_path, pruned, timed, capsys):
    timed({"fc1": 2.5, "fc2": 1.6, "fc3": 1.2}, [0.9, 0.95, 1.2])
    out = tmp_path / "low.onnx"
    code, _, err = run_cli(["lower", str(pruned), "-o", str(out)], capsys)
    assert code == 0, err
    assert "with every winning layer lowered it ran 0.90x" in err
    assert "only layers measured >= 2x alone were lowered" in err and "ran 1.20x" in err


def test_lower_reads_external_data_and_compressed_storage(tmp_path, capsys, timed):
    """A portable (sparse initializer) file and an external-data one lower alike."""
    src = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(64, 48, 32, 10)), src)
    portable = tmp_path / "p.onnx"
    assert run_cli(["prune", str(src), "-o", str(portable), "--fc-quality", "1.5", "-q"],
                   capsys)[0] == 0
    assert onnx.load(str(portable)).graph.sparse_initializer
    ext = tmp_path / "ext.onnx"
    save_external(onnx.load(str(portable)), str(ext))
    timed({"fc1": 2.0, "fc2": 2.0, "fc3": 2.0}, 2.0)
    feeds = random_feeds(onnx.load(str(src)), batch=2)
    want = run(onnx.load(str(portable)), feeds)[0]
    for i, path in enumerate((portable, ext)):
        out = tmp_path / f"o{i}.onnx"
        code, _, err = run_cli(["lower", str(path), "-o", str(out), "-q"], capsys)
        assert code == 0, err
        got = runtime_ops.InferenceSession(str(out)).run(None, feeds)[0]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


@pytest.mark.parametrize("argv, code", [
    (["--threads", "0"], 2),
    (["--decide", "guess"], 2),
    (["--lower-for", "memory"], 2),
    (["--input-shape", "nope=1x3"], 2),
])
def test_lower_usage_errors(tmp_path, pruned, capsys, argv, code):
    out = tmp_path / "o.onnx"
    got, _, err = run_cli(["lower", str(pruned), "-o", str(out), *argv], capsys)
    assert got == code, err
    assert err.count("onnxprune: error:") == 1 and "Traceback" not in err
    assert not out.exists()


def test_lower_refuses_bad_input_and_its_own_input(tmp_path, pruned, capsys):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x07garbage")
    out = tmp_path / "o.onnx"
    code, _, err = run_cli(["lower", str(bad), "-o", str(out)], capsys)
    assert code == 4, err
    assert not out.exists()
    before = pruned.read_bytes()
    code, _, err = run_cli(["lower", str(pruned), "-o", str(pruned)], capsys)
    assert code == 2 and "refusing to overwrite the input" in err
    assert pruned.read_bytes() == before


def test_symbolic_input_needs_its_shape(tmp_path, capsys, timed):
    src, out = tmp_path / "det.onnx", tmp_path / "o.onnx"
    onnx.save(masked(cnn(hw="H")), src)
    timed({"conv1": 1.5, "conv2": 1.5, "fc": 0.5}, 1.5)
    code, _, err = run_cli(["lower", str(src), "-o", str(out)], capsys)
    assert code == 2 and "input 'x' has symbolic dimension" in err and "--input-shape x=" in err
    assert not out.exists()
    code, stdout, err = run_cli(["lower", str(src), "-o", str(out), "--input-shape",
                                 "x=1x3x16x16", "--json", "-", "-q"], capsys)
    assert code == 0, err
    assert json.loads(stdout)["sparse_ops"]["lowered"] == ["conv1", "conv2"]


def test_decide_model_is_the_cost_model(tmp_path, pruned, capsys, monkeypatch):
    from onnxprune.runtime import lowering

    monkeypatch.setattr(lowering, "ort_timer", lambda: pytest.fail("timed"))
    out = tmp_path / "o.onnx"
    code, stdout, err = run_cli(["lower", str(pruned), "-o", str(out), "--decide", "model",
                                 "--expected-batch", "8", "--json", "-", "-q"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["lowering"]["decided_by"] == "model"
    assert all(r["reason"].startswith(("cost model:", "not pruned"))
               for r in report["sparse_ops"]["layers"])


def test_prune_emit_sparse_ops_measures_by_default(tmp_path, capsys, timed):
    src = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(64, 48, 32, 10)), src)
    calls = []
    timed({"fc1": 1.3, "fc2": 1.05, "fc3": 0.7}, 1.2, calls)
    out = tmp_path / "s.onnx"
    argv = ["prune", str(src), "-o", str(out), "--emit", "sparse-ops", "--fc-quality", "1.5",
            "--json", "-", "-q"]
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["sparse_ops"]["lowered"] == ["fc1"]
    assert report["lowering"]["decided_by"] == "measure"
    assert report["lowering"]["whole_model"]["kept"] == "lowered"
    assert sorted(c for c in calls if c) == ["fc1", "fc2", "fc3"]
    # the measurements do not enter the recipe: the stamp still makes prune idempotent
    assert report["recipe"]["passes"][-1]["lower-to-sparse-ops"]["measured"] is None
    code, stdout, err = run_cli(["prune", str(out), "-o", str(tmp_path / "s2.onnx"),
                                 *argv[4:]], capsys)
    assert code == 0, err
    assert json.loads(stdout)["already_applied"]


def test_prune_decide_needs_sparse_ops(tmp_path, pruned, capsys):
    out = tmp_path / "o.onnx"
    code, _, err = run_cli(["prune", str(pruned), "-o", str(out), "--decide", "model"], capsys)
    assert code == 2 and "only applies to --emit sparse-ops" in err
    assert not out.exists()


def test_prune_takes_input_shape_for_its_flops(tmp_path, capsys):
    """--input-shape sizes a symbolic input for prune's FLOPs as for inspect's (it was refused
    without --emit sparse-ops, and the FLOPs of a detector stayed unknown); a wrong one is
    exit 2 before anything is written."""
    src, out = tmp_path / "det.onnx", tmp_path / "o.onnx"
    onnx.save(cnn(channels=(3, 8, 8), hw="H"), src)
    code, stdout, err = run_cli(["prune", str(src), "-o", str(out), "--json", "-"], capsys)
    assert code == 0 and json.loads(stdout)["total"]["flops"] is None, err
    code, stdout, err = run_cli(["prune", str(src), "-o", str(out), "--json", "-",
                                 "--input-shape", "x=1x3x20x20"], capsys)
    assert code == 0, err
    want = {r["name"]: r["flops"] for r in layer_rows(cnn(channels=(3, 8, 8), hw=20))[0]}
    assert {r["name"]: r["flops"] for r in json.loads(stdout)["layers"]} == want
    out.unlink()
    code, _, err = run_cli(["prune", str(src), "-o", str(out), "--input-shape", "y=1x3x20x20"], capsys)
    assert code == 2 and "no such input" in err and not out.exists()


def test_prune_refuses_a_lowered_model(tmp_path, pruned, capsys, timed):
    """prune of a lowered model saw only its dense layers: a --min-sparsity gate passed on the
    10% of weights left dense while the whole model was less sparse. It is refused (exit 4)."""
    timed({"fc1": 1.5, "fc2": 1.5, "fc3": 1.5}, 1.4)
    low, out = tmp_path / "low.onnx", tmp_path / "again.onnx"
    assert run_cli(["lower", str(pruned), "-o", str(low), "-q"], capsys)[0] == 0
    code, _, err = run_cli(["prune", str(low), "-o", str(out), "--min-sparsity", "0.5"], capsys)
    assert code == 4 and "already lowered" in err and err.count("\n") == 1
    assert not out.exists()


def test_lowering_nothing_keeps_a_compressed_file_compressed(tmp_path, capsys, timed):
    """No layer wins: the output is the input's weights in the input's sparse storage, not
    a dense file larger than what was given."""
    src = tmp_path / "m.onnx"
    onnx.save(mlp(sizes=(256, 128, 64, 10)), src)
    portable = tmp_path / "p.onnx"
    assert run_cli(["prune", str(src), "-o", str(portable), "--fc-quality", "1.5", "-q"],
                   capsys)[0] == 0
    timed({"fc1": 1.0, "fc2": 1.0, "fc3": 1.0}, 1.0)
    out, rep = tmp_path / "o.onnx", tmp_path / "r.json"
    code, _, err = run_cli(["lower", str(portable), "-o", str(out), "--json", str(rep)], capsys)
    assert code == 0, err
    report = json.loads(rep.read_text())
    assert report["sparse_ops"]["lowered"] == []
    assert out.stat().st_size <= portable.stat().st_size * 1.02
    assert onnx.load(str(out)).graph.sparse_initializer


def test_lower_takes_the_portable_output_of_prune_with_a_sparse_bias(tmp_path, capsys):
    """prune's default (portable) storage keeps a mostly-zero bias (torch starts attention
    biases at 0) as a sparse initializer; lowering it, with real one-node timings, must read it
    (it failed with an internal KeyError)."""
    model = mlp(sizes=(64, 48, 32, 10))  # Gemm: the bias is the CSR node's own input
    for t in model.graph.initializer:
        if t.name == "fc1.bias":
            b = np.zeros(48, np.float32)
            b[3] = 0.5
            t.CopyFrom(numpy_helper.from_array(b, t.name))
    src, pruned, out = tmp_path / "m.onnx", tmp_path / "p.onnx", tmp_path / "low.onnx"
    onnx.save(model, src)
    code, _, err = run_cli(["prune", str(src), "-o", str(pruned), "--target-sparsity", "0.8", "-q"], capsys)
    assert code == 0, err
    assert "fc1.bias" in {s.values.name for s in onnx.load(str(pruned)).graph.sparse_initializer}
    code, _, err = run_cli(["lower", str(pruned), "-o", str(out), "--json", str(tmp_path / "r.json"), "-q"],
                           capsys)
    assert code == 0, err
    timed = json.loads((tmp_path / "r.json").read_text())["lowering"]["layers"]
    assert {r["name"] for r in timed if r.get("sparse_s")} == {"fc1", "fc2", "fc3"}  # each timed alone
    feeds = random_feeds(model, batch=1)
    got = runtime_ops.InferenceSession(out.read_bytes()).run(None, feeds)[0]
    np.testing.assert_allclose(got, run(onnx.load(str(pruned)), feeds)[0], rtol=1e-4, atol=1e-5)


def test_a_batch_the_model_fixes_wins_and_the_report_says_so(tmp_path, timed, capsys):
    """--expected-batch 4 on a model whose input fixes batch 1: the timings run at 1, and the
    report and console say so (the report claimed batch 4 for batch-1 timings)."""
    src, out = tmp_path / "m.onnx", tmp_path / "low.onnx"
    onnx.save(masked(mlp(sizes=(64, 48, 10), batch=1), density=0.3), src)
    timed({"fc1": 1.5, "fc2": 1.5}, 1.3)
    code, stdout, err = run_cli(["lower", str(src), "-o", str(out), "--expected-batch", "4",
                                 "--json", "-"], capsys)
    assert code == 0, err
    lowering = json.loads(stdout)["lowering"]
    assert lowering["batch"] == 1 and "--expected-batch 4 was not used" in lowering["batch_note"]
    assert "note: timed at batch 1" in err
    code, stdout, err = run_cli(["lower", str(src), "-o", str(out), "--json", "-"], capsys)
    assert code == 0 and json.loads(stdout)["lowering"]["batch_note"] is None


def _ids_model(path):
    """Token ids into a 5-row embedding, then a pruned MatMul: random ids in [0, 10) fail."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(3)
    w = rng.standard_normal((64, 96)).astype(np.float32)
    w[np.abs(w) < 1.2] = 0.0
    g = helper.make_graph(
        [helper.make_node("Gather", ["E", "ids"], ["e"]), helper.make_node("MatMul", ["e", "W"], ["y"], name="proj")],
        "ids", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 96])],
        initializer=[numpy_helper.from_array(rng.standard_normal((5, 64)).astype(np.float32), "E"),
                     numpy_helper.from_array(w, "W")])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)


def test_data_feeds_the_timings_and_the_fp16_check(tmp_path, capsys, monkeypatch):
    """Random ids stay inside the embedding they index (they ran off its 5 rows, drawn in
    [0, 10), and exit 1 pointed at --data); --data's arrays are what every timing and the fp16
    check then run on, at their own batch."""
    from onnxprune.runtime import lowering

    src, out, data = tmp_path / "ids.onnx", tmp_path / "low.onnx", tmp_path / "ids.npz"
    _ids_model(src)
    ids = np.random.default_rng(4).integers(0, 5, (3, 8))
    np.savez(data, ids=ids)
    seen = []

    def timer(name, dense, sparse, feeds):
        seen.append({k: v.copy() for k, v in feeds.items()} if name is None else None)
        return 1.5e-3, 1e-3
    monkeypatch.setattr(lowering, "ort_timer", lambda: timer)
    code, _, err = run_cli(["lower", str(src), "-o", str(out)], capsys)
    assert code == 0, err
    drawn = [s["ids"] for s in seen if s is not None]
    assert drawn and all(0 <= d.min() and d.max() < 5 for d in drawn)
    seen.clear()
    code, stdout, err = run_cli(["lower", str(src), "-o", str(out), "--data", str(data),
                                 "--sparse-values", "fp16", "--json", "-"], capsys)
    assert code == 0, err
    report = json.loads(stdout)
    assert report["sparse_ops"]["lowered"] == ["proj"]
    whole = [s for s in seen if s is not None]
    assert whole and all(np.array_equal(s["ids"], ids) for s in whole)
    low = report["lowering"]
    assert low["inputs"] == f"--data {data}, batch 3" and low["batch"] == 3
    assert "the batch of the --data arrays; --expected-batch 1 was not used" in low["batch_note"]
    assert low["values_change"]["inputs"] == f"--data {data}, batch 3"
    assert 0 < low["values_change"]["max_relative_output_change"] < 1e-2
    got = runtime_ops.InferenceSession(str(out)).run(None, {"ids": ids})[0]
    want = run(onnx.load(str(src)), {"ids": ids})[0]
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-2 * float(np.abs(want).max()))


@pytest.mark.parametrize("extra, message", [
    (["--input-shape", "ids=1x8"], "use one of them"),
    (["--decide", "model"], "this lowering runs nothing"),
    (["--lower-for", "size"], "this lowering runs nothing"),
])
def test_data_where_it_is_not_used_is_refused(tmp_path, capsys, extra, message):
    src, out, data = tmp_path / "ids.onnx", tmp_path / "low.onnx", tmp_path / "ids.npz"
    _ids_model(src)
    np.savez(data, ids=np.zeros((1, 8), np.int64))
    code, _, err = run_cli(["lower", str(src), "-o", str(out), "--data", str(data), *extra], capsys)
    assert code == 2 and message in err and err.count("onnxprune: error:") == 1
    assert not out.exists()


def test_data_is_checked_before_anything_runs(tmp_path, capsys):
    src, out, data = tmp_path / "ids.onnx", tmp_path / "low.onnx", tmp_path / "ids.npz"
    _ids_model(src)
    np.savez(data, ids=np.zeros((1, 7), np.int64))
    code, _, err = run_cli(["lower", str(src), "-o", str(out), "--data", str(data)], capsys)
    assert code == 2 and "dim 1 is 7, the model fixes it at 8" in err and not out.exists()
    np.savez(data, x=np.zeros((1, 8), np.float32))  # under 'x', a one-input model's default name
    code, _, err = run_cli(["lower", str(src), "-o", str(out), "--data", str(data)], capsys)
    assert code == 2 and "holds float32, the model's input takes int64" in err and not out.exists()
    assert "array 'x' (for input 'ids')" in err  # named as in the file, and what it fed
    before = data.read_bytes()
    code, _, err = run_cli(["lower", str(src), "-o", str(data), "--data", str(data)], capsys)
    assert code == 2 and "refusing to overwrite the input" in err and data.read_bytes() == before


def test_lowering_a_lowered_model_says_so(tmp_path, pruned, timed, capsys):
    timed({"fc1": 1.5, "fc2": 1.5, "fc3": 1.5}, 1.4)
    once, twice = tmp_path / "once.onnx", tmp_path / "twice.onnx"
    assert run_cli(["lower", str(pruned), "-o", str(once), "-q"], capsys)[0] == 0
    code, stdout, err = run_cli(["lower", str(once), "-o", str(twice), "--json", "-"], capsys)
    assert code == 0 and json.loads(stdout)["sparse_ops"]["already_lowered"] == 3
    assert "the model is already lowered (3 sparse-op node(s))" in err
    assert "no prunable layer found" not in err


def test_the_batch_timed_is_that_of_the_inputs_with_a_free_batch(tmp_path, capsys, timed):
    """A side input of fixed shape [1] (a sample rate) beside --data of batch 4: the report
    says batch 4 (it said the --expected-batch default, 1, as the leading dims disagreed)."""
    from onnx import TensorProto, helper

    src, out, data = tmp_path / "sr.onnx", tmp_path / "low.onnx", tmp_path / "sr.npz"
    model = masked(mlp(sizes=(64, 48, 10)), density=0.3)
    y = model.graph.output[0]
    model.graph.node.append(helper.make_node("Add", [y.name, "sr"], ["y_sr"]))
    model.graph.input.append(helper.make_tensor_value_info("sr", TensorProto.FLOAT, [1]))
    model.graph.output[0].name = "y_sr"
    onnx.save(model, src)
    np.savez(data, x=np.ones((4, 64), np.float32), sr=np.ones(1, np.float32))
    timed({"fc1": 1.5, "fc2": 1.5}, 1.3)
    code, stdout, err = run_cli(["lower", str(src), "-o", str(out), "--data", str(data), "--json", "-"], capsys)
    assert code == 0, err
    low = json.loads(stdout)["lowering"]
    assert low["batch"] == 4 and "timed at batch 4" in low["batch_note"]


def test_a_tied_embedding_is_neither_pruned_nor_lowered(tmp_path, capsys):
    """An embedding table that the output head also multiplies by: prune left the lookup's
    table 80% zeros without a word, and lowering the head (once pruned) added its CSR beside the
    dense table the lookup still reads, a file larger than the one given. Both leave it alone and
    say why; the layer next to it is pruned and lowered as before."""
    from tests.test_find_layers import _tied_lm

    src = tmp_path / "tied.onnx"
    onnx.save(_tied_lm(), src)
    code, _, err = run_cli(["prune", str(src), "-o", str(tmp_path / "p.onnx"), "--target-sparsity", "0.8",
                            "--emit", "dense"], capsys)
    assert code == 0
    assert "skip: weight also read by Gather 'lookup' (a tied embedding)" in err
    out = _weights(onnx.load(str(tmp_path / "p.onnx")))
    np.testing.assert_array_equal(out["wte"], _weights(onnx.load(str(src)))["wte"])
    assert np.count_nonzero(out["w1"]) < out["w1"].size

    # a table already pruned (by hand, or by another tool) is not lowered either
    m = onnx.load(str(tmp_path / "p.onnx"))
    for t in m.graph.initializer:
        if t.name == "wte":
            a = numpy_helper.to_array(t).copy()
            a[np.abs(a) < np.quantile(np.abs(a), 0.8)] = 0
            t.CopyFrom(numpy_helper.from_array(a, "wte"))
    onnx.save(m, tmp_path / "both.onnx")
    code, _, err = run_cli(["lower", str(tmp_path / "both.onnx"), "-o", str(tmp_path / "size.onnx"),
                            "--lower-for", "size"], capsys)
    assert code == 0, err
    assert "dense   lm_head (weight also read by Gather 'lookup' (a tied embedding))" in err
    assert (tmp_path / "size.onnx").stat().st_size <= (tmp_path / "both.onnx").stat().st_size
    lowered = onnx.load(str(tmp_path / "size.onnx"))
    assert [n.op_type for n in lowered.graph.node if n.domain == runtime_ops.DOMAIN] == ["CsrGemm"]


def test_nothing_to_lower_writes_no_larger_a_file(tmp_path, capsys):
    """An unpruned model lowers to itself: every embedded tensor had gained an explicit
    data_location (2 bytes each), so the copy came out larger than the file given."""
    src, out = tmp_path / "dense.onnx", tmp_path / "out.onnx"
    onnx.save(mlp(sizes=(64, 48, 10)), src)
    code, _, err = run_cli(["lower", str(src), "-o", str(out)], capsys)
    assert code == 0, err
    assert out.stat().st_size <= src.stat().st_size
    assert not any(t.HasField("data_location") for t in onnx.load(str(out)).graph.initializer)
