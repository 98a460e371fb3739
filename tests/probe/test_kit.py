"""The kit reloads, runs in ONNX Runtime in float exactly as the torch probes, and bad device outputs are
refused with one line naming the file."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import torch

from npuq.errors import NpuqError
from npuq.probe import fit_kit
from npuq.probe.kit import load_calibration, load_inputs, load_manifest
from npuq.probe.probes import PROBES, PROBES_BY_NAME
from npuq.quant.profile import load_profile


def test_every_probe_is_written_with_its_files(kit):
    manifest = load_manifest(kit)
    assert [p["name"] for p in manifest["probes"]] == [p.name for p in PROBES]
    for entry in manifest["probes"]:
        calib = load_calibration(kit, entry)
        assert calib.dtype == np.float32 and list(calib.shape[1:]) == entry["input_shape"][1:]
        bins = (kit / entry["calibration"]["bin_list"]).read_text().split()
        raw = np.fromfile(kit / entry["name"] / bins[0], dtype="<f4")
        assert np.array_equal(raw, calib[0].reshape(-1))
    readme = (kit / "README.md").read_text()
    assert "outputs/grid/ramp.signed.npy" in readme and "fp16_conv" in readme


def test_the_onnx_probes_run_in_onnxruntime_like_the_torch_probes(kit):
    manifest = load_manifest(kit)
    for entry in manifest["probes"]:
        session = ort.InferenceSession(str(kit / entry["model"]), providers=["CPUExecutionProvider"])
        model = PROBES_BY_NAME[entry["name"]].build().eval()
        for array in load_inputs(kit, entry).values():
            got = session.run(None, {manifest["input_name"]: array})
            with torch.no_grad():
                want = model(torch.from_numpy(array))
            want = want if isinstance(want, tuple) else (want,)
            for g, w in zip(got, want, strict=True):
                np.testing.assert_allclose(g, w.numpy(), atol=1e-5)


def test_probe_data_are_deterministic(kit, tmp_path):
    from npuq.probe import export_kit

    export_kit(tmp_path / "again")
    for entry in load_manifest(kit)["probes"]:
        assert np.array_equal(load_calibration(kit, entry), load_calibration(tmp_path / "again", entry))


@pytest.fixture
def outputs(kit, tmp_path):
    from npuq.probe import write_simulated_outputs

    return write_simulated_outputs(kit, load_profile("npu-default"), tmp_path / "out")


def test_integer_outputs_with_their_scale_are_read(kit, outputs):
    before = fit_kit(kit, outputs).profile
    ramp = outputs / "grid" / "ramp.signed.npy"
    values = np.load(ramp).astype(np.float64)
    scale = values.max() / 127  # the positive end is 127 steps (the negative one 128)
    np.save(ramp, np.round(values / scale).astype(np.int8))
    (outputs / "grid" / "ramp.signed.json").write_text(json.dumps({"scale": scale, "zero_point": 0}))
    assert fit_kit(kit, outputs).profile == before


@pytest.mark.parametrize("damage, message", [
    ("missing", "not found"),
    ("shape", "values, the probe's output has"),
    ("nan", "NaN or Inf"),
    ("int-without-scale", "integer outputs need their scale"),
    ("text", "not a readable .npy"),
])
def test_bad_output_files_name_the_file(kit, outputs, damage, message):
    path = outputs / "range-elu" / "ramp.y.npy"
    if damage == "missing":
        path.unlink()
    elif damage == "shape":
        np.save(path, np.zeros(5, np.float32))
    elif damage == "nan":
        np.save(path, np.full((1, 1, 32, 32), np.nan, np.float32))
    elif damage == "int-without-scale":
        np.save(path, np.zeros((1, 1, 32, 32), np.int8))
    else:
        path.write_text("not numpy")
    with pytest.raises(NpuqError, match=message) as err:
        fit_kit(kit, outputs)
    assert str(path.with_suffix("")) in str(err.value)  # the .npy, or the .json its integers need
