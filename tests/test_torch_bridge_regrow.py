"""`--regrow`: masked retraining in which pruned weights may come back (Dynamic Network
Surgery), each layer keeping its count of nonzeros."""

import numpy as np
import pytest

pytest.importorskip("torch")

from onnxprune.core.graph import find_layers, graph_from_model, graph_to_model  # noqa: E402
from onnxprune.passes import ThresholdByStd  # noqa: E402
from onnxprune.training.torch_bridge import FinetuneConfig, finetune, read_weights  # noqa: E402
from onnxprune.training.torch_bridge.train import _top_k_mask  # noqa: E402
from tests.models import mlp  # noqa: E402


def _pruned_model():
    model = mlp(sizes=(16, 32, 16, 4), seed=3)
    r = ThresholdByStd({"quality": {"fc": 1.0}})(graph_from_model(model))
    return graph_to_model(r.graph, model)


def _data(model, n=256):
    """Inputs and labels a *dense* teacher would give: the pruned net has something to regain."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 16)).astype(np.float32)
    w = rng.standard_normal((16, 4)).astype(np.float32)
    return x, (x @ w).argmax(1).astype(np.int64)


def _weights(model):
    layers, _ = find_layers(graph_from_model(model))
    w = read_weights(model)
    return {x.weight_name: w[x.weight_name] for x in layers if not x.skip_reason}


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_regrow_keeps_each_layers_count_and_moves_the_mask(optimizer):
    model = _pruned_model()
    before = _weights(model)
    x, y = _data(model)
    cfg = FinetuneConfig(epochs=3, batch_size=16, lr=0.05, seed=0, regrow=True, optimizer=optimizer)
    res = finetune(model, (x, y), config=cfg)
    after = _weights(res.model)
    moved = 0
    for name, w0 in before.items():
        w1 = after[name]
        assert np.count_nonzero(w1) == np.count_nonzero(w0), name  # the count is the layer's k
        moved += int(np.sum((w1 != 0) & (w0 == 0)))  # connections that came back
        assert res.masks[name][0] == np.count_nonzero(w1)
    assert moved > 0


def test_without_regrow_no_pruned_weight_comes_back():
    model = _pruned_model()
    before = _weights(model)
    x, y = _data(model)
    res = finetune(model, (x, y), config=FinetuneConfig(epochs=3, batch_size=16, lr=0.05, seed=0))
    for name, w0 in _weights(res.model).items():
        assert np.all(w0[before[name] == 0] == 0)


def test_top_k_mask_is_exact_and_stable_on_ties():
    import torch

    v = torch.tensor([[0.5, -2.0, 0.5], [0.0, 0.5, 1.0]])
    m = _top_k_mask(v, 3)
    assert m.sum() == 3
    assert m.tolist() == [[True, True, False], [False, False, True]]  # first 0.5 wins the tie


def test_regrow_must_be_a_bool():
    from onnxprune.core.errors import UsageError

    with pytest.raises(UsageError, match="regrow"):
        FinetuneConfig(lr=0.1, regrow="yes").validate()
