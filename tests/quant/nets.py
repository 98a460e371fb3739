"""Small architectures shared by the quant tests (tiny so that every test runs in well under a second)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PlainNet(nn.Module):
    """conv-bn-relu x3, then a head: global average pool, flatten, linear."""

    def __init__(self, classes: int = 4):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16)
        self.conv3, self.bn3 = nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16)
        self.relu1, self.relu2, self.relu3 = nn.ReLU(inplace=True), nn.ReLU(), nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.relu3(self.bn3(self.conv3(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


class TinyUNet(nn.Module):
    """Encoder with GroupNorm, pixel-shuffle upsampling, a concat skip and two outputs."""

    def __init__(self):
        super().__init__()
        self.enc = nn.Conv2d(3, 8, 3, padding=1)
        self.norm = nn.GroupNorm(2, 8)
        self.act = nn.ReLU()
        self.down = nn.MaxPool2d(2)
        self.mid = nn.Conv2d(8, 32, 3, padding=1)
        self.shuffle = nn.PixelShuffle(2)
        self.dec = nn.Conv2d(16, 8, 3, padding=1)
        self.elu = nn.ELU()
        self.head = nn.Conv2d(8, 1, 1)
        self.aux = nn.Conv2d(32, 2, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.act(self.norm(self.enc(x)))
        m = F.relu(self.mid(self.down(e)))
        d = self.elu(self.dec(torch.cat([self.shuffle(m), e], 1)))
        return torch.sigmoid(self.head(d)), self.aux(m)


class ConvPair(nn.Module):
    """conv -> activation (-> reflection pad) -> conv, for cross-layer equalization tests."""

    def __init__(self, activation: nn.Module, pad: bool = False, depthwise: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act = activation
        self.pad = nn.ReflectionPad2d(1) if pad else nn.Identity()
        self.conv2 = nn.Conv2d(6, 6, 3, groups=6) if depthwise else nn.Conv2d(6, 5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.pad(self.act(self.conv1(x))))


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm non-trivial statistics and affine parameters (eval mode)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, nn.BatchNorm2d):
                n = mod.num_features
                mod.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
                mod.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.2)
                mod.weight.copy_(torch.randn(n, generator=gen))
                mod.bias.copy_(torch.randn(n, generator=gen) * 0.3)
    return model.eval()


def unbalance(conv: nn.Conv2d, seed: int = 0) -> None:
    """Scale each output channel by a factor between 1/20 and 20 (what CLE is meant to undo)."""
    gen = torch.Generator().manual_seed(seed)
    factors = torch.exp(torch.empty(conv.out_channels).uniform_(-3, 3, generator=gen))
    with torch.no_grad():
        conv.weight.mul_(factors.view(-1, 1, 1, 1))
        if conv.bias is not None:
            conv.bias.mul_(factors)


def images(n: int = 4, size: int = 16, seed: int = 0) -> torch.Tensor:
    """Random RGB-like inputs in [0, 1]."""
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def seeded(cls, *args, seed: int = 0, **kwargs) -> nn.Module:
    """``cls(*args, **kwargs)`` in eval mode, initialised from ``seed`` without touching the global RNG."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return cls(*args, **kwargs).eval()
