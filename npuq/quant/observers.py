"""Range estimation: the clipping range the NPU toolchain picks for each tensor.

Activations are calibrated in two passes over the same data:

1. ``observe_minmax`` tracks the running min/max (and the element count);
2. ``observe_histogram`` (only when ``needs_histogram``) accumulates a histogram whose range is fixed
   from pass 1: |x| over [0, max|x|] for symmetric (signed) grids, TensorRT style, and x over
   [min(min_val, 0), max(max_val, 0)] for asymmetric (unsigned) grids. The asymmetric range is widened
   to contain 0 because the grid always does (see ``scale_zero_point``), so the histogram covers
   exactly the span the grid can be asked to cover.

``compute_range`` then picks (lo, hi) by ``cfg.range``:

- ``minmax``: (min_val, max_val).
- ``percentile``: the p-th percentile of |x| -> (-T, T) (symmetric), or the (100-p)-th and p-th
  percentiles of x (asymmetric); linear interpolation inside the histogram bin.
- ``mse``: the threshold minimising the expected squared quantize-dequantize error over the histogram.
  Values are taken as uniform inside each bin and the error of the exact grid (round, clamp, integer
  zero-point) is integrated in closed form, so a bin wider than a quantization step still gets its
  true rounding error (bin centres alone would alias the step). Candidates: 96 thresholds spaced
  geometrically from one bin to the full range, then 48 linear ones between the best one's neighbours.
  Symmetric searches T -> (-T, T), also for non-negative tensors (the signed grid then wastes its
  negative half: the pessimistic NPU). Asymmetric runs 1-D searches in turn: hi with lo at its
  widest, lo with that hi, hi again (coordinate descent; a side that sits at 0 cannot move, skipped).
- ``kl``: TensorRT entropy calibration. For each candidate length i (in bins) from the number of
  grid levels on the searched side to the full histogram: P = hist[:i] with the outliers hist[i:]
  added to its last bin; Q = hist[:i] (without outliers, as in the TensorRT slides) merged into
  ``levels`` groups and spread evenly back over the non-empty bins; minimise KL(P || Q). The threshold
  is the right edge of P's last bin, i * bin_width (the pytorch-quantization convention; the slides'
  (i + 0.5) differs by half a bin). A bin where P has mass but Q has none (the last bin when it is
  empty but outliers were folded into it) gets a count of 1e-4 of an average bin (smoothing of zeros).
  Levels: 2^(bits-1) for signed grids (the non-negative half: 128 at 8 bits, as TensorRT) and 2^bits
  for unsigned grids (all 256 levels lie between lo and hi). Asymmetric KL uses the same alternating
  1-D searches as mse: hi with lo fixed at min (for non-negative tensors exactly the TensorRT
  post-ReLU case), then lo with hi fixed (histogram mirrored), then hi again.

Exact zeros are left out of the mse and kl histograms: zero is exactly representable on every grid, so
they carry no error, and after a ReLU they would otherwise dominate the first bin (pytorch-quantization
works around the same spike by overwriting bin 0). They still count for percentiles.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import MIN_SCALE, IntGrid, fake_quant, fake_quant_per_channel, scale_zero_point

MSE_COARSE_CANDIDATES = 96
MSE_FINE_CANDIDATES = 48
KL_ZERO_SMOOTHING = 1e-4
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

    def __init__(self, cfg: TensorQuantConfig, bins: int = 2048):
        if bins < 8:
            raise ValueError(f"histogram needs at least 8 bins, got {bins}")
        self.cfg = cfg
        self.bins = bins
        self.min_val = math.inf
        self.max_val = -math.inf
        self.n = 0
        self.hist: np.ndarray | None = None
        self.zero_count = 0

    @property
    def needs_histogram(self) -> bool:
        return self.cfg.range != "minmax"

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
        self.n += x.numel()

    def _unclipped_range(self) -> tuple[float, float]:
        """The whole observed range, in the form the method returns it ((-T, T) when symmetric)."""
        return (-self.absmax, self.absmax) if self.cfg.symmetric else (self.min_val, self.max_val)

    def hist_range(self) -> tuple[float, float]:
        """The value span the histogram covers (|x| for symmetric, x for asymmetric)."""
        if self.cfg.symmetric:
            return 0.0, self.absmax
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
        if self.cfg.symmetric:
            values = values.abs()
            v_lo, v_hi = 0.0, max(-v_lo, v_hi)
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
        if method == "percentile":
            return self._percentile_range()
        if method == "mse":
            return self._mse_range(grid)
        if method == "kl":
            return self._kl_range(grid)
        raise ValueError(f"unknown range method {method!r}")

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

    # -- kl -----------------------------------------------------------------------------------------

    def _kl_range(self, grid: IntGrid) -> tuple[float, float]:
        lo0, hi0 = self.hist_range()
        hist = self._nonzero_hist()
        width = (hi0 - lo0) / self.bins
        if self.cfg.symmetric:
            i = kl_best_length(hist, grid.qmax + 1)
            t = min(i * width, self.absmax)
            return -t, t
        levels = grid.qmax - grid.qmin + 1
        zero_edge = -lo0 / width
        z_hi, z_lo = math.ceil(zero_edge - 1e-9), math.floor(zero_edge + 1e-9)
        e_lo, e_hi = 0, self.bins

        def search_hi() -> int:
            seg = hist[e_lo:].copy()
            seg[0] += hist[:e_lo].sum()
            return e_lo + kl_best_length(seg, levels, z_hi - e_lo)

        def search_lo() -> int:
            seg = hist[:e_hi][::-1].copy()
            seg[0] += hist[e_hi:].sum()
            return e_hi - kl_best_length(seg, levels, e_hi - z_lo)

        if hi0 > 0:
            e_hi = search_hi()
        if lo0 < 0:
            e_lo = search_lo()
            if hi0 > 0:
                e_hi = search_hi()
        lo = max(lo0 + e_lo * width, self.min_val) if lo0 < 0 else self.min_val
        hi = min(lo0 + e_hi * width, self.max_val) if hi0 > 0 else self.max_val
        return lo, hi


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


def kl_divergences(hist: np.ndarray, levels: int, min_length: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """KL(P||Q) of TensorRT entropy calibration for every candidate length i (bins kept, anchored at
    bin 0) in [max(levels, min_length), len(hist)]; returns (lengths, divergences), inf where Q is empty.

    Vectorised with cumulative sums: KL = [sum P log P - sum P log Q] / N + log(sum Q) - log N, and
    sum P log Q reduces to a sum over the ``levels`` groups because Q is constant on the non-empty bins
    of each group (plus the outliers folded into the last bin).
    """
    h = np.asarray(hist, dtype=np.float64)
    total = h.sum()
    i = np.arange(max(levels, min_length, 1), h.size + 1)
    if i.size == 0 or total <= 0:
        return i, np.full(i.size, np.inf)
    cum = np.concatenate([[0.0], np.cumsum(h)])
    cum_xlogx = np.concatenate([[0.0], np.cumsum(_xlogx(h))])
    cum_nonzero = np.concatenate([[0], np.cumsum(h > 0)])

    outliers = total - cum[i]
    last = h[i - 1]
    p_log_p = cum_xlogx[i - 1] + _xlogx(last + outliers)

    edges = (i[:, None] * np.arange(levels + 1)[None, :]) // levels
    group_sum = cum[edges[:, 1:]] - cum[edges[:, :-1]]
    group_nonzero = cum_nonzero[edges[:, 1:]] - cum_nonzero[edges[:, :-1]]
    share = group_sum / np.maximum(group_nonzero, 1)
    q_total = cum[i]
    q_last = np.where(last > 0, share[:, -1], KL_ZERO_SMOOTHING * q_total / i)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_log_q = (group_sum * _safe_log(share)).sum(1) + outliers * _safe_log(q_last)
        kl = (p_log_p - p_log_q) / total - math.log(total) + np.log(q_total)
    return i, np.where(q_total > 0, kl, np.inf)


def _safe_log(v: np.ndarray) -> np.ndarray:
    """log v where v > 0 and 0 elsewhere (the terms it multiplies are 0 there)."""
    return np.log(np.where(v > 0, v, 1.0))


def kl_best_length(hist: np.ndarray, levels: int, min_length: int = 1) -> int:
    """The number of bins to keep with the least KL divergence (ties: the longest). len(hist) when
    there is nothing to search: too few bins for the grid levels, or an empty histogram.

    Candidates start ``levels`` bins past the first non-empty bin rather than at ``levels``: TensorRT's
    start, measured from where the data begins. For data that starts at or near 0 (after a ReLU, or
    |x| of a centred tensor) this is the same; for data away from 0 (a sigmoid output around 0.5) the
    literal rule would let P and Q both collapse to one spike at the data minimum with KL = 0, i.e.
    clip the whole tensor to a constant.
    """
    nonempty = np.flatnonzero(np.asarray(hist) > 0)
    first = int(nonempty[0]) if nonempty.size else 0
    lengths, kl = kl_divergences(hist, levels, max(min_length, first + levels))
    if lengths.size == 0 or not np.isfinite(kl).any():
        return int(np.asarray(hist).size)
    best = np.flatnonzero(kl <= kl.min() + 1e-12 * max(abs(kl.min()), 1.0))
    return int(lengths[best[-1]])


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
