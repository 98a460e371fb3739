"""``qaf``: its config is checked, and a calibrator rotation changes what the fine-tune hands over."""

import dataclasses

import pytest
import torch

from npuq.errors import NpuqError
from npuq.models.checkpoint import load_checkpoint_dict, load_model
from npuq.remedies import apply_remedy
from npuq.remedies.distill import DistillConfig
from npuq.remedies.qaf import QafConfig


@pytest.mark.parametrize("config", [QafConfig, DistillConfig])
def test_calibrators_must_be_same_grid_variants_and_need_recalibration(config):
    with pytest.raises(NpuqError, match="calibrators must be among"):
        config(calibrators=("asym",))
    with pytest.raises(NpuqError, match="need recalibrate_every"):
        config(calibrators=("minmax",), recalibrate_every=None)
    names = ("no-bias-correction", "minmax")
    assert config(calibrators=names).calibrators == names


def test_a_rotation_recalibrates_with_other_calibrators(handoff, context):
    def run(name, calibrators):
        cfg = QafConfig(steps=3, batch_size=2, recalibrate_every=1, lr=1e-3, calibrators=calibrators)
        return apply_remedy(handoff, cfg, dataclasses.replace(context, work_dir=context.work_dir / name))

    own, rotated = run("own", ()), run("rotated", ("percentile 99.99", "no-bias-correction"))
    extra = load_checkpoint_dict(rotated.checkpoint)["extra"]["train"]["config"]
    assert extra["rotate_with"] == ["percentile 99.99", "no-bias-correction"]
    assert rotated.profile == handoff.profile  # the hand-off still requests the profile it was given
    a, b = load_model(own.checkpoint).state_dict(), load_model(rotated.checkpoint).state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a)
