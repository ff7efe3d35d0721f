"""Fine-tune bridge: whole-model forward equality, masked retraining, write-back identity."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

torch = pytest.importorskip("torch")
from tests.torch_models import LeNet5, LeNet300  # noqa: E402
from onnxprune.core.errors import UsageError  # noqa: E402
from onnxprune.training.torch_bridge import (  # noqa: E402
    FinetuneConfig, UnsupportedOpError, build_module, find_weights, finetune, read_weights, write_back,
)

pytestmark = pytest.mark.torch
nn = torch.nn


# --- reference architectures (defined here: torchvision does not import beside this torch) ---

class SmallBNCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, groups=2), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 10)

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return torch.log_softmax(self.fc(x.mean(dim=(2, 3))), dim=1)


def _randomize_bn(net):
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)


def export(net, shape, dynamo: bool) -> onnx.ModelProto:
    torch.manual_seed(0)
    net.eval()
    x = torch.randn(*shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            # optimize=False keeps BatchNormalization instead of folding it into Conv.
            prog = torch.onnx.export(net, (x,), dynamo=True, verbose=False, optimize=False,
                                     dynamic_shapes=({0: torch.export.Dim("batch")},))
            return prog.model_proto
        buf = io.BytesIO()
        torch.onnx.export(net, (x,), buf, dynamo=False, input_names=["x"], output_names=["y"],
                          dynamic_axes={"x": {0: "batch"}}, do_constant_folding=False)
        return onnx.load_from_string(buf.getvalue())


def ort_run(model, x):
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


ARCHS = {"lenet300": (LeNet300, (2, 1, 28, 28)), "lenet5": (LeNet5, (2, 1, 28, 28)),
         "bn_cnn": (SmallBNCNN, (2, 1, 12, 12))}


@pytest.fixture(scope="module")
def exported():
    cache = {}

    def get(arch, dynamo):
        if (arch, dynamo) not in cache:
            torch.manual_seed(1)
            cls, shape = ARCHS[arch]
            net = cls()
            _randomize_bn(net)
            cache[arch, dynamo] = export(net, shape, dynamo)
        return cache[arch, dynamo]

    return get


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "legacy"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_model_forward_matches_onnxruntime(exported, arch, dynamo):
    model = exported(arch, dynamo)
    x = np.random.default_rng(2).standard_normal((5, *ARCHS[arch][1][1:])).astype(np.float32)
    module = build_module(model).eval()
    with torch.no_grad():
        got = module(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ort_run(model, x), rtol=1e-5, atol=1e-5)
    # every float weight of the torch module is trainable and named like the graph tensor
    assert set(module.param_keys) == {n for n, i in find_weights(model).items() if i.trainable}
    if arch == "bn_cnn":
        assert any(i.role == "bn_mean" for i in find_weights(model).values())


# --- helpers for training tests ----------------------------------------------------------

def prune(model: onnx.ModelProto, fraction: float = 0.6) -> onnx.ModelProto:
    """Zero the smallest |w| of every prunable weight (test stand-in for the prune pass)."""
    new = {}
    for name, info in find_weights(model).items():
        if info.prunable:
            w = read_weights(model, [name])[name].astype(np.float32)
            w[np.abs(w) < np.quantile(np.abs(w), fraction)] = 0.0
            new[name] = w
    return write_back(model, new)


def toy_data(shape, n=96, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def helper_mlp(with_dropout=True, weight_dtype=np.float32) -> onnx.ModelProto:
    """x → MatMul(W1 in a Constant node) → Add(b1) → Relu → [Dropout] → Gemm(W2, b2, transB)."""
    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((16, 12)).astype(weight_dtype) * 0.3
    w2 = rng.standard_normal((4, 12)).astype(np.float32) * 0.3
    nodes = [
        helper.make_node("Constant", [], ["W1"], value=numpy_helper.from_array(w1, "W1"), name="w1_const"),
        helper.make_node("Cast", ["W1"], ["W1f"], to=TensorProto.FLOAT, name="cast_w1")
        if weight_dtype != np.float32 else helper.make_node("Identity", ["W1"], ["W1f"], name="id_w1"),
        helper.make_node("MatMul", ["x", "W1f"], ["h"], name="fc1"),
        helper.make_node("Add", ["h", "b1"], ["hb"], name="fc1_bias"),
        helper.make_node("Relu", ["hb"], ["r"], name="relu1"),
    ]
    last = "r"
    if with_dropout:
        nodes.append(helper.make_node("Dropout", ["r", "ratio"], ["d"], name="drop1"))
        last = "d"
    nodes.append(helper.make_node("Gemm", [last, "W2", "b2"], ["y"], name="fc2", transB=1))
    inits = [numpy_helper.from_array(np.full(12, 0.1, np.float32), "b1"),
             numpy_helper.from_array(w2, "W2"), numpy_helper.from_array(np.zeros(4, np.float32), "b2"),
             numpy_helper.from_array(np.array(0.5, np.float32), "ratio")]
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="hand")
    model.ir_version = 8
    helper.set_model_props(model, {"origin": "test"})
    return model


def cfg(**kw):
    base = dict(epochs=1, batch_size=16, lr=0.05, seed=0)
    base.update(kw)
    return FinetuneConfig(**base)


def assert_same_except_weights(a: onnx.ModelProto, b: onnx.ModelProto, names):
    """Everything but the values of ``names`` is identical."""
    a2, b2 = onnx.ModelProto(), onnx.ModelProto()
    a2.CopyFrom(a)
    b2.CopyFrom(b)
    for m in (a2, b2):
        for t in m.graph.initializer:
            if t.name in names:
                t.ClearField("raw_data"), t.ClearField("float_data"), t.ClearField("int32_data")
        for node in m.graph.node:
            if node.op_type == "Constant" and node.output[0] in names:
                t = node.attribute[0].t
                t.ClearField("raw_data"), t.ClearField("float_data"), t.ClearField("int32_data")
    assert a2.SerializeToString(deterministic=True) == b2.SerializeToString(deterministic=True)


# --- masked retraining -------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_masks_survive_an_epoch_and_survivors_train(exported, optimizer):
    model = prune(exported("lenet5", False))
    x, y = toy_data((1, 28, 28), n=64)
    before = read_weights(model)
    res = finetune(model, (x, y), config=cfg(optimizer=optimizer, l1=1e-4, batch_size=32))
    after = read_weights(res.model)
    for name, info in find_weights(model).items():
        if info.prunable:
            zero = before[name] == 0
            assert zero.mean() > 0.5
            assert np.all(after[name][zero] == 0), name
            assert np.any(after[name][~zero] != before[name][~zero]), name
            assert res.masks[name] == (int((~zero).sum()), zero.size)
    assert_same_except_weights(model, res.model, set(before))
    assert len(res.history) == 1 and np.isfinite(res.history[0]["train_loss"])


def test_bn_model_trains_and_writes_running_stats(exported):
    model = prune(exported("bn_cnn", True), 0.3)
    x, y = toy_data((1, 12, 12), n=64)
    res = finetune(model, (x, y), (x, y), config=cfg(epochs=2, keep_best=True))
    w0, w1 = read_weights(model), read_weights(res.model)
    stats = [n for n, i in find_weights(model).items() if i.role in ("bn_mean", "bn_var")]
    assert stats and all(not np.array_equal(w0[n], w1[n]) for n in stats)
    assert res.best_epoch in (1, 2) and "val_top1" in res.history[0] and res.history[0]["val_top5"] is not None
    # The result runs in ONNX Runtime and equals the torch module built from it.
    xs = x[:4]
    with torch.no_grad():
        got = build_module(res.model).eval()(torch.from_numpy(xs)).numpy()
    np.testing.assert_allclose(got, ort_run(res.model, xs), rtol=1e-5, atol=1e-5)


def test_same_seed_same_weights_and_caller_rng_untouched():
    model = prune(helper_mlp())
    x, y = toy_data((16,), n=80, classes=4)
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = read_weights(finetune(model, (x, y), config=cfg(epochs=2, seed=7)).model)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = read_weights(finetune(model, (x, y), config=cfg(epochs=2, seed=7)).model)
    c = read_weights(finetune(model, (x, y), config=cfg(epochs=2, seed=8)).model)
    assert all(np.array_equal(a[k], b[k]) for k in a)
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_helper_graph_finetune_constant_weight_and_dropout_rule():
    model = prune(helper_mlp(), 0.75)
    w1 = read_weights(model, ["W1"])["W1"]
    x, y = toy_data((16,), n=64, classes=4)
    seen = []
    res = finetune(model, (x, y), config=cfg(epochs=2), on_progress=lambda *a: seen.append(a))
    # D_r = D_o·sqrt(C_ir / C_io) for the Dropout after fc1 (through Add and Relu)
    d_o, d_r = res.dropout["drop1"]
    assert d_o == 0.5 and d_r == pytest.approx(0.5 * np.sqrt(np.count_nonzero(w1) / w1.size))
    new = read_weights(res.model, ["W1"])["W1"]
    assert np.all(new[w1 == 0] == 0) and not np.array_equal(new, w1)
    # The weight stayed in its Constant node; the graph keeps D_o.
    assert res.model.graph.node[0].op_type == "Constant" and "W1" not in {t.name for t in res.model.graph.initializer}
    assert_same_except_weights(model, res.model, {"W1", "b1", "W2", "b2"})
    steps = [s for s in seen if not s[3].get("epoch_end")]
    ends = [s for s in seen if s[3].get("epoch_end")]
    assert len(steps) == 8 and steps[-1][1:3] == (4, 4) and [e[0] for e in ends] == [1, 2]


def test_freeze_conv_keeps_conv_and_bn_fixed(exported):
    model = prune(exported("bn_cnn", False), 0.3)
    x, y = toy_data((1, 12, 12), n=32)
    res = finetune(model, (x, y), config=cfg(freeze="conv"))
    w0, w1 = read_weights(model), read_weights(res.model)
    info = find_weights(model)
    assert all(np.array_equal(w0[n], w1[n]) for n, i in info.items() if i.group == "conv")
    assert all(not np.array_equal(w0[n], w1[n]) for n, i in info.items() if i.group == "fc")
    res = finetune(model, (x, y), config=cfg(freeze="fc"))
    w1 = read_weights(res.model)
    assert all(np.array_equal(w0[n], w1[n]) for n, i in info.items() if i.group == "fc")


def test_fp16_weights_train_in_fp32_and_are_cast_back():
    model = prune(helper_mlp(weight_dtype=np.float16), 0.5)
    x, y = toy_data((16,), n=32, classes=4)
    res = finetune(model, (x, y), config=cfg(lr=0.5))
    t = res.model.graph.node[0].attribute[0].t
    assert t.data_type == TensorProto.FLOAT16
    before, after = read_weights(model, ["W1"])["W1"], read_weights(res.model, ["W1"])["W1"]
    assert after.dtype == np.float16 and np.all(after[before == 0] == 0) and not np.array_equal(after, before)
    assert_same_except_weights(model, res.model, {"W1", "b1", "W2", "b2"})


def test_write_back_keeps_storage_field_and_sparse_index_set():
    w = np.array([[0.0, 1.0], [2.0, 0.0]], np.float32)
    typed = helper.make_tensor("T", TensorProto.FLOAT, [2, 2], w.reshape(-1).tolist())  # float_data field
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "S"),
                                       numpy_helper.from_array(np.array([1, 2], np.int64)), [2, 2])
    nodes = [helper.make_node("MatMul", ["x", "T"], ["a"]), helper.make_node("MatMul", ["a", "S"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])], [typed],
                              sparse_initializer=[sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert set(find_weights(model)) == {"T", "S"}
    out = write_back(model, {"T": w * 3, "S": w * 5})
    assert not out.graph.initializer[0].raw_data and list(out.graph.initializer[0].float_data) == [0, 3, 6, 0]
    assert list(numpy_helper.to_array(out.graph.sparse_initializer[0].values)) == [5.0, 10.0]
    assert list(numpy_helper.to_array(out.graph.sparse_initializer[0].indices)) == [1, 2]
    with pytest.raises(UsageError, match="shape"):
        write_back(model, {"T": np.zeros((3, 2), np.float32)})
    with pytest.raises(UsageError, match="no initializer"):
        write_back(model, {"nope": w})


def test_iterable_batches_are_accepted():
    model = prune(helper_mlp(with_dropout=False))
    x, y = toy_data((16,), n=48, classes=4)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y)),
                                         batch_size=16)
    res = finetune(model, loader, loader, config=cfg())
    assert res.history[0]["samples"] == 48 and 0 <= res.history[0]["val_top1"] <= 1
    with pytest.raises(UsageError, match="re-iterable"):
        finetune(model, ((x[i:i + 8], y[i:i + 8]) for i in range(0, 48, 8)), config=cfg())


def test_bad_config_and_unsupported_op_raise_before_training():
    model = helper_mlp()
    x, y = toy_data((16,), n=16, classes=4)
    with pytest.raises(UsageError, match="lr"):
        finetune(model, (x, y), config=FinetuneConfig())
    with pytest.raises(UsageError, match="freeze"):
        finetune(model, (x, y), config=cfg(freeze="all"))
    with pytest.raises(UsageError, match="keep-best"):
        finetune(model, (x, y), config=cfg(keep_best=True))
    assert FinetuneConfig.from_options({"original-lr": 0.1, "batch-size": 8}).resolved_lr() == pytest.approx(0.01)
    with pytest.raises(UsageError, match="unknown"):
        FinetuneConfig.from_options({"learning-rate": 0.1})
    bad = onnx.ModelProto()
    bad.CopyFrom(model)
    bad.graph.node[4].op_type = "Mish2"
    calls = []
    with pytest.raises(UnsupportedOpError, match="Mish2.*relu1"):
        finetune(bad, (x, y), config=cfg(), on_progress=lambda *a: calls.append(a))
    assert not calls


# --- distillation ------------------------------------------------------------------------

def test_distill_alpha_one_follows_only_the_teacher():
    """α = 1 drops the label term: with the model as its own teacher the soft term's gradient
    is zero (up to rounding), so (no weight decay) nothing moves, while the label term alone
    moves the weights; α = 0.5 trains and keeps the masks."""
    model = prune(helper_mlp(with_dropout=False))
    x, y = toy_data((16,), n=64, classes=4)
    before = read_weights(model)
    same = finetune(model, (x, y), config=cfg(distill=1.0, weight_decay=0.0), teacher=model)
    after = read_weights(same.model)
    labels = read_weights(finetune(model, (x, y), config=cfg(weight_decay=0.0)).model)
    for k in before:
        assert np.max(np.abs(after[k] - before[k])) < 1e-6, k
        assert np.max(np.abs(labels[k] - before[k])) > 1e-3, k
    assert same.history[0]["train_loss"] == pytest.approx(0.0, abs=1e-5)
    dense = helper_mlp(with_dropout=False)  # the unpruned graph as teacher
    mixed = finetune(model, (x, y), config=cfg(distill=0.5), teacher=dense)
    plain = finetune(model, (x, y), config=cfg())
    w_mixed, w_plain = read_weights(mixed.model), read_weights(plain.model)
    assert any(not np.array_equal(w_mixed[k], w_plain[k]) for k in w_mixed)
    for name in ("W1", "W2"):
        assert np.all(w_mixed[name][before[name] == 0] == 0)
    assert_same_except_weights(model, mixed.model, set(before))


def test_distill_needs_a_matching_teacher():
    model = prune(helper_mlp(with_dropout=False))
    x, y = toy_data((16,), n=16, classes=4)
    with pytest.raises(UsageError, match="teacher"):
        finetune(model, (x, y), config=cfg(distill=0.5))
    for bad in (dict(distill=1.5), dict(distill=-0.1), dict(distill=0.5, distill_temperature=0.0)):
        with pytest.raises(UsageError, match="distill"):
            finetune(model, (x, y), config=cfg(**bad), teacher=model)
    # A teacher with another class count or another input is refused before training.
    other = helper_mlp(with_dropout=False)
    w2 = numpy_helper.from_array(np.ones((5, 12), np.float32), "W2")
    b2 = numpy_helper.from_array(np.zeros(5, np.float32), "b2")
    for t in list(other.graph.initializer):
        if t.name in ("W2", "b2"):
            t.CopyFrom(w2 if t.name == "W2" else b2)
    other.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 5
    calls = []
    with pytest.raises(UsageError, match="5 classes"):
        finetune(model, (x, y), config=cfg(distill=0.5), teacher=other,
                 on_progress=lambda *a: calls.append(a))
    wide = helper_mlp(with_dropout=False)
    wide.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 17
    with pytest.raises(UsageError, match="teacher input"):
        finetune(model, (x, y), config=cfg(distill=0.5), teacher=wide)
    fixed = helper_mlp(with_dropout=False)
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.raises(UsageError, match="teacher: its input has a fixed batch of 1"):
        finetune(model, (x, y), config=cfg(distill=0.5), teacher=fixed)
    unsupported = helper_mlp(with_dropout=False)
    unsupported.graph.node[4].op_type = "Mish2"
    with pytest.raises(UnsupportedOpError, match="^teacher: .*Mish2"):
        finetune(model, (x, y), config=cfg(distill=0.5), teacher=unsupported)
    assert not calls


def test_distill_loss_is_the_tempered_kl_and_its_gradient():
    from onnxprune.training.torch_bridge.train import _distill_loss

    rng = np.random.default_rng(3)
    s, t, temp = rng.standard_normal((5, 7)), rng.standard_normal((5, 7)) * 2, 2.5

    def softmax(z):
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)

    p_s, p_t = softmax(s / temp), softmax(t / temp)
    want = temp ** 2 * np.sum(p_t * (np.log(p_t) - np.log(p_s)))  # KL(p_t || p_s), T² scaled
    logits = torch.tensor(s, dtype=torch.float32, requires_grad=True)
    got = _distill_loss(logits, torch.tensor(t, dtype=torch.float32), temp)
    assert float(got) == pytest.approx(want, rel=1e-5)
    got.backward()
    np.testing.assert_allclose(logits.grad.numpy(), temp * (p_s - p_t), rtol=1e-4, atol=1e-6)


def test_cosine_lr_schedule_decays_to_zero_per_step():
    model = prune(helper_mlp(with_dropout=False))
    x, y = toy_data((16,), n=64, classes=4)
    const = finetune(model, (x, y), config=cfg(epochs=2, lr=0.05))
    assert [r["lr"] for r in const.history] == [0.05, 0.05]
    cos = finetune(model, (x, y), config=cfg(epochs=2, lr=0.05, lr_schedule="cosine"))
    lrs = [r["lr"] for r in cos.history]
    # 4 steps per epoch: the last step of epoch 1 runs at t = 3/8, the last of epoch 2 at 7/8.
    assert lrs == pytest.approx([0.05 * 0.5 * (1 + np.cos(np.pi * t)) for t in (3 / 8, 7 / 8)])
    w_c, w_k = read_weights(cos.model), read_weights(const.model)
    assert any(not np.array_equal(w_c[k], w_k[k]) for k in w_c)
    with pytest.raises(UsageError, match="lr-schedule"):
        finetune(model, (x, y), config=cfg(lr_schedule="step"))

    class Unsized:  # re-iterable, no len(): the decay cannot be laid out
        def __iter__(self):
            return iter([(x[:32], y[:32]), (x[32:], y[32:])])

    with pytest.raises(UsageError, match="number of training batches"):
        finetune(model, Unsized(), config=cfg(lr_schedule="cosine"))
    assert finetune(model, Unsized(), config=cfg()).history[0]["samples"] == 64
