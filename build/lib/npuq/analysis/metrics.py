"""Depth metrics computed the way PackNet-SfM's evaluation computes them.

Per image (PackNet-SfM ``packnet_sfm/utils/depth.py`` ``compute_depth_metrics``):

1. the prediction is resized to the GT size with bilinear interpolation, ``align_corners=True``
   (PackNet's ``interpolate_image``; a prediction already at the GT size is left untouched);
2. valid pixels are ``min_depth < gt < max_depth`` (NaN GT is never valid), intersected with the
   KITTI Garg crop when ``crop="garg"``;
3. with ``median_scaling`` the valid prediction is multiplied by ``median(gt) / median(pred)``;
   ``torch.median`` is used as in PackNet, which takes the *lower* of the two middle values for an
   even count;
4. the prediction is clamped to ``[min_depth, max_depth]``;
5. abs_rel, sq_rel, rmse, rmse_log, a1, a2, a3 are computed over the valid pixels.

The dataset result is the mean over images. One deliberate difference from PackNet: PackNet divides
by the batch size even when it skipped a frame without valid pixels (so that frame counts as all
zeros); here such frames are skipped, counted in ``n_skipped`` and left out of the mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from npuq.errors import NpuqError
from npuq.progress import counter

METRIC_NAMES = ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")

# KITTI crop of Garg et al. (ECCV 2016) as fractions of the GT height and width.
GARG_ROWS = (0.40810811, 0.99189189)
GARG_COLS = (0.03594771, 0.96405229)
CROPS = ("garg",)


@dataclass
class MetricConfig:
    """Which GT pixels count and how the prediction is aligned to them before scoring."""

    min_depth: float = 0.1
    max_depth: float = 20.0
    crop: str | None = None
    median_scaling: bool = False

    def __post_init__(self) -> None:
        if self.crop is not None and self.crop not in CROPS:
            raise NpuqError(f"metric crop {self.crop!r}: unknown; choose from {', '.join(CROPS)} or none")
        if not 0 <= self.min_depth < self.max_depth:
            raise NpuqError(
                f"metric depth range ({self.min_depth}, {self.max_depth}): need 0 <= min_depth < max_depth"
            )


def resize_to(pred: Tensor, shape: tuple[int, int]) -> Tensor:
    """Bilinear resize of a [B,1,h,w] prediction to ``shape`` with align_corners=True, as PackNet does."""
    if tuple(pred.shape[-2:]) == tuple(shape):
        return pred
    return F.interpolate(pred, size=shape, mode="bilinear", align_corners=True)


def garg_crop_mask(height: int, width: int, device: torch.device | None = None) -> Tensor:
    """Boolean [H,W] mask that is True inside the Garg crop (indices truncated with int() like PackNet)."""
    mask = torch.zeros(height, width, dtype=torch.bool, device=device)
    y1, y2 = int(GARG_ROWS[0] * height), int(GARG_ROWS[1] * height)
    x1, x2 = int(GARG_COLS[0] * width), int(GARG_COLS[1] * width)
    mask[y1:y2, x1:x2] = True
    return mask


def valid_mask(gt: Tensor, cfg: MetricConfig) -> Tensor:
    """Pixels of a [H,W] GT map that are scored: inside the depth range (and the crop, if any)."""
    valid = (gt > cfg.min_depth) & (gt < cfg.max_depth)
    if cfg.crop == "garg":
        valid &= garg_crop_mask(*gt.shape[-2:], device=gt.device)
    return valid


def _scores(pred: Tensor, gt: Tensor) -> dict[str, float]:
    """The seven metrics for matching 1-D vectors of predicted and GT depth."""
    thresh = torch.maximum(gt / pred, pred / gt)
    diff = gt - pred
    values = {
        "abs_rel": torch.mean(diff.abs() / gt),
        "sq_rel": torch.mean(diff**2 / gt),
        "rmse": torch.sqrt(torch.mean(diff**2)),
        "rmse_log": torch.sqrt(torch.mean((torch.log(gt) - torch.log(pred)) ** 2)),
        "a1": (thresh < 1.25).float().mean(),
        "a2": (thresh < 1.25**2).float().mean(),
        "a3": (thresh < 1.25**3).float().mean(),
    }
    return {name: float(value) for name, value in values.items()}


def image_metrics(pred: Tensor, gt: Tensor, cfg: MetricConfig) -> dict[str, float] | None:
    """Metrics of one image: ``pred`` [1,h,w] or [h,w], ``gt`` [1,H,W] or [H,W]; None without valid pixels."""
    gt = gt.reshape(gt.shape[-2:]).float()
    pred = pred.reshape(1, 1, *pred.shape[-2:]).float()
    pred = resize_to(pred, tuple(gt.shape))[0, 0]
    valid = valid_mask(gt, cfg)
    if not bool(valid.any()):
        return None
    gt_v, pred_v = gt[valid], pred[valid]
    if cfg.median_scaling:
        pred_v = pred_v * torch.median(gt_v) / torch.median(pred_v)
    pred_v = pred_v.clamp(cfg.min_depth, cfg.max_depth)
    return _scores(pred_v, gt_v)


class MetricAccumulator:
    """Running per-image sums; ``result()`` averages over the images that had valid pixels."""

    def __init__(self, cfg: MetricConfig) -> None:
        self.cfg = cfg
        self.sums = dict.fromkeys(METRIC_NAMES, 0.0)
        self.n_images = 0
        self.n_skipped = 0

    def add(self, pred_batch: Tensor, gt_batch: Tensor) -> None:
        """Score a [B,1,h,w] prediction against a [B,1,H,W] GT batch, one image at a time."""
        if pred_batch.shape[0] != gt_batch.shape[0]:
            raise NpuqError(
                f"metrics: prediction batch of {pred_batch.shape[0]} vs GT batch of {gt_batch.shape[0]}"
            )
        for pred, gt in zip(pred_batch, gt_batch, strict=True):
            self.add_image(pred, gt)

    def add_image(self, pred: Tensor, gt: Tensor) -> dict[str, float] | None:
        """Score one image; returns its metrics (None, and counted as skipped, without valid pixels)."""
        scores = image_metrics(pred, gt, self.cfg)
        if scores is None:
            self.n_skipped += 1
            return None
        for name in METRIC_NAMES:
            self.sums[name] += scores[name]
        self.n_images += 1
        return scores

    def result(self) -> dict[str, float | int]:
        """Mean of each metric over scored images (NaN when none), plus ``n_images`` and ``n_skipped``."""
        means: dict[str, float | int] = {
            name: (total / self.n_images if self.n_images else float("nan"))
            for name, total in self.sums.items()
        }
        means["n_images"] = self.n_images
        means["n_skipped"] = self.n_skipped
        return means


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Keep the items as lists: native-resolution GT may differ in size from frame to frame."""
    return {key: [item[key] for item in items] for key in items[0]}


def _check_finite(rgbs: list[Tensor], names: list[str], dataset: Any) -> None:
    for rgb, name in zip(rgbs, names, strict=True):
        if not bool(torch.isfinite(rgb).all()):
            root = getattr(dataset, "root", "dataset")
            raise NpuqError(f"{root}: frame {name} has NaN/Inf in its RGB input")


def _predict_all(predict: Callable[[Tensor], Tensor], rgbs: list[Tensor]) -> list[Tensor]:
    """Run ``predict`` on the batch at once when the RGB sizes agree, else frame by frame."""
    if len({tuple(rgb.shape) for rgb in rgbs}) == 1:
        return list(predict(torch.stack(rgbs)))
    return [predict(rgb.unsqueeze(0))[0] for rgb in rgbs]


def evaluate(
    predict: Callable[[Tensor], Tensor],
    dataset: Dataset,
    cfg: MetricConfig,
    batch_size: int = 8,
    progress: bool = False,
) -> dict[str, float | int]:
    """Score ``predict(rgb [B,3,H,W]) -> depth [B,1,h,w]`` (metres) over a DepthDataset.

    Returns the MetricAccumulator result. Raises NpuqError when an RGB frame is not finite or when
    no frame has a single valid GT pixel.
    """
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=0, collate_fn=_collate)
    acc = MetricAccumulator(cfg)
    with torch.no_grad(), progress_bar(progress, len(dataset), "evaluating") as advance:
        for batch in loader:
            names = [str(name) for name in batch["name"]]
            _check_finite(batch["rgb"], names, dataset)
            preds = _predict_all(predict, batch["rgb"])
            for pred, gt in zip(preds, batch["depth"], strict=True):
                acc.add_image(pred, gt)
            advance(len(names))
    if acc.n_images == 0:
        root = getattr(dataset, "root", "dataset")
        raise NpuqError(
            f"{root}: no frame has a GT pixel inside ({cfg.min_depth}, {cfg.max_depth}) m "
            f"({acc.n_skipped} frames skipped)"
        )
    return acc.result()


@contextmanager
def progress_bar(enabled: bool, total: int | None, description: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``: a progress bar on stderr when enabled, a no-op otherwise."""
    with counter(enabled, total, description) as advance:
        yield advance
