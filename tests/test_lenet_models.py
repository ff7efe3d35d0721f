"""The paper's LeNets, defined once in onnxprune.training.models: layer names and sizes."""

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from onnxprune.training import models  # noqa: E402


def _sizes(net) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def test_lenet_300_100_has_the_papers_layers_and_266200_weights():
    net = models.build("lenet300")
    assert _sizes(net) == {"fc1.weight": (300, 784), "fc1.bias": (300,), "fc2.weight": (100, 300),
                           "fc2.bias": (100,), "fc3.weight": (10, 100), "fc3.bias": (10,)}
    assert sum(v.numel() for k, v in net.state_dict().items() if k.endswith("weight")) == 266200
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_lenet_5_is_caffes_with_431k_weights():
    net = models.build("lenet5")
    assert [k for k in net.state_dict() if k.endswith("weight")] == [
        "conv1.weight", "conv2.weight", "fc1.weight", "fc2.weight"]
    assert sum(v.numel() for k, v in net.state_dict().items() if k.endswith("weight")) == 430500
    assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_same_seed_gives_the_same_network_and_the_classes_are_shared():
    torch.manual_seed(5)
    a = models.build("lenet300")
    torch.manual_seed(5)
    b = models.LeNet300()
    assert type(a) is type(b)
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())


def test_importing_the_models_does_not_import_torch():
    code = "import sys, onnxprune.training.models; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
