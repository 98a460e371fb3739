"""calib-search: per-frame histograms stand in for the frames, the search lowers the trapped tensors'
error, it is deterministic by seed and reads training frames only (validation only to score)."""

import dataclasses

import numpy as np
import pytest
import torch

from npuq.quant.observers import RangeObserver, observer_from_histogram
from npuq.quant.profile import activation_calibrators, load_profile
from npuq.quant.quantizer import IntGrid
from npuq.remedies import DataRef, apply_remedy
from npuq.remedies.calib_search import FINE_BINS, CalibSearchConfig, SetCost, TensorStats, swap_search

DEFAULT = load_profile("npu-default")


def _elu_frames(n=24, seed=0):
    """ELU-like frames: a spike at -1 and a tail up to ~8; frames 0-11 have far fewer tail values."""
    g = torch.Generator().manual_seed(seed)
    frames = []
    for i in range(n):
        x = torch.randn(4000, generator=g) * 0.5
        x = torch.where(x < 0, torch.expm1(x * 6), x)  # a mass near -1
        tail = 5 if i < n // 2 else 800
        x[:tail] = 2.0 + 6.0 * torch.rand(tail, generator=g)
        frames.append(x)
    return frames


def _stats(frames):
    bound = max(float(f.abs().max()) for f in frames)
    hist = np.stack([torch.histc(f, FINE_BINS, -bound, bound).numpy() for f in frames])
    return TensorStats("t", bound, hist, np.array([float(f.min()) for f in frames]),
                       np.array([float(f.max()) for f in frames]), np.zeros(len(frames)))


@pytest.mark.parametrize("calibrator", ["kl/tensorrt", "mse", "percentile 99.99", "minmax", "asym",
                                        "kl/onnxruntime"])
def test_summed_frame_histograms_give_the_calibrators_range(calibrator):
    frames = _elu_frames()
    cfg = activation_calibrators(DEFAULT, (calibrator,))[calibrator]
    grid = IntGrid.for_config(cfg)
    direct = RangeObserver(cfg)
    for f in frames:
        direct.observe_minmax(f)
    for f in frames:
        direct.observe_histogram(f)
    stats = _stats(frames)
    every = np.arange(len(frames))
    emulated = observer_from_histogram(cfg, stats.hist.sum(0), -stats.bound, stats.bound,
                                       stats.mins.min(), stats.maxs.max())
    (lo, hi), (elo, ehi) = direct.compute_range(grid), emulated.compute_range(grid)
    tolerance = 3 * 2 * stats.bound / FINE_BINS + 0.01 * (hi - lo)
    assert abs(elo - lo) <= tolerance and abs(ehi - hi) <= tolerance
    assert stats.chosen_range(every, cfg, grid) == pytest.approx((elo, ehi))


def test_the_swap_search_prefers_frames_that_lift_the_trapped_range():
    stats = _stats(_elu_frames())
    calibrators = activation_calibrators(DEFAULT, ("profile",))
    cost = SetCost([stats], calibrators)
    chosen, trace = swap_search(cost, 24, 6, rounds=40, tries=6, rng=np.random.default_rng(0))
    assert all(b <= a for a, b in zip(trace, trace[1:], strict=False))
    assert trace[-1] < trace[0]
    assert cost(np.arange(0, 6)) > 5.0 > cost(np.arange(12, 18))  # the tail-poor frames lock at 1.0
    grid = IntGrid.for_config(calibrators["profile"])
    assert stats.chosen_range(np.arange(0, 6), calibrators["profile"], grid)[1] < 1.1
    assert stats.chosen_range(chosen, calibrators["profile"], grid)[1] > 7.0


def test_the_remedy_is_deterministic_and_reads_training_frames_only(handoff, context, monkeypatch):
    opened = []
    real_open = DataRef.open

    def spy(self, *args, **kwargs):
        opened.append(self.path)
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(DataRef, "open", spy)
    cfg = CalibSearchConfig(size=3, candidates=8, rounds=3, tries=2, calibrators=("profile", "minmax"),
                            alternatives=("search",), trap_ratio=1.01)
    first = apply_remedy(handoff, cfg, context)
    assert all("part=train" in p for p in opened)
    second = apply_remedy(handoff, cfg, context.within("again"))
    other = apply_remedy(handoff, dataclasses.replace(cfg, seed=5), context.within("other"))
    assert first.calib == second.calib and first.calib != other.calib
    pool = set(context.train.open((64, 64)).names)
    assert len(first.calib.frames) == 3 and set(first.calib.frames) <= pool
    assert first.notes["cost_end"] <= first.notes["cost_start"]


def test_alternatives_are_scored_on_validation_frames(handoff, context):
    cfg = CalibSearchConfig(size=3, candidates=8, rounds=1, tries=2, calibrators=("profile",),
                            alternatives=("search", "handed"))
    result = apply_remedy(handoff, cfg, context)
    scores = result.notes["val_int8"]
    assert set(scores) == {"search", "handed"} and result.notes["chosen"] == min(scores, key=scores.get)
    assert result.calib == (handoff.calib if result.notes["chosen"] == "handed" else result.calib)


def test_bad_configs_are_refused():
    from npuq.errors import NpuqError

    with pytest.raises(NpuqError, match="candidates"):
        CalibSearchConfig(size=10, candidates=5)
    with pytest.raises(NpuqError, match="alternatives"):
        CalibSearchConfig(alternatives=("diverse",))
    with pytest.raises(NpuqError, match="calibrators"):
        CalibSearchConfig(calibrators=("magic",))
