"""``centre-logit``: hand over the sigmoid's input, centred on 0, instead of the sigmoid's output.

Exact in float and no training: a ``sigmoid-disp`` model becomes a ``centred-logit`` one with the
same weights, each dispconv's bias lowered by ``centre`` (the midpoint of the scale-0 logits on the
calibration frames) and the sigmoid moved to the host, which adds ``centre`` back. On one room the
logits and the disparity both lie away from 0 (7-Scenes: [-3.5, -1.9] and [0.03, 0.13]) and a
TensorRT-style entropy search clips such tensors to about their minimum; the centred logits
straddle 0. The application must decode with the new head: ``sigmoid(z + centre)``, then
Monodepth2's mapping (the hand-off's README and ``npuq.models.heads.CentredLogitHead`` say so).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from npuq.errors import NpuqError
from npuq.remedies.base import Context, Handoff, RemedyConfig, input_size, module_outputs, register_remedy


@dataclass(frozen=True)
class CentreLogitConfig(RemedyConfig):
    name = "centre-logit"
    frames: int = 0  # calibration frames used to find the centre (evenly spaced; 0: all)

    def __post_init__(self) -> None:
        if self.frames < 0:
            raise NpuqError(f"centre-logit: frames must be >= 0, got {self.frames}")

    @classmethod
    def smoke(cls) -> CentreLogitConfig:
        return cls(frames=2)


@register_remedy(CentreLogitConfig)
def centre_logit(handoff: Handoff, cfg: CentreLogitConfig, ctx: Context) -> Handoff:
    """Move the sigmoid to the host and centre its input on 0 (exact, no training)."""
    from npuq.models.checkpoint import load_checkpoint_dict, load_model, save_checkpoint

    model = load_model(handoff.checkpoint).eval()
    if model.config.head not in ("sigmoid-disp", "centred-logit"):
        raise NpuqError(f"centre-logit: needs a sigmoid-disp model, {handoff.checkpoint} has "
                        f"head {model.config.head!r}")
    lo, hi = _logit_range(model, handoff.calib.rgb(input_size(handoff), cfg.frames))
    centred = to_centred_logit(model, (lo + hi) / 2)
    extra = dict(load_checkpoint_dict(handoff.checkpoint)["extra"])
    extra["centre_logit"] = {"centre": float(centred.head.centre), "logit_range": [lo, hi]}
    out = save_checkpoint(ctx.work_dir / "centre_logit.pt", centred, extra=extra, force=True)
    notes = {"centre": float(centred.head.centre), "logit_range": [lo, hi],
             "centred_range": [lo - float(centred.head.centre), hi - float(centred.head.centre)]}
    return dataclasses.replace(handoff, checkpoint=out, notes=notes)


def _logit_range(model: torch.nn.Module, rgb: torch.Tensor) -> tuple[float, float]:
    """Min and max of the scale-0 dispconv output (the NPU's last stored tensor before the output)."""
    values = module_outputs(model, {0: model.head.convs[0]}, rgb)[0]
    if model.config.head == "centred-logit":
        values = values + model.head.centre
    return float(values.min()), float(values.max())


@torch.no_grad()
def to_centred_logit(model: torch.nn.Module, centre: float) -> torch.nn.Module:
    """A ``centred-logit`` copy of a ``sigmoid-disp`` (or centred-logit) model with ``centre``."""
    from npuq.models.depth_resnet import DepthResNet

    new = DepthResNet(dataclasses.replace(model.config, head="centred-logit"))
    state = {k: v for k, v in model.state_dict().items() if k != "head.centre"}
    old_centre = float(model.head.centre) if model.config.head == "centred-logit" else 0.0
    new.load_state_dict({**state, "head.centre": torch.tensor(float(centre))})
    for conv in new.head.convs:
        conv.conv.bias -= centre - old_centre
    return new.train(model.training)
