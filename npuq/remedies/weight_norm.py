"""``weight-norm``: a short fine-tune that evens out per-channel weight ranges (Phase 1).

See ``npuq.train.weight_norm`` for the penalty; this remedy runs it on the context's training data.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from npuq.remedies.base import Context, Handoff, RemedyConfig, register_remedy
from npuq.train.weight_norm import WeightNormConfig, finetune_weight_norm


@dataclass(frozen=True)
class WeightNormRemedy(RemedyConfig):
    name = "weight-norm"
    strength: float = 0.05
    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 8
    p: float = 8.0
    freeze_bn: bool = True

    def __post_init__(self) -> None:
        self.train_config(0)  # validates

    def train_config(self, seed: int, frames: tuple[int, int] | None = None,
                     device: str = "cpu") -> WeightNormConfig:
        return WeightNormConfig(strength=self.strength, steps=self.steps, lr=self.lr,
                                batch_size=self.batch_size, p=self.p, freeze_bn=self.freeze_bn, seed=seed,
                                frames=frames, device=device)

    @classmethod
    def smoke(cls) -> WeightNormRemedy:
        return cls(steps=2, batch_size=2)


@register_remedy(WeightNormRemedy)
def normalize_weights(handoff: Handoff, cfg: WeightNormRemedy, ctx: Context) -> Handoff:
    """Fine-tune with a penalty on per-channel weight-range imbalance (per-tensor weight grids)."""
    out = ctx.work_dir / "weight-norm.pt"
    wn_cfg = cfg.train_config(ctx.seed, ctx.train.frames, ctx.device)
    finetune_weight_norm(handoff.checkpoint, ctx.train.path, wn_cfg, out, progress=ctx.progress, force=True)
    return dataclasses.replace(handoff, checkpoint=out, notes={})
