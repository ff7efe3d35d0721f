"""Which device a retraining rank takes (the torch bridge's ``device`` option), checked on any
machine by standing in for torch's CUDA queries: under torchrun each rank takes GPU
LOCAL_RANK, so more ranks on a node than GPUs is a clear usage error for ``cuda`` and a CPU run
for ``auto`` (a world split between cuda and cpu ranks could not agree on a backend).  The
runs on a real GPU are tests/test_torch_bridge_cuda.py."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
from onnxprune.core.errors import UsageError  # noqa: E402
from onnxprune.training.torch_bridge import train  # noqa: E402

pytestmark = pytest.mark.torch


def gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def ranks(monkeypatch, world: int, local_rank: int, local_world: int | None = None) -> train._Dist:
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    if world > 1:
        monkeypatch.setenv("WORLD_SIZE", str(world))
        monkeypatch.setenv("RANK", str(local_rank))
        monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        if local_world is not None:
            monkeypatch.setenv("LOCAL_WORLD_SIZE", str(local_world))
    return train._Dist()


@pytest.mark.parametrize("choice,n_gpu,want", [("auto", 0, "cpu"), ("auto", 1, "cuda:0"), ("cpu", 2, "cpu"),
                                               ("cuda", 1, "cuda:0")])
def test_one_process_takes_the_current_gpu_or_the_cpu(monkeypatch, choice, n_gpu, want):
    gpus(monkeypatch, n_gpu)
    assert str(train._pick_device(choice, ranks(monkeypatch, 1, 0))) == want


def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch):
    gpus(monkeypatch, 0)
    with pytest.raises(UsageError, match="sees no CUDA device"):
        train._pick_device("cuda", ranks(monkeypatch, 1, 0))


@pytest.mark.parametrize("local_rank", [0, 1])
def test_each_rank_takes_its_local_gpu(monkeypatch, local_rank):
    gpus(monkeypatch, 2)
    dist = ranks(monkeypatch, 2, local_rank, 2)
    assert train._pick_device("cuda", dist) == torch.device("cuda", local_rank)
    assert train._pick_device("auto", dist) == torch.device("cuda", local_rank)


@pytest.mark.parametrize("local_rank", [0, 1])
def test_more_ranks_than_gpus_cuda_is_refused_on_every_rank_naming_the_fix(monkeypatch, local_rank):
    """Rank 0 has a GPU but must refuse too, or it would wait in NCCL for the rank that did."""
    gpus(monkeypatch, 1)
    with pytest.raises(UsageError, match=rf"2 process\(es\) on this node \(this one LOCAL_RANK {local_rank}\) but "
                                         r"torch sees 1 CUDA device.*--nproc_per_node 1"):
        train._pick_device("cuda", ranks(monkeypatch, 2, local_rank, 2))
    with pytest.raises(UsageError, match=r"--nproc_per_node 1"):
        train.rank_device("cuda")  # what compress asks before its process group


@pytest.mark.parametrize("local_rank", [0, 1])
def test_more_ranks_than_gpus_auto_runs_every_rank_on_the_cpu(monkeypatch, local_rank):
    """Rank 0 alone could take the GPU; it must not, or it would ask for NCCL where rank 1 asks
    for gloo."""
    gpus(monkeypatch, 1)
    assert train._pick_device("auto", ranks(monkeypatch, 2, local_rank, 2)) == torch.device("cpu")


def test_local_world_defaults_to_the_world(monkeypatch):
    gpus(monkeypatch, 1)
    assert train._pick_device("auto", ranks(monkeypatch, 2, 0)) == torch.device("cpu")


def test_deterministic_cudnn_returns_the_settings_it_replaced():
    before = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    try:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
        assert train._deterministic_cudnn() == (False, True)
        assert (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark) == (True, False)
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = before


@pytest.mark.parametrize("name", ["lstm_zero_state", "gru_zero_state", "rnn_zero_state"])
def test_floats_made_on_the_host_follow_the_module_to_its_device(name):
    """The CPU stand-in for tests/test_torch_bridge_cuda.py's GPU case: the module and its input
    on torch's ``meta`` device (shapes only), where a float tensor the graph builds on the host
    at run time (an RNN's zero state from ConstantOfShape, as torch's exporter writes a call
    without a state) meets them just as it would meet CUDA tensors; the forward must run and
    stay on that device. (A ScatterND into such zeros runs on ``meta`` either way: its case is
    the GPU file's.)"""
    from onnxprune.training.torch_bridge import build_module
    from tests.test_torch_bridge_cuda import HOST_FLOAT_GRAPHS

    model = HOST_FLOAT_GRAPHS[name]()
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    module = build_module(model).eval().to("meta")
    with torch.no_grad():
        y = module(torch.zeros((3, *shape), device="meta"))
    y = y[0] if isinstance(y, tuple) else y
    assert y.device.type == "meta" and y.shape[0] == 3
