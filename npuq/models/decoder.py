"""Monodepth2 / PackNet-SfM depth decoder (the ten upconv blocks; the output convs live in the head).

Module and state-dict names follow Monodepth2: ``decoder.N.conv.conv.weight`` for the ConvBlocks,
where ``N`` runs over upconv(4,0), upconv(4,1), upconv(3,0), ..., upconv(0,1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NUM_CH_DEC: tuple[int, ...] = (16, 32, 64, 128, 256)
# The decoder's nonlinearity. Monodepth2's is ELU; ELU saturates at -1, so its |x| histogram has a spike
# at 1.0 that a TensorRT-style KL search locks onto. The others are the activation-change remedy.
ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1)}


class Conv3x3(nn.Module):
    """Reflection pad by one pixel, then a 3x3 convolution with bias (Monodepth2's ``Conv3x3``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.pad = nn.ReflectionPad2d(1)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(self.pad(x))


class ConvBlock(nn.Module):
    """Conv3x3 followed by ELU (Monodepth2's ``ConvBlock``) or another ``ACTIVATIONS`` entry; not in-place.

    ``ceiling`` > 0 bounds the output at that value (``min(ELU(x), c)``, an ONNX Clip that an NPU fuses
    into the activation before it); 0 leaves it unbounded.
    """

    def __init__(self, in_channels: int, out_channels: int, activation: str = "elu", ceiling: float = 0.0):
        super().__init__()
        self.conv = Conv3x3(in_channels, out_channels)
        self.nonlin = ACTIVATIONS[activation]()
        self.ceiling = float(ceiling)

    def forward(self, x: Tensor) -> Tensor:
        y = self.nonlin(self.conv(x))
        return torch.clamp(y, max=self.ceiling) if self.ceiling > 0 else y


class DepthDecoder(nn.Module):
    """Upsampling decoder with skip connections.

    ``forward(features)`` takes the encoder's five features and returns the upconv(i, 1) outputs for
    scales ``0..num_scales-1`` (scale 0 is full input resolution, scale s is 1/2**s of it).
    """

    def __init__(self, num_ch_enc: list[int], num_ch_dec: tuple[int, ...] = NUM_CH_DEC, num_scales: int = 4,
                 activation: str = "elu", extra_channels: tuple[int, ...] = (),
                 ceilings: tuple[float, ...] = ()):
        super().__init__()
        if len(num_ch_enc) != 5 or len(num_ch_dec) != 5:
            raise ValueError("DepthDecoder needs five encoder and five decoder channel counts")
        if not 1 <= num_scales <= 5:
            raise ValueError(f"num_scales must be in 1..5, got {num_scales}")
        if extra_channels and (len(extra_channels) != 10 or min(extra_channels) < 0):
            raise ValueError("extra_channels needs ten non-negative counts, one per block")
        if ceilings and (len(ceilings) != 10 or min(ceilings) < 0):
            raise ValueError("ceilings needs ten non-negative values, one per block (0: unbounded)")
        self.num_ch_enc = list(num_ch_enc)
        self.num_ch_dec = list(num_ch_dec)
        self.num_scales = num_scales
        # Channels a block has beyond Monodepth2's (the range-anchor rewrite adds constant ones).
        extra = list(extra_channels) or [0] * 10
        self.block_channels = [num_ch_dec[4 - b // 2] + extra[b] for b in range(10)]
        ceiling = list(ceilings) or [0.0] * 10
        blocks = []
        for i in range(4, -1, -1):
            b = 2 * (4 - i)
            in_0 = num_ch_enc[-1] if i == 4 else self.block_channels[b - 1]
            in_1 = self.block_channels[b] + (num_ch_enc[i - 1] if i > 0 else 0)
            blocks += [ConvBlock(in_0, self.block_channels[b], activation, ceiling[b]),
                       ConvBlock(in_1, self.block_channels[b + 1], activation, ceiling[b + 1])]
        self.decoder = nn.ModuleList(blocks)

    def upconv(self, i: int, j: int) -> nn.Module:
        """The ConvBlock Monodepth2 calls ``("upconv", i, j)``."""
        return self.decoder[2 * (4 - i) + j]

    @property
    def scale_channels(self) -> list[int]:
        """Channels of the per-scale outputs, scale 0 first (what a head's ``in_channels`` must be)."""
        return [self.block_channels[2 * (4 - s) + 1] for s in range(self.num_scales)]

    def forward(self, features: list[Tensor]) -> list[Tensor]:
        x = features[-1]
        outputs: list[Tensor] = []
        for i in range(4, -1, -1):
            x = self.upconv(i, 0)(x)
            x = F.interpolate(x, scale_factor=2, mode="nearest")
            if i > 0:
                x = torch.cat([x, features[i - 1]], 1)
            x = self.upconv(i, 1)(x)
            if i < self.num_scales:
                outputs.append(x)
        return outputs[::-1]
