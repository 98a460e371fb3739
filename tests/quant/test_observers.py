"""Range estimation: threshold searches on distributions whose right answer is known or derivable."""

import math

import numpy as np
import pytest
import torch

from npuq.quant.observers import (
    HistogramError,
    RangeObserver,
    kl_best_length,
    kl_divergences,
    weight_range,
)
from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import IntGrid, quantize_dequantize_np, scale_zero_point

METHODS = ("minmax", "percentile", "mse", "kl")


def gaussian(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def calibrate(x: torch.Tensor, chunks: int = 4, **cfg_fields) -> tuple[RangeObserver, IntGrid]:
    """Both calibration passes over ``x`` split into batches, as the simulator runs them."""
    cfg = TensorQuantConfig(**cfg_fields)
    obs = RangeObserver(cfg)
    for part in x.chunk(chunks):
        obs.observe_minmax(part)
    if obs.needs_histogram:
        for part in x.chunk(chunks):
            obs.observe_histogram(part)
    return obs, IntGrid.for_config(cfg)


def data_mse(x: torch.Tensor, lo: float, hi: float, grid: IntGrid) -> float:
    """Quantization MSE of the actual values on the grid for [lo, hi]."""
    scale, zp = scale_zero_point(lo, hi, grid)
    values = x.double().numpy()
    return float(np.mean((quantize_dequantize_np(values, scale, zp, grid) - values) ** 2))


def gaussian_clip_mse(t: float, qmax: int) -> float:
    """Expected MSE of N(0,1) on a symmetric grid clipped at t: clipping of both tails plus uniform
    rounding noise step^2/12 inside (ACIQ, Banner et al. 2019)."""
    tail = 0.5 * math.erfc(t / math.sqrt(2))
    pdf = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    clipping = 2 * ((1 + t * t) * tail - t * pdf)
    return clipping + (t / qmax) ** 2 / 12 * (1 - 2 * tail)


# -- known distributions ---------------------------------------------------------------------------


def test_gaussian_mse_threshold_matches_theory():
    x = gaussian(1_000_000, seed=0)
    ts = np.linspace(2.0, 6.0, 4001)
    theory = ts[np.argmin([gaussian_clip_mse(t, 127) for t in ts])]  # ~3.9 sigma at 8 bits
    assert 3.7 < theory < 4.1
    obs, grid = calibrate(x, range="mse")
    lo, hi = obs.compute_range(grid)
    assert lo == -hi
    assert abs(hi - theory) < 0.3
    assert data_mse(x, lo, hi, grid) < data_mse(x, *calibrate(x)[0].compute_range(grid), grid)


def test_gaussian_kl_threshold_is_well_inside():
    """KL folds the clipped tail into one bin; below 3 sigma that spike (0.27% of the mass) dwarfs the
    merge error of 16 bins per level, so the entropy threshold lies between 3 sigma and the max."""
    x = gaussian(1_000_000, seed=1)
    for symmetric in (True, False):
        obs, grid = calibrate(x, range="kl", symmetric=symmetric)
        lo, hi = obs.compute_range(grid)
        assert 3.0 < hi <= x.max().item() + 1e-6
        assert x.min().item() - 1e-6 <= lo < -3.0


def test_mse_search_is_near_the_best_threshold_on_the_data():
    """Three outliers in 100k values: clipping them costs (V - T)^2 each, keeping them costs every
    value (T/127)^2/12; the optimum is in between, and the histogram search must find it."""
    x = gaussian(100_000, seed=2)
    x[:3] = torch.tensor([25.0, -18.0, 30.0])
    obs, grid = calibrate(x, range="mse")
    lo, hi = obs.compute_range(grid)
    best = min(data_mse(x, -t, t, grid) for t in np.linspace(0.5, 30.0, 119))
    assert data_mse(x, lo, hi, grid) <= 1.02 * best
    assert data_mse(x, lo, hi, grid) < 0.7 * data_mse(x, obs.min_val, obs.max_val, grid)


def test_uniform_thresholds_stay_near_the_max():
    x = torch.rand(500_000, generator=torch.Generator().manual_seed(3)) * 2 - 1
    for method in ("percentile", "mse", "kl"):
        for symmetric in (True, False):
            obs, grid = calibrate(x, range=method, symmetric=symmetric)
            lo, hi = obs.compute_range(grid)
            assert hi > 0.97 * x.max().item(), (method, symmetric)
            assert lo < 0.97 * x.min().item(), (method, symmetric)


@pytest.mark.parametrize("symmetric", [True, False])
def test_outliers_are_clipped_except_by_minmax(symmetric):
    """Two values at 40 sigma. KL and percentile cut them off entirely; MSE clips them only part of
    the way (keeping them costs every value (T/qmax)^2/12, clipping costs (40 - T)^2 each), but clips."""
    x = gaussian(300_000, seed=4)
    x[:2] = torch.tensor([40.0, 40.0])
    minmax_mse = data_mse(x, *calibrate(x, symmetric=symmetric)[0].compute_range(IntGrid(8, symmetric)),
                          IntGrid(8, symmetric))
    for method in METHODS:
        obs, grid = calibrate(x, range=method, symmetric=symmetric)
        lo, hi = obs.compute_range(grid)
        if method == "minmax":
            assert hi == 40.0
        elif method == "mse":
            assert hi < 0.85 * 40.0
            assert data_mse(x, lo, hi, grid) < minmax_mse
        else:
            assert hi < 8.0, method
        assert lo == -hi if symmetric and method != "minmax" else lo >= x.min().item() - 1e-6


def test_percentile_on_a_simple_case():
    x = torch.arange(1, 10_001, dtype=torch.float32)  # the 99th percentile is 9900
    obs, grid = calibrate(x, range="percentile", percentile=99.0)
    width = 10_000 / obs.bins
    lo, hi = obs.compute_range(grid)
    assert abs(hi - 9900) <= width and lo == -hi
    obs, grid = calibrate(x - 5000.5, range="percentile", percentile=99.0, symmetric=False)
    lo, hi = obs.compute_range(grid)  # 1st and 99th percentiles of -4999.5 .. 4999.5
    assert abs(lo - (100 - 5000.5)) <= width
    assert abs(hi - (9900 - 5000.5)) <= width
    obs, grid = calibrate(x, range="percentile", percentile=100.0)
    assert obs.compute_range(grid) == (-10_000.0, 10_000.0)


def test_asymmetric_on_non_negative_data():
    x = torch.relu(gaussian(200_000, seed=5))
    for method in ("percentile", "mse", "kl"):
        asym, ugrid = calibrate(x, range=method, symmetric=False)
        lo, hi = asym.compute_range(ugrid)
        assert lo == pytest.approx(0.0, abs=1e-3), method
        assert 2.5 < hi <= x.max().item(), method
        sym, sgrid = calibrate(x, range=method, symmetric=True)
        slo, shi = sym.compute_range(sgrid)
        assert slo == -shi  # the signed grid spends half its levels below zero
        assert data_mse(x, lo, hi, ugrid) < 0.5 * data_mse(x, slo, shi, sgrid), method


def test_asymmetric_mse_clips_a_one_sided_tail_only_on_that_side():
    x = torch.cat([torch.rand(100_000, generator=torch.Generator().manual_seed(6)) * 2 - 1,
                   torch.tensor([12.0, 15.0])])
    obs, grid = calibrate(x, range="mse", symmetric=False)
    lo, hi = obs.compute_range(grid)
    assert lo < -0.95  # nothing to clip below
    assert 0.95 < hi < 14.0
    assert data_mse(x, lo, hi, grid) < data_mse(x, obs.min_val, obs.max_val, grid)


def test_exact_zeros_do_not_move_mse_or_kl_thresholds():
    x = torch.relu(gaussian(100_000, seed=7))
    padded = torch.cat([x, torch.zeros(300_000)])
    for method in ("mse", "kl"):
        for symmetric in (True, False):
            a, grid = calibrate(x, range=method, symmetric=symmetric)
            b, _ = calibrate(padded, range=method, symmetric=symmetric)
            assert a.compute_range(grid) == pytest.approx(b.compute_range(grid)), (method, symmetric)


# -- the pieces of the searches ---------------------------------------------------------------------


@pytest.mark.parametrize("grid", [IntGrid(8, True), IntGrid(8, False), IntGrid(4, False)])
def test_histogram_error_matches_dense_sampling(grid):
    """The closed-form bin integral equals the sampled error of quantize_dequantize_np."""
    rng = np.random.default_rng(8)
    hist = rng.poisson(50, size=64).astype(float)
    hist[rng.random(64) < 0.3] = 0
    lo, hi = -1.0, 3.0
    measure = HistogramError(hist, lo, hi)
    width = (hi - lo) / hist.size
    frac = (np.arange(4000) + 0.5) / 4000
    for clip_lo, clip_hi in [(-1.0, 3.0), (-0.3, 0.9), (-0.01, 0.02), (-2.0, 5.0)]:
        scale, zp = scale_zero_point(clip_lo, clip_hi, grid)
        sampled = 0.0
        for j, count in enumerate(hist):
            values = lo + (j + frac) * width
            sampled += count * np.mean((quantize_dequantize_np(values, scale, zp, grid) - values) ** 2)
        assert measure.error(scale, zp, grid) == pytest.approx(sampled, rel=2e-3)


def kl_written_out(hist: np.ndarray, levels: int, start: int | None = None) -> dict[int, float]:
    """TensorRT entropy calibration as pytorch-quantization describes it, one candidate at a time:
    bin j of P[:i] joins group k when k*i/levels <= j < (k+1)*i/levels; KL is infinite where Q is 0
    and P is not."""
    h = np.asarray(hist, dtype=float)
    out = {}
    for i in range(levels if start is None else start, h.size + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        group = np.floor(np.arange(i) * levels / i).astype(int)
        q = np.zeros(i)
        for k in range(levels):
            members = (group == k) & (h[:i] > 0)
            if members.any():
                q[members] = h[:i][group == k].sum() / members.sum()
        if h[:i].sum() == 0 or (q[-1] == 0 and p[-1] > 0):
            out[i] = math.inf
            continue
        p, q = p / p.sum(), q / q.sum()
        mask = p > 0
        out[i] = float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
    return out


def test_vectorised_kl_equals_the_literal_algorithm():
    rng = np.random.default_rng(9)
    for _ in range(4):
        hist = rng.poisson(rng.gamma(0.5, 30, size=80)).astype(float)
        hist[rng.random(80) < 0.2] = 0
        reference = kl_written_out(hist, 8)
        lengths, kl = kl_divergences(hist, 8, min_length=8)
        np.testing.assert_allclose(kl, [reference[i] for i in lengths], rtol=1e-9, atol=1e-12)
        best = min(reference.values())
        assert reference[kl_best_length(hist, 8, min_length=8)] == pytest.approx(best)


def test_vectorised_kl_with_fewer_bins_than_levels():
    """Candidates shorter than the level count (the asymmetric search starts 128 bins in with 256
    levels): some groups are empty and the outliers go to the group that holds the last bin."""
    rng = np.random.default_rng(10)
    hist = rng.poisson(rng.gamma(0.7, 20, size=60)).astype(float)
    reference = kl_written_out(hist, 32, start=12)
    lengths, kl = kl_divergences(hist, 32, min_length=12)
    np.testing.assert_allclose(kl, [reference[i] for i in lengths], rtol=1e-9, atol=1e-12)


def test_tensorrt_kl_clips_data_away_from_zero_at_its_minimum():
    """A sigmoid output around 0.5: P and Q are the same single spike just past the data minimum, so
    KL = 0 there and TensorRT's search (ModelOpt gives the same, see test_calibrator_references) clips
    the whole tensor to about its minimum. ONNX Runtime's signed search keeps the range."""
    x = torch.sigmoid(gaussian(100_000, seed=11) * 0.4)
    obs, grid = calibrate(x, range="kl")
    assert obs.compute_range(grid)[1] == pytest.approx(obs.min_val, abs=obs.absmax / obs.bins)
    obs, grid = calibrate(x, range="kl", kl_variant="onnxruntime", hist_bins=2048)
    assert obs.compute_range(grid)[1] > torch.quantile(x, 0.999).item()


def test_kl_with_more_levels_than_bins_keeps_everything():
    hist = np.ones(32)
    assert kl_best_length(hist, 128) == 32
    assert kl_best_length(np.zeros(300), 128) == 300


# -- edge cases ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("symmetric", [True, False])
def test_all_zero_tensor(method, symmetric):
    obs, grid = calibrate(torch.zeros(1000), range=method, symmetric=symmetric)
    lo, hi = obs.compute_range(grid)
    assert lo == 0.0 and hi == 0.0
    scale, zp = scale_zero_point(lo, hi, grid)
    assert quantize_dequantize_np(0.0, scale, zp, grid) == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_constant_and_single_value(method):
    for x in (torch.full((500,), -2.5), torch.tensor([-2.5])):
        sym, grid = calibrate(x, chunks=1, range=method)
        lo, hi = sym.compute_range(grid)
        assert max(abs(lo), abs(hi)) == 2.5
        asym, ugrid = calibrate(x, chunks=1, range=method, symmetric=False)
        assert asym.compute_range(ugrid) == (-2.5, -2.5)
        scale, zp = scale_zero_point(-2.5, -2.5, ugrid)
        assert quantize_dequantize_np(-2.5, scale, zp, ugrid) == pytest.approx(-2.5)


def test_empty_observation_raises():
    obs = RangeObserver(TensorQuantConfig(range="kl"))
    obs.observe_minmax(torch.empty(0))
    with pytest.raises(ValueError, match="no values observed"):
        obs.compute_range(IntGrid(8, True))
    with pytest.raises(ValueError, match="before observe_minmax"):
        obs.observe_histogram(torch.ones(3))


def test_missing_histogram_pass_raises():
    obs = RangeObserver(TensorQuantConfig(range="mse"))
    obs.observe_minmax(torch.tensor([-1.0, 2.0]))
    with pytest.raises(ValueError, match="histogram pass"):
        obs.compute_range(IntGrid(8, True))


@pytest.mark.parametrize("bad, word", [(float("nan"), "NaN"), (float("inf"), "Inf"), (-float("inf"), "Inf")])
def test_non_finite_values_raise(bad, word):
    x = torch.tensor([0.0, 1.0, bad])
    obs = RangeObserver(TensorQuantConfig(range="kl"))
    with pytest.raises(ValueError, match=word):
        obs.observe_minmax(x)
    obs.observe_minmax(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=word):
        obs.observe_histogram(x)
    with pytest.raises(ValueError, match=word):
        weight_range(x.reshape(3, 1), TensorQuantConfig(), IntGrid(8, True))


def test_grid_must_match_the_config():
    obs, _ = calibrate(torch.randn(100), range="kl", symmetric=True)
    with pytest.raises(ValueError, match="signed"):
        obs.compute_range(IntGrid(8, False))


def test_stats_and_out_of_range_second_pass():
    obs = RangeObserver(TensorQuantConfig(range="percentile"))
    assert obs.stats() == {"min": None, "max": None, "absmax": None, "n": 0}
    obs.observe_minmax(torch.tensor([-3.0, 1.0, 2.0]))
    obs.observe_minmax(torch.tensor([[0.5, 4.0]]))
    assert obs.stats() == {"min": -3.0, "max": 4.0, "absmax": 4.0, "n": 5}
    obs.observe_histogram(torch.tensor([-3.0, 1.0, 2.0, 0.5, 9.0]))  # 9.0 was not seen in pass 1
    assert obs.hist.sum() == 5  # clamped into the last bin, not dropped
    with pytest.raises(ValueError, match="after the histogram pass"):
        obs.observe_minmax(torch.ones(2))


def test_minmax_needs_no_histogram():
    obs = RangeObserver(TensorQuantConfig(range="minmax"))
    assert not obs.needs_histogram
    obs.observe_minmax(torch.tensor([-1.0, 0.5]))
    obs.observe_histogram(torch.tensor([-1.0, 0.5]))
    assert obs.hist is None
    assert obs.compute_range(IntGrid(8, True)) == (-1.0, 0.5)


# -- weights ------------------------------------------------------------------------------------------


def conv_weight(seed: int = 10) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(6, 64, 3, 3, generator=gen)
    w *= torch.tensor([0.01, 0.1, 0.5, 1.0, 2.0, 0.05]).view(6, 1, 1, 1)
    w[3, 0, 0, 0] = 9.0  # one outlier weight in a channel of std 1
    return w


def test_weight_minmax_per_tensor_and_per_channel():
    w = conv_weight()
    grid = IntGrid(8, True)
    lo, hi = weight_range(w, TensorQuantConfig(), grid)
    assert isinstance(lo, float) and (lo, hi) == (w.min().item(), w.max().item())
    lo, hi = weight_range(w, TensorQuantConfig(granularity="per_channel"), grid)
    assert lo.shape == hi.shape == (6,)
    torch.testing.assert_close(lo, w.flatten(1).amin(1))
    torch.testing.assert_close(hi, w.flatten(1).amax(1))


@pytest.mark.parametrize("symmetric", [True, False])
def test_weight_mse_per_channel_never_worse_than_minmax(symmetric):
    """At 4 bits, keeping the outlier costs each of the 576 weights (9/7)^2/12 ~ 0.14 while clipping it
    at 4 sigma costs 25 once: MSE must clip that channel."""
    w = conv_weight()
    grid = IntGrid(4, symmetric)
    cfg = TensorQuantConfig(bits=4, granularity="per_channel", range="mse", symmetric=symmetric)
    lo, hi = weight_range(w, cfg, grid)
    assert lo.shape == hi.shape == (6,)
    mm_cfg = TensorQuantConfig(bits=4, granularity="per_channel", symmetric=symmetric)
    mm_lo, mm_hi = weight_range(w, mm_cfg, grid)
    for c in range(6):
        values = w[c].flatten()
        assert data_mse(values, lo[c], hi[c], grid) <= data_mse(values, mm_lo[c], mm_hi[c], grid) * (1 + 1e-6)
        if symmetric:
            assert lo[c] == -hi[c]
    # asymmetric shrinks both ends by one factor, so it clips less: 16 levels still span the low side
    assert hi[3] < (6.0 if symmetric else 8.5)
    # per-channel search on one channel equals the per-tensor search on that channel alone
    one_cfg = TensorQuantConfig(bits=4, range="mse", symmetric=symmetric)
    one_lo, one_hi = weight_range(w[3:4], one_cfg, grid)
    assert (one_lo, one_hi) == pytest.approx((lo[3].item(), hi[3].item()), rel=1e-5)


def test_weight_mse_per_tensor_is_symmetric_and_clips():
    w = conv_weight()
    grid = IntGrid(4, True)
    lo, hi = weight_range(w, TensorQuantConfig(bits=4, range="mse"), grid)
    assert isinstance(hi, float) and lo == -hi and hi < 9.0
    assert data_mse(w.flatten(), lo, hi, grid) < data_mse(w.flatten(), w.min().item(), w.max().item(), grid)


def test_weight_range_edge_cases():
    grid = IntGrid(8, True)
    assert weight_range(torch.zeros(3, 2), TensorQuantConfig(range="mse"), grid) == (0.0, 0.0)
    with pytest.raises(ValueError, match="empty"):
        weight_range(torch.empty(0, 3), TensorQuantConfig(), grid)
