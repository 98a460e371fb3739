"""``range-anchor``: constant channels that pin a decoder tensor's calibrated range (exact in float).

A TensorRT-style KL search histograms |x| in 2048 bins over [0, max|x|] and never keeps fewer than 128
of them, so its smallest threshold is max|x| / 16. ELU's saturation spike at |x| = 1 traps the search
at 1.0 on tensors that reach 7-12; once anchor channels raise the maximum above ~17.6 the spike lies
inside every candidate range. Anchors cost resolution under calibrators that were not trapped (min/max
takes the anchor value as its range), so the choice is made per block, on the calibration frames the
toolchain will see: for every (count, value) candidate, each calibrator in ``calibrators`` (variants
of the hand-off's profile) picks its range for the block's output plus the anchors, and the candidate
with the smallest worst-case squared error on the block's real values wins, if it beats no anchors by
``min_gain``.

Whether the entropy search locks at 1.0 is a knife edge: on the same calibration frames one more
anchor, a 20% higher anchor value, or the ELU seeing a quantized instead of a float input can flip
it. So every candidate is judged on two views of the block's output and keeps its worst: the float
output and the output the simulated toolchain computes (upstream layers quantized). Then the anchored
model is checked by a fresh ``simulate_ptq`` under every calibrator; a block whose range still flips
back to the spike gets the best candidate at ``PINNED_VALUE`` or above, where no entropy search can
reach the spike; one that flips even so (a block reaching 50-200 whose few anchor channels the search
clips as a tail) gets more anchor channels, round by round: twice as many once the tried counts are
exhausted, up to the block's own channel count. The notes say which blocks were repaired
and which (if any) still flip.

A block bounded by the ``bounded`` remedy (``min(ELU(x), c)``) can only carry anchors at its ceiling c:
a larger constant would be clamped.

The rewrite itself is ``npuq.models.anchors.add_range_anchors``: the float outputs are unchanged, so
the hand-off's FP32 accuracy is too.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from npuq.errors import NpuqError
from npuq.quant.profile import CALIBRATOR_CHOICES, QuantProfile, TensorQuantConfig, activation_calibrators
from npuq.remedies.base import (
    Context,
    Handoff,
    RemedyConfig,
    input_size,
    module_outputs,
    quantizer_inputs,
    register_remedy,
)

NUM_BLOCKS = 10


@dataclass(frozen=True)
class RangeAnchorConfig(RemedyConfig):
    name = "range-anchor"
    blocks: tuple[int, ...] = ()  # decoder blocks to consider (0-9); empty: all ten
    # anchor channels per block to try (at most the block's own count): a larger share makes the top
    # bin outweigh the ELU spike, so every calibrator's range becomes the tensor's maximum
    counts: tuple[int, ...] = (1, 4, 16, 32)
    # anchor values (a bounded block's: its ceiling); empty: 1.05x, 1.25x, 1.5x, 2x the block's maximum
    # on the calibration frames, and 17.6 and 24 where above it
    values: tuple[float, ...] = ()
    calibrators: tuple[str, ...] = CALIBRATOR_CHOICES  # "profile": the hand-off's own; others: its variants
    min_gain: float = 1.5  # worst-case error without anchors / with, needed to add them (0: always)
    # calibration frames the search looks at (evenly spaced; 0: all). An anchor below the maximum of
    # the whole set no longer pins the range: a subset is for quick tries only
    frames: int = 0

    def __post_init__(self) -> None:
        if any(not 0 <= b < NUM_BLOCKS for b in self.blocks):
            raise NpuqError(f"range-anchor: blocks must be in 0..{NUM_BLOCKS - 1}, got {list(self.blocks)}")
        if not self.counts or min(self.counts) < 1:
            raise NpuqError(f"range-anchor: counts must be integers >= 1, got {list(self.counts)}")
        if any(v <= 0 for v in self.values):
            raise NpuqError(f"range-anchor: values must be positive, got {list(self.values)}")
        unknown = [c for c in self.calibrators if c not in CALIBRATOR_CHOICES]
        if unknown or not self.calibrators:
            raise NpuqError(f"range-anchor: calibrators must be among {', '.join(CALIBRATOR_CHOICES)}, "
                            f"got {list(self.calibrators)}")
        if self.min_gain < 0 or self.frames < 0:
            raise NpuqError("range-anchor: min_gain and frames must be >= 0")

    @classmethod
    def smoke(cls) -> RangeAnchorConfig:
        return cls(blocks=(8, 9), counts=(1,), calibrators=("profile", "minmax"), min_gain=0.0, frames=2)


@register_remedy(RangeAnchorConfig)
def add_anchors(handoff: Handoff, cfg: RangeAnchorConfig, ctx: Context) -> Handoff:
    """Add constant anchor channels where they cut the worst calibrator's error on a decoder tensor."""
    from npuq.models.checkpoint import load_checkpoint_dict, load_model, save_checkpoint

    original = load_model(handoff.checkpoint).eval()
    rgb = handoff.calib.rgb(input_size(handoff), cfg.frames)
    blocks = cfg.blocks or tuple(range(NUM_BLOCKS))
    block_cfgs = {b: bounded_config(cfg, original.decoder.decoder[b].ceiling) for b in blocks}
    calibrators = activation_calibrators(handoff.profile, cfg.calibrators)
    views = block_views(original, handoff.profile, rgb, blocks)
    chosen: dict[int, dict[str, Any]] = {}
    report: dict[str, Any] = {}
    for block in blocks:
        best, rows = search_block(views[block], calibrators, block_cfgs[block])
        report[str(block)] = rows
        if best is not None:
            chosen[block] = best
    model = _anchored(original, chosen)
    flipped = flipped_blocks(model, handoff.profile, cfg.calibrators, rgb, chosen)
    repaired: set[int] = set()
    for _ in range(REPAIR_ROUNDS):
        stronger = {b: stronger_candidate(views[b], calibrators, block_cfgs[b], report[str(b)], chosen[b])
                    for b in flipped}
        stronger = {b: c for b, c in stronger.items() if c is not None}
        if not stronger:
            break
        chosen.update(stronger)
        repaired |= set(stronger)
        model = _anchored(original, chosen)
        flipped = flipped_blocks(model, handoff.profile, cfg.calibrators, rgb, chosen)
    extra = dict(load_checkpoint_dict(handoff.checkpoint)["extra"])
    extra["range_anchors"] = {"chosen": {str(b): c for b, c in chosen.items()}, "search": report}
    out = save_checkpoint(ctx.work_dir / "range_anchor.pt", model, extra=extra, force=True)
    notes = {"anchors": {str(b): [c["count"], c["value"]] for b, c in chosen.items()},
             "gain": {str(b): c["gain"] for b, c in chosen.items()},
             "repaired": sorted(repaired), "still_flipped": {str(b): names for b, names in flipped.items()},
             "mac_overhead": conv_macs(model, rgb[:1]) / conv_macs(original, rgb[:1]) - 1.0}
    return dataclasses.replace(handoff, checkpoint=out, notes=notes)


def bounded_config(cfg: RangeAnchorConfig, ceiling: float) -> RangeAnchorConfig:
    """The search of a block bounded at ``ceiling`` (0: unbounded): its anchors can only sit at the
    ceiling, since a larger constant would be clamped."""
    return dataclasses.replace(cfg, values=(ceiling,)) if ceiling else cfg


# Above 16 x 1.1 the smallest range a TensorRT-style entropy search can pick (max / 16) lies above the
# ELU spike at 1.0, so a block whose maximum is pinned there cannot lock onto the spike.
PINNED_VALUE = 17.6


def _anchored(model: torch.nn.Module, chosen: dict[int, dict[str, Any]]) -> torch.nn.Module:
    from npuq.models.anchors import add_range_anchors

    for block, best in sorted(chosen.items()):
        model = add_range_anchors(model, block, best["count"], best["value"])
    return model


# a block whose range still flips after re-pinning gets more anchor channels, at most this many times
REPAIR_ROUNDS = 3


def pinned_candidate(rows: list[dict[str, Any]],
                     current: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The best candidate whose anchor value is at least ``PINNED_VALUE`` and that is stronger than the
    flipped ``current`` choice (None if no such candidate was tried). Stronger: more anchor channels,
    or as many but ``current`` below ``PINNED_VALUE``. A block that reaches 50-200 is not caught by the
    ELU spike but clips its few anchor channels as a tail; only a larger share of them pins its range."""
    def stronger(row: dict[str, Any]) -> bool:
        if current is None:
            return True
        return row["count"] > current["count"] or (row["count"] == current["count"]
                                                   and current["value"] < PINNED_VALUE)

    pinned = [r for r in rows[1:] if r["value"] >= PINNED_VALUE and stronger(r)]
    if not pinned:
        return None
    best = min(pinned, key=lambda r: r["worst_mse"])
    return {**best, "gain": rows[0]["worst_mse"] / best["worst_mse"] if best["worst_mse"] > 0 else 0.0}


def stronger_candidate(views: Sequence[torch.Tensor], calibrators: dict[str, TensorQuantConfig],
                       cfg: RangeAnchorConfig, rows: list[dict[str, Any]],
                       current: dict[str, Any]) -> dict[str, Any] | None:
    """What a flipped block gets next: the best pinned candidate stronger than ``current`` among those
    tried, or else twice ``current``'s anchor channels (at most the block's own count), scored now and
    added to ``rows``. None when the block has nothing stronger left."""
    found = pinned_candidate(rows, current)
    count = min(2 * current["count"], views[0].shape[1])
    if found is not None or count <= current["count"]:
        return found
    _, more = search_block(views, calibrators, dataclasses.replace(cfg, counts=(count,), min_gain=0.0))
    rows.extend(more[1:])
    return pinned_candidate(rows, current)


def flipped_blocks(model: torch.nn.Module, profile: QuantProfile, names: Sequence[str], rgb: torch.Tensor,
                   chosen: dict[int, dict[str, Any]]) -> dict[int, list[str]]:
    """The anchored blocks whose range, in a fresh ``simulate_ptq`` of ``model`` under each calibrator
    of ``names``, falls below half of what the search predicted: the entropy search flipped back to
    the spike (the search's histograms are of float or upstream-unanchored tensors, not these)."""
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import calibrator_variants

    variants = calibrator_variants(profile)
    flipped: dict[int, list[str]] = {}
    by_config: dict[Any, list[str]] = {}
    for name in names:
        by_config.setdefault(profile if name == "profile" else variants[name], []).append(name)
    for variant, group in by_config.items():
        sim = simulate_ptq(model, variant, rgb)
        for block, best in chosen.items():
            quantizer = sim.quantizers.get(f"decoder.decoder.{block}.nonlin")
            if quantizer is None or not quantizer.active:  # kept in FP16 by the profile
                continue
            if any(quantizer.clip_hi < 0.5 * best["range_hi"][name] for name in group):
                flipped.setdefault(block, []).extend(group)
    return flipped


@torch.no_grad()
def conv_macs(model: torch.nn.Module, rgb: torch.Tensor) -> int:
    """Multiply-accumulates of every conv for ``rgb`` (what the anchors add to the NPU's work)."""
    total = 0

    def count(mod: torch.nn.Conv2d, _inputs, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * mod.weight[0].numel()

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        model(rgb)
    finally:
        for hook in hooks:
            hook.remove()
    return total


def block_views(model: torch.nn.Module, profile: QuantProfile, rgb: torch.Tensor,
                blocks: Sequence[int]) -> dict[int, list[torch.Tensor]]:
    """Each decoder block's output as the search judges it: in float and through a simulated PTQ of
    ``model`` on ``rgb`` (upstream layers quantized)."""
    from npuq.quant import simulate_ptq

    floats = module_outputs(model, {b: model.decoder.decoder[b] for b in blocks}, rgb)
    sim = simulate_ptq(model, profile, rgb)
    names = {f"decoder.decoder.{b}.nonlin": b for b in blocks}
    seen: dict[int, list[torch.Tensor]] = {b: [] for b in blocks}
    quantizer_inputs(sim, rgb, lambda name, x: seen[names[name]].append(x.clone()) if name in names else None,
                     quantized=True)
    return {b: [floats[b], *([torch.cat(seen[b])] if seen[b] else [])] for b in blocks}


ANCHOR_BINS = 1 << 14  # signed bins over [-bound, bound]; bound: the largest anchor value tried


def search_block(x: torch.Tensor | Sequence[torch.Tensor], calibrators: dict[str, TensorQuantConfig],
                 cfg: RangeAnchorConfig) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """The best (count, value) of anchors for block output ``x`` [N,C,H,W] (or several views of it),
    or None if none beats no anchors by ``cfg.min_gain``; and every candidate's row (worst-case error
    over calibrators and views, each range's top in the worst view).

    One histogram per view on fixed bins serves every candidate: the anchors add ``count`` planes of
    ``value`` to one bin, each calibrator picks its range from that, and the error is measured on
    the histogram of the real values alone."""
    views = [x] if isinstance(x, torch.Tensor) else list(x)
    absmax = max(float(v.abs().max()) for v in views)
    defaults = (1.05 * absmax, 1.25 * absmax, 1.5 * absmax, 2.0 * absmax, PINNED_VALUE, 24.0)
    values = sorted({float(v) for v in cfg.values or [v for v in defaults if v >= absmax]})
    counts = sorted({min(c, views[0].shape[1]) for c in cfg.counts})
    hists = [_BlockHistogram(v, max([absmax, *values])) for v in views]

    def score(count: int, value: float) -> dict[str, Any]:
        return max((h.score(count, value, calibrators) for h in hists), key=lambda r: r["worst_mse"])

    rows = [score(0, 0.0)] + [score(count, value) for count in counts for value in values]
    base = rows[0]["worst_mse"]
    best = min(rows[1:], key=lambda r: r["worst_mse"], default=None)
    gain = base / best["worst_mse"] if best and best["worst_mse"] > 0 else 0.0
    if best is None or gain < cfg.min_gain or (cfg.min_gain and not gain):
        return None, rows
    return {**best, "gain": gain}, rows


class _BlockHistogram:
    def __init__(self, x: torch.Tensor, bound: float) -> None:
        from npuq.quant.observers import HistogramError

        self.bound, self.plane = bound, x.shape[0] * x.shape[2] * x.shape[3]
        self.n, self.min_val, self.max_val = x.numel(), float(x.min()), float(x.max())
        self.zeros = int(x.eq(0).count_nonzero())
        self.hist = torch.histc(x.float().clamp(-bound, bound), ANCHOR_BINS, -bound, bound).double().numpy()
        self.real = HistogramError(self.hist, -bound, bound)

    def score(self, count: int, value: float, calibrators: dict[str, TensorQuantConfig]) -> dict[str, Any]:
        from npuq.quant.observers import observer_from_histogram
        from npuq.quant.quantizer import IntGrid, scale_zero_point

        seen = self.hist.copy()
        lo_val, hi_val = self.min_val, self.max_val
        if count:
            at = min(int((value + self.bound) / (2 * self.bound) * ANCHOR_BINS), ANCHOR_BINS - 1)
            seen[at] += count * self.plane
            lo_val, hi_val = min(lo_val, value), max(hi_val, value)
        mse, top = {}, {}
        for name, tcfg in calibrators.items():
            grid = IntGrid.for_config(tcfg)
            observer = observer_from_histogram(tcfg, seen, -self.bound, self.bound, lo_val, hi_val,
                                               self.zeros)
            lo, hi = observer.compute_range(grid)
            mse[name] = self.real.error(*scale_zero_point(lo, hi, grid), grid) / self.n
            top[name] = hi
        return {"count": count, "value": value, "worst_mse": max(mse.values()), "mse": mse, "range_hi": top}
