"""``calibration``: which training frames to hand over as the calibration set (Phase 1).

Strategies are those of ``npuq.data.calib``: random, stratified (family x brightness) and diverse
(k-center greedy on photometric, depth and encoder-feature descriptors). The pool is the context's
training data; the checkpoint and profile pass through unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from npuq.data.calib import STRATEGIES, select_calibration
from npuq.errors import NpuqError
from npuq.remedies.base import CalibSet, Context, Handoff, RemedyConfig, input_size, register_remedy


@dataclass(frozen=True)
class CalibrationConfig(RemedyConfig):
    name = "calibration"
    strategy: str = "diverse"
    size: int = 100
    seed: int | None = None  # None: the context's seed

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise NpuqError(f"calibration: strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if int(self.size) < 1:
            raise NpuqError(f"calibration: size must be positive, got {self.size}")

    @classmethod
    def smoke(cls) -> CalibrationConfig:
        return cls(strategy="diverse", size=2)


@register_remedy(CalibrationConfig)
def select_calibration_set(handoff: Handoff, cfg: CalibrationConfig, ctx: Context) -> Handoff:
    """Select the calibration frames from the training data (random, stratified or diverse)."""
    from npuq.models.checkpoint import load_model

    pool = ctx.train.open(input_size(handoff))
    if cfg.size > len(pool):
        raise NpuqError(f"calibration: size {cfg.size} exceeds the {len(pool)} training frames of "
                        f"{ctx.train}")
    model = load_model(handoff.checkpoint).eval()
    seed = ctx.seed if cfg.seed is None else cfg.seed
    selection = select_calibration(pool, cfg.size, cfg.strategy, seed, model=model, progress=ctx.progress)
    calib = CalibSet(ctx.train, tuple(selection.names))
    notes = {"strategy": cfg.strategy, "n": selection.n, "kcenter_radius": selection.radius}
    return dataclasses.replace(handoff, calib=calib, notes=notes)
