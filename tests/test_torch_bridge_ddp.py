"""torchrun + DistributedDataParallel: 2 CPU processes (gloo) against a single process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from onnxprune.training.torch_bridge import FinetuneConfig, find_weights, finetune, read_weights  # noqa: E402

from tests.test_torch_bridge import helper_mlp, prune, toy_data  # noqa: E402

pytestmark = pytest.mark.torch
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun not installed")
def test_ddp_two_gloo_ranks_match_single_process(tmp_path):
    model = prune(helper_mlp(with_dropout=False), 0.6)
    x, y = toy_data((16,), n=96, classes=4, seed=3)
    onnx.save(model, tmp_path / "in.onnx")
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "val.npz", x=x[:32], y=y[:32])
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    cmd = [torchrun, "--standalone", "--nproc_per_node", "2", "-m", "onnxprune.cli", "finetune",
           str(tmp_path / "in.onnx"), "--train", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
           "-o", str(tmp_path / "out.onnx"), "--json", str(tmp_path / "report.json"),
           "--epochs", "2", "--batch-size", "16", "--lr", "0.1", "--seed", "3"]
    # Own session, so a hung run can be ended together with the ranks torchrun started.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("torchrun did not finish within 120 s")
    assert proc.returncode == 0, err[-3000:]
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["world_size"] == 2 and report["max_rank_divergence"] == 0.0
    assert [h["samples"] for h in report["history"]] == [96, 96]

    ddp = read_weights(onnx.load(tmp_path / "out.onnx"))
    single = finetune(model, (x, y), config=FinetuneConfig(epochs=2, batch_size=16, lr=0.1, seed=3))
    ref = read_weights(single.model)
    before = read_weights(model)
    for name, info in find_weights(model).items():
        np.testing.assert_allclose(ddp[name], ref[name], rtol=1e-5, atol=1e-6, err_msg=name)
        assert not np.array_equal(ddp[name], before[name])
        if info.prunable:
            assert np.all(ddp[name][before[name] == 0] == 0)
    assert report["history"][-1]["train_loss"] == pytest.approx(single.history[-1]["train_loss"], rel=1e-4)
