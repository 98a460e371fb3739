"""Per-head training losses: each head's raw outputs against its own targets (``head.encode(gt)``).

A depth loss on decoded depth (``npuq.train.losses``) fits heads whose decode is smooth. It does not fit
``int-frac``: decode rounds the integer output, so the integer part gets no gradient at all. Here every
head has a loss on its raw outputs:

- ``sigmoid-disp``: the FP32 default, ``l1_inv + silog`` on decoded depth (what ``npuq train`` uses);
- ``int-frac``: L1 of the integer output against floor(gt) plus L1 of the fraction against
  gt - floor(gt) (both in metres, equal weights);
- ``coarse-residual``: L1 of the coarse output against gt plus L1 of coarse + residual against gt
  (metres): the first keeps the coarse output a depth on its own, the second lets the residual fix
  whatever the coarse output misses (after fake quantization, its rounding error);
- ``log-depth``: L1 of the output against log(gt) (i.e. a relative error, the same weight at 1 m and
  10 m).

A head registered elsewhere without an entry in ``HEAD_LOSSES`` gets the sum over outputs of L1 to its
encoded targets. Targets come from ``head.encode`` and so are clamped to the head's range; outputs are
left unclamped so that the gradient never vanishes at the ends of the range. Pixels with ``gt > 0``
(and finite) count; a batch without one gives a zero loss still connected to the outputs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from npuq.errors import NpuqError
from npuq.train.losses import combined_loss

HeadLossFn = Callable[[object, tuple[Tensor, ...], Tensor, Tensor], Tensor]
ScaleOutputs = Tensor | tuple[Tensor, ...]


def _zero(outputs: Sequence[Tensor]) -> Tensor:
    """A zero connected to every output (so ``backward`` works even when no pixel is valid)."""
    total = outputs[0].sum() * 0.0
    for o in outputs[1:]:
        total = total + o.sum() * 0.0
    return total


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean |pred - target| over ``mask`` (zero, still connected to ``pred``, when the mask is empty)."""
    if not bool(mask.any()):
        return pred.sum() * 0.0
    return (pred[mask] - target[mask]).abs().mean()


def sigmoid_disp_loss(head, outputs: tuple[Tensor, ...], gt: Tensor, mask: Tensor) -> Tensor:
    """``l1_inv + silog`` on the decoded depth (the FP32 training default)."""
    return combined_loss(head.decode(outputs), gt, mask, "l1_inv+silog")


def int_frac_loss(head, outputs: tuple[Tensor, ...], gt: Tensor, mask: Tensor) -> Tensor:
    """L1 of the integer output to floor(gt) + L1 of the fraction to gt - floor(gt)."""
    integer, fraction = outputs
    int_target, frac_target = head.encode(gt)
    return masked_l1(integer, int_target, mask) + masked_l1(fraction, frac_target, mask)


def coarse_residual_loss(head, outputs: tuple[Tensor, ...], gt: Tensor, mask: Tensor) -> Tensor:
    """L1 of coarse to gt + L1 of coarse + residual to gt."""
    coarse, residual = outputs
    depth_target, _ = head.encode(gt)
    return masked_l1(coarse, depth_target, mask) + masked_l1(coarse + residual, depth_target, mask)


def log_depth_loss(head, outputs: tuple[Tensor, ...], gt: Tensor, mask: Tensor) -> Tensor:
    """L1 of the output to log(gt)."""
    (log_target,) = head.encode(gt)
    return masked_l1(outputs[0], log_target, mask)


def encoded_l1_loss(head, outputs: tuple[Tensor, ...], gt: Tensor, mask: Tensor) -> Tensor:
    """Fallback: sum over outputs of L1 to ``head.encode(gt)``."""
    targets = head.encode(gt)
    return sum((masked_l1(o, t, mask) for o, t in zip(outputs, targets, strict=True)), start=_zero(outputs))


HEAD_LOSSES: dict[str, HeadLossFn] = {
    "sigmoid-disp": sigmoid_disp_loss,
    "int-frac": int_frac_loss,
    "coarse-residual": coarse_residual_loss,
    "log-depth": log_depth_loss,
}


def _as_tuple(outputs: ScaleOutputs) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _to_size(outputs: tuple[Tensor, ...], size: torch.Size) -> tuple[Tensor, ...]:
    return tuple(o if o.shape[-2:] == size else
                 F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outputs)


def scale_head_loss(head, outputs: ScaleOutputs, gt: Tensor, mask: Tensor) -> Tensor:
    """One scale's loss; ``outputs`` already at the GT's size."""
    outputs = _as_tuple(outputs)
    if len(outputs) != len(head.output_names):
        raise NpuqError(f"head loss: head {head.name!r} has {len(head.output_names)} outputs, "
                        f"got {len(outputs)}")
    return HEAD_LOSSES.get(head.name, encoded_l1_loss)(head, outputs, gt, mask)


def head_loss(head, outputs_per_scale: Sequence[ScaleOutputs] | ScaleOutputs, gt_depth: Tensor,
              weights: Sequence[float] | None = None) -> Tensor:
    """The head's loss averaged over scales, like ``npuq.train.losses.multiscale_loss``.

    ``outputs_per_scale``: the train-mode model output (a list over scales of a Tensor or a tuple of
    Tensors [B,1,h,w]); a bare Tensor or tuple is one scale (the eval-mode / QuantSim output). Each
    output is upsampled (bilinear) to the size of ``gt_depth`` [B,1,H,W] (metres, 0 = invalid).
    ``weights`` (one per scale) make it a weighted mean.
    """
    if isinstance(outputs_per_scale, Tensor | tuple):
        outputs_per_scale = [outputs_per_scale]
    if weights is None:
        weights = [1.0] * len(outputs_per_scale)
    if not outputs_per_scale or len(weights) != len(outputs_per_scale):
        raise NpuqError(f"head loss: {len(outputs_per_scale)} scales but {len(weights)} weights")
    mask = (gt_depth > 0) & torch.isfinite(gt_depth)
    gt = torch.where(mask, gt_depth, torch.ones_like(gt_depth))  # no inf/NaN reaches encode's maths
    size = gt_depth.shape[-2:]
    first = _as_tuple(outputs_per_scale[0])
    total = _zero(first)
    for weight, outputs in zip(weights, outputs_per_scale, strict=True):
        total = total + weight * scale_head_loss(head, _to_size(_as_tuple(outputs), size), gt, mask)
    return total / float(sum(weights))
