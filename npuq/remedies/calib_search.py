"""``calib-search``: calibration frames chosen by the ranges the toolchain will derive from them.

The toolchain's calibrator turns the calibration set into one clipping range per tensor. On a trapped
tensor (a saturation spike that an entropy search locks onto) which frames go in decides that range.

1. ``candidates`` training frames (drawn by seed; validation and test frames are never read) run
   through the hand-off's simulated graph (BN folded, CLE applied, quantization off); every activation
   quantizer's input is histogrammed on fixed bins, pooled and then per frame.
2. A tensor is *trapped* when some calibrator of ``calibrators`` picks, on the whole candidate pool, a
   range whose squared error on the pool is ``trap_ratio`` times that of the pool's min/max range.
3. From a random set of ``size`` frames, ``rounds`` rounds of ``tries`` swap proposals (keep the best,
   if it improves) minimise the worst calibrator's mean log error ratio over the trapped tensors.
   Per-frame histograms on fixed bins add up, so a proposal costs range searches, not forward passes.
4. The searched set, the diverse k-center set of the same size and the hand-off's own set are scored by
   a fresh simulated PTQ (the hand-off's profile) on the validation frames; the best is handed over.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from npuq.errors import NpuqError
from npuq.quant.profile import CALIBRATOR_CHOICES, TensorQuantConfig, activation_calibrators
from npuq.remedies.base import (
    CalibSet,
    Context,
    Handoff,
    RemedyConfig,
    input_size,
    quantizer_inputs,
    register_remedy,
)

ALTERNATIVES = ("search", "diverse", "handed")
FINE_BINS = 4096  # signed bins over [-max|x|, max|x|] of the pool: 2048 a side, as a KL histogram has


@dataclass(frozen=True)
class CalibSearchConfig(RemedyConfig):
    name = "calib-search"
    size: int = 100
    candidates: int = 400  # training frames the search draws from (0: all of them)
    rounds: int = 30
    tries: int = 8
    trap_ratio: float = 2.0
    calibrators: tuple[str, ...] = CALIBRATOR_CHOICES  # "profile": the hand-off's own; others: its variants
    alternatives: tuple[str, ...] = ALTERNATIVES  # the sets scored on the validation frames
    seed: int | None = None  # None: the context's seed

    def __post_init__(self) -> None:
        if self.size < 1 or self.candidates < 0 or self.rounds < 0 or self.tries < 1:
            raise NpuqError("calib-search: size and tries must be >= 1, candidates and rounds >= 0")
        if 0 < self.candidates < self.size:
            raise NpuqError(f"calib-search: candidates ({self.candidates}) must be >= size ({self.size})")
        if self.trap_ratio <= 1.0:
            raise NpuqError(f"calib-search: trap_ratio must be > 1, got {self.trap_ratio}")
        unknown = [c for c in self.calibrators if c not in CALIBRATOR_CHOICES]
        if unknown or not self.calibrators:
            raise NpuqError(f"calib-search: calibrators must be among {', '.join(CALIBRATOR_CHOICES)}, "
                            f"got {list(self.calibrators)}")
        bad = [a for a in self.alternatives if a not in ALTERNATIVES]
        if bad or "search" not in self.alternatives:
            raise NpuqError(f"calib-search: alternatives must include 'search' and be among "
                            f"{', '.join(ALTERNATIVES)}, got {list(self.alternatives)}")

    @classmethod
    def smoke(cls) -> CalibSearchConfig:
        return cls(size=2, candidates=4, rounds=2, tries=2, calibrators=("profile", "minmax"),
                   alternatives=("search",))


@dataclass
class TensorStats:
    """One quantized tensor over the candidate frames: per-frame signed histograms on fixed bins."""

    name: str
    bound: float  # the histograms cover [-bound, bound]
    hist: np.ndarray  # [frames, FINE_BINS]
    mins: np.ndarray
    maxs: np.ndarray
    zeros: np.ndarray

    @functools.cached_property
    def pool_error(self):
        from npuq.quant.observers import HistogramError

        return HistogramError(self.hist.sum(0), -self.bound, self.bound)

    def error(self, lo: float, hi: float, grid) -> float:
        """Squared error on every candidate frame of the grid that range (lo, hi) gives."""
        from npuq.quant.quantizer import scale_zero_point

        return self.pool_error.error(*scale_zero_point(lo, hi, grid), grid)

    def chosen_range(self, frames: np.ndarray, cfg: TensorQuantConfig, grid) -> tuple[float, float]:
        """The range ``cfg``'s calibrator picks from ``frames`` (indices into the candidates)."""
        from npuq.quant.observers import observer_from_histogram

        observer = observer_from_histogram(cfg, self.hist[frames].sum(0), -self.bound, self.bound,
                                           self.mins[frames].min(), self.maxs[frames].max(),
                                           int(self.zeros[frames].sum()))
        return observer.compute_range(grid)


class SetCost:
    """Worst calibrator's mean log(error of the set's range / error of the pool's min/max range)."""

    def __init__(self, tensors: list[TensorStats], calibrators: dict[str, TensorQuantConfig]) -> None:
        from npuq.quant.quantizer import IntGrid

        self.tensors = tensors
        self.calibrators = {name: (cfg, IntGrid.for_config(cfg)) for name, cfg in calibrators.items()}
        self.floor = {(t.name, c): max(t.error(t.mins.min(), t.maxs.max(), grid), 1e-30)
                      for t in tensors for c, (_, grid) in self.calibrators.items()}

    def ratios(self, frames: np.ndarray) -> dict[str, dict[str, float]]:
        """Per calibrator, per tensor: the set's error on the pool over the min/max floor."""
        return {c: {t.name: t.error(*t.chosen_range(frames, cfg, grid), grid) / self.floor[(t.name, c)]
                    for t in self.tensors} for c, (cfg, grid) in self.calibrators.items()}

    def __call__(self, frames: np.ndarray) -> float:
        if not self.tensors:
            return 0.0
        return max(float(np.mean([math.log(max(r, 1e-30)) for r in per.values()]))
                   for per in self.ratios(frames).values())


def tensor_stats(sim, rgb: torch.Tensor, names: list[str] | None = None,
                 per_frame: bool = True) -> list[TensorStats]:
    """Min/max, zero counts and signed histograms of the quantizers ``names`` (all: None), one row per
    frame, or one row for the whole of ``rgb`` (``per_frame=False``)."""
    names = list(sim.quantizers) if names is None else names
    n = len(rgb)
    mins, maxs = {k: np.zeros(n) for k in names}, {k: np.zeros(n) for k in names}
    seen = dict.fromkeys(names, 0)

    def extremes(name: str, x: torch.Tensor) -> None:
        if name in seen:
            flat = x.flatten(1).double()
            at = slice(seen[name], seen[name] + len(x))
            mins[name][at], maxs[name][at] = flat.amin(1).numpy(), flat.amax(1).numpy()
            seen[name] += len(x)

    quantizer_inputs(sim, rgb, extremes)
    bounds = {k: max(float(np.abs(mins[k]).max()), float(np.abs(maxs[k]).max()), 1e-12) for k in names}
    rows = n if per_frame else 1
    hist = {k: np.zeros((rows, FINE_BINS), dtype=np.float32) for k in names}
    zeros = {k: np.zeros(rows) for k in names}
    seen = dict.fromkeys(names, 0)

    def histograms(name: str, x: torch.Tensor) -> None:
        if name in seen:
            b = bounds[name]
            for i, sample in enumerate(x.float()):
                row = seen[name] + i if per_frame else 0
                hist[name][row] += torch.histc(sample.clamp(-b, b), FINE_BINS, -b, b).numpy()
                zeros[name][row] += int(sample.eq(0).count_nonzero())
            seen[name] += len(x)

    quantizer_inputs(sim, rgb, histograms)
    if not per_frame:
        mins = {k: v.min(keepdims=True) for k, v in mins.items()}
        maxs = {k: v.max(keepdims=True) for k, v in maxs.items()}
    return [TensorStats(k, bounds[k], hist[k], mins[k], maxs[k], zeros[k]) for k in names]


def trapped_tensors(stats: list[TensorStats], calibrators: dict[str, TensorQuantConfig],
                    trap_ratio: float) -> dict[str, float]:
    """Tensors where some calibrator's range on the whole pool costs ``trap_ratio`` x the min/max
    range's error, with that worst ratio."""
    worst = {}
    for t in stats:
        every = np.arange(len(t.mins))
        ratio = max(per[t.name] for per in SetCost([t], calibrators).ratios(every).values())
        if ratio >= trap_ratio:
            worst[t.name] = ratio
    return worst


def swap_search(cost: SetCost, n_candidates: int, size: int, rounds: int, tries: int,
                rng: np.random.Generator) -> tuple[np.ndarray, list[float]]:
    """Best-improvement swaps from a random ``size``-subset; returns it and the cost after each round."""
    chosen = np.sort(rng.choice(n_candidates, size, replace=False))
    best = cost(chosen)
    trace = [best]
    for _ in range(rounds):
        outside = np.setdiff1d(np.arange(n_candidates), chosen)
        if outside.size == 0:
            break
        proposals = []
        for _ in range(tries):
            trial = chosen.copy()
            trial[rng.integers(size)] = outside[rng.integers(outside.size)]
            trial = np.sort(trial)
            proposals.append((cost(trial), trial))
        value, trial = min(proposals, key=lambda p: p[0])
        if value < best:
            best, chosen = value, trial
        trace.append(best)
    return chosen, trace


@register_remedy(CalibSearchConfig)
def search_calibration_set(handoff: Handoff, cfg: CalibSearchConfig, ctx: Context) -> Handoff:
    """Pick the calibration frames whose calibrated ranges cost least on the trapped tensors."""
    from npuq.models.checkpoint import load_model
    from npuq.quant import simulate_ptq

    size = input_size(handoff)
    pool = ctx.train.open(size)
    if cfg.size > len(pool):
        raise NpuqError(f"calib-search: size {cfg.size} exceeds the {len(pool)} frames of {ctx.train}")
    seed = ctx.seed if cfg.seed is None else cfg.seed
    rng = np.random.default_rng(seed)
    n = len(pool) if not cfg.candidates else min(cfg.candidates, len(pool))
    picked = np.sort(rng.choice(len(pool), n, replace=False))
    rgb = torch.stack([pool[int(i)]["rgb"] for i in picked])
    model = load_model(handoff.checkpoint).eval()
    sim = simulate_ptq(model, handoff.profile, handoff.calib.rgb(size))
    calibrators = activation_calibrators(handoff.profile, cfg.calibrators)
    pooled = trapped_tensors(tensor_stats(sim, rgb, per_frame=False), calibrators, cfg.trap_ratio)
    cost = SetCost(tensor_stats(sim, rgb, sorted(pooled)), calibrators)
    chosen, trace = swap_search(cost, n, cfg.size, cfg.rounds, cfg.tries, rng)
    sets = {"search": CalibSet(ctx.train, tuple(pool.names[int(picked[i])] for i in chosen))}
    if "diverse" in cfg.alternatives:
        from npuq.data.calib import select_calibration

        sets["diverse"] = CalibSet(ctx.train, tuple(
            select_calibration(pool, cfg.size, "diverse", seed, model=model).names))
    if "handed" in cfg.alternatives:
        sets["handed"] = handoff.calib
    scores = _validation_scores(handoff, sets, ctx) if len(sets) > 1 else {}
    best = min(scores, key=scores.get) if scores else "search"
    notes: dict[str, Any] = {"chosen": best, "trapped": pooled, "cost_start": trace[0], "cost_end": trace[-1],
                             "val_int8": scores, "candidates": n}
    return dataclasses.replace(handoff, calib=sets[best], notes=notes)


def _validation_scores(handoff: Handoff, sets: dict[str, CalibSet], ctx: Context) -> dict[str, float]:
    from npuq.measure import measure

    return {name: measure(dataclasses.replace(handoff, calib=calib), ctx.val, ctx.metric,
                          device=ctx.device).int8["abs_rel"] for name, calib in sets.items()}
