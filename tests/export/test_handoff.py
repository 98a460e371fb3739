"""Hand-off export: float ONNX + calibration set as .npy/.bin, lists and README; ORT matches PyTorch."""

import json

import numpy as np
import pytest
import torch

from npuq.data.calib import select_calibration, write_selection
from npuq.data.datasets import open_dataset
from npuq.errors import NpuqError
from npuq.export.handoff import export_handoff
from npuq.export.ort_check import run_onnx

POOL = "synth:n=6,seed=0,size=64x64"


@pytest.fixture(scope="module")
def handoff(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("handoff_out") / "h"
    return out, export_handoff(tiny_checkpoint, POOL, None, out, n_calib=3, seed=1)


def read_list(path):
    return [ln for ln in path.read_text().splitlines() if ln]


def test_npy_and_bin_hold_the_same_preprocessed_images(handoff):
    out, manifest = handoff
    npys, bins = read_list(out / "calib_list.txt"), read_list(out / "calib_bin_list.txt")
    assert npys == ["calib/0000.npy", "calib/0001.npy", "calib/0002.npy"]
    assert bins == [p.replace(".npy", ".bin") for p in npys]
    pool = open_dataset(POOL, size=(64, 64))
    names = read_list(out / "calib_frames.txt")
    assert names == manifest["calibration"]["frames"] and len(names) == 3
    for rel_npy, rel_bin, name in zip(npys, bins, names, strict=True):
        array = np.load(out / rel_npy, allow_pickle=False)
        raw = np.fromfile(out / rel_bin, dtype="<f4").reshape(1, 3, 64, 64)
        assert array.dtype == np.float32 and array.shape == (1, 3, 64, 64)
        assert np.array_equal(array, raw)
        assert array.min() >= 0.0 and array.max() <= 1.0
        expected = pool[pool.names.index(name)]["rgb"][None].numpy()
        assert np.array_equal(array, expected)


def test_onnx_on_the_calibration_files_matches_pytorch(handoff, tiny_checkpoint):
    from npuq.models.checkpoint import load_model

    out, manifest = handoff
    batch = np.concatenate([np.load(out / p) for p in read_list(out / "calib_list.txt")])
    got = run_onnx(out / "model.onnx", batch)
    model = load_model(tiny_checkpoint).eval()
    with torch.no_grad():
        ref = model(torch.from_numpy(batch))
    assert len(got) == 1 and got[0].shape == (3, 1, 64, 64)
    assert np.allclose(got[0], ref.numpy(), atol=1e-4)
    assert manifest["check"]["max_abs_diff_onnxruntime_vs_torch"] < 1e-4


def test_manifest_and_readme_state_the_contract(handoff):
    out, manifest = handoff
    saved = json.loads((out / "handoff.json").read_text())
    assert saved["input"] == {"name": "rgb", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW",
                              "range": [0.0, 1.0], "channel_order": "RGB"}
    assert [o["name"] for o in saved["outputs"]] == ["disp"]
    assert saved["outputs"][0]["shape"] == [1, 1, 64, 64]
    readme = (out / "README.md").read_text()
    for fact in ("`rgb`", "[1, 3, 64, 64]", "NCHW", "R, G, B", "bilinear", "antialias", "255", "`disp`",
                 "little-endian float32", "(x - 0.45) / 0.225", f"{3 * 64 * 64 * 4} bytes"):
        assert fact in readme, fact


def test_calib_list_picks_the_frames_and_force_replaces_the_set(tmp_path, tiny_checkpoint, handoff):
    out, _ = handoff
    with pytest.raises(NpuqError, match="already exists; pass --force"):
        export_handoff(tiny_checkpoint, POOL, None, out, n_calib=2)
    pool = open_dataset(POOL, size=(64, 64))
    selection = select_calibration(pool, 2, "stratified", seed=0)
    listing = write_selection(tmp_path / "sel.txt", selection)
    target = tmp_path / "again"
    export_handoff(tiny_checkpoint, POOL, None, target, n_calib=4, seed=0)
    manifest = export_handoff(tiny_checkpoint, POOL, listing, target, force=True)
    assert read_list(target / "calib_frames.txt") == selection.names
    assert manifest["calibration"]["n"] == 2
    assert sorted(p.name for p in (target / "calib").iterdir()) == ["0000.bin", "0000.npy", "0001.bin",
                                                                    "0001.npy"]


def test_bad_calibration_list_names_the_file(tmp_path, tiny_checkpoint):
    listing = tmp_path / "missing.txt"
    listing.write_text("no-such-frame\n")
    with pytest.raises(NpuqError, match="missing.txt: 1 frames not in"):
        export_handoff(tiny_checkpoint, POOL, listing, tmp_path / "h")
    assert not (tmp_path / "h").exists()  # nothing written before the inputs are known good
