"""``activation``: replace the decoder's ELU by an activation without a saturation spike in the grid.

ELU saturates at -1: on 7-Scenes up to 27% of a decoder tensor's values sit below -0.99, the |x|
histogram has a spike at 1.0, and a TensorRT-style KL search locks its threshold there on tensors that
reach 7-12. ReLU (fused into the conv by the NPU, non-negative) or LeakyReLU(0.1) have no such spike.
The swap changes what the network computes, so the decoder and head are then repaired by a short
fine-tune: self-distillation from the unchanged FP32 model (no labels needed), plus the supervised
loss when ``supervised`` > 0. The encoder is frozen (its BN statistics too).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from npuq.errors import NpuqError
from npuq.models.decoder import ACTIVATIONS
from npuq.remedies.base import Context, Handoff, RemedyConfig, input_size, register_remedy


@dataclass(frozen=True)
class ActivationConfig(RemedyConfig):
    name = "activation"
    activation: str = "relu"
    steps: int = 300
    lr: float = 1e-4
    batch_size: int = 8
    distill: float = 1.0  # weight of the self-distillation term (log-depth L1 to the FP32 model)
    supervised: float = 0.0  # weight of the supervised multi-scale depth loss (needs labels)

    def __post_init__(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise NpuqError(f"activation: must be one of {', '.join(ACTIVATIONS)}, got {self.activation!r}")
        if self.steps < 0 or self.lr <= 0 or self.batch_size <= 0 or min(self.distill, self.supervised) < 0:
            raise NpuqError("activation: steps >= 0, lr > 0, batch_size > 0 and non-negative weights")
        if self.steps and self.distill == 0 and self.supervised == 0:
            raise NpuqError("activation: a fine-tune needs distill or supervised > 0")

    @classmethod
    def smoke(cls) -> ActivationConfig:
        return cls(steps=2, batch_size=2, supervised=0.5)


def _frozen_encoder_mode(model: torch.nn.Module) -> None:
    model.train()
    model.encoder.eval()


@register_remedy(ActivationConfig)
def change_activation(handoff: Handoff, cfg: ActivationConfig, ctx: Context) -> Handoff:
    """Swap the decoder's ELU for a spike-free activation, then repair by self-distillation."""
    from npuq.device import resolve_device
    from npuq.models.checkpoint import load_checkpoint_dict, load_model, save_checkpoint
    from npuq.models.depth_resnet import DepthResNet
    from npuq.train import objectives
    from npuq.train.loop import FitConfig, Hooks, fit, new_state

    device = resolve_device(ctx.device)
    teacher = load_model(handoff.checkpoint).to(device)
    student = DepthResNet(dataclasses.replace(teacher.config, activation=cfg.activation))
    student.load_state_dict(teacher.state_dict())
    student.to(device)
    student.encoder.requires_grad_(False)
    terms = [objectives.distill_depth(teacher, cfg.distill)] if cfg.distill else []
    if cfg.supervised:
        terms.append(_weighted(objectives.supervised(), cfg.supervised))
    losses: list[float] = []
    if cfg.steps:
        fcfg = FitConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, seed=ctx.seed,
                         label=f"activation -> {cfg.activation}")
        params = [p for p in student.parameters() if p.requires_grad]
        state = fit(student, ctx.train.open(input_size(handoff)), objectives.combine(*terms), fcfg,
                    new_state(params, fcfg), Hooks(train_mode=_frozen_encoder_mode), ctx.progress, device)
        losses = state.losses
    student.eval().cpu().requires_grad_(True)
    extra = dict(load_checkpoint_dict(handoff.checkpoint)["extra"])
    extra["activation"] = {"from": teacher.config.activation, "to": cfg.activation, "losses": losses}
    out = save_checkpoint(ctx.work_dir / "activation.pt", student, extra=extra, force=True)
    return dataclasses.replace(handoff, checkpoint=out, notes={"activation": cfg.activation})


def _weighted(objective, weight: float):
    def scaled(model, rgb, depth):
        return {name: weight * value for name, value in objective(model, rgb, depth).items()}

    return scaled
