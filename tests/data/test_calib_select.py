"""Calibration-set selection: strategies, descriptors, k-center greedy, selection files, errors.

Pools are tiny in-memory synthetic sets (64x64) or 7-Scenes folders written in tmp_path; the one model
is an untrained DepthResNet-18 (features only need to exist, not to be good).
"""

import itertools
from collections import Counter

import numpy as np
import pytest
import torch

from npuq.data.calib import (
    BRIGHTNESS_BINS,
    DEPTH_BINS,
    STRATEGIES,
    kcenter_greedy,
    kcenter_radius,
    pool_stats,
    random_indices,
    read_selection,
    select_calibration,
    stack_rgb,
    write_selection,
)
from npuq.data.datasets import DepthDataset, open_dataset
from npuq.errors import NpuqError

POOL = "synth:n=24,seed=0,size=64x64"


@pytest.fixture(scope="module")
def pool():
    return open_dataset(POOL)


@pytest.fixture(scope="module")
def stats(pool):
    return pool_stats(pool)


@pytest.fixture(scope="module")
def model():
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return DepthResNet(DepthNetConfig(depth=18)).eval()


# ----------------------------------------------------------------------------------------- strategies


def test_random_strategy_is_the_pipelines_random_pick(pool, stats):
    sel = select_calibration(pool, 5, "random", seed=3, stats=stats)
    assert sel.indices == random_indices(len(pool), 5, 3)
    assert sel.names == [pool.names[i] for i in sel.indices]
    assert sel.strategy == "random" and sel.seed == 3 and sel.n == 5 and sel.pool_size == 24


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_is_deterministic_and_picks_distinct_frames(pool, stats, strategy):
    a = select_calibration(pool, 7, strategy, seed=1, stats=stats)
    b = select_calibration(pool, 7, strategy, seed=1, stats=pool_stats(pool))
    assert a.indices == b.indices
    assert len(set(a.indices)) == 7
    assert a.radius == pytest.approx(kcenter_radius(a.descriptors, a.indices))


@pytest.mark.parametrize("strategy", ["random", "stratified"])
def test_seeded_strategies_change_with_the_seed(pool, stats, strategy):
    picks = {tuple(select_calibration(pool, 6, strategy, seed=s, stats=stats).indices) for s in range(4)}
    assert len(picks) > 1


def test_n_above_the_pool_is_refused_and_n_equal_takes_every_frame(pool, stats):
    for strategy in STRATEGIES:
        with pytest.raises(NpuqError, match="exceeds the pool"):
            select_calibration(pool, len(pool) + 1, strategy, seed=0, stats=stats)
        sel = select_calibration(pool, len(pool), strategy, seed=0, stats=stats)
        assert sorted(sel.indices) == list(range(len(pool)))
        assert sel.radius == 0.0


def test_stratified_balances_family_and_brightness_strata(pool, stats):
    sel = select_calibration(pool, 9, "stratified", seed=2, stats=stats)
    families = [m["family"] for m in pool.meta]
    pairs = zip(sel.strata, families, strict=True)
    assert all(label.startswith(f"{fam}/brightness-") for label, fam in pairs)
    size = Counter(sel.strata)
    taken = Counter(sel.strata[i] for i in sel.indices)
    # Round-robin: strata that are not exhausted differ by at most one pick.
    open_counts = [taken[s] for s in size if taken[s] < size[s]]
    assert max(open_counts) - min(open_counts) <= 1
    assert all(taken[s] >= min(size[s], 9 // len(size)) for s in size)
    # More strata than picks would need: every pick comes from a different stratum.
    sel4 = select_calibration(pool, 4, "stratified", seed=2, stats=stats)
    assert len({sel4.strata[i] for i in sel4.indices}) == 4


def test_stratified_uses_brightness_alone_without_family_metadata(seven_scenes_dir):
    rng = np.random.default_rng(0)
    folder = seven_scenes_dir([rng.integers(500, 4000, (32, 32)) for _ in range(9)])
    pool = open_dataset(folder)
    assert all(not m for m in pool.meta)
    sel = select_calibration(pool, 3, "stratified", seed=0)
    assert set(sel.strata) == {f"brightness-{b}" for b in range(BRIGHTNESS_BINS)}
    assert sorted(sel.strata[i] for i in sel.indices) == ["brightness-0", "brightness-1", "brightness-2"]
    # Brightness comes from the RGB: the darkest third really is darker than the brightest third.
    b = sel.stats.brightness
    dark = [i for i, s in enumerate(sel.strata) if s == "brightness-0"]
    light = [i for i, s in enumerate(sel.strata) if s == "brightness-2"]
    assert b[dark].max() <= b[light].min()


# ------------------------------------------------------------------------------------ k-center greedy


def brute_force_radius(x: np.ndarray, k: int) -> float:
    dist = np.linalg.norm(x[:, None] - x[None], axis=2)
    return min(dist[:, list(s)].min(axis=1).max() for s in itertools.combinations(range(len(x)), k))


def test_kcenter_greedy_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = np.concatenate([c + rng.normal(0, 0.1, (5, 2)) for c in centres])
    picked, nearest = kcenter_greedy(x, 3)
    assert sorted(i // 5 for i in picked) == [0, 1, 2]
    assert nearest.max() == pytest.approx(kcenter_radius(x, picked))
    assert nearest.max() < 1.0


def test_kcenter_greedy_is_within_twice_the_optimal_radius():
    x = np.random.default_rng(1).normal(size=(12, 3))
    for k in (2, 3, 4):
        picked, _ = kcenter_greedy(x, k)
        assert kcenter_radius(x, picked) <= 2 * brute_force_radius(x, k) + 1e-12
    first, _ = kcenter_greedy(x, 1)
    assert first == [int(np.argmin(np.linalg.norm(x - x.mean(0), axis=1)))]


def test_diverse_covers_the_pool_better_than_random(pool, stats):
    diverse = select_calibration(pool, 6, "diverse", seed=0, stats=stats)
    randoms = [select_calibration(pool, 6, "random", seed=s, stats=stats).radius for s in range(8)]
    assert diverse.radius < np.mean(randoms)
    assert diverse.radius <= 2 * brute_force_radius(stats.descriptors, 6) + 1e-9


# ---------------------------------------------------------------------------------------- descriptors


def test_descriptor_blocks_weigh_equally(stats):
    assert set(stats.blocks) == {"photometric", "depth"}  # no model: no feature block
    for start, end in stats.blocks.values():
        block = stats.descriptors[:, start:end]
        assert np.allclose(block.mean(axis=0), 0, atol=1e-9)
        assert block.var(axis=0).sum() == pytest.approx(1.0)
    assert stats.depth_hist.shape == (24, DEPTH_BINS)
    assert np.allclose(stats.depth_hist.sum(axis=1), 1.0)
    assert stats.depth_source == ["gt"] * 24
    # Brightness is the RGB's mean luma: close to the generator's own statistic.
    meta_brightness = np.array([m["brightness"] for m in open_dataset(POOL).meta])
    assert np.abs(stats.brightness - meta_brightness).max() < 0.01


def test_model_adds_pooled_encoder_features(pool, model):
    small = DepthDataset(pool.source, indices=list(range(5)), size=pool.size)
    stats = pool_stats(small, model)
    assert stats.blocks["features"][1] - stats.blocks["features"][0] == sum(model.encoder.num_ch_enc)
    rgb = stack_rgb(small, [2])
    with torch.no_grad():
        expected = torch.cat([f.mean(dim=(2, 3)) for f in model.encoder(rgb)], dim=1)[0].numpy()
    assert np.allclose(stats.features[2], expected, atol=1e-5)


def test_depth_histogram_falls_back_to_the_prediction(seven_scenes_dir, model):
    zeros = [np.zeros((64, 64), dtype=np.uint16)] * 2
    pool = open_dataset(seven_scenes_dir(zeros + [np.full((64, 64), 1500, dtype=np.uint16)]))
    without = pool_stats(pool)
    assert without.depth_source == ["none", "none", "gt"]
    assert np.all(without.depth_hist[:2] == 0)
    with_model = pool_stats(pool, model)
    assert with_model.depth_source == ["pred", "pred", "gt"]
    assert np.allclose(with_model.depth_hist[:2].sum(axis=1), 1.0)
    assert np.array_equal(with_model.depth_hist[2], without.depth_hist[2])


def test_model_needs_input_size_multiple_of_32(model):
    pool = open_dataset("synth:n=2,seed=0,size=40x40")
    with pytest.raises(NpuqError, match="multiples of 32"):
        pool_stats(pool, model)


# ------------------------------------------------------------------------------------ selection files


def test_written_selection_feeds_the_pipeline(tmp_path, pool, stats):
    from npuq.pipeline import load_calibration

    sel = select_calibration(pool, 5, "diverse", seed=0, stats=stats)
    path = write_selection(tmp_path / "calib.txt", sel)
    assert path.read_text().splitlines() == sel.names
    assert read_selection(path, pool) == sel.indices
    rgb = load_calibration(POOL, (64, 64), n_calib=99, seed=0, calib_list=path)
    assert torch.equal(rgb, stack_rgb(pool, sel.indices))
    with pytest.raises(NpuqError, match="already exists"):
        write_selection(path, sel)
    write_selection(path, select_calibration(pool, 2, "random", seed=0, stats=stats), force=True)
    assert len(path.read_text().splitlines()) == 2


def test_read_selection_names_the_problem(tmp_path, pool):
    bad = tmp_path / "bad.txt"
    bad.write_text("000001\nnot-a-frame\n")
    with pytest.raises(NpuqError, match=r"bad\.txt: 1 frames not in .*not-a-frame"):
        read_selection(bad, pool)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(NpuqError, match="lists no frames"):
        read_selection(empty, pool)


# --------------------------------------------------------------------------------------------- errors


def test_bad_requests_raise_npuq_error(pool, stats):
    with pytest.raises(NpuqError, match="positive"):
        select_calibration(pool, 0, "random", seed=0, stats=stats)
    with pytest.raises(NpuqError, match="unknown"):
        select_calibration(pool, 3, "kmeans", seed=0, stats=stats)
    with pytest.raises(NpuqError, match="empty"):
        select_calibration(DepthDataset(pool.source, indices=[]), 3, "random", seed=0)
    other = DepthDataset(pool.source, indices=[0, 1, 2])
    with pytest.raises(NpuqError, match="precomputed statistics"):
        select_calibration(other, 2, "random", seed=0, stats=stats)
