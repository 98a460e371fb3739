"""``activation``: replace the decoder's ELU by an activation without a saturation spike in the grid.

ELU saturates at -1: on 7-Scenes up to 27% of a decoder tensor's values sit below -0.99, the |x|
histogram has a spike at 1.0, and a TensorRT-style KL search locks its threshold there on tensors that
reach 7-12. ReLU (fused into the conv by the NPU, non-negative) or LeakyReLU(0.1) have no such spike.
The swap changes what the network computes, so the decoder and head are then repaired by a short
fine-tune: self-distillation from the unchanged FP32 model (no labels needed), plus the supervised
loss when ``supervised`` > 0. The encoder is frozen (its BN statistics too).

``bounded``: clamp decoder blocks at a per-block ceiling, ``min(ELU(x), c)``, exported as a standard
ONNX Clip that the simulator fuses into the ELU (only the clipped tensor is stored), with c where a
share ``saturate`` of the calibration values reach, then the same repair. Aimed at blocks whose long
tail (maxima 80-130 against a 99th percentile of 11-20) an entropy or MSE search clips anyway. A
ceiling below ``floor`` would let a TensorRT-style search lock onto the ELU spike again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from npuq.errors import NpuqError
from npuq.models.decoder import ACTIVATIONS
from npuq.remedies.base import Context, Handoff, RemedyConfig, input_size, module_outputs, register_remedy
from npuq.remedies.range_anchor import PINNED_VALUE


@dataclass(frozen=True)
class RepairConfig(RemedyConfig):
    """The repair fine-tune that a remedy changing the decoder runs (``repair_decoder``)."""

    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 8
    distill: float = 1.0  # weight of the self-distillation term (log-depth L1 to the FP32 model)
    supervised: float = 0.0  # weight of the supervised multi-scale depth loss (needs labels)

    def __post_init__(self) -> None:
        if self.steps < 0 or self.lr <= 0 or self.batch_size <= 0 or min(self.distill, self.supervised) < 0:
            raise NpuqError(f"{self.name}: steps >= 0, lr > 0, batch_size > 0 and non-negative weights")
        if self.steps and self.distill == 0 and self.supervised == 0:
            raise NpuqError(f"{self.name}: a fine-tune needs distill or supervised > 0")


@dataclass(frozen=True)
class ActivationConfig(RepairConfig):
    name = "activation"
    activation: str = "relu"

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise NpuqError(f"activation: must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        super().__post_init__()

    @classmethod
    def smoke(cls) -> ActivationConfig:
        return cls(steps=2, batch_size=2, supervised=0.5)


@dataclass(frozen=True)
class BoundedConfig(RepairConfig):
    name = "bounded"
    blocks: tuple[int, ...] = ()  # decoder blocks to bound (0-9); empty: chosen by ``select``
    # "tails": the blocks whose calibration maximum exceeds ``tail_ratio`` x their quantile (a long tail
    # that an entropy or MSE search clips anyway); "all": every block
    select: str = "tails"
    tail_ratio: float = 4.0
    saturate: float = 0.01  # share of a block's calibration values at or above its ceiling
    # the lowest ceiling: below it the smallest range a TensorRT-style entropy search can pick (max / 16)
    # no longer lies above the ELU spike at 1.0, and the bounded block locks there
    floor: float = PINNED_VALUE

    def __post_init__(self) -> None:
        if any(not 0 <= b < 10 for b in self.blocks):
            raise NpuqError(f"bounded: blocks must be in 0..9, got {list(self.blocks)}")
        if self.select not in ("tails", "all"):
            raise NpuqError(f"bounded: select must be 'tails' or 'all', got {self.select!r}")
        if not 0 < self.saturate < 0.5 or self.tail_ratio < 1 or self.floor < 0:
            raise NpuqError("bounded: saturate must be in (0, 0.5), tail_ratio >= 1 and floor >= 0")
        super().__post_init__()

    @classmethod
    def smoke(cls) -> BoundedConfig:
        return cls(select="all", floor=0.0, steps=2, batch_size=2, supervised=0.5)


@register_remedy(BoundedConfig)
def bound_activations(handoff: Handoff, cfg: BoundedConfig, ctx: Context) -> Handoff:
    """Clamp decoder blocks at the value ``saturate`` of their calibration values reach, then repair."""
    from npuq.models.checkpoint import load_model
    from npuq.models.depth_resnet import DepthResNet

    teacher = load_model(handoff.checkpoint).eval()
    if any(teacher.config.decoder_extra_channels):
        raise NpuqError("bounded: the model carries range anchors, which a ceiling would clip; "
                        "bound the blocks before adding anchors")
    student = DepthResNet(teacher.config)
    student.load_state_dict(teacher.state_dict())
    stats = set_ceilings(student.eval(), handoff.calib.rgb(input_size(handoff)), cfg)
    ceilings = tuple(float(module.ceiling) for module in student.decoder.decoder)
    student.config = dataclasses.replace(teacher.config, decoder_ceilings=ceilings)  # as saved
    chosen = {str(b): c for b, c in enumerate(ceilings) if c}
    losses = repair_decoder(teacher, student, handoff, cfg, ctx, f"bounded {len(chosen)} blocks") \
        if chosen else []
    record = {"ceilings": chosen, "blocks": stats, "losses": losses}
    out = save_changed(student, handoff, ctx, "bounded", record)
    return dataclasses.replace(handoff, checkpoint=out, notes={"ceilings": chosen, "blocks": stats})


@torch.no_grad()
def set_ceilings(model: torch.nn.Module, rgb: torch.Tensor,
                 cfg: BoundedConfig) -> dict[str, dict[str, float]]:
    """Bound ``model``'s decoder blocks in data-flow order, each where a share ``cfg.saturate`` of its
    values on ``rgb`` reach (the blocks before it already bounded). Returns every block's maximum and
    candidate ceiling."""
    stats = {}
    for block, module in enumerate(model.decoder.decoder):
        x = module_outputs(model, {0: module}, rgb)[0].flatten()
        k = max(1, min(x.numel(), round((1.0 - cfg.saturate) * x.numel())))
        top, quantile = float(x.max()), float(x.kthvalue(k).values)
        ceiling = max(quantile, cfg.floor)
        stats[str(block)] = {"max": top, "quantile": quantile, "ceiling": ceiling,
                             "saturated": float((x >= ceiling).float().mean())}
        chosen = block in cfg.blocks if cfg.blocks else cfg.select == "all" or top > cfg.tail_ratio * quantile
        if chosen and 0 < ceiling < top:
            module.ceiling = ceiling
    return stats


def _frozen_encoder_mode(model: torch.nn.Module) -> None:
    model.train()
    model.encoder.eval()


@register_remedy(ActivationConfig)
def change_activation(handoff: Handoff, cfg: ActivationConfig, ctx: Context) -> Handoff:
    """Swap the decoder's ELU for a spike-free activation, then repair by self-distillation."""
    from npuq.models.checkpoint import load_model
    from npuq.models.depth_resnet import DepthResNet

    teacher = load_model(handoff.checkpoint)
    student = DepthResNet(dataclasses.replace(teacher.config, activation=cfg.activation))
    student.load_state_dict(teacher.state_dict())
    losses = repair_decoder(teacher, student, handoff, cfg, ctx, f"activation -> {cfg.activation}")
    record = {"from": teacher.config.activation, "to": cfg.activation, "losses": losses}
    out = save_changed(student, handoff, ctx, "activation", record)
    return dataclasses.replace(handoff, checkpoint=out, notes={"activation": cfg.activation})


def repair_decoder(teacher: torch.nn.Module, student: torch.nn.Module, handoff: Handoff,
                   cfg: RepairConfig, ctx: Context, label: str) -> list[float]:
    """Fine-tune ``student``'s decoder and head (encoder and its BN statistics frozen) towards the
    unchanged ``teacher`` by self-distillation, plus the supervised loss when ``cfg.supervised`` > 0.
    Leaves ``student`` on the CPU in eval mode; returns the losses."""
    from npuq.device import resolve_device
    from npuq.train import objectives
    from npuq.train.loop import FitConfig, Hooks, fit, new_state

    if not cfg.steps:
        student.eval()
        return []
    device = resolve_device(ctx.device)
    teacher.to(device)
    student.to(device)
    student.encoder.requires_grad_(False)
    terms = [objectives.distill_depth(teacher, cfg.distill)] if cfg.distill else []
    if cfg.supervised:
        terms.append(_weighted(objectives.supervised(), cfg.supervised))
    fcfg = FitConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed, label=label)
    params = [p for p in student.parameters() if p.requires_grad]
    state = fit(student, ctx.train.open(input_size(handoff)), objectives.combine(*terms), fcfg,
                new_state(params, fcfg), Hooks(train_mode=_frozen_encoder_mode), ctx.progress, device)
    student.eval().cpu().requires_grad_(True)
    return state.losses


def save_changed(model: torch.nn.Module, handoff: Handoff, ctx: Context, key: str, record: Any) -> Path:
    """Save ``model`` as the remedy's checkpoint, keeping the input's extras and adding ``record``."""
    from npuq.models.checkpoint import load_checkpoint_dict, save_checkpoint

    extra = dict(load_checkpoint_dict(handoff.checkpoint)["extra"])
    extra[key] = record
    return save_checkpoint(ctx.work_dir / f"{key}.pt", model, extra=extra, force=True)


def _weighted(objective, weight: float):
    def scaled(model, rgb, depth):
        return {name: weight * value for name, value in objective(model, rgb, depth).items()}

    return scaled
