"""`compress` under torchrun: 2 CPU processes (gloo) against a single process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from onnxprune.training.compress import mask_digest  # noqa: E402
from onnxprune.training.torch_bridge import find_weights, read_weights, write_back  # noqa: E402

from tests.conftest import run_cli  # noqa: E402
from tests.test_torch_bridge import helper_mlp, toy_data  # noqa: E402

pytestmark = pytest.mark.torch
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")


def _compress_args(tmp_path, out: str) -> list[str]:
    return ["compress", str(tmp_path / "in.onnx"), "--train", str(tmp_path / "train.npz"),
            "--val", str(tmp_path / "val.npz"), "-o", str(tmp_path / out),
            "--json", str(tmp_path / (out + ".json")), "--iterations", "2", "--epochs", "1",
            "--target-sparsity", "0.6", "--batch-size", "16", "--lr", "0.1", "--seed", "3",
            "--device", "auto"]


def _torchrun(argv: list[str], timeout: float = 180, gpus: bool = False) -> tuple[int, str]:
    """Two ranks of ``onnxprune.cli argv`` under torchrun: (exit code, stderr). On the CPU
    unless ``gpus`` (tests/test_torch_bridge_cuda.py)."""
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1", **({} if gpus else {"CUDA_VISIBLE_DEVICES": ""})}
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "onnxprune.cli", *argv]
    # Own session, so a hung run can be ended together with the ranks torchrun started.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"torchrun did not finish within {timeout} s")
    return proc.returncode, err


def _fix_batch(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """The model with its input and output batch dimension fixed (exported batch-1 models)."""
    for v in (*model.graph.input, *model.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = batch
    return model


@pytest.mark.skipif(not os.path.exists(TORCHRUN), reason="torchrun not installed")
@pytest.mark.parametrize("fixed_batch", [None, 1], ids=["free_batch", "batch_fixed_at_1"])
def test_compress_two_gloo_ranks_match_single_process(tmp_path, capsys, fixed_batch):
    """With the batch fixed at 1 each rank feeds its half of a global batch one sample at a time
    and accumulates the gradients: the same weights as one process."""
    model = helper_mlp(with_dropout=False)
    if fixed_batch:
        model = _fix_batch(model, fixed_batch)
    x, y = toy_data((16,), n=96, classes=4, seed=3)
    onnx.save(model, tmp_path / "in.onnx")
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "val.npz", x=x[:32], y=y[:32])
    inputs = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    code, err = _torchrun(_compress_args(tmp_path, "ddp.onnx"))
    assert code == 0, err[-3000:]
    # Only rank 0 wrote: the model and its report, nothing else (no temp file of rank 1).
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*inputs, "ddp.onnx", "ddp.onnx.json"])
    assert all((tmp_path / n).read_bytes() == b for n, b in inputs.items())
    report = json.loads((tmp_path / "ddp.onnx.json").read_text())
    assert report["world_size"] == 2 and report["max_rank_divergence"] == 0.0
    assert report["device"] == "cpu"
    # Each retraining round saw every sample once, split over the two ranks.
    rounds = [h for h in report["history"] if h["stage"] == "iteration"]
    assert [r["train_history"][-1]["samples"] for r in rounds] == [96, 96]

    code, _out, err = run_cli(_compress_args(tmp_path, "one.onnx"), capsys)
    assert code == 0, err
    single = json.loads((tmp_path / "one.onnx.json").read_text())
    assert single["world_size"] == 1 and single["max_rank_divergence"] is None
    ddp_model, one_model = onnx.load(tmp_path / "ddp.onnx"), onnx.load(tmp_path / "one.onnx")
    ddp, one, dense = read_weights(ddp_model), read_weights(one_model), read_weights(model)
    for name, info in find_weights(ddp_model).items():
        np.testing.assert_allclose(ddp[name], one[name], rtol=1e-5, atol=1e-6, err_msg=name)
        if info.prunable:
            assert np.array_equal(ddp[name] == 0, one[name] == 0), name
            assert not np.array_equal(ddp[name], dense[name]), name
    assert [r["nonzero"] for r in report["history"]] == [r["nonzero"] for r in single["history"]]


def test_mask_digest_sees_one_mask_change_not_a_value_change():
    """The ranks compare masks (which weights are zero), not the values training moves."""
    model = helper_mlp(with_dropout=False)
    w = read_weights(model)
    name = next(n for n, i in find_weights(model).items() if i.prunable)
    scaled = write_back(model, {name: w[name] * 1.5})
    one_zero = w[name].copy()
    one_zero.reshape(-1)[7] = 0.0
    masked = write_back(model, {name: one_zero})
    assert mask_digest(scaled) == mask_digest(model)
    assert mask_digest(masked) != mask_digest(model)
