"""The small torch architectures the tests export (import only after torch is available)."""

import torch
from torch import nn

# The paper's LeNets are the package's own definitions (one of each, with the paper's layer names).
from onnxprune.training.models import LeNet5, LeNet300  # noqa: F401


class ResidualBN(nn.Module):
    """A small residual CNN with BatchNorm (the residual Add blocks dead-unit removal)."""

    def __init__(self):
        super().__init__()
        self.stem, self.bn0 = nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv1, self.bn1 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.conv2, self.bn2 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = torch.relu(self.bn0(self.stem(x)))
        y = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(x + self.bn2(self.conv2(y)))
        return self.head(x.mean((2, 3)))
