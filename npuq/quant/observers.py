"""Range estimation: the clipping range the NPU toolchain picks for each tensor.

Activations are calibrated in two passes over the same data:

1. ``observe_minmax`` tracks the running min/max (and the element count);
2. ``observe_histogram`` (only when ``needs_histogram``) accumulates a histogram whose range is fixed
   from pass 1, laid out as the calibrator in use lays it out (``hist_layout``).

``compute_range`` then picks (lo, hi) by ``cfg.range`` and, for the histogram methods, the named
calibrator variant (``cfg.kl_variant`` / ``mse_variant`` / ``percentile_variant``). Each variant is a
public algorithm of a real toolchain, re-implemented here from its published description and checked
against the library itself in tests/quant/test_calibrator_references.py.

- ``minmax``: (min_val, max_val).
- ``kl`` / ``tensorrt``: TensorRT entropy calibration as pytorch-quantization and NVIDIA ModelOpt run
  it (``_compute_amax_entropy``): a 2048-bin histogram of |x| over [0, max|x|], zeros included but bin
  0 overwritten with bin 1 (their fix for the ReLU spike). For every length i from 128 bins to the
  whole histogram: P = hist[:i] with the outliers hist[i:] added to its last bin; Q = hist[:i] merged
  into 2^(bits-1) groups (bin j belongs to group k when k*i/levels <= j < (k+1)*i/levels) and spread
  evenly back over each group's non-empty bins; minimise KL(P || Q). A candidate whose last bin is
  empty while outliers were folded into it has Q = 0 where P > 0: KL is infinite and it is never
  chosen. Ties go to the longest i; the threshold is the right edge of P's last bin, i * bin width.
  One deviation: ModelOpt fixes the bin width from the first batch and adds bins when a later batch
  reaches further; npuq spreads 2048 bins over the max|x| of pass 1. The two agree when the first
  batch holds the maximum (and exactly for one batch, as the reference tests feed them).
  Asymmetric grids (which TensorRT does not have) run the same search per side in turn (hi with lo at
  min, lo with that hi, hi again) on a histogram of x without its exact zeros, with all 2^bits levels.
- ``kl`` / ``onnxruntime``: ONNX Runtime's entropy calibrator (``HistogramCollector.get_entropy_threshold``):
  a signed histogram of x over [-max|x|, max|x|] (128 bins by default, ``hist_bins``), windows of 2i+1
  bins around the zero bin for i from ``kl_quantized_bins``/2 to half the histogram, outliers folded
  into both end bins, Q merged in groups of len // ``kl_quantized_bins`` bins (the remainder in the
  last group and, as ORT does it, not spread back), Q truncated to integers, both P and Q smoothed
  (zeros -> 1e-4), float32 KL, first minimum. Its thresholds (edge[zero-i], edge[zero+i+1]) are
  clamped to the observed min and max. With the default 128 bins there is a single window, the whole
  histogram: ONNX Runtime's entropy is then min/max.
- ``percentile`` / ``npuq``: the p-th percentile of |x| -> (-T, T) (symmetric), or the (100-p)-th and
  p-th percentiles of x (asymmetric); linear interpolation inside the histogram bin.
- ``percentile`` / ``onnxruntime`` (``HistogramCollector.compute_percentile``): symmetric: histogram of
  |x| over [min|x|, max|x|], T = the left edge of the bin where the CDF reaches p; asymmetric: signed
  histogram over [-max|x|, max|x|] and the left edges at (100-p)/200 and 1-(100-p)/200; clamped to
  the observed min and max.
- ``mse`` / ``npuq``: the threshold minimising the expected squared quantize-dequantize error over the
  histogram. Values are taken as uniform inside each bin and the error of the exact grid (round, clamp,
  integer zero-point) is integrated in closed form, so a bin wider than a quantization step still gets
  its true rounding error (bin centres alone would alias the step). Candidates: 96 thresholds spaced
  geometrically from one bin to the full range, then 48 linear ones between the best one's neighbours.
  Symmetric searches T -> (-T, T), also for non-negative tensors (the signed grid then wastes its
  negative half: the pessimistic NPU). Asymmetric runs 1-D searches in turn: hi with lo at its
  widest, lo with that hi, hi again (coordinate descent; a side that sits at 0 cannot move, skipped).
  Exact zeros are left out (they are exact on every grid and would dominate the first bin after a ReLU).
- ``mse`` / ``modelopt`` (``_compute_amax_mse``): the |x| histogram of ``kl``/``tensorrt``; candidates
  are the bin centres from bin 128 on, each bin's error is that of its centre on the narrow signed grid
  (+-(2^(bits-1)-1) levels); first minimum. Symmetric grids only.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import MIN_SCALE, IntGrid, fake_quant, fake_quant_per_channel, scale_zero_point

MSE_COARSE_CANDIDATES = 96
MSE_FINE_CANDIDATES = 48
TRT_START_BIN = 128  # pytorch-quantization / ModelOpt: the shortest candidate, whatever the bit width
ORT_SMOOTHING = 1e-4
WEIGHT_MSE_COARSE = np.linspace(0.05, 1.0, 20)
WEIGHT_MSE_FINE_HALF_WIDTH = 0.05
WEIGHT_MSE_FINE_STEPS = 11


def check_finite(x: torch.Tensor, what: str = "tensor") -> tuple[float, float]:
    """(min, max) of a non-empty tensor; ValueError naming the problem for NaN or Inf."""
    lo, hi = torch.aminmax(x.detach().float() if not x.is_floating_point() else x.detach())
    lo, hi = float(lo), float(hi)
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError(f"{what} contains NaN")
    if math.isinf(lo) or math.isinf(hi):
        raise ValueError(f"{what} contains Inf")
    return lo, hi


class RangeObserver:
    """Statistics of one activation tensor over the calibration set, and the clipping range they imply.

    Attributes for reports: ``min_val``, ``max_val`` (inf/-inf before any observation) and ``n``
    (elements seen in pass 1); ``stats()`` gives them as a dict.
    """

    def __init__(self, cfg: TensorQuantConfig, bins: int | None = None):
        bins = cfg.histogram_bins if bins is None else bins
        if bins < 8:
            raise ValueError(f"histogram needs at least 8 bins, got {bins}")
        self.cfg = cfg
        self.bins = bins
        self.min_val = math.inf
        self.max_val = -math.inf
        self.absmin = math.inf  # tracked only for the layout that needs it ("abs_from_min")
        self.n = 0
        self.hist: np.ndarray | None = None
        self.zero_count = 0

    @property
    def needs_histogram(self) -> bool:
        return self.cfg.range != "minmax"

    @property
    def hist_layout(self) -> str:
        """How the histogram is laid out: ``abs`` (|x| over [0, max|x|]), ``abs_from_min`` (|x| over
        [min|x|, max|x|]), ``centred`` (x over [-max|x|, max|x|]) or ``span`` (x over the observed span
        widened to contain 0)."""
        cfg = self.cfg
        if (cfg.range, cfg.kl_variant) == ("kl", "onnxruntime"):
            return "centred"
        if (cfg.range, cfg.percentile_variant) == ("percentile", "onnxruntime"):
            return "abs_from_min" if cfg.symmetric else "centred"
        return "abs" if cfg.symmetric else "span"

    @property
    def absmax(self) -> float:
        return max(abs(self.min_val), abs(self.max_val)) if self.n else 0.0

    def stats(self) -> dict[str, float | int | None]:
        observed = self.n > 0
        return {
            "min": self.min_val if observed else None,
            "max": self.max_val if observed else None,
            "absmax": self.absmax if observed else None,
            "n": self.n,
        }

    def observe_minmax(self, x: torch.Tensor) -> None:
        """Pass 1: fold ``x`` into the running min/max. Empty tensors are ignored."""
        if self.hist is not None:
            raise ValueError("observe_minmax called after the histogram pass started")
        if x.numel() == 0:
            return
        lo, hi = check_finite(x, "activation")
        self.min_val = min(self.min_val, lo)
        self.max_val = max(self.max_val, hi)
        if self.hist_layout == "abs_from_min":
            self.absmin = min(self.absmin, float(x.detach().abs().min()))
        self.n += x.numel()

    def _unclipped_range(self) -> tuple[float, float]:
        """The whole observed range, in the form the method returns it ((-T, T) when symmetric)."""
        return (-self.absmax, self.absmax) if self.cfg.symmetric else (self.min_val, self.max_val)

    def hist_range(self) -> tuple[float, float]:
        """The value span the histogram covers (of |x| for the ``abs`` layouts, of x otherwise)."""
        layout = self.hist_layout
        if layout == "abs":
            return 0.0, self.absmax
        if layout == "abs_from_min":
            return self.absmin, self.absmax
        if layout == "centred":
            return -self.absmax, self.absmax
        return min(self.min_val, 0.0), max(self.max_val, 0.0)

    def observe_histogram(self, x: torch.Tensor) -> None:
        """Pass 2: add ``x`` to the histogram. A no-op when the method needs no histogram or the
        observed range is a single point (the range is then known without one). Values outside the
        pass-1 range (the data changed between passes) are clamped into the end bins."""
        if not self.needs_histogram or x.numel() == 0:
            return
        if self.n == 0:
            raise ValueError("observe_histogram called before observe_minmax saw any value")
        lo, hi = self.hist_range()
        if hi <= lo:
            return
        values = x.detach().float()
        v_lo, v_hi = check_finite(values, "activation")
        if self.hist_layout.startswith("abs"):
            values = values.abs()
            v_lo, v_hi = float(values.min()), max(-v_lo, v_hi)
        if v_lo < lo or v_hi > hi:  # torch.histc would silently drop them
            values = values.clamp(lo, hi)
        counts = torch.histc(values, self.bins, lo, hi)
        if self.hist is None:
            self.hist = np.zeros(self.bins, dtype=np.float64)
        self.hist += counts.cpu().double().numpy()
        self.zero_count += int(values.eq(0).count_nonzero())

    def compute_range(self, grid: IntGrid) -> tuple[float, float]:
        """The clipping range (lo, hi) chosen by ``cfg.range`` for ``grid``."""
        if self.n == 0:
            raise ValueError("no values observed: call observe_minmax on the calibration data first")
        if grid.signed != self.cfg.symmetric:
            raise ValueError(f"grid signed={grid.signed} does not match symmetric={self.cfg.symmetric}")
        method = self.cfg.range
        if method == "minmax":
            return self.min_val, self.max_val
        lo, hi = self.hist_range()
        if hi <= lo or self.min_val == self.max_val:
            return self._unclipped_range()
        if self.hist is None:
            raise ValueError(f"range method {method!r} needs the histogram pass (observe_histogram)")
        search = {
            ("percentile", "npuq"): self._percentile_range,
            ("percentile", "onnxruntime"): self._ort_percentile_range,
            ("mse", "npuq"): lambda: self._mse_range(grid),
            ("mse", "modelopt"): lambda: self._modelopt_mse_range(grid),
            ("kl", "tensorrt"): lambda: self._kl_range(grid),
            ("kl", "onnxruntime"): self._ort_entropy_range,
        }.get((method, self.cfg.variant))
        if search is None:
            raise ValueError(f"unknown range method {method!r} (variant {self.cfg.variant!r})")
        return search()

    # -- percentile ---------------------------------------------------------------------------------

    def _percentile_range(self) -> tuple[float, float]:
        lo, hi = self.hist_range()
        q = self.cfg.percentile / 100.0
        if self.cfg.symmetric:
            t = min(_hist_quantile(self.hist, lo, hi, q), self.absmax)
            return -t, t
        low = max(_hist_quantile(self.hist, lo, hi, 1.0 - q), self.min_val)
        high = min(_hist_quantile(self.hist, lo, hi, q), self.max_val)
        return low, high

    def _edges(self) -> np.ndarray:
        lo, hi = self.hist_range()
        return np.linspace(lo, hi, self.bins + 1)

    def _ort_percentile_range(self) -> tuple[float, float]:
        edges = self._edges()
        cdf = np.cumsum(self.hist / self.hist.sum())
        p = self.cfg.percentile
        if self.cfg.symmetric:
            t = float(edges[min(int(np.searchsorted(cdf, p / 100.0)), self.bins)])
            low, high = -t, t
        else:
            cut = (100.0 - p) / 200.0
            low = float(edges[min(int(np.searchsorted(cdf, cut)), self.bins)])
            high = float(edges[min(int(np.searchsorted(cdf, 1.0 - cut)), self.bins)])
        return max(low, self.min_val), min(high, self.max_val)

    # -- mse ----------------------------------------------------------------------------------------

    def _nonzero_hist(self) -> np.ndarray:
        """The histogram without the exact zeros (they are exact on every grid)."""
        hist = self.hist.copy()
        if self.zero_count:
            lo, hi = self.hist_range()
            zero_bin = 0 if lo == 0.0 else int(torch.histc(torch.zeros(1), self.bins, lo, hi).argmax())
            hist[zero_bin] = max(hist[zero_bin] - self.zero_count, 0.0)
        return hist

    def _mse_range(self, grid: IntGrid) -> tuple[float, float]:
        lo0, hi0 = self.hist_range()
        hist = self._nonzero_hist()
        if hist.sum() <= 0:
            return self._unclipped_range()
        measure = HistogramError(hist, lo0, hi0)

        def error(los: np.ndarray, his: np.ndarray) -> np.ndarray:
            return np.array([
                measure.error(*scale_zero_point(lo, hi, grid), grid) for lo, hi in zip(los, his, strict=True)
            ])

        if self.cfg.symmetric:
            t = _search_1d(lambda ts: error(-ts, ts), hi0, self.bins)
            return -t, t
        lo, hi = lo0, hi0
        if hi0 > 0:
            hi = _search_1d(lambda hs: error(np.full_like(hs, lo), hs), hi0, self.bins)
        if lo0 < 0:
            lo = _search_1d(lambda ls: error(ls, np.full_like(ls, hi)), lo0, self.bins)
            if hi0 > 0:
                hi = _search_1d(lambda hs: error(np.full_like(hs, lo), hs), hi0, self.bins)
        return (lo if lo0 < 0 else self.min_val), (hi if hi0 > 0 else self.max_val)

    def _modelopt_mse_range(self, grid: IntGrid) -> tuple[float, float]:
        if not grid.signed:
            raise ValueError("mse_variant modelopt searches a symmetric grid only")
        edges = self._edges()
        t = modelopt_mse_threshold(self.hist, edges, grid.qmax)
        return -t, t

    # -- kl -----------------------------------------------------------------------------------------

    def _ort_entropy_range(self) -> tuple[float, float]:
        low, high = ort_entropy_threshold(self.hist, self._edges(), self.cfg.kl_quantized_bins)
        return max(low, self.min_val), min(high, self.max_val)

    def _kl_range(self, grid: IntGrid) -> tuple[float, float]:
        lo0, hi0 = self.hist_range()
        width = (hi0 - lo0) / self.bins
        if self.cfg.symmetric:
            hist = self.hist.copy()
            hist[0] = hist[1]  # pytorch-quantization's and ModelOpt's answer to the spike of zeros
            i = kl_best_length(hist, grid.qmax + 1)
            t = min(i * width, self.absmax)
            return -t, t
        hist = self._nonzero_hist()
        levels = grid.qmax - grid.qmin + 1
        zero_edge = -lo0 / width
        z_hi, z_lo = math.ceil(zero_edge - 1e-9), math.floor(zero_edge + 1e-9)
        e_lo, e_hi = 0, self.bins

        def search_hi() -> int:
            seg = hist[e_lo:].copy()
            seg[0] += hist[:e_lo].sum()
            return e_lo + kl_best_length(seg, levels, max(z_hi - e_lo, TRT_START_BIN))

        def search_lo() -> int:
            seg = hist[:e_hi][::-1].copy()
            seg[0] += hist[e_hi:].sum()
            return e_hi - kl_best_length(seg, levels, max(e_hi - z_lo, TRT_START_BIN))

        if hi0 > 0:
            e_hi = search_hi()
        if lo0 < 0:
            e_lo = search_lo()
            if hi0 > 0:
                e_hi = search_hi()
        lo = max(lo0 + e_lo * width, self.min_val) if lo0 < 0 else self.min_val
        hi = min(lo0 + e_hi * width, self.max_val) if hi0 > 0 else self.max_val
        return lo, hi


def observer_from_histogram(cfg: TensorQuantConfig, counts: np.ndarray, lo: float, hi: float,
                            min_val: float, max_val: float, zero_count: int = 0) -> RangeObserver:
    """The observer of values summarised by a signed histogram ``counts`` over [lo, hi], re-binned into
    the observer's own layout and bins (bin centres stand for their values).

    Histograms on fixed bins add up, so a calibration-set search can sum per-frame ones and ask what
    range each calibrator would pick for any subset without running the model again. ``min_val`` and
    ``max_val`` are the subset's exact extremes.
    """
    counts = np.asarray(counts, dtype=np.float64)
    observer = RangeObserver(cfg)
    observer.min_val, observer.max_val = float(min_val), float(max_val)
    observer.n = int(round(counts.sum()))
    observer.zero_count = int(zero_count)
    centres = lo + (np.arange(counts.size) + 0.5) * (hi - lo) / counts.size
    values = np.abs(centres) if observer.hist_layout.startswith("abs") else centres
    if observer.hist_layout == "abs_from_min":
        observer.absmin = float(values[counts > 0].min()) if (counts > 0).any() else 0.0
    if observer.needs_histogram and observer.n:
        h_lo, h_hi = observer.hist_range()
        if h_hi > h_lo:
            index = np.clip(((values - h_lo) / (h_hi - h_lo) * observer.bins).astype(np.int64), 0,
                            observer.bins - 1)
            observer.hist = np.bincount(index, weights=counts, minlength=observer.bins)
    return observer


def _hist_quantile(hist: np.ndarray, lo: float, hi: float, q: float) -> float:
    """The q-quantile (0..1) of the histogrammed values, interpolated linearly inside its bin."""
    width = (hi - lo) / hist.size
    cum = np.cumsum(hist)
    target = q * cum[-1]
    if target <= 0:
        return float(lo + int(np.argmax(hist > 0)) * width)
    j = min(int(np.searchsorted(cum, target, side="left")), hist.size - 1)
    before = cum[j] - hist[j]
    frac = (target - before) / hist[j] if hist[j] > 0 else 1.0
    return float(lo + (j + min(max(frac, 0.0), 1.0)) * width)


def _rounding_integral(u: np.ndarray) -> np.ndarray:
    """Integral from 0 to u of (v - round(v))^2 dv (u in grid steps): 1/12 per whole step passed plus
    t^3/3 for the distance t = u - round(u) to the nearest grid point."""
    k = np.rint(u)
    t = u - k
    return k / 12.0 + t * t * t / 3.0


def _cube_diff(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    return (hi * hi * hi - lo * lo * lo) / 3.0


class HistogramError:
    """Total squared quantize-dequantize error of a histogram, values spread uniformly in each bin.

    ``error(scale, zero_point, grid)`` is exact for that model: the grid points are multiples of the
    scale (the zero-point is an integer); values within half a step of the grid round to the nearest
    point, values beyond are clamped to the end levels. Bins wholly in a clamped region are summed in
    O(1) from prefix sums; only the bins overlapping the grid's span are integrated one by one.
    """

    def __init__(self, hist: np.ndarray, lo: float, hi: float):
        self.counts = np.asarray(hist, dtype=np.float64)
        self.lo = lo
        self.width = (hi - lo) / self.counts.size
        centres = lo + (np.arange(self.counts.size) + 0.5) * self.width
        self._c0 = np.concatenate([[0.0], np.cumsum(self.counts)])
        self._c1 = np.concatenate([[0.0], np.cumsum(self.counts * centres)])
        self._c2 = np.concatenate([[0.0], np.cumsum(self.counts * centres * centres)])

    def _clamped(self, start: int, stop: int, level: float) -> float:
        """Sum over bins [start, stop) of count * mean of (x - level)^2 over the bin."""
        s0 = self._c0[stop] - self._c0[start]
        s1 = self._c1[stop] - self._c1[start]
        s2 = self._c2[stop] - self._c2[start]
        return s2 - 2.0 * level * s1 + level * level * s0 + s0 * self.width**2 / 12.0

    def error(self, scale: float, zero_point: int, grid: IntGrid) -> float:
        n, w = self.counts.size, self.width
        low_level, high_level = (grid.qmin - zero_point) * scale, (grid.qmax - zero_point) * scale
        low_edge, high_edge = low_level - scale / 2, high_level + scale / 2
        j0 = int(min(max(math.floor((low_edge - self.lo) / w), 0), n))
        j1 = int(min(max(math.ceil((high_edge - self.lo) / w), j0), n))
        total = self._clamped(0, j0, low_level) + self._clamped(j1, n, high_level)
        if j1 > j0:
            a = self.lo + np.arange(j0, j1) * w
            b = a + w
            ua, ub = a / scale, b / scale
            lo_u, hi_u = low_edge / scale, high_edge / scale
            ra, rb = np.clip(ua, lo_u, hi_u), np.clip(ub, lo_u, hi_u)
            inside = _rounding_integral(rb) - _rounding_integral(ra)
            level_lo, level_hi = low_level / scale, high_level / scale
            below = _cube_diff(np.minimum(ub, lo_u) - level_lo, np.minimum(ua, lo_u) - level_lo)
            above = _cube_diff(np.maximum(ub, hi_u) - level_hi, np.maximum(ua, hi_u) - level_hi)
            total += scale**3 / w * float(self.counts[j0:j1] @ (inside + below + above))
        return float(total)


def _search_1d(error, end: float, bins: int) -> float:
    """The threshold between 0 and ``end`` (either sign) with the least ``error``: a geometric sweep
    from one bin to the full range, then a linear sweep between the best one's neighbours."""
    coarse = end * np.geomspace(1.0 / bins, 1.0, MSE_COARSE_CANDIDATES)
    errors = error(coarse)
    k = int(np.argmin(errors))
    fine = np.linspace(coarse[max(k - 1, 0)], coarse[min(k + 1, coarse.size - 1)], MSE_FINE_CANDIDATES)
    fine = np.append(fine, coarse[k])
    return float(fine[int(np.argmin(error(fine)))])


def _xlogx(v: np.ndarray) -> np.ndarray:
    return v * _safe_log(v)


def kl_divergences(hist: np.ndarray, levels: int,
                   min_length: int = TRT_START_BIN) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) of TensorRT entropy calibration for every candidate length i (bins kept, anchored at
    bin 0) in [min_length, len(hist)]; returns (lengths, divergences), inf where Q is 0 and P is not.

    Vectorised with cumulative sums: KL = [sum P log P - sum P log Q] / N + log(sum Q) - log N, and
    sum P log Q reduces to a sum over the ``levels`` groups because Q is constant on the non-empty bins
    of each group (plus the outliers folded into the last bin). Group k holds the bins j with
    k*i/levels <= j < (k+1)*i/levels, i.e. from ceil(k*i/levels) on (``np.digitize`` on
    ``linspace(0, i, levels + 1)``, exact because ``levels`` is a power of two).
    """
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    i = np.arange(max(min_length, 1), h.size + 1)
    if i.size == 0 or total <= 0:
        return i, np.full(i.size, np.inf)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    cum_nonzero = np.concatenate([[0], np.cumsum(h > 0)])

    outliers = total - cum[i]
    last = h[i - 1]
    p_log_p = cum_xlogx[i - 1] + _xlogx(last + outliers)

    edges = -((-i[:, None] * np.arange(levels + 1)[None, :]) // levels)
    group_sum = cum[edges[:, 1:]] - cum[edges[:, :-1]]
    group_nonzero = cum_nonzero[edges[:, 1:]] - cum_nonzero[edges[:, :-1]]
    share = group_sum / np.maximum(group_nonzero, 1)
    last_share = share[np.arange(i.size), ((i - 1) * levels) // i]  # the group holding bin i - 1
    q_total = cum[i]
    with np.errstate(divide="ignore", invalid="ignore"):
        p_log_q = (group_sum * _safe_log(share)).sum(1) + outliers * _safe_log(last_share)
        kl = (p_log_p - p_log_q) / total - math.log(total) + np.log(q_total)
    empty_last = (last == 0) & (outliers > 0)
    return i, np.where((q_total > 0) & ~empty_last, kl, np.inf)


def _safe_log(v: np.ndarray) -> np.ndarray:
    """log v where v > 0 and 0 elsewhere (the terms it multiplies are 0 there)."""
    return np.log(np.where(v > 0, v, 1.0))


def kl_best_length(hist: np.ndarray, levels: int, min_length: int = TRT_START_BIN) -> int:
    """The number of bins to keep with the least KL divergence (ties: the longest). len(hist) when
    there is nothing to search: fewer bins than ``min_length``, or no finite divergence.

    As in the reference, a tensor whose values all lie far from 0 (a sigmoid output in [0.3, 0.7],
    say) can reach KL = 0 just past its minimum, where P and Q are the same single spike: the search
    then clips the whole tensor to about its minimum. npuq reproduces that rather than guarding it.
    """
    lengths, kl = kl_divergences(hist, levels, min_length)
    if lengths.size == 0 or not np.isfinite(kl).any():
        return int(np.asarray(hist).size)
    best = np.flatnonzero(kl <= kl.min() + 1e-12 * max(abs(kl.min()), 1.0))
    return int(lengths[best[-1]])


def ort_entropy_threshold(hist: np.ndarray, edges: np.ndarray, quantized_bins: int) -> tuple[float, float]:
    """ONNX Runtime's entropy threshold (lo, hi) of a centred histogram, before the min/max clamp."""
    hist = np.asarray(hist, dtype=np.int64)
    n = hist.size
    zero, half = n // 2, quantized_bins // 2
    best, best_kl = (float(edges[0]), float(edges[-1])), np.inf
    for i in range(half, zero + 1):
        start, end = zero - i, min(zero + i + 1, n)
        sliced = hist[start:end]
        p = sliced.copy()
        p[0] += hist[:start].sum()
        p[-1] += hist[end:].sum()
        merged = sliced.size // quantized_bins
        groups = sliced[: quantized_bins * merged].reshape(quantized_bins, merged).sum(1)
        groups[-1] += sliced[quantized_bins * merged:].sum()
        nonzero = (p[: quantized_bins * merged] != 0).reshape(quantized_bins, merged).sum(1)
        q = np.zeros(p.size, dtype=np.int64)
        spread = np.where(nonzero > 0, groups // np.maximum(nonzero, 1), 0)
        q[: quantized_bins * merged] = np.repeat(spread, merged)
        kl = _ort_kl(p, q)
        if kl < best_kl:  # strict: the first minimum, as np.argmin
            best, best_kl = (float(edges[start]), float(edges[end])), kl
    return best


def _ort_smooth(p: np.ndarray) -> np.ndarray | None:
    zeros = p == 0
    if zeros.all():
        return None
    eps1 = ORT_SMOOTHING * zeros.sum() / (p.size - zeros.sum())
    return p.astype(np.float32) + np.where(zeros, ORT_SMOOTHING, -eps1).astype(np.float32)


def _ort_kl(p: np.ndarray, q: np.ndarray) -> float:
    """ORT's KL(P||Q) after smoothing both, in float32 (inf when either is all zeros)."""
    ps, qs = _ort_smooth(p), _ort_smooth(q)
    if ps is None or qs is None:
        return math.inf
    ps, qs = ps / ps.sum(), qs / qs.sum()
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(ps > 0, ps * np.log(ps / qs), 0.0).astype(np.float32)
    return float(terms.sum())


def modelopt_mse_threshold(hist: np.ndarray, edges: np.ndarray, qmax: int) -> float:
    """ModelOpt's MSE threshold: the bin centre from bin 128 on with the least count-weighted error of
    the centres on the narrow signed grid (first minimum; float64 where ModelOpt uses float32, which can
    only flip near-ties); the last centre when there are fewer bins."""
    centres = (edges[1:] + edges[:-1]) / 2
    counts = np.asarray(hist, dtype=np.float64)
    candidates = centres[TRT_START_BIN:] if centres.size > TRT_START_BIN else centres[-1:]
    errors = []
    for chunk in np.array_split(candidates, max(1, candidates.size // 256)):
        scale = qmax / chunk[:, None]
        q = np.clip(np.rint(centres[None, :] * scale), -qmax, qmax) / scale
        errors.append(((q - centres[None, :]) ** 2 * counts[None, :]).sum(1))
    return float(candidates[int(np.argmin(np.concatenate(errors)))])


# -- weights ----------------------------------------------------------------------------------------


def _scales_zero_points(
    lo: torch.Tensor, hi: torch.Tensor, grid: IntGrid
) -> tuple[torch.Tensor, torch.Tensor]:
    """``scale_zero_point`` for a vector of ranges (float64 scales, int64 zero-points)."""
    lo, hi = lo.double(), hi.double()
    if grid.signed:
        scale = (torch.maximum(lo.abs(), hi.abs()) / grid.qmax).clamp(min=MIN_SCALE)
        return scale, torch.zeros_like(scale, dtype=torch.int64)
    lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)
    scale = ((hi - lo) / (grid.qmax - grid.qmin)).clamp(min=MIN_SCALE)
    zero_point = torch.round(grid.qmin - lo / scale).clamp(grid.qmin, grid.qmax).to(torch.int64)
    return scale, zero_point


def _row_errors(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: IntGrid) -> torch.Tensor:
    """Squared quantize-dequantize error of each row on its own grid [lo[r], hi[r]]."""
    scale, zero_point = _scales_zero_points(lo, hi, grid)
    if rows.shape[0] == 1:  # the per-tensor op is three times faster
        q = fake_quant(rows, float(scale[0]), int(zero_point[0]), grid)
    else:
        q = fake_quant_per_channel(rows, scale, zero_point, grid)
    return q.sub_(rows).square_().sum(1)


def _weight_mse(rows: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, grid: IntGrid):
    """Per row, shrink the range by the factor alpha with the least squared error on the values:
    a sweep of alpha over [0.05, 1] in steps of 0.05, then steps of 0.01 around each row's best."""
    if grid.signed:
        t = torch.maximum(lo.abs(), hi.abs())
        lo, hi = -t, t
    else:
        lo, hi = lo.clamp(max=0.0), hi.clamp(min=0.0)

    def best_alpha(alphas: torch.Tensor) -> torch.Tensor:  # alphas: [A, R]
        errors = torch.stack([_row_errors(rows, lo * a, hi * a, grid) for a in alphas])
        return alphas.gather(0, errors.argmin(0, keepdim=True))[0]

    # largest alpha first: argmin keeps the first of equal errors, so ties clip less
    coarse = torch.tensor(WEIGHT_MSE_COARSE[::-1].copy(), dtype=rows.dtype)[:, None].expand(-1, rows.shape[0])
    best = best_alpha(coarse)
    offsets = torch.linspace(WEIGHT_MSE_FINE_HALF_WIDTH, -WEIGHT_MSE_FINE_HALF_WIDTH, WEIGHT_MSE_FINE_STEPS)
    fine = (best[None, :] + offsets[:, None].to(rows.dtype)).clamp(1e-3, 1.0)
    best = best_alpha(torch.cat([best[None, :], fine]))
    return lo * best, hi * best


def weight_range(w: torch.Tensor, cfg: TensorQuantConfig, grid: IntGrid) -> tuple:
    """Clipping range of a weight tensor by ``cfg.range`` (minmax or mse).

    per_tensor: (lo, hi) floats. per_channel: (lo, hi) float tensors of shape [C_out] (axis 0).
    mse: symmetric grids get (-T, T); asymmetric ranges shrink both ends by the same factor.
    """
    if w.numel() == 0:
        raise ValueError("weight tensor is empty")
    check_finite(w, "weight")
    per_channel = cfg.granularity == "per_channel"
    rows = w.detach().float().reshape(w.shape[0] if per_channel else 1, -1)
    lo, hi = rows.amin(1), rows.amax(1)
    if cfg.range == "mse":
        lo, hi = _weight_mse(rows, lo, hi, grid)
    elif cfg.range != "minmax":
        raise ValueError(f"weight range method must be minmax or mse, got {cfg.range!r}")
    if per_channel:
        return lo, hi
    return float(lo[0]), float(hi[0])
