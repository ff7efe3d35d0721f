"""The fine-tune bridge on a CUDA GPU: the paths a CPU run never takes.

Skipped where torch is missing or sees no CUDA device (CI, CPU-only machines).  Checked here:

* masked retraining on the GPU: the pruned weights are exactly zero in the written ONNX, the
  loss falls, accuracy recovers (torch's per-epoch validation on the GPU agrees with ONNX
  Runtime on the written model), BatchNorm statistics and keep-best states come back from
  the device, and the report names it; also label-free / distillation runs (the teacher on
  the GPU), a model with a fixed batch, regrow, and user batches already on the GPU;
* the same seed on CPU and GPU gives close weights: with TF32 off only the summation order
  differs (tight bound); with torch's defaults (TF32 allowed for cuDNN convolutions, not for
  cuBLAS matmuls; the bridge sets neither) the convolution weights may move further (a bound
  for TF32's 10-bit mantissa);
* every op of the interpreter's table on GPU tensors against ONNX Runtime, gradients against
  the CPU's, and graphs where a float tensor the interpreter makes on the host at run time
  (ConstantOfShape: torch's exporter writes an RNN's zero initial state that way) meets GPU
  tensors; small architectures exported from torch, rebuilt and retrained on the GPU;
* the command line: ``finetune --device cuda`` in a subprocess (its model valid, and equal to
  the CPU run's by ``onnxprune check``), ``compress --device auto`` picking the GPU;
* torchrun with two ranks over NCCL, where the machine has two GPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
from onnxprune.training.torch_bridge import (  # noqa: E402
    FinetuneConfig, build_module, find_weights, finetune, read_weights, write_back,
)
from tests.conftest import run_cli  # noqa: E402
from tests.test_compress_ddp import _torchrun as torchrun  # noqa: E402
from tests.corpus import export_torch, torch_architectures  # noqa: E402
from tests.models import cnn, mlp, run  # noqa: E402
from tests.test_torch_bridge import prune  # noqa: E402
from tests.test_torch_bridge_ops import CASES as OP_CASES, Case, make_model  # noqa: E402
from tests.test_torch_bridge_ops_more import CASES as MORE_OP_CASES, GRAD_CASES  # noqa: E402

DEVICE = "cuda"  # the device under test
HAS_DEVICE = torch.cuda.is_available()
GPUS = torch.cuda.device_count() if HAS_DEVICE else 0

pytestmark = [pytest.mark.torch,
              pytest.mark.skipif(not HAS_DEVICE, reason="needs a CUDA device (torch.cuda.is_available() is False)")]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers -------------------------------------------------------------------------------

def expected_device() -> str:
    """How the report names the device a run on DEVICE trains on (``cuda:<current>``)."""
    return f"cuda:{torch.cuda.current_device()}" if DEVICE == "cuda" else DEVICE


@contextlib.contextmanager
def tf32(enabled: bool | None):
    """TF32 for cuBLAS matmuls and cuDNN convolutions on or off; None leaves torch's settings."""
    if enabled is None:
        yield
        return
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.fixture
def no_tf32():
    with tf32(False):
        yield


MODELS = {  # name -> (dense model, sample shape, its output bias); built in code, no exporter
    "mlp": (lambda: mlp(sizes=(32, 64, 48, 8)), (32,), "fc3.bias"),
    "mlp_dropout": (lambda: mlp(sizes=(32, 64, 48, 8), dropout=0.2), (32,), "fc3.bias"),
    "cnn": (lambda: cnn(channels=(3, 8, 16), classes=5, bn=False, hw=12), (3, 12, 12), "fc.bias"),
    "cnn_bn": (lambda: cnn(channels=(3, 8, 16), classes=5, bn=True, hw=12), (3, 12, 12), "fc.bias"),
}


def dense_model(arch: str) -> tuple[onnx.ModelProto, tuple]:
    """MODELS[arch] with its output bias shifted so that its classes come out about equally
    often on random inputs (a random net favours one or two): (model, sample shape)."""
    build, shape, bias = MODELS[arch]
    model = build()
    x = np.random.default_rng(99).standard_normal((2048, *shape)).astype(np.float32)
    b = read_weights(model)[bias] - run(model, {"x": x})[0].mean(0)
    return write_back(model, {bias: b.astype(np.float32)}), shape


def task(model: onnx.ModelProto, n: int, seed: int, shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Random inputs and the labels ``model`` gives them: a task the dense model solves exactly
    and its pruned copy has to relearn."""
    x = np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)
    return x, run(model, {"x": x})[0].argmax(1).astype(np.int64)


def accuracy(model: onnx.ModelProto, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy in ONNX Runtime."""
    return float((run(model, {"x": x})[0].argmax(1) == y).mean())


def assert_masks_held(pruned: onnx.ModelProto, out: onnx.ModelProto, masks: dict | None = None) -> None:
    """Every pruned weight is exactly zero in ``out``, the survivors trained; ``masks`` (the
    result's name -> (nonzero, total)) counts the survivors."""
    before, after = read_weights(pruned), read_weights(out)
    prunable = [n for n, i in find_weights(pruned).items() if i.prunable]
    assert prunable
    for name in prunable:
        zero = before[name] == 0
        assert zero.any(), name
        assert np.all(after[name][zero] == 0), f"{name}: {int((after[name][zero] != 0).sum())} pruned weights moved"
        assert np.all(np.isfinite(after[name])), name
        assert not np.array_equal(after[name][~zero], before[name][~zero]), f"{name}: no survivor trained"
        if masks is not None:
            assert masks[name] == (int((~zero).sum()), zero.size), name


def config(**kw) -> FinetuneConfig:
    base = dict(epochs=3, batch_size=32, lr=0.05, seed=0, device=DEVICE)
    base.update(kw)
    return FinetuneConfig(**base)


def run_module(model: onnx.ModelProto, feeds: dict, device: str) -> list[np.ndarray]:
    """The rebuilt module (evaluation mode) on ``device``, outputs back on the host."""
    module = build_module(model).eval().to(device)
    with torch.no_grad():
        got = module(*[torch.from_numpy(np.asarray(v)).to(device) for v in feeds.values()])
    return [g.detach().cpu().numpy() for g in (got if isinstance(got, tuple) else (got,))]


def assert_outputs_close(ref: list, got: list, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    assert len(ref) == len(got)
    for r, g in zip(ref, got):
        assert r.shape == g.shape
        if r.dtype.kind == "f":
            np.testing.assert_allclose(g, r, rtol=rtol, atol=atol)
        else:
            np.testing.assert_array_equal(g, r)


# --- masked retraining on the GPU ----------------------------------------------------------

@pytest.mark.parametrize("arch", ["mlp_dropout", "cnn_bn"])
def test_retraining_on_the_gpu_holds_masks_learns_and_names_the_device(arch):
    dense, shape = dense_model(arch)
    x, y = task(dense, 1024, 0, shape)
    xv, yv = task(dense, 256, 1, shape)
    pruned = prune(dense, 0.8)
    before = accuracy(pruned, xv, yv)
    res = finetune(pruned, (x, y), (xv, yv), config=config(epochs=5, keep_best=True))

    assert res.device == expected_device()
    assert_masks_held(pruned, res.model, res.masks)
    onnx.checker.check_model(res.model, full_check=True)
    losses = [h["train_loss"] for h in res.history]
    assert all(np.isfinite(losses)) and losses[-1] < 0.9 * losses[0], losses
    after = accuracy(res.model, xv, yv)
    majority = np.bincount(yv).max() / len(yv)
    assert after >= before + 0.15 and after >= majority + 0.1, (before, after, majority)
    # torch's validation on the GPU (the kept epoch's) is ONNX Runtime's on the written model.
    assert res.best_epoch is not None
    kept = res.history[res.best_epoch - 1]["val_top1"]
    assert abs(kept - after) <= 2 / len(yv), (kept, after)
    if arch == "cnn_bn":  # running statistics trained on the device, written back
        w0, w1 = read_weights(pruned), read_weights(res.model)
        stats = [n for n, i in find_weights(pruned).items() if i.role in ("bn_mean", "bn_var")]
        assert stats
        for name in stats:
            assert np.all(np.isfinite(w1[name])) and not np.array_equal(w0[name], w1[name]), name
    else:  # D_r = D_o·sqrt(C_ir/C_io) on the device too
        assert res.dropout and all(d_r < d_o for d_o, d_r in res.dropout.values())


@pytest.mark.parametrize("arch,mode,atol", [
    ("mlp", False, 1e-4),
    ("mlp", None, 1e-4),
    ("cnn_bn", False, 1e-4),
    ("cnn_bn", None, 1e-2),
], ids=["mlp-tf32_off", "mlp-torch_defaults", "cnn_bn-tf32_off", "cnn_bn-torch_defaults"])
def test_gpu_and_cpu_give_close_weights_for_the_same_seed(arch, mode, atol):
    """No Dropout (the CPU and CUDA generators draw different masks): the same batches and
    steps on both devices.  TF32 off: only the summation order differs (24 SGD steps move a
    weight by ~0.1; order effects stay near 1e-6).  Torch's defaults keep cuBLAS matmuls in
    full fp32 (the MLP keeps the tight bound) but let cuDNN convolutions run in TF32 (inputs
    rounded to 10 mantissa bits, ~5e-4 relative per product), so a conv model gets a bound
    100x looser; the bridge changes none of these settings."""
    dense, shape = dense_model(arch)
    x, y = task(dense, 256, 0, shape)
    xv, yv = task(dense, 256, 1, shape)
    pruned = prune(dense, 0.7)
    cpu = finetune(pruned, (x, y), config=config(device="cpu"))
    with tf32(mode):
        gpu = finetune(pruned, (x, y), config=config())
    assert cpu.device == "cpu" and gpu.device == expected_device()
    a, b = read_weights(cpu.model), read_weights(gpu.model)
    start = read_weights(pruned)
    for name in find_weights(pruned):
        diff = float(np.abs(a[name] - b[name]).max())
        moved = float(np.abs(a[name] - start[name]).max())
        assert diff <= atol, f"{name}: max |w_gpu - w_cpu| = {diff:.3g} (training moved it {moved:.3g})"
    la, lb = (np.array([h["train_loss"] for h in r.history]) for r in (cpu, gpu))
    np.testing.assert_allclose(lb, la, rtol=10 * atol)
    oa, ob = run(cpu.model, {"x": xv})[0], run(gpu.model, {"x": xv})[0]
    assert (oa.argmax(1) == ob.argmax(1)).mean() >= 0.98


@pytest.mark.parametrize("arch", ["mlp_dropout", "cnn_bn"])
def test_two_gpu_runs_with_the_same_seed_write_the_same_model(arch):
    """The contract "same input + same options -> byte-identical output" on the GPU: Dropout
    draws from the CUDA generator the run seeds; the convolutions' backward passes are cuDNN's
    (the bridge asks for no deterministic algorithms)."""
    dense, shape = dense_model(arch)
    x, y = task(dense, 256, 0, shape)
    pruned = prune(dense, 0.7)
    a, b = (finetune(pruned, (x, y), config=config(epochs=2)).model for _ in range(2))
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)


def test_device_auto_trains_on_the_gpu():
    dense, _ = dense_model("mlp")
    x, y = task(dense, 64, 0, (32,))
    res = finetune(prune(dense, 0.6), (x, y), config=config(epochs=1, device="auto"))
    assert res.device == expected_device()


@pytest.mark.parametrize("kind", ["match", "distill"])
def test_a_teacher_on_the_gpu(kind):
    """Label-free (follow the dense model) and distillation: the teacher module moves to the
    device with the student; agreement with the dense model recovers."""
    dense, _ = dense_model("mlp_dropout")
    x, y = task(dense, 1024, 0, (32,))
    xv, yv = task(dense, 256, 1, (32,))
    pruned = prune(dense, 0.8)
    if kind == "match":
        res = finetune(pruned, (x, None), (xv, None), config=config(epochs=5), teacher=dense)
        assert res.objective["mode"] == "match"
    else:
        res = finetune(pruned, (x, y), (xv, yv), config=config(epochs=5, distill=0.5), teacher=dense)
        assert res.objective["mode"] == "labels" and len(res.objective["outputs"]) == 2
    assert res.device == expected_device()
    assert_masks_held(pruned, res.model, res.masks)
    assert accuracy(res.model, xv, yv) >= accuracy(pruned, xv, yv) + 0.1
    assert np.isfinite(res.history[-1]["val_top1"])


def test_a_fixed_batch_model_accumulates_micro_batches_on_the_gpu():
    """A model whose batch is fixed at 4: micro-batches of 4, the last validation chunk padded."""
    dense, _ = dense_model("mlp")
    x, y = task(dense, 256, 0, (32,))
    xv, yv = task(dense, 70, 1, (32,))  # 70 = 17·4 + 2: a padded chunk
    for v in (*dense.graph.input, *dense.graph.output):
        v.type.tensor_type.shape.dim[0].dim_value = 4
    pruned = prune(dense, 0.7)
    res = finetune(pruned, (x, y), (xv, yv), config=config(epochs=2, batch_size=16))
    assert res.device == expected_device()
    assert_masks_held(pruned, res.model, res.masks)
    assert all(h["samples"] == 256 for h in res.history)
    assert 0.0 <= res.history[-1]["val_top1"] <= 1.0


def test_regrow_keeps_each_layers_count_on_the_gpu():
    """Dynamic Network Surgery: the mask may move (top-k of a shadow, sorted on the device)
    but each layer keeps at most its count of nonzeros."""
    dense, _ = dense_model("mlp")
    x, y = task(dense, 512, 0, (32,))
    pruned = prune(dense, 0.8)
    res = finetune(pruned, (x, y), config=config(epochs=2, batch_size=16, regrow=True))
    assert res.device == expected_device()
    before, after = read_weights(pruned), read_weights(res.model)
    moved = 0
    for name, info in find_weights(pruned).items():
        if info.prunable:
            keep = int(np.count_nonzero(before[name]))
            assert res.masks[name] == (keep, before[name].size), name
            assert np.count_nonzero(after[name]) <= keep, name
            moved += int(((before[name] == 0) & (after[name] != 0)).sum())
    assert moved > 0  # with 64 steps some pruned connection came back


def test_user_batches_already_on_the_gpu():
    """A re-iterable of (x, y) CUDA tensors, as a DataLoader feeding the GPU gives them."""
    dense, _ = dense_model("mlp")
    x, y = task(dense, 256, 0, (32,))
    xv, yv = task(dense, 128, 1, (32,))
    pruned = prune(dense, 0.7)

    def batches(xs, ys, device=DEVICE):
        return [(torch.from_numpy(xs[i:i + 32]).to(device), torch.from_numpy(ys[i:i + 32]).to(device))
                for i in range(0, len(ys), 32)]

    res = finetune(pruned, batches(x, y), batches(xv, yv), config=config(epochs=3))
    assert res.device == expected_device()
    assert_masks_held(pruned, res.model, res.masks)
    assert res.history[-1]["samples"] == 256
    assert res.history[-1]["val_top1"] == pytest.approx(accuracy(res.model, xv, yv), abs=2 / len(yv))
    # The same batches handed over on the host: the same steps, the same weights.
    ref = finetune(pruned, batches(x, y, "cpu"), config=config(epochs=3))
    got = read_weights(res.model)
    for name, w in read_weights(ref.model).items():
        np.testing.assert_allclose(got[name], w, rtol=1e-6, atol=1e-7, err_msg=name)


# --- the op table on GPU tensors -----------------------------------------------------------

ALL_OP_CASES = OP_CASES + MORE_OP_CASES


@pytest.mark.parametrize("case", ALL_OP_CASES, ids=[c.id for c in ALL_OP_CASES])
def test_op_on_gpu_tensors_matches_onnxruntime(case, no_tf32):
    model = make_model(case)
    assert_outputs_close(run(model, case.feeds), run_module(model, case.feeds, DEVICE))


@pytest.mark.parametrize("case", GRAD_CASES, ids=[c.id for c in GRAD_CASES])
def test_gradients_on_the_gpu_match_the_cpu(case, no_tf32):
    """Every float initializer fed as an input: d(Σ outputs·probe)/d(input) on both devices."""
    fixed = set(case.nodes[0].input[1:]) if case.nodes[0].op_type == "Resize" else set()  # scales
    feeds = {**case.feeds, **{k: v for k, v in case.inits.items()
                              if v.dtype == np.float32 and v.size and k not in fixed}}
    inits = {k: v for k, v in case.inits.items() if k not in feeds}
    model = make_model(Case(case.id, case.nodes, feeds, inits, case.opset, case.out_types, case.outputs))

    def grads(device):
        module = build_module(model).to(device)
        args = [torch.tensor(v, requires_grad=v.dtype == np.float32, device=device) for v in feeds.values()]
        outs = module(*args)
        outs = outs if isinstance(outs, tuple) else (outs,)
        probe = torch.Generator().manual_seed(3)
        loss = sum((o * torch.randn(o.shape, generator=probe).to(device)).sum()
                   for o in outs if o.is_floating_point())
        loss.backward()
        return {n: a.grad.cpu().numpy() for n, a in zip(feeds, args) if a.requires_grad}

    cpu, gpu = grads("cpu"), grads(DEVICE)
    assert cpu.keys() == gpu.keys() and cpu
    for name in cpu:
        np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-4, atol=1e-5, err_msg=name)


# --- floats the interpreter makes on the host, meeting GPU tensors --------------------------

def _vi(name, elem, shape):
    return helper.make_tensor_value_info(name, elem, shape)


def _model(nodes, inputs, outputs, inits, opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs,
                              [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def rnn_with_zero_state(op: str) -> onnx.ModelProto:
    """x [N, T, I] -> Transpose -> LSTM/GRU/RNN whose initial state is ConstantOfShape([1, N, H])
    -> last hidden state -> Gemm: what torch's exporter writes for ``nn.LSTM(batch_first=True)``
    called without a state, the zero state sized from the input's batch at run time."""
    T, In, H, C = 5, 6, 8, 3
    G = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    rng = np.random.default_rng(3)
    inits = {"W": rng.normal(0, .3, (1, G * H, In)).astype(np.float32),
             "R": rng.normal(0, .3, (1, G * H, H)).astype(np.float32),
             "B": rng.normal(0, .1, (1, 2 * G * H)).astype(np.float32),
             "fc.weight": rng.normal(0, .3, (C, H)).astype(np.float32),
             "fc.bias": np.zeros(C, np.float32),
             "one": np.array([1], np.int64), "hidden": np.array([H], np.int64),
             "batch_axis": np.array(0, np.int64), "axis0": np.array([0], np.int64)}
    state = ["h0", "h0"] if op == "LSTM" else ["h0"]
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "batch_axis"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axis0"], ["n1"]),
        helper.make_node("Concat", ["one", "n1", "hidden"], ["state_shape"], axis=0),
        helper.make_node("ConstantOfShape", ["state_shape"], ["h0"],
                         value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Transpose", ["x"], ["xt"], perm=[1, 0, 2]),
        helper.make_node(op, ["xt", "W", "R", "B", "", *state], ["Y", "Y_h"], hidden_size=H, name="rnn"),
        helper.make_node("Squeeze", ["Y_h", "axis0"], ["last"]),
        helper.make_node("Gemm", ["last", "fc.weight", "fc.bias"], ["y"], transB=1, name="fc"),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", T, In])], [_vi("y", TensorProto.FLOAT, ["N", C])],
                  inits)


def scatter_into_zeros() -> onnx.ModelProto:
    """ScatterND of the first row of x into zeros shaped like x (ConstantOfShape(Shape(x))),
    as torch's exporter writes ``z = x.new_zeros(x.shape); z[0] = x[0]``, then MatMul."""
    rng = np.random.default_rng(4)
    inits = {"idx": np.array([[0]], np.int64), "s0": np.array([0], np.int64), "s1": np.array([1], np.int64),
             "W": rng.normal(0, .3, (6, 4)).astype(np.float32)}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["z"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Slice", ["x", "s0", "s1", "s0"], ["first"]),
        helper.make_node("ScatterND", ["z", "idx", "first"], ["sc"]),
        helper.make_node("MatMul", ["sc", "W"], ["y"], name="fc"),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", 6])], [_vi("y", TensorProto.FLOAT, ["N", 4])], inits)


def zeros_plus_input() -> onnx.ModelProto:
    """ConstantOfShape + x -> MatMul: the binary ops move the host operand to the device."""
    rng = np.random.default_rng(5)
    inits = {"W": rng.normal(0, .3, (6, 4)).astype(np.float32)}
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("ConstantOfShape", ["shape"], ["z"], value=numpy_helper.from_array(np.ones(1, np.float32))),
        helper.make_node("Add", ["z", "x"], ["s"]),
        helper.make_node("MatMul", ["s", "W"], ["y"], name="fc"),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", 6])], [_vi("y", TensorProto.FLOAT, ["N", 4])], inits)


def range_times_input() -> onnx.ModelProto:
    """A float Range (made on the host) scaling x, then Gemm."""
    rng = np.random.default_rng(6)
    inits = {"start": np.array(0.5, np.float32), "limit": np.array(3.5, np.float32),
             "delta": np.array(0.5, np.float32), "W": rng.normal(0, .3, (4, 6)).astype(np.float32)}
    nodes = [
        helper.make_node("Range", ["start", "limit", "delta"], ["r"]),
        helper.make_node("Mul", ["x", "r"], ["s"]),
        helper.make_node("Gemm", ["s", "W"], ["y"], transB=1, name="fc"),
    ]
    return _model(nodes, [_vi("x", TensorProto.FLOAT, ["N", 6])], [_vi("y", TensorProto.FLOAT, ["N", 4])], inits)


HOST_FLOAT_GRAPHS = {
    "lstm_zero_state": lambda: rnn_with_zero_state("LSTM"),
    "gru_zero_state": lambda: rnn_with_zero_state("GRU"),
    "rnn_zero_state": lambda: rnn_with_zero_state("RNN"),
    "scatter_into_zeros": scatter_into_zeros,
    "zeros_plus_input": zeros_plus_input,
    "range_times_input": range_times_input,
}


@pytest.mark.parametrize("name", list(HOST_FLOAT_GRAPHS))
def test_floats_made_on_the_host_at_run_time_meet_gpu_tensors(name, no_tf32):
    """Forward on the GPU equals ONNX Runtime, and a retraining run on the GPU holds its masks."""
    model = HOST_FLOAT_GRAPHS[name]()
    shape = tuple(d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    x = np.random.default_rng(7).standard_normal((12, *shape)).astype(np.float32)
    assert_outputs_close(run(model, {"x": x}), run_module(model, {"x": x}, DEVICE))
    pruned = prune(model, 0.5)
    y = run(model, {"x": x})[0].argmax(1).astype(np.int64)
    res = finetune(pruned, (x, y), config=config(epochs=2, batch_size=4))
    assert res.device == expected_device()
    assert_masks_held(pruned, res.model, res.masks)


# --- torch exports ---------------------------------------------------------------------------

ARCHS = {name: (factory, shape, dtype) for name, factory, shape, dtype in torch_architectures()}


@pytest.mark.parametrize("arch", list(ARCHS))
def test_a_torch_export_is_rebuilt_and_retrained_on_the_gpu(arch, tmp_path, no_tf32):
    """torch's legacy (TorchScript) exporter, dynamic batch; label-free retraining (every
    float output followed), so classifiers and the decoder/transformer outputs alike."""
    factory, shape, dtype = ARCHS[arch]
    path = str(tmp_path / "model.onnx")
    try:
        export_torch(factory, shape, dtype, False, path)
    except Exception as exc:  # the exporter's own failure (e.g. absent from this torch), not ours
        pytest.skip(f"torch could not export {arch}: {type(exc).__name__}: {str(exc)[:200]}")
    dense = onnx.load(path)
    rng = np.random.default_rng(8)
    n = 24
    x = (rng.integers(0, 50, (n, *shape[1:])) if dtype == torch.int64
         else rng.standard_normal((n, *shape[1:])).astype(np.float32))
    name = dense.graph.input[0].name
    assert_outputs_close(run(dense, {name: x[:5]}), run_module(dense, {name: x[:5]}, DEVICE),
                         rtol=1e-4, atol=1e-4)
    pruned = prune(dense, 0.5)
    res = finetune(pruned, (x, None), (x[:8], None), config=config(epochs=1, batch_size=8, lr=0.01),
                   teacher=dense)
    assert res.device == expected_device() and res.objective["mode"] == "match"
    assert_masks_held(pruned, res.model, res.masks)
    assert np.isfinite(res.history[-1]["train_loss"]) and np.isfinite(res.history[-1]["val_top1"])


# --- the command line ----------------------------------------------------------------------

def _env() -> dict:
    return {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
            "OMP_NUM_THREADS": "1"}


def _cli_subprocess(argv: list[str], timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnxprune.cli", *argv], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def _npz_task(tmp_path, dense, shape):
    x, y = task(dense, 1024, 0, shape)
    xv, yv = task(dense, 256, 1, shape)
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "val.npz", x=xv, y=yv)
    return xv, yv


def test_cli_finetune_on_cuda_writes_a_valid_model_equal_to_the_cpu_run(tmp_path, capsys):
    dense, _ = dense_model("mlp")
    pruned = prune(dense, 0.8)
    onnx.save(pruned, tmp_path / "in.onnx")
    xv, yv = _npz_task(tmp_path, dense, (32,))

    def args(device, name):
        return ["finetune", str(tmp_path / "in.onnx"), "--train", str(tmp_path / "train.npz"),
                "--val", str(tmp_path / "val.npz"), "-o", str(tmp_path / f"{name}.onnx"),
                "--json", str(tmp_path / f"{name}.json"), "--device", device, "--epochs", "5",
                "--batch-size", "32", "--lr", "0.05", "--seed", "1"]

    proc = _cli_subprocess(args(DEVICE, "gpu"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert report["device"] == expected_device() and report["world_size"] == 1
    assert report["accuracy_after"]["top1"] >= report["accuracy_before"]["top1"] + 0.1, report
    out = onnx.load(tmp_path / "gpu.onnx")
    onnx.checker.check_model(out, full_check=True)
    assert_masks_held(pruned, out)
    assert abs(accuracy(out, xv, yv) - report["accuracy_after"]["top1"]) < 1e-9
    for name, m in report["masks"].items():
        assert np.count_nonzero(read_weights(out)[name]) == m["nonzero"], name

    code, text, err = run_cli(["inspect", str(tmp_path / "gpu.onnx"), "--json", "-", "-q"], capsys)
    assert code == 0, err
    pruned_nonzero = {n: int(np.count_nonzero(w)) for n, w in read_weights(pruned).items()}
    rows = json.loads(text)["layers"]
    assert len(rows) == 3
    for row in rows:
        assert row["nonzero"] == pruned_nonzero[row["weight"]], row

    # The same command on the CPU: `onnxprune check` finds the two written models equal.
    code, _out, err = run_cli(args("cpu", "host"), capsys)
    assert code == 0, err
    code, _out, err = run_cli(["check", str(tmp_path / "host.onnx"), str(tmp_path / "gpu.onnx"),
                               "--data", str(tmp_path / "val.npz"), "--atol", "1e-3", "--rtol", "1e-3"], capsys)
    assert code == 0, err


def test_cli_compress_device_auto_retrains_on_the_gpu(tmp_path, capsys):
    dense, _ = dense_model("cnn")
    onnx.save(dense, tmp_path / "in.onnx")
    _npz_task(tmp_path, dense, (3, 12, 12))
    code, _out, err = run_cli(
        ["compress", str(tmp_path / "in.onnx"), "--train", str(tmp_path / "train.npz"),
         "--val", str(tmp_path / "val.npz"), "-o", str(tmp_path / "out.onnx"),
         "--json", str(tmp_path / "out.json"), "--iterations", "2", "--epochs", "2",
         "--target-sparsity", "0.6", "--batch-size", "32", "--lr", "0.05", "--seed", "2",
         "--device", "auto", "--max-accuracy-drop", "70"], capsys)
    assert code == 0, err
    report = json.loads((tmp_path / "out.json").read_text())
    assert report["device"] == expected_device()
    assert report["status"] != "gate-failed" and all(g["passed"] for g in report["gates"])
    rounds = [h for h in report["history"] if h["stage"] == "iteration"]
    assert len(rounds) == 2 and rounds[0]["nonzero"] > rounds[1]["nonzero"]
    for r in rounds:  # each round's retraining on the GPU won back part of what pruning lost
        assert all(np.isfinite(h["train_loss"]) for h in r["train_history"])
        assert r["top1"] > r["top1_before_retrain"], r
    out = onnx.load(tmp_path / "out.onnx")
    onnx.checker.check_model(out)
    assert rounds[-1]["nonzero"] <= 0.5 * report["history"][0]["params"]  # 60% of them pruned


# --- torchrun over NCCL ----------------------------------------------------------------------

def _torchrun(argv: list[str], timeout: float = 240) -> tuple[int, str]:
    return torchrun(argv, timeout, gpus=True)


@pytest.mark.skipif(GPUS < 2, reason="needs two CUDA devices")
@pytest.mark.parametrize("command", ["finetune", "compress"])
def test_torchrun_two_nccl_ranks_match_one_gpu(tmp_path, capsys, command):
    """finetune (the bridge's own group, nccl) and compress (one gloo+nccl group for all its
    rounds): two ranks, one GPU each, against a single process on one GPU."""
    dense, _ = dense_model("mlp")
    model = prune(dense, 0.6) if command == "finetune" else dense
    onnx.save(model, tmp_path / "in.onnx")
    _npz_task(tmp_path, dense, (32,))

    def args(out):
        common = ["--train", str(tmp_path / "train.npz"), "--val", str(tmp_path / "val.npz"),
                  "-o", str(tmp_path / out), "--json", str(tmp_path / (out + ".json")),
                  "--epochs", "2", "--batch-size", "32", "--lr", "0.05", "--seed", "3"]
        if command == "finetune":
            return ["finetune", str(tmp_path / "in.onnx"), *common, "--device", DEVICE]
        return ["compress", str(tmp_path / "in.onnx"), *common, "--device", "auto",
                "--iterations", "2", "--target-sparsity", "0.6"]

    code, err = _torchrun(args("ddp.onnx"))
    assert code == 0, err[-3000:]
    ddp = json.loads((tmp_path / "ddp.onnx.json").read_text())
    assert ddp["world_size"] == 2 and ddp["max_rank_divergence"] == 0.0
    assert ddp["device"] == ("cuda:0" if DEVICE == "cuda" else DEVICE)  # rank 0's
    code, _out, err = run_cli(args("one.onnx"), capsys)
    assert code == 0, err
    one = json.loads((tmp_path / "one.onnx.json").read_text())
    assert one["world_size"] == 1 and one["device"] == expected_device()
    a, b = read_weights(onnx.load(tmp_path / "ddp.onnx")), read_weights(onnx.load(tmp_path / "one.onnx"))
    for name, info in find_weights(onnx.load(tmp_path / "one.onnx")).items():
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-5, err_msg=name)
        if info.prunable:
            assert np.array_equal(a[name] == 0, b[name] == 0), name
