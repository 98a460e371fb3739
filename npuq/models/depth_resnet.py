"""DepthResNet: ResNet encoder + Monodepth2 decoder + swappable depth head (PackNet-SfM layout).

State-dict names: ``encoder.encoder.<torchvision resnet name>``, ``decoder.decoder.0..9.conv.conv.*``
(as in PackNet-SfM) and ``head.*`` (for ``sigmoid-disp``: ``head.convs.S.conv.*``, which PackNet-SfM
stores as ``decoder.decoder.{10+S}.conv.*``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from npuq.errors import NpuqError
from npuq.models.decoder import ACTIVATIONS, DepthDecoder
from npuq.models.heads import HEADS, build_head
from npuq.models.resnet import RESNET_LAYERS, ResNetEncoder

# Monodepth2 / PackNet-SfM input normalisation of RGB in [0, 1].
RGB_MEAN = 0.45
RGB_STD = 0.225


@dataclass
class DepthNetConfig:
    """Everything needed to rebuild a DepthResNet (saved in npuq checkpoints)."""

    depth: int = 18
    head: str = "sigmoid-disp"
    min_depth: float = 0.1
    max_depth: float = 100.0
    num_scales: int = 4
    activation: str = "elu"  # the decoder's nonlinearity (npuq.models.decoder.ACTIVATIONS)
    # per decoder block: channels beyond Monodepth2's (range anchors) or () for none
    decoder_extra_channels: tuple[int, ...] = ()
    # per decoder block: the ceiling its output is clamped at (bounded-activation remedy), 0 for none;
    # () for none anywhere
    decoder_ceilings: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.depth not in RESNET_LAYERS:
            raise NpuqError(f"DepthNetConfig: depth must be one of {sorted(RESNET_LAYERS)}, got {self.depth}")
        if self.head not in HEADS:
            raise NpuqError(f"DepthNetConfig: unknown head {self.head!r}; "
                            f"available: {', '.join(sorted(HEADS))}")
        if not 0.0 < self.min_depth < self.max_depth:
            raise NpuqError(f"DepthNetConfig: need 0 < min_depth < max_depth, "
                            f"got {self.min_depth}, {self.max_depth}")
        if not 1 <= self.num_scales <= 4:
            raise NpuqError(f"DepthNetConfig: num_scales must be in 1..4, got {self.num_scales}")
        self.decoder_extra_channels = tuple(int(c) for c in self.decoder_extra_channels)
        if self.decoder_extra_channels and (len(self.decoder_extra_channels) != 10
                                            or min(self.decoder_extra_channels) < 0):
            raise NpuqError("DepthNetConfig: decoder_extra_channels needs ten non-negative counts")
        self.decoder_ceilings = tuple(float(c) for c in self.decoder_ceilings)
        if self.decoder_ceilings and (len(self.decoder_ceilings) != 10 or min(self.decoder_ceilings) < 0):
            raise NpuqError("DepthNetConfig: decoder_ceilings needs ten non-negative values (0: unbounded)")
        if self.activation not in ACTIVATIONS:
            raise NpuqError(f"DepthNetConfig: activation must be one of {', '.join(ACTIVATIONS)}, "
                            f"got {self.activation!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DepthNetConfig:
        """Build from ``dataclasses.asdict`` output; unknown keys are an error."""
        if not isinstance(data, dict):
            raise NpuqError(f"DepthNetConfig: expected a mapping, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise NpuqError(f"DepthNetConfig: unknown keys {unknown}")
        return cls(**data)


class RGBEncoder(nn.Module):
    """Normalises RGB in [0, 1] and runs the ResNet (``.encoder``), as PackNet-SfM's ResnetEncoder does."""

    def __init__(self, depth: int = 18):
        super().__init__()
        self.encoder = ResNetEncoder(depth)
        self.num_ch_enc = self.encoder.num_ch_enc

    def forward(self, rgb: Tensor) -> list[Tensor]:
        return self.encoder((rgb - RGB_MEAN) / RGB_STD)


class DepthResNet(nn.Module):
    """Monocular depth network.

    ``forward(rgb)`` with rgb [B,3,H,W] in [0,1] (H, W multiples of 32). Eval mode: the head's raw
    outputs at full resolution (a Tensor for a one-output head, else a tuple). Train mode: a list of
    the same for scales 0..num_scales-1. torch.fx traceable in eval mode.
    """

    def __init__(self, config: DepthNetConfig | None = None):
        super().__init__()
        self.config = config or DepthNetConfig()
        self.encoder = RGBEncoder(self.config.depth)
        self.decoder = DepthDecoder(self.encoder.num_ch_enc, num_scales=self.config.num_scales,
                                    activation=self.config.activation,
                                    extra_channels=self.config.decoder_extra_channels,
                                    ceilings=self.config.decoder_ceilings)
        self.head = build_head(self.config.head, self.decoder.scale_channels,
                               self.config.min_depth, self.config.max_depth)

    def forward(self, rgb: Tensor) -> Tensor | tuple[Tensor, ...] | list[Tensor | tuple[Tensor, ...]]:
        scales = self.decoder(self.encoder(rgb))
        if self.training:
            return [_unwrap(outputs) for outputs in self.head(scales)]
        return _unwrap(self.head(scales[:1])[0])

    def predict_depth(self, rgb: Tensor) -> Tensor:
        """Metric depth [B,1,H,W] at full resolution. Uses the current mode: call ``.eval()`` first."""
        outputs = self(rgb)
        if self.training:
            outputs = outputs[0]
        return self.head.decode(outputs if isinstance(outputs, tuple) else (outputs,))


def _unwrap(outputs: tuple[Tensor, ...]) -> Tensor | tuple[Tensor, ...]:
    return outputs[0] if len(outputs) == 1 else outputs
