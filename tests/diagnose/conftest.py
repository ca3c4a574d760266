"""Tiny models with planted numerics problems, shared by the diagnose tests."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn


class Amplify(nn.Linear):
    """A linear layer with a scale of 1e5 before its matmul: overflows FP16 from clean inputs."""

    def forward(self, x):
        return F.linear(x * 1e5, self.weight, self.bias)


class PlantedNet(nn.Module):
    """inp -> ReLU -> amp (the planted overflow) -> LayerNorm (brings values back) -> head."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.act = nn.ReLU()
        self.amp = Amplify(16, 16)
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.norm(self.amp(self.act(self.inp(x)))))


class SmallNet(nn.Module):
    def __init__(self, d_in=8, d_out=4):
        super().__init__()
        self.fc1 = nn.Linear(d_in, 16)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(16, d_out)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def fp32_island(module: nn.Module) -> None:
    """Apply a 'keep in FP32' recommendation by hand: the module runs with autocast off on FP32
    inputs (what a user would do with a nested torch.autocast(enabled=False))."""
    forward = module.forward

    def run(*args):
        with torch.autocast("cpu", enabled=False):
            return forward(*(a.float() if torch.is_tensor(a) else a for a in args))

    module.forward = run


@pytest.fixture
def planted():
    torch.manual_seed(0)
    net = PlantedNet()
    batches = [(torch.randn(16, 8), torch.randint(0, 4, (16,))) for _ in range(2)]
    return net, batches


@pytest.fixture
def small():
    torch.manual_seed(0)
    return SmallNet()
