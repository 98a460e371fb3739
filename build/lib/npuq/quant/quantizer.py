"""The integer grid and fake quantization, exactly as the NPU stores a tensor.

Rounding is round-half-to-even (torch's fake_quantize and ONNX QuantizeLinear both do this),
values are clamped to the grid, and zero is always exactly representable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from npuq.quant.profile import TensorQuantConfig

MIN_SCALE = 1e-12


@dataclass(frozen=True)
class IntGrid:
    bits: int
    signed: bool

    @property
    def qmin(self) -> int:
        return -(2 ** (self.bits - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.signed else 2**self.bits - 1

    @classmethod
    def for_config(cls, cfg: TensorQuantConfig) -> IntGrid:
        return cls(bits=cfg.bits, signed=cfg.symmetric)


def scale_zero_point(lo: float, hi: float, grid: IntGrid) -> tuple[float, int]:
    """Scale and zero-point that put [lo, hi] on the grid.

    Signed (symmetric) grids use threshold T = max(|lo|, |hi|) and scale T/qmax with zero-point 0.
    Unsigned (asymmetric) grids widen [lo, hi] to contain 0 and pick an integer zero-point.
    """
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"range must be finite, got [{lo}, {hi}]")
    if grid.signed:
        threshold = max(abs(lo), abs(hi))
        return max(threshold / grid.qmax, MIN_SCALE), 0
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / (grid.qmax - grid.qmin), MIN_SCALE)
    zero_point = int(min(max(round(grid.qmin - lo / scale), grid.qmin), grid.qmax))
    return scale, zero_point


def fake_quant(x: torch.Tensor, scale: float, zero_point: int, grid: IntGrid) -> torch.Tensor:
    """Quantize-dequantize with straight-through gradients (torch's own op)."""
    return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, grid.qmin, grid.qmax)


def fake_quant_per_channel(
    x: torch.Tensor, scales: torch.Tensor, zero_points: torch.Tensor, grid: IntGrid, axis: int = 0
) -> torch.Tensor:
    return torch.fake_quantize_per_channel_affine(
        x, scales.float(), zero_points.to(torch.int32), axis, grid.qmin, grid.qmax
    )


def quantize_dequantize_np(x, scale: float, zero_point: int, grid: IntGrid):
    """NumPy twin of fake_quant for range searches on histograms (round half to even)."""
    import numpy as np

    q = np.clip(np.rint(np.asarray(x, dtype=np.float64) / scale) + zero_point, grid.qmin, grid.qmax)
    return (q - zero_point) * scale
