"""Inputs whose sample axis is not the first: a recurrent state ``[layers, batch, H]`` (silero-vad's
LSTM ``state`` is ``[2, 1, 128]``).  The ``.npz`` holds every input with its samples on axis 0;
each run feeds samples ``i..j`` moved to the input's batch axis (``np.moveaxis(a[i:j], 0, axis)``),
found by the rule of :mod:`onnxprune.runtime.datasets` — in ONNX Runtime and in torch alike."""

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxprune.runtime import datasets as data
from tests.conftest import run_cli

X, H, OUT = 8, 4, 3


def stateful(batch=1, state_shape=None):
    """x [B, 8] and state [2, B, 4] (B = ``batch``, an int or a symbol):
    z = tanh(x·W + state[0] + 0.5·state[1]), y = z·V [B, 3], stateN = state + z [2, B, 4]."""
    rng = np.random.default_rng(3)
    state_shape = state_shape or [2, batch, H]
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (X, H)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, (H, OUT)).astype(np.float32), "V"),
             numpy_helper.from_array(np.array(0, np.int64), "i0"),
             numpy_helper.from_array(np.array(1, np.int64), "i1"),
             numpy_helper.from_array(np.array(0.5, np.float32), "half"),
             numpy_helper.from_array(np.array([0], np.int64), "ax0")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["h"], name="fc1"),
             helper.make_node("Gather", ["state", "i0"], ["s0"], axis=0),
             helper.make_node("Gather", ["state", "i1"], ["s1"], axis=0),
             helper.make_node("Mul", ["s1", "half"], ["s1h"]),
             helper.make_node("Add", ["h", "s0"], ["a"]),
             helper.make_node("Add", ["a", "s1h"], ["b"]),
             helper.make_node("Tanh", ["b"], ["z"]),
             helper.make_node("MatMul", ["z", "V"], ["y"], name="fc2"),
             helper.make_node("Unsqueeze", ["z", "ax0"], ["zu"]),
             helper.make_node("Add", ["state", "zu"], ["stateN"])]
    graph = helper.make_graph(
        nodes, "stateful",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, X]),
         helper.make_tensor_value_info("state", TensorProto.FLOAT, state_shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, OUT]),
         helper.make_tensor_value_info("stateN", TensorProto.FLOAT, [2, batch, H])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def arrays(n, seed=0, state=(2, H)):
    """x (n, 8) and state (n, 2, 4): samples on axis 0, every sample's state different."""
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((n, X)).astype(np.float32),
            "state": rng.standard_normal((n, *state)).astype(np.float32)}


def by_hand(model, x, state, step):
    """The model run ``step`` samples at a time, each state moved to axis 1 by hand."""
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [sess.run(["y", "stateN"], {"x": x[i:i + step], "state": np.moveaxis(state[i:i + step], 0, 1)})
            for i in range(0, len(x), step)]
    return {"y": np.concatenate([r[0] for r in runs]), "stateN": np.concatenate([r[1] for r in runs])}


def _pruned(model):
    """``model`` with W's small half set to zero (a pruned model to measure fidelity of)."""
    pruned = onnx.ModelProto()
    pruned.CopyFrom(model)
    w = numpy_helper.to_array(pruned.graph.initializer[0])
    w = np.where(np.abs(w) >= np.median(np.abs(w)), w, 0).astype(np.float32)
    pruned.graph.initializer[0].CopyFrom(numpy_helper.from_array(w, "W"))
    return pruned


def _rel(got, dense):
    return float(np.linalg.norm(got.astype(np.float64) - dense) / np.linalg.norm(dense.astype(np.float64)))


def test_batch_one_state_fidelity_matches_feeding_by_hand(tmp_path):
    """x (N, 8), state (N, 2, 4) for x [1, 8], state [2, 1, 4]: the state's sample axis is 1;
    the dense outputs and the pruned model's fidelity are those of feeding each sample by hand."""
    from onnxprune.runtime.evaluate import evaluate, reference

    model, arr = stateful(1), arrays(5)
    np.savez(tmp_path / "d.npz", **arr)
    specs = data.input_specs(model)
    ds = data.check_dataset(data.load_data(tmp_path / "d.npz", specs), specs, None, labels=False)
    resolved = data.resolve_specs(specs, ds.x)
    assert [s.sample_axis for s in resolved] == [0, 1] and data.fixed_batch(resolved) == 1

    dense = by_hand(model, arr["x"], arr["state"], 1)
    ref = reference(model, ds.x)
    for name in ("y", "stateN"):
        np.testing.assert_array_equal(ref.outputs[name], dense[name])
    assert ref.outputs["stateN"].shape == (10, 1, H)  # each run's [2, 1, 4], as today

    pruned = _pruned(model)
    got = by_hand(pruned, arr["x"], arr["state"], 1)
    acc = evaluate(pruned, data.Dataset(ds.x, reference=ref))
    for name in ("y", "stateN"):
        assert acc["outputs"][name]["relative_error"] == pytest.approx(_rel(got[name], dense[name]), rel=1e-9)
        assert acc["outputs"][name]["relative_error"] > 0.01  # the pruning changed something
    assert acc["n"] == 5 and acc["batch_size"] == 1


def test_torch_bridge_feeds_the_state_on_its_axis():
    """The retraining module's outputs on the same data (fed through forward_padded) are ORT's."""
    torch = pytest.importorskip("torch")
    from onnxprune.training.torch_bridge import build_module
    from onnxprune.training.torch_bridge.objective import forward_padded

    for batch, step in ((1, 1), ("batch", 5)):
        model, arr = stateful(batch), arrays(5, seed=1)
        specs = data.resolve_specs(data.input_specs(model), arr)
        tensors = {k: torch.from_numpy(v) for k, v in arr.items()}
        got = forward_padded(build_module(model, ["y", "stateN"]), tensors, ["y", "stateN"], specs)
        want = by_hand(model, arr["x"], arr["state"], step)
        for name in ("y", "stateN"):
            np.testing.assert_allclose(got[name].detach().numpy(), want[name], rtol=1e-5, atol=1e-6)


def _compress(tmp_path, capsys, model, train, extra=()):
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "train.npz", **train)
    out = tmp_path / "out.onnx"
    code, stdout, err = run_cli(
        ["compress", str(tmp_path / "m.onnx"), "-o", str(out), "--train", str(tmp_path / "train.npz"),
         "--val", str(tmp_path / "train.npz"), "--objective", "match", "--target-sparsity", "0.5",
         "--iterations", "1", "--epochs", "1", "--lr", "0.01", "--json", "-", *extra], capsys)
    return code, stdout, err, out


def test_compress_match_batch_one_state(tmp_path, capsys):
    """compress --objective match end to end on x [1, 8], state [2, 1, 4]; the written model
    runs in ONNX Runtime and the report says where the state's samples went."""
    pytest.importorskip("torch")
    arr = arrays(16, seed=2)
    code, stdout, err, out = _compress(tmp_path, capsys, stateful(1), arr, ["--batch-size", "4"])
    assert code == 0, err
    report = json.loads(stdout)
    assert report["sample_axes"] == {"state": 1}
    assert "samples fed on axis 1 of 'state'" in err
    assert report["total"]["nonzero"] <= 0.5 * report["total"]["params"] + 1
    got = by_hand(onnx.load(str(out)), arr["x"], arr["state"], 1)
    assert got["y"].shape == (16, OUT) and np.isfinite(got["y"]).all()
    assert report["accuracy_final"]["outputs"]["stateN"]["relative_error"] < 1.0


def test_symbolic_batch_state_runs_in_micro_batches(tmp_path, capsys):
    """x [batch, 8], state [2, batch, 4] (layers fixed at 2): data state (N, 2, 4) takes axis 1
    — axis 0 fits the shape but is fixed at 2, not the batch — in ORT chunks of 4 and in a
    compress run with batches of 4."""
    from onnxprune.runtime.evaluate import run_outputs

    model, arr = stateful("batch"), arrays(6, seed=4)
    specs = data.resolve_specs(data.input_specs(model), arr)
    assert [s.sample_axis for s in specs] == [0, 1] and data.fixed_batch(specs) is None
    got = run_outputs(model, arr, ["y", "stateN"], batch_size=4)  # runs of 4 then 2
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    runs = [sess.run(["y", "stateN"], {"x": arr["x"][i:i + 4],
                                       "state": np.moveaxis(arr["state"][i:i + 4], 0, 1)})
            for i in (0, 4)]
    np.testing.assert_allclose(got["y"], np.concatenate([r[0] for r in runs]), rtol=1e-6)
    # the state output's runs, of 4 and 2 samples on axis 1, are joined there: [2, 6, 4]
    np.testing.assert_allclose(got["stateN"], np.concatenate([r[1] for r in runs], axis=1), rtol=1e-6)

    pytest.importorskip("torch")
    code, stdout, err, out = _compress(tmp_path, capsys, model, arrays(16, seed=5), ["--batch-size", "4"])
    assert code == 0, err
    assert json.loads(stdout)["sample_axes"] == {"state": 1}
    three = arrays(3, seed=6)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    y, s = sess.run(None, {"x": three["x"], "state": np.moveaxis(three["state"], 0, 1)})
    assert y.shape == (3, OUT) and s.shape == (2, 3, H)


def _refused(tmp_path, capsys, model, train):
    code, _, err, out = _compress(tmp_path, capsys, model, train, ["-q"])
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("onnxprune: error:")
    assert not out.exists()
    return lines[0]


def test_ambiguous_sample_axis_is_refused_before_training(tmp_path, capsys):
    """x [2, 8] (batch fixed at 2) and state [3, 2, 2, 4]: for state (N, 3, 2, 4) axes 1 and 2
    both fit and both are the batch (2), with different layouts — refused, naming them."""
    model = stateful(2, state_shape=[3, 2, 2, H])
    line = _refused(tmp_path, capsys, model, arrays(8, state=(3, 2, H)))
    assert "'state'" in line and "axis 1 or 2" in line and "ambiguous" in line


def test_no_fitting_sample_axis_is_refused_before_training(tmp_path, capsys):
    """state (N, 3, 4) fits no axis of [2, 1, 4]: refused, saying which axes were considered."""
    line = _refused(tmp_path, capsys, stateful(1), arrays(8, state=(3, H)))
    assert "'state'" in line and "axis 1 differs" in line and "considered axes 0, 1, 2" in line


def test_size_one_axes_side_by_side_are_one_layout():
    """state [2, 1, 1, 4] with a batch of 1: axes 1 and 2 both fit but lay a sample out alike
    (the same feed), so the first is taken; with the batch fixed at 1 by x."""
    model = stateful(1, state_shape=[2, 1, 1, H])
    specs = data.resolve_specs(data.input_specs(model), arrays(3, state=(2, 1, H)))
    assert [s.sample_axis for s in specs] == [0, 1]


def test_axis_zero_still_wins_when_it_fits():
    """A state whose axis 0 is the batch (data already laid out sample-first) keeps axis 0,
    and a single fixed-batch input keeps today's rule."""
    model = stateful(1, state_shape=[1, 2, H])
    specs = data.resolve_specs(data.input_specs(model), arrays(3, state=(2, H)))
    assert [s.sample_axis for s in specs] == [0, 0]
