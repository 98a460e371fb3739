"""Objectives for ``npuq.train.loop.fit``: each maps (model, rgb, depth) to named loss terms.

``supervised``: the multi-scale depth loss of the FP32 reference. ``head``: each head's own loss on its
own targets. ``weight_range``: the weight-normalization penalty. ``float_anchor``: keeps a QuantSim's
float prediction on a frozen reference's. ``combine`` sums objectives (the terms keep their names, so
the loop can report them). Distillation adds its own in ``npuq.remedies.distill``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from npuq.train.head_losses import head_loss
from npuq.train.loop import Objective
from npuq.train.losses import multiscale_loss


def scale_depths(model: nn.Module, rgb: Tensor) -> list[Tensor]:
    """Train-mode forward: metric depth of every scale, decoded by the model's head."""
    outputs = model(rgb)
    return [model.head.decode(out if isinstance(out, tuple) else (out,)) for out in outputs]


def supervised(kind: str = "l1_inv+silog") -> Objective:
    def objective(model: nn.Module, rgb: Tensor, depth: Tensor) -> dict[str, Tensor]:
        return {"supervised": multiscale_loss(scale_depths(model, rgb), depth, kind)}

    return objective


def head(depth_head: nn.Module | None = None) -> Objective:
    """The head's own loss on the model's raw outputs, decoded by ``depth_head`` (default ``model.head``;
    a QuantSim has no ``.head`` and trains on its float model's)."""

    def objective(model: nn.Module, rgb: Tensor, depth: Tensor) -> dict[str, Tensor]:
        return {"head": head_loss(depth_head or model.head, model(rgb), depth)}

    return objective


def weight_range(penalty, strength: float) -> Objective:
    """``strength`` * the weight-range penalty (``npuq.train.weight_norm.WeightRangePenalty``)."""

    def objective(model: nn.Module, rgb: Tensor, depth: Tensor) -> dict[str, Tensor]:
        return {"weight_range": strength * penalty()}

    return objective


def combine(*objectives: Objective) -> Objective:
    def objective(model: nn.Module, rgb: Tensor, depth: Tensor) -> dict[str, Tensor]:
        terms: dict[str, Tensor] = {}
        for part in objectives:
            terms.update(part(model, rgb, depth))
        return terms

    return objective


def distill_depth(teacher: nn.Module, weight: float = 1.0) -> Objective:
    """L1 between the student's and the frozen ``teacher``'s log depth at full resolution, on every pixel
    (no labels needed: self-distillation from the FP32 model on unlabelled frames)."""
    teacher.eval().requires_grad_(False)

    def objective(model: nn.Module, rgb: Tensor, depth: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            target = teacher.predict_depth(rgb).clamp_min(1e-3).log()
        student = scale_depths(model, rgb)[0].clamp_min(1e-3).log()
        return {"distill": weight * (student - target).abs().mean()}

    return objective


def float_anchor(sim: nn.Module, reference: nn.Module, depth_head: nn.Module, weight: float) -> Objective:
    """``weight`` x L1 between the log depth of ``sim`` with quantization off (the float model that will be
    handed over) and the frozen ``reference``'s. A fine-tune through the toolchain can otherwise learn to
    cancel one calibrator's clipping inside the float weights, which only those exact thresholds undo."""
    reference.eval().requires_grad_(False)

    def objective(model: nn.Module, rgb: Tensor, depth: Tensor) -> dict[str, Tensor]:
        with torch.no_grad():
            target = reference.predict_depth(rgb).clamp_min(1e-3).log()
        return {"float_anchor": weight * float_log_depth_l1(sim, depth_head, model, rgb, target)}

    return objective


def float_log_depth_l1(sim: nn.Module, depth_head: nn.Module, model: nn.Module, rgb: Tensor,
                       target: Tensor) -> Tensor:
    """L1 between the log depth of ``model`` (``sim`` or a view of it) run with quantization off and
    ``target``: the term of ``float_anchor``, for callers that already have the reference's log depth."""
    from npuq.models.heads import as_tuple

    with sim.quant_disabled():
        own = depth_head.decode(as_tuple(model(rgb))).clamp_min(1e-3).log()
    return (own - target).abs().mean()
