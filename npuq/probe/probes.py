"""The probes: tiny float models whose quantized outputs each reveal one property of a toolchain.

Every probe is a deterministic torch module (fixed weights, standard ops only), a calibration set and a
few probe inputs, all functions of nothing but the probe's definition: the kit exported today and the
one the fit rebuilds tomorrow are the same.

- ``grid``: activation grid (signed symmetric or zero-point) and bit width: a ramp far past the
  calibration range shows the outputs' step and both saturation levels;
- ``outputs``: whether model outputs are quantized: a sum of two quantized inputs has more levels than
  one grid holds;
- ``range-*``: the activation range method and its variant: four calibration distributions on which the
  calibrators choose clearly different thresholds, and a ramp that shows where the output saturates;
- ``weights``: weight granularity, weight range method, bias correction: one conv with a channel whose
  weights vanish on a per-tensor grid, one with an outlier, and inputs with a non-zero mean;
- ``weight-range``: the weight range method: 147k weights with three outliers, which a per-tensor MSE
  search clips and min/max does not (per channel, 8-bit MSE never clips and the two are the same);
- ``cle``: cross-layer equalization: conv-ReLU-conv whose channel ranges differ 80x and cancel in float;
- ``clip``: whether a Clip after a conv is fused into it (``fuse_clip``): the conv's output reaches 11,
  the Clip keeps [0, 2]; fused, only the clipped tensor is stored (a step of 2/127), unfused the conv's
  own coarse grid shows through;
- ``fp16``: whether a layer asked to stay FP16 does: the ``outputs`` probe again, its conv named
  ``fp16_conv``; FP16 leaves the 8-bit grid (undetermined when the outputs are not quantized at all).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

SIZE = 32  # probe frames are SIZE x SIZE
N_CALIB = 16
N_RANGE_CALIB = 64  # frames of the range probes: 65k values, so that percentiles 99.99 and 99.999 part
FP16_LAYER = "fp16_conv"  # the layer the user asks the toolchain to keep in FP16


@dataclass(frozen=True)
class Probe:
    name: str
    reveals: str
    build: Callable[[], nn.Module]
    calibration: Callable[[np.random.Generator], np.ndarray]  # (N, C, H, W) float32
    inputs: Callable[[np.random.Generator], dict[str, np.ndarray]]  # name -> (1, C, H, W) float32
    channels: int = 1
    note: str = ""  # what the user must do for this probe in the vendor flow

    def calibration_set(self) -> np.ndarray:
        return self.calibration(_rng(self.name, "calibration")).astype(np.float32)

    def probe_inputs(self) -> dict[str, np.ndarray]:
        return {k: v.astype(np.float32) for k, v in self.inputs(_rng(self.name, "inputs")).items()}


def _rng(name: str, stream: str) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, name)), len(name), sum(map(ord, stream))])


def _frames(values: np.ndarray, channels: int = 1) -> np.ndarray:
    """Flat values -> (N, channels, SIZE, SIZE), the same values on every channel."""
    frames = values.reshape(-1, 1, SIZE, SIZE)
    return np.repeat(frames, channels, axis=1)


def _ramp(lo: float, hi: float, channels: int = 1) -> np.ndarray:
    return _frames(np.linspace(lo, hi, SIZE * SIZE), channels)


def _conv(cin: int, cout: int, weight: np.ndarray, bias: np.ndarray | None = None, k: int = 1) -> nn.Conv2d:
    conv = nn.Conv2d(cin, cout, k, padding=k // 2)
    with torch.no_grad():
        conv.weight.copy_(torch.as_tensor(weight, dtype=torch.float32).reshape(cout, cin, k, k))
        conv.bias.copy_(torch.zeros(cout) if bias is None else torch.as_tensor(bias, dtype=torch.float32))
    return conv


class Identity(nn.Module):
    """x -> conv 1x1 with weight 1 (the grid and range probes: the output is the quantized tensor itself)."""

    def __init__(self, relu_branch: bool = False):
        super().__init__()
        self.conv = _conv(1, 1, np.ones(1))
        self.relu_conv = _conv(1, 1, np.ones(1)) if relu_branch else None

    def forward(self, x):
        if self.relu_conv is None:
            return self.conv(x)
        return self.conv(x), torch.relu(self.relu_conv(x))


class Mix(nn.Module):
    """Two quantized channels summed by one conv (weights 1 and 0.37), straight to the output: in float or
    FP16 it has about as many distinct values as pixels, on an INT8 output grid at most 256."""

    def __init__(self, layer: str = "mix"):
        super().__init__()
        self.layer = layer
        setattr(self, layer, _conv(2, 1, np.array([1.0, 0.37])))

    def forward(self, x):
        return getattr(self, self.layer)(x)


WEIGHT_CHANNELS = 64


def _weights_probe_kernel() -> tuple[np.ndarray, np.ndarray]:
    """3 output channels over 64 identical input channels, 3x3: an exact identity, a channel of tiny
    weights (zero on a per-tensor grid, exact per channel), a Gaussian channel with one outlier (the
    min/max grid is 10x coarser than an MSE one)."""
    rng = np.random.default_rng(7)
    w = np.zeros((3, WEIGHT_CHANNELS, 3, 3))
    w[0, 0, 1, 1] = 1.0
    w[1] = 0.003
    w[2] = rng.normal(0.0, 0.01, w[2].shape)
    w[2, 5, 1, 1] = 0.5
    return w, np.array([0.0, 0.05, 0.0])


class Weights(nn.Module):
    def __init__(self):
        super().__init__()
        weight, bias = _weights_probe_kernel()
        self.conv = _conv(WEIGHT_CHANNELS, 3, weight, bias, k=3)

    def forward(self, x):
        return self.conv(x)


class WeightRange(nn.Module):
    """One wide conv (64 -> 256, 3x3: 147k weights), N(0, 0.01) with three outliers at 1.0: a per-tensor
    MSE search clips them to about 0.8 where min/max keeps 1.0, so every other weight rounds differently."""

    def __init__(self):
        super().__init__()
        rng = np.random.default_rng(11)
        weight = rng.normal(0.0, 0.01, (256, WEIGHT_CHANNELS, 3, 3))
        weight.reshape(-1)[[10, 70_000, 140_000]] = 1.0
        self.conv = _conv(WEIGHT_CHANNELS, 256, weight, k=3)

    def forward(self, x):
        return self.conv(x)


class Equalize(nn.Module):
    """conv(1->2, weights 4 and 0.05) -> ReLU -> conv(2->1, weights 0.25 and 20): y = 2x for x > 0.
    Without CLE the second channel is lost on both per-tensor grids; with it both channels are exact."""

    def __init__(self):
        super().__init__()
        self.conv1 = _conv(1, 2, np.array([4.0, 0.05]))
        self.relu = nn.ReLU()
        self.conv2 = _conv(2, 1, np.array([0.25, 20.0]))

    def forward(self, x):
        return self.conv2(self.relu(self.conv1(x)))


CLIP_TOP = 2.0


class ClipAfterConv(nn.Module):
    """Two channels mixed by a conv (weights 2 and 0.74: dense values up to 11), then clamped to
    [0, CLIP_TOP]: a fused Clip leaves a fine grid over [0, 2], an unfused one the conv's 5x coarser one."""

    def __init__(self):
        super().__init__()
        self.conv = _conv(2, 1, np.array([2.0, 0.74]))

    def forward(self, x):
        return torch.clamp(self.conv(x), min=0.0, max=CLIP_TOP)


def _uniform(lo: float, hi: float, channels: int = 1):
    return lambda rng: _frames(rng.uniform(lo, hi, N_CALIB * SIZE * SIZE), channels)


def _random_inputs(lo: float, hi: float, channels: int, n: int = 3):
    def inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
        return {f"random{i}": rng.uniform(lo, hi, (1, channels, SIZE, SIZE)) for i in range(n)}

    return inputs


def _mixed_calibration(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(-1.0, 1.0, (N_CALIB, 2, SIZE, SIZE))


def _mixed_inputs(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"random0": rng.uniform(-1.0, 1.0, (1, 2, SIZE, SIZE))}


def _gauss_outliers(rng):
    x = rng.normal(0.0, 1.0, N_RANGE_CALIB * SIZE * SIZE)
    x[rng.choice(x.size, x.size // 1000, replace=False)] = rng.uniform(6.0, 8.0, x.size // 1000)
    return _frames(x)


def _elu(rng):
    x = rng.normal(0.0, 2.0, N_RANGE_CALIB * SIZE * SIZE)
    return _frames(np.where(x > 0, x, np.expm1(np.minimum(x, 0))))


def _laplace(rng):
    return _frames(rng.laplace(0.0, 0.5, N_RANGE_CALIB * SIZE * SIZE))


def _away_from_zero(rng):
    return _frames(rng.uniform(0.2, 0.8, N_RANGE_CALIB * SIZE * SIZE))


def _range_probe(name: str, calibration, reach: float, what: str) -> Probe:
    return Probe(name, f"activation range method ({what})", lambda: Identity(), calibration,
                 lambda rng: {"ramp": _ramp(-reach, reach)})


PROBES: tuple[Probe, ...] = (
    Probe("grid", "activation grid and bit width", lambda: Identity(relu_branch=True), _uniform(-1.0, 3.0),
          lambda rng: {"ramp": _ramp(-8.0, 8.0)}),
    Probe("outputs", "whether model outputs are quantized", lambda: Mix(), _mixed_calibration, _mixed_inputs,
          channels=2),
    _range_probe("range-gauss", _gauss_outliers, 16.0, "Gaussian with 0.1% outliers"),
    _range_probe("range-elu", _elu, 24.0, "ELU of a Gaussian: a spike at -1"),
    _range_probe("range-laplace", _laplace, 12.0, "Laplace"),
    _range_probe("range-positive", _away_from_zero, 2.0, "all values in [0.2, 0.8]"),
    Probe("weights", "weight granularity, weight range method, bias correction", lambda: Weights(),
          _uniform(0.0, 1.0, WEIGHT_CHANNELS), _random_inputs(0.0, 1.0, WEIGHT_CHANNELS),
          channels=WEIGHT_CHANNELS),
    Probe("weight-range", "weight range method (per-tensor weights)", lambda: WeightRange(),
          lambda rng: rng.uniform(0.0, 1.0, (N_CALIB, WEIGHT_CHANNELS, SIZE, SIZE)),
          lambda rng: {"random0": rng.uniform(0.0, 1.0, (1, WEIGHT_CHANNELS, SIZE, SIZE))},
          channels=WEIGHT_CHANNELS),
    Probe("cle", "cross-layer equalization", lambda: Equalize(), _uniform(0.0, 1.0),
          lambda rng: {"ramp": _ramp(0.0, 1.0), **_random_inputs(0.0, 1.0, 1, 2)(rng)}),
    Probe("clip", "whether a Clip after a conv is fused into it", lambda: ClipAfterConv(),
          lambda rng: rng.uniform(-1.0, 4.0, (N_CALIB, 2, SIZE, SIZE)), _random_inputs(-0.5, 1.5, 2),
          channels=2),
    Probe("fp16", "whether a layer kept in FP16 stays FP16", lambda: Mix(FP16_LAYER), _mixed_calibration,
          _mixed_inputs, channels=2,
          note=f"Ask the toolchain to keep the layer `{FP16_LAYER}` (ONNX node `/{FP16_LAYER}/Conv`) in "
               "FP16, everything else INT8. If it cannot, compile it like the others."),
)
PROBES_BY_NAME = {p.name: p for p in PROBES}
RANGE_PROBES = tuple(p.name for p in PROBES if p.name.startswith("range-"))
