"""``head``: swap the output head and fine-tune into it on equal terms (Phase 2).

The same budget for every head, the baseline ``sigmoid-disp`` included (``npuq.train.head_finetune``):
an FP32 fine-tune from the hand-off's weights on the head's own loss, then optionally a short fake-quant
fine-tune of the head through the hand-off's simulated toolchain. Compare heads with ``best``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from npuq.errors import NpuqError
from npuq.models.heads import HEADS
from npuq.remedies.base import Context, Handoff, RemedyConfig, input_size, register_remedy
from npuq.train.head_finetune import HeadFinetuneConfig, finetune_head


@dataclass(frozen=True)
class HeadRemedy(RemedyConfig):
    name = "head"
    head: str = "log-depth"
    steps: int = 400
    lr: float = 3e-4
    batch_size: int = 8
    qaf_steps: int = 0  # then this many fake-quant steps of the head through the simulated toolchain
    qaf_lr: float = 2e-5

    def __post_init__(self) -> None:
        if self.head not in HEADS:
            raise NpuqError(f"head: unknown head {self.head!r}; available: {', '.join(HEADS)}")
        if self.steps <= 0 or self.qaf_steps < 0 or self.batch_size <= 0:
            raise NpuqError("head: steps and batch_size must be positive, qaf_steps >= 0")

    @classmethod
    def smoke(cls) -> HeadRemedy:
        return cls(head="log-depth", steps=2, batch_size=2, qaf_steps=1)


@register_remedy(HeadRemedy)
def swap_head(handoff: Handoff, cfg: HeadRemedy, ctx: Context) -> Handoff:
    """Fine-tune the model into another output head (optionally through the simulated toolchain)."""
    size = input_size(handoff)
    hcfg = HeadFinetuneConfig(head=cfg.head, data=ctx.train.path, frames=ctx.train.frames, size=size,
                              steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, qaf_steps=cfg.qaf_steps,
                              qaf_lr=cfg.qaf_lr, profile=handoff.profile, seed=ctx.seed, device=ctx.device)
    out = finetune_head(handoff.checkpoint, hcfg, handoff.calib.rgb(size), ctx.work_dir / f"{cfg.head}.pt",
                        force=True, progress=ctx.progress)
    return dataclasses.replace(handoff, checkpoint=out, notes={})
