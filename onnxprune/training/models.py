"""The paper's two MNIST networks in PyTorch, defined once (the demo, the paper-reproduction
scripts and the tests build them from here).

* LeNet-300-100: x ∈ R^{N×1×28×28} → flatten → fc1 (784→300) → ReLU → fc2 (300→100) → ReLU →
  fc3 (100→10); 266,200 weights + 410 biases.
* LeNet-5 as Caffe's examples/mnist/lenet defines it (the paper's 431K weights): conv1 (1→20,
  5×5) → max-pool 2 → conv2 (20→50, 5×5) → max-pool 2 → flatten → fc1 (800→500) → ReLU →
  fc2 (500→10); no activation after the convolutions.

The attribute names (fc1/fc2/fc3, conv1/conv2/fc1/fc2) are the paper's layer names: they become
the exported ONNX node and initializer names the published tables use.  Layers are created in
forward order, so ``torch.manual_seed(s)`` before construction fixes the initial weights.
torch is imported on first use (it is an optional extra): ``LeNet300`` and ``LeNet5`` are
resolved lazily as module attributes.
"""

from __future__ import annotations

import functools


@functools.cache
def _classes() -> dict:
    import torch
    from torch import nn

    class LeNet300(nn.Module):
        """LeNet-300-100: 784-300-100-10, ReLU."""

        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(784, 300), nn.Linear(300, 100), nn.Linear(100, 10)

        def forward(self, x):
            x = x.flatten(1)
            return self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))

    class LeNet5(nn.Module):
        """Caffe's LeNet-5 (20/50 conv channels, 500 hidden): no activation after the convs."""

        def __init__(self):
            super().__init__()
            self.conv1, self.conv2 = nn.Conv2d(1, 20, 5), nn.Conv2d(20, 50, 5)
            self.fc1, self.fc2 = nn.Linear(800, 500), nn.Linear(500, 10)

        def forward(self, x):
            x = torch.max_pool2d(self.conv1(x), 2)
            x = torch.max_pool2d(self.conv2(x), 2)
            return self.fc2(torch.relu(self.fc1(x.flatten(1))))

    return {"LeNet300": LeNet300, "LeNet5": LeNet5}


def build(name: str):
    """A freshly initialised network: ``"lenet300"`` (LeNet-300-100) or ``"lenet5"``."""
    return _classes()[{"lenet300": "LeNet300", "lenet5": "LeNet5"}[name]]()


def __getattr__(name: str):
    if name in ("LeNet300", "LeNet5"):
        return _classes()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
