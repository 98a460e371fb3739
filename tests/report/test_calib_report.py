"""Calibration coverage report: numbers, files, every sentence quantified, refusals."""

import json
import re

import numpy as np
import pytest

from npuq.data.calib import kcenter_radius, pool_stats, select_calibration
from npuq.data.datasets import DepthDataset, open_dataset
from npuq.errors import NpuqError
from npuq.report.calib_report import (
    REPORT_FILES,
    REPORT_JSON,
    REPORT_MD,
    pca_2d,
    pick_metrics,
    tv_distance,
    write_calib_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def pool():
    return open_dataset("synth:n=20,seed=0,size=64x64")


@pytest.fixture(scope="module")
def picks(pool):
    selection = select_calibration(pool, 5, "diverse", seed=0, stats=pool_stats(pool))
    baseline = select_calibration(pool, 5, "random", seed=0, stats=selection.stats)
    return selection, baseline


def test_tv_distance():
    assert tv_distance([1, 0], [0, 1]) == 1.0
    assert tv_distance([2, 2], [5, 5]) == 0.0
    assert tv_distance([3, 1], [1, 1]) == pytest.approx(0.25)


def test_whole_pool_pick_covers_everything(picks):
    selection, _ = picks
    metrics = pick_metrics(selection, list(range(selection.pool_size)))
    assert metrics["kcenter_radius"] == 0.0 and metrics["mean_nearest_distance"] == 0.0
    assert metrics["brightness_tv"] == pytest.approx(0.0) and metrics["depth_tv"] == pytest.approx(0.0)
    assert metrics["brightness_bins_covered"] == metrics["brightness_bins_in_pool"]
    assert metrics["depth_mass_covered"] == pytest.approx(1.0)


def test_single_frame_pick_covers_little(picks):
    selection, _ = picks
    metrics = pick_metrics(selection, [0])
    assert metrics["brightness_bins_covered"] == 1
    assert metrics["brightness_tv"] > 0.5
    assert metrics["kcenter_radius"] > pick_metrics(selection, selection.indices)["kcenter_radius"]


def test_pca_projection_keeps_the_main_axis():
    rng = np.random.default_rng(0)
    x = np.outer(rng.normal(size=50), [3.0, 4.0, 0.0]) + rng.normal(0, 0.01, (50, 3))
    coords, shares = pca_2d(x)
    assert shares[0] > 0.99 and sum(shares) <= 1.0 + 1e-9
    assert np.allclose(np.abs(coords[:, 0]), np.linalg.norm(x - x.mean(0), axis=1), atol=0.05)


def test_report_files_and_numbers(tmp_path, pool, picks):
    selection, baseline = picks
    doc = write_calib_report(tmp_path / "rep", pool, selection, baseline)
    for name in REPORT_FILES:
        assert (tmp_path / "rep" / name).is_file()
    for name in REPORT_FILES:
        if name.endswith(".png"):
            assert (tmp_path / "rep" / name).read_bytes()[:8] == PNG_SIGNATURE
    sel_radius = kcenter_radius(selection.descriptors, selection.indices)
    base_radius = kcenter_radius(selection.descriptors, baseline.indices)
    assert doc["selection"]["metrics"]["kcenter_radius"] == pytest.approx(sel_radius)
    assert doc["baseline"]["metrics"]["kcenter_radius"] == pytest.approx(base_radius)
    saved = json.loads((tmp_path / "rep" / REPORT_JSON).read_text())
    assert saved["selection"]["names"] == selection.names
    assert saved["baseline"]["metrics"]["kcenter_radius"] == pytest.approx(base_radius)
    assert sum(saved["pool"]["families"].values()) == len(pool)
    md = (tmp_path / "rep" / REPORT_MD).read_text()
    assert f"{sel_radius:.3f}" in md and f"{base_radius:.3f}" in md
    for family, count in saved["pool"]["families"].items():
        assert f"| {family} | {count} |" in md


def test_every_sentence_states_a_number(tmp_path, pool, picks):
    write_calib_report(tmp_path / "rep", pool, *picks)
    md = (tmp_path / "rep" / REPORT_MD).read_text()
    prose = [ln for ln in md.splitlines() if ln and not ln.startswith(("#", "|"))]
    assert len(prose) >= 10
    for line in prose:
        assert re.search(r"\d", line), line


def test_refusals(tmp_path, pool, picks):
    selection, baseline = picks
    write_calib_report(tmp_path / "rep", pool, selection, baseline)
    with pytest.raises(NpuqError, match="already exists"):
        write_calib_report(tmp_path / "rep", pool, selection, baseline)
    write_calib_report(tmp_path / "rep", pool, selection, baseline, force=True)
    bigger = select_calibration(pool, 7, "random", seed=0, stats=selection.stats)
    with pytest.raises(NpuqError, match="same size"):
        write_calib_report(tmp_path / "other", pool, selection, bigger)
    part = DepthDataset(pool.source, indices=list(range(10)), size=pool.size)
    with pytest.raises(NpuqError, match="the pool has 10"):
        write_calib_report(tmp_path / "other", part, selection, baseline)
