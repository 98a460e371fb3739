"""The procedural RGB-D generator: determinism, geometry, variety, and the folder writer."""

import json
import math

import numpy as np
import pytest
from PIL import Image

from npuq.data.datasets import open_dataset
from npuq.data.synthetic import (
    FAMILIES,
    PLANE,
    Camera,
    Lighting,
    SceneBuilder,
    SceneGenerator,
    SynthConfig,
    approx_normal,
    camera_rays,
    cast,
    texture_bank,
    write_synthetic_dataset,
)
from npuq.errors import NpuqError

TINY = SynthConfig(size=(32, 40))
META_KEYS = ("family", "brightness", "contrast", "depth_min", "depth_max", "depth_median", "valid_fraction",
             "seed", "index")


def assert_same_frame(a, b):
    np.testing.assert_array_equal(a.rgb, b.rgb)
    np.testing.assert_array_equal(a.depth, b.depth)
    assert a.meta == b.meta


def test_same_seed_and_index_give_identical_frames():
    assert_same_frame(SceneGenerator(TINY, 5).frame(3), SceneGenerator(TINY, 5).frame(3))


def test_frame_does_not_depend_on_call_order():
    forward = SceneGenerator(TINY, 2)
    in_order = [forward.frame(i) for i in range(4)]
    backward = SceneGenerator(TINY, 2)
    for i in reversed(range(4)):
        assert_same_frame(backward.frame(i), in_order[i])


def test_different_seeds_or_indices_differ():
    a = SceneGenerator(TINY, 0).frame(0)
    assert not np.array_equal(a.rgb, SceneGenerator(TINY, 1).frame(0).rgb)
    assert not np.array_equal(a.depth, SceneGenerator(TINY, 0).frame(1).depth)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_family_renders_valid_metric_depth(family):
    cfg = SynthConfig(size=(32, 40), families=(family,))
    for index in range(3):
        frame = SceneGenerator(cfg, 11).frame(index)
        assert frame.rgb.shape == (32, 40, 3) and frame.rgb.dtype == np.uint8
        assert frame.depth.shape == (32, 40) and frame.depth.dtype == np.float32
        valid = frame.depth[frame.depth > 0]
        assert valid.size >= 0.3 * frame.depth.size
        assert valid.min() >= cfg.min_depth and valid.max() <= cfg.max_depth
        meta = frame.meta
        assert set(META_KEYS) <= set(meta)
        assert meta["family"] == family and meta["seed"] == 11 and meta["index"] == index
        assert meta["valid_fraction"] == pytest.approx(valid.size / frame.depth.size, abs=1e-4)
        assert meta["depth_min"] <= meta["depth_median"] <= meta["depth_max"]
        assert meta["depth_median"] == pytest.approx(float(np.median(valid)), abs=1e-3)
        luma = frame.rgb.astype(np.float64) @ [0.299, 0.587, 0.114] / 255
        assert meta["brightness"] == pytest.approx(luma.mean(), abs=1e-4)
        assert meta["contrast"] == pytest.approx(luma.std(), abs=1e-4)


def test_families_have_their_own_depth_scales():
    def median_depth(family):
        gen = SceneGenerator(SynthConfig(size=(32, 40), families=(family,)), 4)
        return np.median([gen.frame(i).meta["depth_median"] for i in range(6)])

    assert median_depth("tabletop") < 1.5 < median_depth("indoor_room") < median_depth("street")


def test_depth_outside_the_range_is_invalid():
    cfg = SynthConfig(size=(32, 40), max_depth=4.0, families=("corridor",))
    depth = SceneGenerator(cfg, 0).frame(0).depth
    assert (depth == 0).any()
    assert depth.max() <= 4.0


def test_brightness_varies_from_dark_to_bright():
    gen = SceneGenerator(TINY, 7)
    brightness = [gen.frame(i).meta["brightness"] for i in range(16)]
    assert min(brightness) < 0.2 and max(brightness) > 0.35


def test_noise_switch_changes_rgb_but_not_geometry():
    clean = SceneGenerator(SynthConfig(size=(32, 40), noise=False), 3).frame(2)
    noisy = SceneGenerator(TINY, 3).frame(2)
    assert not np.array_equal(clean.rgb, noisy.rgb)
    both = (clean.depth > 0) & (noisy.depth > 0)
    np.testing.assert_allclose(noisy.depth[both], clean.depth[both], rtol=0.02)


def single_plane_depth(z: float, fov_deg: float) -> np.ndarray:
    """Camera at the origin looking along +z at a wall at ``z``: depth for every pixel."""
    b = SceneBuilder(np.random.default_rng(0), texture_bank())
    b.plane(2, z, -1.0, b.material(("plain",), (0.1, 0.2)))
    camera = Camera(np.zeros(3, np.float32), 0.0, 0.0, 0.0, math.radians(fov_deg))
    scene = b.build("test", camera, Lighting(0.5, 0.5, np.array([0, 1, 0], np.float32), 0.5))
    assert scene.prims["kind"][0] == PLANE
    t, pid = cast(scene, camera_rays(camera, 16, 20), 16, 20)
    assert (pid == 0).all()
    return t


def test_depth_is_z_depth_not_ray_length():
    # A fronto-parallel wall has the same z-depth at every pixel, even at wide field of view,
    # where the corner rays are much longer than the centre ray.
    np.testing.assert_allclose(single_plane_depth(5.0, 90.0), 5.0, rtol=1e-5)


def test_box_in_front_of_wall_occludes_it():
    b = SceneBuilder(np.random.default_rng(0), texture_bank())
    mat = b.material(("plain",), (0.1, 0.2))
    b.plane(2, 6.0, -1.0, mat)
    b.box((0.0, 0.0, 3.0), (0.5, 0.5, 0.5), mat)  # front face at z = 2.5
    camera = Camera(np.zeros(3, np.float32), 0.0, 0.0, 0.0, math.radians(60))
    scene = b.build("test", camera, Lighting(0.5, 0.5, np.array([0, 1, 0], np.float32), 0.5))
    t, pid = cast(scene, camera_rays(camera, 32, 32), 32, 32)
    assert t[16, 16] == pytest.approx(2.5, rel=1e-5) and pid[16, 16] == 1
    assert t[0, 0] == pytest.approx(6.0, rel=1e-5) and pid[0, 0] == 0


def test_approx_normal_has_unit_variance():
    x = approx_normal(np.random.default_rng(0), (200_000,))
    assert abs(float(x.mean())) < 0.01 and float(x.std()) == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("kwargs", [{"size": (0, 10)}, {"min_depth": 5.0, "max_depth": 1.0},
                                    {"families": ("moon",)}])
def test_bad_config_is_refused(kwargs):
    with pytest.raises(NpuqError):
        SynthConfig(**kwargs)


def test_write_then_read_round_trip(tmp_path):
    out = write_synthetic_dataset(tmp_path / "set", n=4, seed=3, size=(32, 40), progress=False)
    index = json.loads((out / "index.json").read_text())
    assert index["format"] == "npuq-synth/1" and index["seed"] == 3 and index["size"] == [32, 40]
    assert index["config"]["max_depth"] == 16.0 and len(index["frames"]) == 4
    assert index["frames"][2]["rgb"] == "rgb/000002.png" and index["frames"][2]["name"] == "000002"
    depth_png = np.asarray(Image.open(out / "depth" / "000001.png"))
    assert depth_png.dtype == np.uint16

    dataset = open_dataset(out)
    assert dataset.format == "npuq-synth" and len(dataset) == 4
    gen = SceneGenerator(SynthConfig(size=(32, 40)), 3)
    for i in range(4):
        item, frame = dataset[i], gen.frame(i)
        assert item["name"] == f"{i:06d}" and item["index"] == i
        np.testing.assert_array_equal((item["rgb"].permute(1, 2, 0).numpy() * 255).round(), frame.rgb)
        depth = item["depth"][0].numpy()
        np.testing.assert_array_equal(depth > 0, frame.depth > 0)
        assert np.abs(depth - frame.depth).max() <= 0.001
        assert dataset.meta[i]["brightness"] == frame.meta["brightness"]


def test_writer_replaces_only_its_own_output_and_only_with_force(tmp_path):
    out = tmp_path / "set"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(NpuqError, match="already exists; pass --force"):
        write_synthetic_dataset(out, n=1, seed=0, size=(32, 40), progress=False)
    with pytest.raises(NpuqError, match="npuq did not write"):
        write_synthetic_dataset(out, n=1, seed=0, size=(32, 40), force=True, progress=False)
    assert (out / "notes.txt").read_text() == "keep me"
    out = tmp_path / "own"
    write_synthetic_dataset(out, n=3, seed=0, size=(32, 40), progress=False)
    write_synthetic_dataset(out, n=1, seed=0, size=(32, 40), force=True, progress=False)
    assert sorted(p.name for p in (out / "depth").iterdir()) == ["000000.png"]  # replaced as a whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["own", "set"]  # no temporaries left
