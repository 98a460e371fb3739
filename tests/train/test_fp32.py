"""FP32 training: batches, schedule, overfitting, determinism, resume, overwrite refusal, evaluation.

The training runs are tiny: DepthResNet-18 at 64x64, batch 2, a handful of steps on an in-memory
synthetic set.
"""

import pytest
import torch

from npuq.analysis.metrics import METRIC_NAMES
from npuq.errors import NpuqError
from npuq.train.fp32 import TrainConfig, build_model, load_batch, train
from npuq.train.loop import augment_batch, batch_indices, lr_factor
from npuq.train.losses import multiscale_loss
from npuq.train.objectives import scale_depths

DATA = "synth:n=8,seed=0,size=64x64"


def tiny(out, **changes):
    settings = dict(data=DATA, steps=4, out=str(out), size=(64, 64), batch_size=2, save_every=1000)
    settings.update(changes)
    return TrainConfig(**settings)


def saved(path):
    from npuq.models.checkpoint import load_checkpoint_dict

    return load_checkpoint_dict(path)


def assert_same_weights(a, b, exact=True):
    sa, sb = saved(a)["state_dict"], saved(b)["state_dict"]
    assert sa.keys() == sb.keys()
    for key in sa:
        if exact:
            assert torch.equal(sa[key], sb[key]), key
        else:
            assert torch.allclose(sa[key], sb[key], rtol=1e-5, atol=1e-6), key


# ------------------------------------------------------------------ pieces that need no model/data


def test_each_epoch_visits_every_frame_once():
    n, batch = 5, 2
    stream = [i for step in range(5) for i in batch_indices(seed=3, step=step, batch_size=batch, n=n)]
    assert sorted(stream[:5]) == list(range(5))
    assert sorted(stream[5:10]) == list(range(5))
    assert stream[:5] != stream[5:10]  # reshuffled every epoch
    assert batch_indices(3, 1, batch, n) == batch_indices(3, 1, batch, n)
    assert [batch_indices(s, 0, 4, 50) for s in range(3)] != [batch_indices(0, 0, 4, 50)] * 3


def test_augmentation_flips_rgb_and_depth_together():
    rgb = torch.rand(16, 3, 4, 6)
    depth = torch.arange(16 * 24, dtype=torch.float32).reshape(16, 1, 4, 6) + 1
    aug_rgb, aug_depth = augment_batch(rgb, depth, seed=0, step=7)
    flipped = [bool(torch.equal(aug_depth[i], depth[i].flip(-1))) for i in range(16)]
    kept = [bool(torch.equal(aug_depth[i], depth[i])) for i in range(16)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 0 < sum(flipped) < 16
    for i in range(16):
        source = rgb[i].flip(-1) if flipped[i] else rgb[i]
        # brightness/contrast jitter is affine per image: correlation with the source stays ~1
        corr = torch.corrcoef(torch.stack([source.flatten(), aug_rgb[i].flatten()]))[0, 1]
        assert corr > 0.95
    assert aug_rgb.min() >= 0 and aug_rgb.max() <= 1
    again = augment_batch(rgb, depth, seed=0, step=7)
    assert torch.equal(again[0], aug_rgb) and torch.equal(again[1], aug_depth)
    assert not torch.equal(augment_batch(rgb, depth, seed=0, step=8)[0], aug_rgb)


def test_lr_schedule_warms_up_then_decays():
    factors = [lr_factor(step, 100, 0.1) for step in range(100)]
    assert factors[0] == pytest.approx(0.1)
    assert factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:], strict=False))
    assert factors[-1] < 0.05


def test_config_validation():
    with pytest.raises(NpuqError, match="multiples of 32"):
        TrainConfig(data=DATA, steps=1, size=(60, 64))
    with pytest.raises(NpuqError, match="unknown"):
        TrainConfig(data=DATA, steps=1, loss="l1_inv+mse")
    with pytest.raises(NpuqError, match="positive"):
        TrainConfig(data=DATA, steps=0)


# ------------------------------------------------------------------------------- training runs


def test_loss_decreases_when_overfitting_a_fixed_batch(tmp_path):
    from npuq.data.datasets import open_dataset
    from npuq.models.checkpoint import load_model

    # two frames, batch 2, no augmentation: every step sees the same batch
    cfg = tiny(tmp_path / "m.pt", steps=20, data="synth:n=2,seed=0,size=64x64", augment=False)
    train(cfg, progress=False)
    rgb, gt = load_batch(open_dataset(cfg.data, size=cfg.size), cfg, step=0)

    def batch_loss(model):
        model.train()
        with torch.no_grad():
            return multiscale_loss(scale_depths(model, rgb), gt, cfg.loss).item()

    torch.manual_seed(cfg.seed)  # train() initialises the model the same way
    before = batch_loss(build_model(cfg))
    after = batch_loss(load_model(cfg.out))
    assert saved(cfg.out)["extra"]["train"]["loss"] != before  # the last step's loss, not the first
    assert after < 0.6 * before


def test_same_seed_same_weights(tmp_path):
    train(tiny(tmp_path / "a.pt", steps=3), progress=False)
    train(tiny(tmp_path / "b.pt", steps=3), progress=False)
    assert_same_weights(tmp_path / "a.pt", tmp_path / "b.pt", exact=True)
    train(tiny(tmp_path / "c.pt", steps=3, seed=1), progress=False)
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "a.pt", tmp_path / "c.pt")


def test_resume_matches_an_uninterrupted_run(tmp_path):
    train(tiny(tmp_path / "straight.pt"), progress=False)
    paused = tmp_path / "paused.pt"
    train(tiny(paused, stop_at_step=2), progress=False)
    state = saved(paused)["extra"]["train"]
    assert state["step"] == 2 and not state["finished"] and "optimizer" in state["resume"]
    with pytest.raises(AssertionError):
        assert_same_weights(tmp_path / "straight.pt", paused, exact=False)
    train(tiny(paused, resume=True), progress=False)
    assert saved(paused)["extra"]["train"]["step"] == 4
    assert_same_weights(tmp_path / "straight.pt", paused, exact=False)


def test_resume_refuses_a_different_run(tmp_path):
    out = tmp_path / "m.pt"
    train(tiny(out, stop_at_step=1), progress=False)
    with pytest.raises(NpuqError, match="lr"):
        train(tiny(out, resume=True, lr=5e-4), progress=False)
    with pytest.raises(NpuqError, match="nothing to resume"):
        train(tiny(tmp_path / "missing.pt", resume=True), progress=False)


def test_time_budget_stops_cleanly_with_a_resumable_checkpoint(tmp_path):
    out = tmp_path / "m.pt"
    train(tiny(out, time_budget_s=0.0), progress=False)  # budget exceeded right after the first step
    state = saved(out)["extra"]["train"]
    assert state["step"] == 1 and not state["finished"]
    train(tiny(out, resume=True), progress=False)
    assert saved(out)["extra"]["train"]["finished"]


def test_refuses_to_overwrite_without_force(tmp_path):
    out = tmp_path / "m.pt"
    out.write_bytes(b"precious")
    with pytest.raises(NpuqError, match="already exists"):
        train(tiny(out, steps=1), progress=False)
    assert out.read_bytes() == b"precious"
    train(tiny(out, steps=1, force=True), progress=False)
    assert saved(out)["extra"]["train"]["finished"]


def test_evaluation_uses_the_stored_size_and_returns_all_metrics(tmp_path):
    from npuq.analysis.metrics import MetricConfig
    from npuq.pipeline import evaluate_model

    out = tmp_path / "m.pt"
    train(tiny(out, steps=2, val_data="synth:n=2,seed=9,size=64x64"), progress=False)
    checkpoint = saved(out)["extra"]
    assert checkpoint["train"]["config"]["size"] == [64, 64]
    assert set(METRIC_NAMES) <= set(checkpoint["val"])
    result = evaluate_model(out, "synth:n=4,seed=5,size=64x64", MetricConfig(), batch_size=2, progress=False)
    assert result["n_images"] > 0
    assert set(METRIC_NAMES) <= set(result)
    assert result["n_images"] + result["n_skipped"] == 4
    assert all(result[name] == result[name] for name in METRIC_NAMES)  # not NaN


def test_fine_tune_into_another_head_keeps_trunk_and_initialises_the_new_head(tmp_path):
    ref = train(tiny(tmp_path / "ref.pt", steps=1), progress=False)
    torch.manual_seed(123)
    model = build_model(tiny(tmp_path / "x.pt", head="int-frac", init=str(ref), loss="head"))
    torch.manual_seed(123)
    fresh = build_model(tiny(tmp_path / "y.pt", head="int-frac", loss="head"))
    source = saved(ref)["state_dict"]
    state, fresh_state = model.state_dict(), fresh.state_dict()
    trunk = [k for k in state if not k.startswith("head.")]
    assert trunk and all(torch.equal(state[k], source[k]) for k in trunk)
    assert all(torch.equal(state[k], fresh_state[k]) for k in state if k.startswith("head."))
    same_head = build_model(tiny(tmp_path / "z.pt", init=str(ref))).state_dict()
    assert all(torch.equal(same_head[k], source[k]) for k in source)
