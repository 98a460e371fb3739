"""Synthetic sequences: fixed worlds, one camera model, smooth trajectories, disjoint splits."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from npuq.data.datasets import open_dataset
from npuq.data.synthetic import (
    FAMILIES,
    SEQUENCE_FOV_DEG,
    SEQUENCE_PARTS,
    SequenceGenerator,
    SynthConfig,
    _collides,
    sequence_part,
    write_synthetic_dataset,
)
from npuq.errors import NpuqError

TINY = SynthConfig(size=(32, 40), mode="sequence")


def test_same_seed_gives_identical_sequences_and_other_seeds_differ():
    a, b, c = (SequenceGenerator(TINY, seed, 40) for seed in (3, 3, 4))
    for i in (0, 17, 39):
        np.testing.assert_array_equal(a.frame(i).rgb, b.frame(i).rgb)
        np.testing.assert_array_equal(a.frame(i).depth, b.frame(i).depth)
    assert not np.array_equal(a.frame(5).depth, c.frame(5).depth)


def test_frames_interleave_the_worlds_and_keep_one_camera_model():
    gen = SequenceGenerator(TINY, 0, 40)
    assert [gen.frame(i).meta["family"] for i in range(8)] == list(FAMILIES) * 2
    fovs = {round(gen.scene(i).camera.fov_h, 9) for i in range(40)}
    assert fovs == {round(math.radians(SEQUENCE_FOV_DEG), 9)}


def _pose(gen, index):
    cam = gen.scene(index).camera
    return cam.position, np.array([cam.yaw, cam.pitch, cam.roll])


@pytest.mark.parametrize("world", range(len(FAMILIES)))
def test_trajectory_is_smooth_and_stays_clear_of_the_scene(world):
    n = 2000  # 500 poses per world (poses are cheap: nothing is rendered)
    gen = SequenceGenerator(TINY, 1, n)
    steps = n // len(FAMILIES)
    poses = [_pose(gen, world + k * len(FAMILIES)) for k in range(steps)]
    moves = [np.linalg.norm(p1 - p0) for (p0, _), (p1, _) in zip(poses, poses[1:], strict=False)]
    turns = [np.abs(a1 - a0).max() for (_, a0), (_, a1) in zip(poses, poses[1:], strict=False)]
    travel = np.linalg.norm(poses[-1][0] - poses[0][0])
    assert travel > 0 and max(moves) < 0.15 and math.degrees(max(turns)) < 1.0
    assert max(moves) < 4 * np.median(moves) + 1e-3  # no jumps
    scene, _ = gen._worlds[world]
    assert not any(_collides(scene, p) for p, _ in poses)


def test_frames_along_a_trajectory_change_gradually():
    gen = SequenceGenerator(TINY, 0, 400)
    near = np.abs(gen.frame(0).depth - gen.frame(4).depth).mean()
    far = np.abs(gen.frame(0).depth - gen.frame(396).depth).mean()
    assert near < far


@pytest.mark.parametrize("n", [80, 1000, 2003])
def test_parts_are_disjoint_ordered_and_leave_a_gap_before_test(n):
    parts = {p: sequence_part(n, p) for p in ("train", "val", "test")}
    sets = {p: set(r) for p, r in parts.items()}
    assert not sets["train"] & sets["test"] and not sets["val"] & sets["test"]
    assert not sets["train"] & sets["val"]
    assert max(sets["train"]) < min(sets["val"]) and max(sets["val"]) < min(sets["test"])
    worlds = len(FAMILIES)
    steps = -(-n // worlds)
    gap = (min(sets["test"]) // worlds) - (max(sets["train"]) // worlds)
    assert gap >= round((SEQUENCE_PARTS["test"][0] - SEQUENCE_PARTS["train"][1]) * steps)
    assert min(sets["test"]) % worlds == 0  # whole time steps: every world is in every part


def test_spec_selects_a_part_and_names_frames_by_their_sequence_index():
    test = open_dataset("synth:mode=sequence,n=40,seed=2,size=32x40,part=test")
    indices = sequence_part(40, "test")
    assert len(test) == len(indices) and test.names[0] == f"{indices[0]:06d}"
    gen = SequenceGenerator(TINY, 2, 40)
    np.testing.assert_allclose(test[0]["depth"][0].numpy(), gen.frame(indices[0]).depth)


@pytest.mark.parametrize("spec", ["synth:n=40,part=test", "synth:mode=sequence,n=40,part=later",
                                  "synth:mode=orbit,n=4"])
def test_bad_sequence_specs_are_refused(spec):
    with pytest.raises(NpuqError):
        open_dataset(spec)


def test_written_sequence_keeps_depth_in_millimetres_and_lists_its_parts(tmp_path):
    out = write_synthetic_dataset(tmp_path / "seq", n=40, seed=0, size=(32, 40), progress=False,
                                  mode="sequence")
    index = json.loads((out / "index.json").read_text())
    assert index["config"]["mode"] == "sequence"
    assert index["parts"]["test"] == [sequence_part(40, "test").start, sequence_part(40, "test").stop]
    png = np.asarray(Image.open(out / "depth" / "000005.png"))
    metres = SequenceGenerator(TINY, 0, 40).frame(5).depth
    assert png.dtype == np.uint16
    np.testing.assert_array_equal(png, np.clip(np.round(metres * 1000), 0, 65535).astype(np.uint16))
