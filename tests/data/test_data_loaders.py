"""Dataset readers on the shared real fixtures, the synth: spec, and every kind of bad input."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from npuq.data.datasets import open_dataset, parse_synth_spec
from npuq.data.synthetic import SceneGenerator, SynthConfig
from npuq.errors import NpuqError


def raw_png(path):
    return np.asarray(Image.open(path)).astype(np.float64)


def check_item(item, rgb_hw, depth_hw):
    assert item["rgb"].dtype == torch.float32 and tuple(item["rgb"].shape) == (3, *rgb_hw)
    assert float(item["rgb"].min()) >= 0.0 and float(item["rgb"].max()) <= 1.0
    assert item["depth"].dtype == torch.float32 and tuple(item["depth"].shape) == (1, *depth_hw)


# ---- real fixtures ------------------------------------------------------------------------------


def test_nyu_csv_layout_in_millimetres(shared_data):
    folder = shared_data / "fixtures" / "nyu2-mini"
    dataset = open_dataset(folder)
    assert dataset.format == "nyu-csv" and len(dataset) == 10
    item = dataset[3]
    check_item(item, (480, 640), (480, 640))
    assert item["name"] == "image_3" and item["index"] == 3
    depth = item["depth"][0].numpy()
    np.testing.assert_allclose(depth, raw_png(folder / "depth_3.png") / 1000, rtol=1e-6)
    assert (depth > 0).all() and depth.min() > 0.5 and depth.max() < 10.0  # dense NYU, metres
    same = open_dataset(folder / "nyu2_mini_test.csv")
    assert same.names == dataset.names


def test_resizing_rgb_and_depth(shared_data):
    folder = shared_data / "fixtures" / "nyu2-mini"
    item = open_dataset(folder, size=(48, 64))[0]
    check_item(item, (48, 64), (48, 64))
    native = open_dataset(folder, size=(48, 64), depth_at="native")[0]
    check_item(native, (48, 64), (480, 640))
    full = open_dataset(folder)[0]
    # Nearest resizing picks GT values, it never invents new depths.
    assert set(np.unique(item["depth"].numpy())) <= set(np.unique(full["depth"].numpy()))
    assert float(item["rgb"].mean()) == pytest.approx(float(full["rgb"].mean()), abs=0.01)


def test_kitti_sparse_depth_over_256(shared_data):
    folder = shared_data / "fixtures" / "kitti-demo"
    dataset = open_dataset(folder)
    assert dataset.format == "annotations-json" and len(dataset) == 3
    assert dataset.meta[0]["depth_scale"] == 256.0
    item = dataset[0]
    check_item(item, (375, 1242), (375, 1242))
    depth = item["depth"][0].numpy()
    raw = raw_png(folder / "depth" / f"{item['name']}.png")
    np.testing.assert_allclose(depth, raw / 256, rtol=1e-6)
    valid = depth[depth > 0]
    assert 0.05 < valid.size / depth.size < 0.5  # LiDAR: sparse
    assert valid.min() > 1.0 and 40.0 < valid.max() < 120.0


def test_metric3d_nyu_demo_reads_depth_scale_from_json(shared_data):
    folder = shared_data / "fixtures" / "nyu-demo"
    dataset = open_dataset(folder / "test_annotations.json")
    assert len(dataset) == 3 and dataset.meta[0]["depth_scale"] == 1000.0
    depth = dataset[0]["depth"][0].numpy()
    valid = depth[depth > 0]
    assert valid.min() > 0.3 and valid.max() < 10.0 and 2.0 < np.median(valid) < 5.0


def test_seven_scenes_split_by_frame_index(shared_data):
    folder = shared_data / "real" / "7scenes-redkitchen"
    train = open_dataset(folder, frames=slice(0, 800))
    test = open_dataset(folder, frames=slice(800, 1000))
    assert train.format == "7scenes" and len(train) == 800 and len(test) == 200
    assert train.names[0] == "frame-000000" and train.names[-1] == "frame-000799"
    assert test.names[0] == "frame-000800" and test.names[-1] == "frame-000999"
    item = test[0]
    assert item["name"] == "frame-000800" and item["index"] == 0
    check_item(item, (240, 320), (240, 320))
    depth = item["depth"][0].numpy()
    np.testing.assert_allclose(depth, raw_png(folder / "frame-000800.depth.png") / 1000, rtol=1e-6)
    valid = depth[depth > 0]
    assert 0.8 < valid.size / depth.size < 0.95
    assert valid.min() > 0.5 and valid.max() < 5.0


# ---- synth: spec ---------------------------------------------------------------------------------


def test_synth_spec_matches_the_generator():
    dataset = open_dataset("synth:n=3,seed=4,size=32x40")
    assert dataset.format == "synth" and len(dataset) == 3
    frame = SceneGenerator(SynthConfig(size=(32, 40)), 4).frame(2)
    item = dataset[2]
    check_item(item, (32, 40), (32, 40))
    np.testing.assert_array_equal((item["rgb"].permute(1, 2, 0).numpy() * 255).round(), frame.rgb)
    np.testing.assert_array_equal(item["depth"][0].numpy(), frame.depth)
    assert dataset.meta[2] == frame.meta and item["name"] == "000002"


def test_synth_spec_without_size_renders_at_the_requested_size():
    item = open_dataset("synth:n=2,seed=1,families=street", size=(32, 48))[1]
    check_item(item, (32, 48), (32, 48))
    assert parse_synth_spec("synth:n=2,seed=1,families=street+corridor,noise=0") == {
        "n": 2, "seed": 1, "families": ("street", "corridor"), "noise": False}


@pytest.mark.parametrize("spec", ["synth:n=x", "synth:n=0", "synth:size=12", "synth:colour=red",
                                  "synth:families=moon", "synth:n"])
def test_bad_synth_spec(spec):
    with pytest.raises(NpuqError, match="synth:"):
        open_dataset(spec)


# ---- small on-disk layouts and bad input ---------------------------------------------------------


def test_all_zero_depth_stays_zero_and_65535_is_invalid(seven_scenes_dir):
    depth = np.zeros((12, 16), np.uint16)
    partly = np.full((12, 16), 1500, np.uint16)
    partly[:, :4] = 65535
    dataset = open_dataset(seven_scenes_dir([depth, partly]), size=(6, 8))
    empty = dataset[0]["depth"]
    assert tuple(empty.shape) == (1, 6, 8) and float(empty.abs().max()) == 0.0
    full = open_dataset(seven_scenes_dir([depth, partly]))[1]["depth"][0].numpy()
    assert (full[:, :4] == 0).all() and np.allclose(full[:, 4:], 1.5)


def test_missing_path(tmp_path):
    with pytest.raises(NpuqError, match="no such file"):
        open_dataset(tmp_path / "nowhere")


def test_folder_without_frames(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(NpuqError, match="no recognisable RGB-D frames") as err:
        open_dataset(tmp_path)
    assert str(tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_corrupt_rgb_is_reported_when_read(seven_scenes_dir):
    folder = seven_scenes_dir([np.full((8, 8), 1000, np.uint16)] * 2)
    (folder / "frame-000001.color.png").write_bytes(b"\x89PNG garbage, not an image")
    dataset = open_dataset(folder)
    assert dataset[0]["name"] == "frame-000000"
    with pytest.raises(NpuqError, match="frame-000001.color.png: unreadable image"):
        dataset[1]


def test_corrupt_depth_png(seven_scenes_dir):
    folder = seven_scenes_dir([np.full((8, 8), 1000, np.uint16)])
    (folder / "frame-000000.depth.png").write_bytes(b"garbage bytes")
    with pytest.raises(NpuqError, match="frame-000000.depth.png: unreadable image"):
        open_dataset(folder)[0]


def test_eight_bit_depth_png_names_the_expected_dtype(seven_scenes_dir):
    folder = seven_scenes_dir([np.full((8, 8), 1000, np.uint16)])
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(folder / "frame-000000.depth.png")
    with pytest.raises(NpuqError, match=r"frame-000000.depth.png: depth PNG is 8-bit .*16-bit .*uint16"):
        open_dataset(folder)[0]


def write_listing(tmp_path, depth_name, depth_array=None):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    if depth_array is not None:
        np.save(tmp_path / depth_name, depth_array)
    (tmp_path / "list.csv").write_text(f"rgb.png,{depth_name}\n")
    return tmp_path / "list.csv"


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_depth_names_the_file(tmp_path, bad):
    depth = np.ones((8, 8), np.float32)
    depth[2, 3] = bad
    dataset = open_dataset(write_listing(tmp_path, "depth.npy", depth))
    with pytest.raises(NpuqError, match=r"depth.npy: depth has NaN or Inf"):
        dataset[0]


def test_float_npy_depth_is_metres(tmp_path):
    depth = np.full((8, 8), 2.5, np.float32)
    item = open_dataset(write_listing(tmp_path, "depth.npy", depth))[0]
    assert torch.allclose(item["depth"], torch.full((1, 8, 8), 2.5))


def test_listing_that_names_a_missing_file(tmp_path):
    with pytest.raises(NpuqError, match=r"list.csv: listed file 'nope.png' not found"):
        open_dataset(write_listing(tmp_path, "nope.png"))


def test_index_json_with_missing_files(tmp_path):
    from npuq.data.synthetic import write_synthetic_dataset

    out = write_synthetic_dataset(tmp_path / "set", n=2, seed=0, size=(32, 40), progress=False)
    (out / "depth" / "000001.png").unlink()
    with pytest.raises(NpuqError, match=r"index.json: 1 listed files missing \(first: depth/000001.png\)"):
        open_dataset(out)


def test_unreadable_index_json(tmp_path):
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(NpuqError, match="index.json: unreadable JSON"):
        open_dataset(tmp_path)


def test_annotation_json_without_depth_scale(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint16)).save(tmp_path / "d.png")
    listing = {"files": [{"rgb": "a.png", "depth": "d.png"}]}
    (tmp_path / "test_annotations.json").write_text(json.dumps(listing))
    with pytest.raises(NpuqError, match="depth_scale"):
        open_dataset(tmp_path)


def test_frames_slice_selecting_nothing_and_bad_options(seven_scenes_dir):
    folder = seven_scenes_dir([np.full((8, 8), 1000, np.uint16)])
    with pytest.raises(NpuqError, match="selects none of 1 frames"):
        open_dataset(folder, frames=slice(5, 10))
    with pytest.raises(NpuqError, match="depth_at"):
        open_dataset(folder, depth_at="gt")
    with pytest.raises(NpuqError, match="size"):
        open_dataset(folder, size=(0, 8))
