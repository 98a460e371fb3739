"""The integer-grid arithmetic, checked against values worked out by hand."""

import numpy as np
import pytest
import torch

from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import (
    IntGrid,
    fake_quant,
    fake_quant_per_channel,
    quantize_dequantize_np,
    scale_zero_point,
)

S8 = IntGrid(bits=8, signed=True)
U8 = IntGrid(bits=8, signed=False)


def test_grid_limits():
    assert (S8.qmin, S8.qmax) == (-128, 127)
    assert (U8.qmin, U8.qmax) == (0, 255)
    assert (IntGrid(4, True).qmin, IntGrid(4, True).qmax) == (-8, 7)
    assert IntGrid.for_config(TensorQuantConfig(bits=6, symmetric=False)) == IntGrid(6, False)


def test_symmetric_scale_uses_the_larger_side():
    assert scale_zero_point(-0.5, 1.27, S8) == (pytest.approx(0.01), 0)
    assert scale_zero_point(-2.54, 1.0, S8) == (pytest.approx(0.02), 0)
    # a non-negative tensor still gets the signed grid: half of it unused
    assert scale_zero_point(0.0, 2.54, S8) == (pytest.approx(0.02), 0)


def test_asymmetric_scale_and_zero_point_by_hand():
    scale, zp = scale_zero_point(-1.0, 3.0, U8)
    assert scale == pytest.approx(4 / 255)
    assert zp == 64  # round(255 / 4) = round(63.75)
    # ranges that exclude zero are widened to contain it
    assert scale_zero_point(1.0, 3.0, U8) == (pytest.approx(3 / 255), 0)
    assert scale_zero_point(-3.0, -1.0, U8) == (pytest.approx(3 / 255), 255)


def test_zero_is_exactly_representable():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lo, hi = sorted(rng.normal(0, 5, size=2))
        for grid in (S8, U8, IntGrid(4, False)):
            scale, zp = scale_zero_point(lo, hi, grid)
            assert quantize_dequantize_np(0.0, scale, zp, grid) == 0.0
            assert fake_quant(torch.zeros(3), scale, zp, grid).abs().max().item() == 0.0


def test_round_half_to_even():
    # scale 0.5 (a power of two) keeps x / scale exact, so these are true ties
    x = np.array([0.25, 0.75, 1.25, -0.25, -0.75, 1.75])
    expected = np.array([0.0, 1.0, 1.0, 0.0, -1.0, 2.0])  # 0.5->0, 1.5->2, 2.5->2, -0.5->0, -1.5->-2, 3.5->4
    np.testing.assert_array_equal(quantize_dequantize_np(x, 0.5, 0, S8), expected)
    out = fake_quant(torch.tensor(x, dtype=torch.float32), 0.5, 0, S8)
    np.testing.assert_array_equal(out.numpy(), expected)


def test_clamp_at_grid_ends():
    scale = 0.25
    x = np.array([-100.0, -32.0, -32.1, 31.75, 31.9, 100.0])
    # signed: levels -128..127 -> values -32.0 .. 31.75
    expected = [-32.0, -32.0, -32.0, 31.75, 31.75, 31.75]
    np.testing.assert_allclose(quantize_dequantize_np(x, scale, 0, S8), expected)
    # unsigned with zero-point 10: levels 0..255 -> values -2.5 .. 61.25
    np.testing.assert_allclose(
        quantize_dequantize_np(np.array([-5.0, -2.5, 61.25, 70.0]), scale, 10, U8), [-2.5, -2.5, 61.25, 61.25]
    )


def test_asymmetric_beats_symmetric_after_relu():
    """On a non-negative tensor the unsigned grid has twice the resolution: error variance ~ step^2,
    so its MSE is (127/255)^2 ~ 0.25 of the signed grid's."""
    x = np.random.default_rng(1).uniform(0.0, 6.0, size=200_000)
    errors = {}
    for grid in (S8, U8):
        scale, zp = scale_zero_point(0.0, 6.0, grid)
        errors[grid.signed] = np.mean((quantize_dequantize_np(x, scale, zp, grid) - x) ** 2)
    ratio = errors[False] / errors[True]
    assert 0.2 < ratio < 0.3


def test_fake_quant_matches_numpy_twin():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(10_000, generator=gen) * 3
    for lo, hi, grid in [(-4.0, 5.0, S8), (-4.0, 5.0, U8), (0.0, 2.0, U8), (-1.0, 1.0, IntGrid(4, True))]:
        scale, zp = scale_zero_point(lo, hi, grid)
        torch_out = fake_quant(x, scale, zp, grid).double().numpy()
        numpy_out = quantize_dequantize_np(x.double().numpy(), scale, zp, grid)
        # torch multiplies by a float32 reciprocal: a value within float32 rounding of a tie may land
        # one step away; nothing else may differ
        diff = np.abs(torch_out - numpy_out)
        assert np.all((diff < 1e-5) | (np.abs(diff - scale) < 1e-5))
        assert np.mean(diff > 1e-5) < 1e-3


def test_fake_quant_per_channel_matches_per_tensor_rows():
    gen = torch.Generator().manual_seed(3)
    w = torch.randn(4, 50, generator=gen)
    scales = torch.tensor([0.01, 0.02, 0.05, 0.1])
    zps = torch.tensor([0, 3, 128, 255])
    out = fake_quant_per_channel(w, scales, zps, U8)
    for c in range(4):
        expected = fake_quant(w[c], float(scales[c]), int(zps[c]), U8)
        torch.testing.assert_close(out[c], expected)


def test_straight_through_gradient():
    x = torch.tensor([-5.0, -0.3, 0.0, 0.26, 1.0, 5.0], requires_grad=True)
    scale, zp = scale_zero_point(-1.27, 1.27, S8)
    y = fake_quant(x, scale, zp, S8)
    y.backward(torch.ones_like(y))
    # identity inside the grid, zero where the value was clamped
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 1.0, 1.0, 1.0, 0.0])
