"""Tiny depth-like networks shared by the export tests (one- and two-output)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TinyHead(nn.Module):
    """Reflection-padded 3x3 conv + sigmoid (like SigmoidDispHead); ``two`` adds a ReLU output."""

    def __init__(self, channels: int, two: bool = False):
        super().__init__()
        self.output_names = ("disp", "conf") if two else ("disp",)
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(channels, 1, 3)
        self.conf = nn.Conv2d(channels, 1, 1) if two else None

    def forward(self, x: torch.Tensor):
        disp = torch.sigmoid(self.conv(self.pad(x)))
        return (disp, F.relu(self.conf(x))) if self.conf is not None else disp


class TinyDepthNet(nn.Module):
    """conv-bn-relu, residual add+relu, strided conv, ELU, nearest upsample, concat, sigmoid head."""

    def __init__(self, two_outputs: bool = False):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.down = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.up = nn.Conv2d(16, 8, 3, padding=1)
        self.head = TinyHead(16, two_outputs)
        generator = torch.Generator().manual_seed(3)
        with torch.no_grad():
            self.bn1.running_mean.normal_(0.0, 0.3, generator=generator)
            self.bn1.running_var.uniform_(0.5, 2.0, generator=generator)
            self.bn1.weight.uniform_(0.5, 1.5, generator=generator)
            self.bn1.bias.normal_(0.0, 0.2, generator=generator)

    def forward(self, rgb: torch.Tensor):
        x = (rgb - 0.45) / 0.225
        a = F.relu(self.bn1(self.conv1(x)))
        b = F.relu(self.conv2(a) + a)
        c = F.elu(self.up(self.down(b)))
        u = F.interpolate(c, scale_factor=2, mode="nearest")
        return self.head(torch.cat([u, b], 1))


def make_net(two_outputs: bool = False) -> TinyDepthNet:
    torch.manual_seed(0)
    return TinyDepthNet(two_outputs).eval()
