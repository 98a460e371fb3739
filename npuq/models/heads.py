"""Depth heads: the last layers of the network and the host-side maths that turns their outputs into metres.

A head is a plug-in. ``forward`` returns, per decoder scale, a tuple of raw NPU output tensors (one
for ``sigmoid-disp``; several for heads that split depth over multiple outputs). ``decode`` runs on the
host after the NPU and turns one scale's tuple into metric depth; ``encode`` is its exact inverse
(training targets); ``output_ranges`` gives the value range of each output (what an INT8 grid must
cover). New heads subclass ``DepthHead`` and register with ``@register_head``.

The NPU stores every output per tensor on an INT8 grid, so each output gets its own scale. Heads:

- ``sigmoid-disp``: one sigmoid, a scaled inverse depth (Monodepth2). Its grid is coarse far away.
- ``int-frac``: integer part (0..15 m, rounded on the host) + fractional part (0..1 m).
- ``coarse-residual``: a coarse depth over the head's range + a signed residual of +-0.5 m.
- ``log-depth``: one linear output of log depth (a constant relative step).
- ``centred-logit``: ``sigmoid-disp`` with the sigmoid on the host and its input centred on 0.

Every head builds its layers per scale from separate convs (one per output), so each output has its own
producer and hence its own quantizer in the simulated graph, and is torch.fx traceable.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
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

    def init_output_depth(self, depth: float) -> None:
        """Set the output biases so that a fresh model predicts ``depth`` metres everywhere."""
        raise NpuqError(f"{self.name} head: no output initialisation at a depth; train without init_depth")

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
        # registration order: the baseline ``sigmoid-disp`` first
        raise NpuqError(f"head {name!r}: unknown; available: {', '.join(HEADS)}")
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

    def init_output_depth(self, depth: float) -> None:
        target = self.encode(torch.tensor([float(depth)]))[0].clamp(1e-4, 1 - 1e-4)
        with torch.no_grad():
            for conv in self.convs:
                conv.conv.bias.fill_(float(torch.logit(target)))


@register_head
class IntFracHead(DepthHead):
    """Depth split into an integer part and a fractional part, two NPU outputs with their own INT8 scales.

    Per scale: ``integer = 15 * sigmoid(conv_i(x))`` in [0, 15] and ``fraction = sigmoid(conv_f(x))``
    in [0, 1] (3x3 reflection-padded convs, like ``sigmoid-disp``). Both activations are bounded, so the
    calibrated INT8 step of the integer output is at most 15/127 = 0.12 (well under the 0.5 that
    would flip the host's rounding) whatever the calibration data. In the simulated graph the sigmoid
    and the ``* 15`` each store a tensor (two quantizers in a row on the integer path).

    Host decode: ``depth = round(integer) + fraction`` (the integer output is rounded on the host),
    clamped to [min_depth, max_depth]. ``encode(d) = (floor(d), d - floor(d))`` with d clamped to the
    range. The representable range ends at ``INT_MAX + 1`` = 16 m: ``max_depth`` is lowered to that.

    Caveat: decode has no gradient with respect to the integer output (``round``), and the targets jump
    at every whole metre (2.99 m -> (2, 0.99), 3.01 m -> (3, 0.01)), which a smooth network can only
    approximate; train with ``npuq.train.head_losses.head_loss`` (a loss on each part), not a depth loss.
    """

    name = "int-frac"
    output_names = ("integer", "fraction")
    INT_MAX: ClassVar[int] = 15

    def __init__(self, in_channels: list[int], min_depth: float = 0.1, max_depth: float = 100.0):
        super().__init__(in_channels, min_depth, min(max_depth, self.INT_MAX + 1.0))
        self.int_convs = nn.ModuleList(Conv3x3(c, 1) for c in self.in_channels)
        self.frac_convs = nn.ModuleList(Conv3x3(c, 1) for c in self.in_channels)
        self.int_sigmoid = nn.Sigmoid()
        self.frac_sigmoid = nn.Sigmoid()

    def forward(self, features: list[Tensor]) -> list[tuple[Tensor, ...]]:
        return [(self.int_sigmoid(self.int_convs[s](f)) * float(self.INT_MAX),
                 self.frac_sigmoid(self.frac_convs[s](f))) for s, f in enumerate(features)]

    def integer_level(self, integer: Tensor) -> Tensor:
        """The whole metres the host reads from the integer output: round (half to even), clamped."""
        return torch.round(integer.clamp(0.0, float(self.INT_MAX)))

    def decode(self, outputs: tuple[Tensor, ...]) -> Tensor:
        integer, fraction = outputs
        depth = self.integer_level(integer) + fraction.clamp(0.0, 1.0)
        return depth.clamp(self.min_depth, self.max_depth)

    def encode(self, depth: Tensor) -> tuple[Tensor, ...]:
        depth = depth.clamp(self.min_depth, self.max_depth)
        integer = torch.floor(depth).clamp(max=float(self.INT_MAX))
        return integer, depth - integer

    def output_ranges(self) -> list[tuple[float, float]]:
        return [(0.0, float(self.INT_MAX)), (0.0, 1.0)]


@register_head
class CoarseResidualHead(DepthHead):
    """A coarse depth over the whole range plus a small signed residual, two NPU outputs.

    Per scale: ``coarse = min_depth + (max_depth - min_depth) * sigmoid(conv_c(x))`` (metres, linear in
    depth) and ``residual = 0.5 * tanh(conv_r(x))`` in [-0.5, 0.5] m. Decode: ``coarse + residual``
    clamped to the range. ``encode(d) = (d, 0)``: in float the coarse output alone is the depth; after
    INT8 quantization the coarse output lands on a grid of step about (max_depth - min_depth) / 127
    (0.79 m for 0.1..100 m, 0.13 m for 0.1..16 m: set max_depth to the data's range), and a short
    fake-quant fine-tune (``npuq.train.qaf_head``) teaches the residual, whose grid step is 0.5/127 = 4 mm,
    to correct it. The residual range must cover half a coarse step; 0.5 m does so up to max_depth 127 m.
    Unlike ``int-frac`` there is no discontinuity in the float targets, and a residual that fails to
    correct leaves at most the coarse rounding error, never a whole-metre jump.
    """

    name = "coarse-residual"
    output_names = ("coarse", "residual")
    RESIDUAL_RANGE: ClassVar[float] = 0.5

    def __init__(self, in_channels: list[int], min_depth: float = 0.1, max_depth: float = 100.0):
        super().__init__(in_channels, min_depth, max_depth)
        self.coarse_convs = nn.ModuleList(Conv3x3(c, 1) for c in self.in_channels)
        self.residual_convs = nn.ModuleList(Conv3x3(c, 1) for c in self.in_channels)
        self.coarse_sigmoid = nn.Sigmoid()
        self.residual_tanh = nn.Tanh()

    def forward(self, features: list[Tensor]) -> list[tuple[Tensor, ...]]:
        span = self.max_depth - self.min_depth
        return [(self.coarse_sigmoid(self.coarse_convs[s](f)) * span + self.min_depth,
                 self.residual_tanh(self.residual_convs[s](f)) * self.RESIDUAL_RANGE)
                for s, f in enumerate(features)]

    def decode(self, outputs: tuple[Tensor, ...]) -> Tensor:
        coarse, residual = outputs
        r = self.RESIDUAL_RANGE
        depth = coarse.clamp(self.min_depth, self.max_depth) + residual.clamp(-r, r)
        return depth.clamp(self.min_depth, self.max_depth)

    def encode(self, depth: Tensor) -> tuple[Tensor, ...]:
        depth = depth.clamp(self.min_depth, self.max_depth)
        return depth, torch.zeros_like(depth)

    def output_ranges(self) -> list[tuple[float, float]]:
        return [(self.min_depth, self.max_depth), (-self.RESIDUAL_RANGE, self.RESIDUAL_RANGE)]


@register_head
class LogDepthHead(DepthHead):
    """One linear output: the natural log of depth (3x3 reflection-padded conv, no activation).

    Decode: ``exp(clamp(x, log min_depth, log max_depth))``. With no activation the conv's own output is
    the stored tensor (a single quantizer) and its INT8 range is calibrated on the values the network
    really produces: for depths 0.3..16 m, log depth spans [-1.2, 2.8], so a symmetric INT8 grid has
    a step of 2.8/127 = 0.022, a relative depth step of 2.2% at every depth (vs 15% at 2 m and 38% at
    5 m for ``sigmoid-disp`` over 0.1..100 m). ``output_ranges`` is the head's whole range
    [log min_depth, log max_depth] (what a full-range grid must cover).
    """

    name = "log-depth"
    output_names = ("log_depth",)

    def __init__(self, in_channels: list[int], min_depth: float = 0.1, max_depth: float = 100.0):
        super().__init__(in_channels, min_depth, max_depth)
        self.convs = nn.ModuleList(Conv3x3(c, 1) for c in self.in_channels)

    def forward(self, features: list[Tensor]) -> list[tuple[Tensor, ...]]:
        return [(self.convs[s](f),) for s, f in enumerate(features)]

    def decode(self, outputs: tuple[Tensor, ...]) -> Tensor:
        lo, hi = self.output_ranges()[0]
        return torch.exp(outputs[0].clamp(lo, hi))

    def encode(self, depth: Tensor) -> tuple[Tensor, ...]:
        return (torch.log(depth.clamp(self.min_depth, self.max_depth)),)

    def output_ranges(self) -> list[tuple[float, float]]:
        return [(math.log(self.min_depth), math.log(self.max_depth))]


@register_head
class CentredLogitHead(DepthHead):
    """``sigmoid-disp`` with the sigmoid moved to the host and its input centred: one linear output.

    The NPU output is ``z = conv(x)`` (the dispconv whose bias was lowered by ``centre``); the host
    computes ``sigmoid(z + centre)`` and then Monodepth2's disparity mapping. A trained ``sigmoid-disp``
    model converts exactly (``npuq.remedies.centre_logit``). Why: on one room the sigmoid's input lies
    in about [-3.5, -1.9] and its output in [0.03, 0.13], all away from 0, and a TensorRT-style
    entropy search clips such tensors to about their minimum. Centred, the stored tensor straddles
    0 and the search keeps its whole spread. ``centre`` is a buffer (saved with the weights).
    """

    name = "centred-logit"
    output_names = ("logit",)
    SIGMOID_EPS: ClassVar[float] = 1e-4

    def __init__(self, in_channels: list[int], min_depth: float = 0.1, max_depth: float = 100.0):
        super().__init__(in_channels, min_depth, max_depth)
        self.convs = nn.ModuleList(Conv3x3(c, 1) for c in self.in_channels)
        self.register_buffer("centre", torch.zeros(()))

    def forward(self, features: list[Tensor]) -> list[tuple[Tensor, ...]]:
        return [(self.convs[s](f),) for s, f in enumerate(features)]

    def decode(self, outputs: tuple[Tensor, ...]) -> Tensor:
        return disp_to_depth(torch.sigmoid(outputs[0] + self.centre), self.min_depth, self.max_depth)[1]

    def encode(self, depth: Tensor) -> tuple[Tensor, ...]:
        sig = depth_to_sigmoid(depth, self.min_depth, self.max_depth)
        return (torch.logit(sig.clamp(self.SIGMOID_EPS, 1 - self.SIGMOID_EPS)) - self.centre,)

    def output_ranges(self) -> list[tuple[float, float]]:
        edge, centre = math.log(1 / self.SIGMOID_EPS - 1), float(self.centre)
        return [(-edge - centre, edge - centre)]

    def init_output_depth(self, depth: float) -> None:
        target = self.encode(torch.tensor([float(depth)]))[0]
        with torch.no_grad():
            for conv in self.convs:
                conv.conv.bias.fill_(float(target))


__all__ = [
    "HEADS",
    "CentredLogitHead",
    "CoarseResidualHead",
    "DepthHead",
    "IntFracHead",
    "LogDepthHead",
    "SigmoidDispHead",
    "build_head",
    "depth_to_sigmoid",
    "disp_to_depth",
    "register_head",
]


def as_tuple(outputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def depth_predictor(net: nn.Module, head: nn.Module) -> Callable[[Tensor], Tensor]:
    """rgb -> metric depth through ``net`` (a float model or a QuantSim) and the head's host decode."""

    def predict(rgb: Tensor) -> Tensor:
        return head.decode(as_tuple(net(rgb)))

    return predict
