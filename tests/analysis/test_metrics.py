"""Depth metrics checked against arithmetic written out by hand on tiny maps."""

import math

import pytest
import torch

from npuq.analysis.metrics import (
    METRIC_NAMES,
    MetricAccumulator,
    MetricConfig,
    evaluate,
    garg_crop_mask,
    image_metrics,
)
from npuq.errors import NpuqError

CFG = MetricConfig(min_depth=0.1, max_depth=20.0)


def t(rows):
    return torch.tensor(rows, dtype=torch.float32).unsqueeze(0)  # [1,H,W]


def test_values_by_hand():
    gt = t([[1.0, 2.0], [4.0, 5.0]])
    pred = t([[1.0, 1.0], [5.0, 4.0]])
    m = image_metrics(pred, gt, CFG)
    # diff = gt - pred = [0, 1, -1, 1]
    assert m["abs_rel"] == pytest.approx((0 + 1 / 2 + 1 / 4 + 1 / 5) / 4)  # 0.2375
    assert m["sq_rel"] == pytest.approx((0 + 1 / 2 + 1 / 4 + 1 / 5) / 4)  # |d| = d^2 here
    assert m["rmse"] == pytest.approx(math.sqrt(3 / 4))
    logs = [0.0, math.log(2), math.log(4 / 5), math.log(5 / 4)]
    assert m["rmse_log"] == pytest.approx(math.sqrt(sum(x * x for x in logs) / 4), rel=1e-6)
    # max(gt/pred, pred/gt) = [1, 2, 1.25, 1.25]; the thresholds are strict: 1.25 is not < 1.25
    assert m["a1"] == pytest.approx(1 / 4)
    assert m["a2"] == pytest.approx(3 / 4)  # < 1.5625
    assert m["a3"] == pytest.approx(3 / 4)  # < 1.953125; 2 fails
    assert set(m) == set(METRIC_NAMES)


def test_perfect_prediction():
    gt = t([[1.0, 3.0], [7.0, 9.0]])
    m = image_metrics(gt.clone(), gt, CFG)
    for name in ("abs_rel", "sq_rel", "rmse", "rmse_log"):
        assert m[name] == pytest.approx(0.0, abs=1e-7)
    assert m["a1"] == m["a2"] == m["a3"] == 1.0


def test_invalid_pixels_are_masked():
    # 0 (no GT), 30 (beyond max_depth 20), 0.05 (below min_depth 0.1) are ignored whatever pred says
    gt = t([[0.0, 2.0, 0.05], [30.0, 4.0, float("nan")]])
    pred = t([[7.0, 3.0, 9.0], [1.0, 4.0, 5.0]])
    m = image_metrics(pred, gt, CFG)
    # only (2 vs 3) and (4 vs 4): abs_rel = (1/2 + 0) / 2
    assert m["abs_rel"] == pytest.approx(0.25)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0) / 2))


def test_bounds_are_exclusive():
    gt = t([[0.1, 20.0, 5.0]])
    pred = t([[9.0, 9.0, 5.0]])
    assert image_metrics(pred, gt, CFG)["abs_rel"] == pytest.approx(0.0)


def test_garg_crop_mask_indices():
    mask = garg_crop_mask(10, 10)
    # rows int(4.08)=4 .. int(9.92)=9 (exclusive); cols int(0.36)=0 .. int(9.64)=9 (exclusive)
    expected = torch.zeros(10, 10, dtype=torch.bool)
    expected[4:9, 0:9] = True
    assert torch.equal(mask, expected)


def test_crop_changes_the_scored_pixels():
    gt = torch.ones(1, 10, 10)
    pred = torch.full((1, 10, 10), 2.0)
    pred[:, 4:9, 0:9] = 1.0  # perfect inside the crop, 2x too far outside
    assert image_metrics(pred, gt, MetricConfig(crop="garg"))["abs_rel"] == pytest.approx(0.0)
    # without the crop, 100 - 45 pixels have |1-2|/1 = 1
    assert image_metrics(pred, gt, MetricConfig())["abs_rel"] == pytest.approx(55 / 100)


def test_median_scaling():
    cfg = MetricConfig(median_scaling=True)
    gt = t([[1.0, 2.0, 4.0]])
    pred = t([[1.0, 4.0, 6.0]])
    # scale = median(gt)/median(pred) = 2/4 -> pred = [0.5, 2, 3]; abs_rel = (0.5/1 + 0 + 1/4)/3
    assert image_metrics(pred, gt, cfg)["abs_rel"] == pytest.approx(0.25)
    # without scaling: (0 + 2/2 + 2/4)/3
    assert image_metrics(pred, gt, MetricConfig())["abs_rel"] == pytest.approx(0.5)
    # a prediction off by a global factor becomes perfect
    assert image_metrics(gt * 3.0, gt, cfg)["abs_rel"] == pytest.approx(0.0, abs=1e-7)


def test_median_scaling_uses_lower_middle_value_like_torch_median():
    cfg = MetricConfig(median_scaling=True)
    gt = t([[1.0, 2.0], [3.0, 4.0]])
    pred = t([[2.0, 2.0], [2.0, 2.0]])
    # torch.median(gt) = 2 (not 2.5) -> scale 1 -> pred stays 2 everywhere
    expected = (1 / 1 + 0 / 2 + 1 / 3 + 2 / 4) / 4
    assert image_metrics(pred, gt, cfg)["abs_rel"] == pytest.approx(expected)


def test_median_scaling_uses_only_valid_pixels():
    cfg = MetricConfig(median_scaling=True)
    gt = t([[1.0, 2.0, 4.0, 0.0, 0.0]])
    pred = t([[2.0, 4.0, 8.0, 100.0, 100.0]])  # the two huge values sit on invalid GT
    assert image_metrics(pred, gt, cfg)["abs_rel"] == pytest.approx(0.0, abs=1e-7)


def test_prediction_is_clamped_to_the_range():
    cfg = MetricConfig(min_depth=0.1, max_depth=10.0)
    gt = t([[1.0, 5.0]])
    pred = t([[0.01, 100.0]])
    # clamped pred = [0.1, 10] -> abs_rel = (0.9/1 + 5/5)/2 ; unclamped would be (0.99 + 19)/2
    assert image_metrics(pred, gt, cfg)["abs_rel"] == pytest.approx(0.95)


def test_clamp_comes_after_median_scaling():
    cfg = MetricConfig(min_depth=0.1, max_depth=10.0, median_scaling=True)
    gt = t([[1.0, 2.0, 8.0]])
    pred = t([[2.0, 4.0, 100.0]])
    # scale = 2/4 -> [1, 2, 50] -> clamp -> [1, 2, 10]; abs_rel = (0 + 0 + 2/8)/3
    assert image_metrics(pred, gt, cfg)["abs_rel"] == pytest.approx(0.25 / 3)


def test_prediction_resized_bilinear_align_corners():
    # [1, 4] stretched to width 4 with align_corners=True is [1, 2, 3, 4] exactly
    # (align_corners=False would give [1, 1.75, 3.25, 4]).
    pred = t([[1.0, 4.0]])
    gt = t([[1.0, 2.0, 3.0, 4.0]])
    assert image_metrics(pred, gt, CFG)["abs_rel"] == pytest.approx(0.0, abs=1e-6)
    gt_2d = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    pred_small = torch.tensor([[[2.5]]])  # a 1x1 prediction fills the GT size
    assert image_metrics(pred_small, gt_2d, CFG)["rmse"] == pytest.approx(math.sqrt((2.25 + 0.25) * 2 / 4))


def test_no_valid_pixel_returns_none():
    assert image_metrics(t([[1.0, 2.0]]), t([[0.0, 0.0]]), CFG) is None


def test_accumulator_skips_and_counts_empty_frames():
    acc = MetricAccumulator(CFG)
    gt = torch.stack([t([[2.0, 4.0]]), t([[0.0, 0.0]])])  # [2,1,1,2]
    pred = torch.stack([t([[1.0, 4.0]]), t([[1.0, 1.0]])])
    acc.add(pred, gt)
    result = acc.result()
    assert result["n_images"] == 1
    assert result["n_skipped"] == 1
    assert result["abs_rel"] == pytest.approx((1 / 2 + 0) / 2)  # not halved by the empty frame


def test_accumulator_averages_per_image_not_per_pixel():
    acc = MetricAccumulator(CFG)
    # image A: one valid pixel, abs_rel = |2-1|/2 = 0.5 ; image B: four perfect pixels, abs_rel 0
    acc.add(t([[1.0, 9.0], [9.0, 9.0]]).unsqueeze(0), t([[2.0, 0.0], [0.0, 0.0]]).unsqueeze(0))
    acc.add(t([[3.0, 3.0], [3.0, 3.0]]).unsqueeze(0), t([[3.0, 3.0], [3.0, 3.0]]).unsqueeze(0))
    result = acc.result()
    assert result["abs_rel"] == pytest.approx(0.25)  # per pixel it would be 0.5 / 5 = 0.1
    assert result["n_images"] == 2


def test_empty_accumulator_gives_nan():
    result = MetricAccumulator(CFG).result()
    assert math.isnan(result["abs_rel"])
    assert result["n_images"] == 0


def test_bad_crop_name():
    with pytest.raises(NpuqError, match="crop"):
        MetricConfig(crop="eigen")


class ListDataset(torch.utils.data.Dataset):
    """A DepthDataset look-alike built from tensors."""

    def __init__(self, items, root="/data/toy"):
        self.items, self.root = items, root

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def item(rgb, depth, i):
    return {"rgb": rgb, "depth": depth, "name": f"frame{i:03d}", "index": i}


def test_evaluate_runs_predict_and_handles_different_gt_sizes():
    # predict returns a constant 2 m map at input size; GT frames have different native sizes
    items = [
        item(torch.rand(3, 4, 4), torch.full((1, 6, 8), 4.0), 0),
        item(torch.rand(3, 4, 4), torch.full((1, 3, 5), 2.0), 1),
        item(torch.rand(3, 4, 4), torch.zeros(1, 2, 2), 2),
    ]
    calls = []

    def predict(rgb):
        calls.append(rgb.shape)
        assert not torch.is_grad_enabled()
        return torch.full((rgb.shape[0], 1, 4, 4), 2.0)

    result = evaluate(predict, ListDataset(items), CFG, batch_size=2)
    assert calls == [torch.Size([2, 3, 4, 4]), torch.Size([1, 3, 4, 4])]
    assert result["abs_rel"] == pytest.approx((0.5 + 0.0) / 2)
    assert result["n_images"] == 2 and result["n_skipped"] == 1
    assert set(METRIC_NAMES) <= set(result)


def test_evaluate_rejects_nan_input_naming_root_and_frame():
    rgb = torch.rand(3, 4, 4)
    rgb[0, 1, 1] = float("nan")
    items = [item(torch.rand(3, 4, 4), torch.ones(1, 4, 4), 0), item(rgb, torch.ones(1, 4, 4), 1)]
    with pytest.raises(NpuqError, match=r"/data/toy.*frame001"):
        evaluate(lambda x: torch.ones(x.shape[0], 1, 4, 4), ListDataset(items), CFG)


def test_evaluate_rejects_dataset_without_valid_pixels():
    items = [item(torch.rand(3, 4, 4), torch.zeros(1, 4, 4), 0)]
    with pytest.raises(NpuqError, match="no frame"):
        evaluate(lambda x: torch.ones(x.shape[0], 1, 4, 4), ListDataset(items), CFG)
