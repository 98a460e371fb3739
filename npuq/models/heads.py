"""Depth heads: the last layers of the network and the host-side maths that turns their outputs into metres.

A head is a plug-in. ``forward`` returns, per decoder scale, a tuple of raw NPU output tensors (one
for ``sigmoid-disp``; several for heads that split depth over multiple outputs). ``decode`` runs on the
host after the NPU and turns one scale's tuple into metric depth; ``encode`` is its exact inverse
(training targets); ``output_ranges`` gives the value range of each output (what an INT8 grid must
cover). New heads subclass ``DepthHead`` and register with ``@register_head``.
"""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor, nn

from npuq.errors import NpuqError
from npuq.models.decoder import Conv3x3


def disp_to_depth(sigmoid: Tensor, min_depth: float, max_depth: float) -> tuple[Tensor, Tensor]:
    """Monodepth2's helper: sigmoid output -> (inverse depth, depth).

    inverse depth = 1/max_depth + (1/min_depth - 1/max_depth) * sigmoid, depth = 1 / inverse depth.
    """
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    inv_depth = min_disp + (max_disp - min_disp) * sigmoid
    return inv_depth, 1.0 / inv_depth


def depth_to_sigmoid(depth: Tensor, min_depth: float, max_depth: float) -> Tensor:
    """Inverse of ``disp_to_depth``: the sigmoid value that decodes to ``depth``.

    Depth is clamped to [min_depth, max_depth] first (0 and inf, the usual invalid markers, map to the
    ends of the range), so the result always lies in [0, 1].
    """
    min_disp, max_disp = 1.0 / max_depth, 1.0 / min_depth
    inv_depth = 1.0 / depth.clamp(min_depth, max_depth)
    return ((inv_depth - min_disp) / (max_disp - min_disp)).clamp(0.0, 1.0)


class DepthHead(nn.Module):
    """Base class of depth heads.

    Subclasses set ``name`` and ``output_names`` and implement ``forward``, ``decode``, ``encode`` and
    ``output_ranges``. ``in_channels[s]`` is the decoder's channel count at scale ``s``; the head builds
    one set of layers per scale. ``forward`` accepts the first ``k <= len(in_channels)`` scales, so the
    model can run only scale 0 in eval mode (no dead branches in a traced graph).
    """

    name: ClassVar[str] = ""
    output_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, in_channels: list[int], min_depth: float, max_depth: float):
        super().__init__()
        if not 0.0 < min_depth < max_depth:
            raise NpuqError(f"{self.name or type(self).__name__} head: need 0 < min_depth < max_depth, "
                            f"got {min_depth}, {max_depth}")
        if not in_channels:
            raise NpuqError(f"{self.name or type(self).__name__} head: needs at least one scale")
        self.in_channels = list(in_channels)
        self.min_depth = float(min_depth)
        self.max_depth = float(max_depth)

    @property
    def num_outputs(self) -> int:
        return len(self.output_names)

    @property
    def num_scales(self) -> int:
        return len(self.in_channels)

    def forward(self, features: list[Tensor]) -> list[tuple[Tensor, ...]]:
        """Raw outputs per scale, scale 0 first: one tuple of ``len(output_names)`` tensors each."""
        raise NotImplementedError

    def decode(self, outputs: tuple[Tensor, ...]) -> Tensor:
        """Metric depth [B,1,H,W] from one scale's raw outputs."""
        raise NotImplementedError

    def encode(self, depth: Tensor) -> tuple[Tensor, ...]:
        """The raw outputs that decode exactly to ``depth`` (clamped to the head's range)."""
        raise NotImplementedError

    def output_ranges(self) -> list[tuple[float, float]]:
        """The (min, max) each raw output can take, in ``output_names`` order."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"name={self.name!r}, min_depth={self.min_depth}, max_depth={self.max_depth}"


HEADS: dict[str, type[DepthHead]] = {}


def register_head(cls: type[DepthHead]) -> type[DepthHead]:
    """Class decorator adding a head to ``HEADS`` under its ``name``."""
    if not cls.name or cls.name in HEADS:
        raise ValueError(f"head name {cls.name!r} is empty or already registered")
    HEADS[cls.name] = cls
    return cls


def build_head(name: str, in_channels: list[int], min_depth: float, max_depth: float) -> DepthHead:
    """Instantiate the registered head ``name``."""
    if name not in HEADS:
        raise NpuqError(f"head {name!r}: unknown; available: {', '.join(sorted(HEADS))}")
    return HEADS[name](in_channels, min_depth, max_depth)


@register_head
class SigmoidDispHead(DepthHead):
    """Monodepth2 / PackNet-SfM output: per scale a 3x3 conv (reflection padded) + sigmoid.

    The sigmoid is a scaled inverse depth; see ``disp_to_depth``. ``convs[s]`` is the conv that
    Monodepth2 calls ``("dispconv", s)``.
    """

    name = "sigmoid-disp"
    output_names = ("disp",)

    def __init__(self, in_channels: list[int], min_depth: float = 0.1, max_depth: float = 100.0):
        super().__init__(in_channels, min_depth, max_depth)
        self.convs = nn.ModuleList(Conv3x3(c, 1) for c in self.in_channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, features: list[Tensor]) -> list[tuple[Tensor, ...]]:
        return [(self.sigmoid(self.convs[s](f)),) for s, f in enumerate(features)]

    def decode(self, outputs: tuple[Tensor, ...]) -> Tensor:
        return disp_to_depth(outputs[0], self.min_depth, self.max_depth)[1]

    def encode(self, depth: Tensor) -> tuple[Tensor, ...]:
        return (depth_to_sigmoid(depth, self.min_depth, self.max_depth),)

    def output_ranges(self) -> list[tuple[float, float]]:
        return [(0.0, 1.0)]


__all__ = [
    "HEADS",
    "DepthHead",
    "SigmoidDispHead",
    "build_head",
    "depth_to_sigmoid",
    "disp_to_depth",
    "register_head",
]
