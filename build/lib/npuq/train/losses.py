"""Supervised losses on metric depth.

Every loss is ``fn(pred_depth, gt_depth, mask) -> scalar`` with tensors of the same shape
([B,1,H,W]) and ``mask`` a bool tensor of the pixels that have ground truth. A mask without a single
pixel gives a zero loss that is still connected to ``pred_depth`` (so ``backward`` works).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from npuq.errors import NpuqError

EPS = 1e-6

# SILog: BTS / AdaBins multiply sqrt(E[d^2] - lambda E[d]^2) by 10 so that it is read in "percent of
# log depth". We keep the factor at 1 so that the loss sits on the same scale as L1 on inverse depth
# (both ~0.1 early in training) and "l1_inv+silog" weighs the two parts about equally.
SILOG_LAMBDA = 0.85
SILOG_FACTOR = 1.0
BERHU_FRACTION = 0.2

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]


def _empty(pred: Tensor) -> Tensor:
    return pred.sum() * 0.0


def l1_inv_loss(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Mean |1/pred - 1/gt| over the mask (inverse depth in 1/m: near pixels weigh the most)."""
    if not bool(mask.any()):
        return _empty(pred)
    inv_pred = 1.0 / pred[mask].clamp(min=EPS)
    inv_gt = 1.0 / gt[mask].clamp(min=EPS)
    return (inv_pred - inv_gt).abs().mean()


def silog_loss(pred: Tensor, gt: Tensor, mask: Tensor, lam: float = SILOG_LAMBDA) -> Tensor:
    """Scale-invariant log loss: ``SILOG_FACTOR * sqrt(mean(d^2) - lam * mean(d)^2)``, d = log pred - log gt.

    ``lam=1`` would be fully scale invariant; 0.85 keeps 15% of the mean log error so that the scale
    is still learned. The radicand is clamped at 1e-12 before the square root so that a perfect
    prediction has a finite (zero) gradient.
    """
    if not bool(mask.any()):
        return _empty(pred)
    d = torch.log(pred[mask].clamp(min=EPS)) - torch.log(gt[mask].clamp(min=EPS))
    radicand = (d**2).mean() - lam * d.mean() ** 2
    return SILOG_FACTOR * torch.sqrt(radicand.clamp(min=1e-12))


def berhu_loss(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Reverse Huber on depth in metres: |e| for |e| <= c, else (e^2 + c^2) / 2c; c = 0.2 max|e| of the batch.

    ``c`` is treated as a constant (no gradient through the max), as in Laina et al. 2016.
    """
    if not bool(mask.any()):
        return _empty(pred)
    err = (pred[mask] - gt[mask]).abs()
    c = BERHU_FRACTION * err.max().detach()
    if float(c) == 0.0:
        return err.mean()
    quadratic = (err**2 + c**2) / (2 * c)
    return torch.where(err <= c, err, quadratic).mean()


LOSSES: dict[str, LossFn] = {
    "l1_inv": l1_inv_loss,
    "silog": silog_loss,
    "berhu": berhu_loss,
}


def parse_loss(kind: str) -> list[LossFn]:
    """``"l1_inv+silog"`` -> [l1_inv_loss, silog_loss]; NpuqError for an unknown part."""
    parts = [part.strip() for part in kind.split("+")]
    for part in parts:
        if part not in LOSSES:
            raise NpuqError(f"loss {kind!r}: unknown part {part!r}; choose from {', '.join(LOSSES)}")
    return [LOSSES[part] for part in parts]


def combined_loss(pred: Tensor, gt: Tensor, mask: Tensor, kind: str) -> Tensor:
    """Sum of the losses named in ``kind`` (parts joined by '+')."""
    return sum((fn(pred, gt, mask) for fn in parse_loss(kind)), start=_empty(pred))


def multiscale_loss(
    pred_depths: Sequence[Tensor], gt: Tensor, kind: str, weights: Sequence[float] | None = None
) -> Tensor:
    """Loss averaged over scales; each [B,1,h,w] prediction is upsampled (bilinear) to the GT size.

    The mask is ``gt > 0``. ``weights`` (one per scale) make it a weighted mean: sum(w*l) / sum(w).
    """
    if weights is None:
        weights = [1.0] * len(pred_depths)
    if len(weights) != len(pred_depths) or not pred_depths:
        raise NpuqError(f"multiscale loss: {len(pred_depths)} scales but {len(weights)} weights")
    parse_loss(kind)  # fail before any work on a bad name
    mask = gt > 0
    total = _empty(pred_depths[0])
    for weight, pred in zip(weights, pred_depths, strict=True):
        if pred.shape[-2:] != gt.shape[-2:]:
            pred = F.interpolate(pred, size=gt.shape[-2:], mode="bilinear", align_corners=False)
        total = total + weight * combined_loss(pred, gt, mask, kind)
    return total / float(sum(weights))
