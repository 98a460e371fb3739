"""Confirmation on the user's network: the profile that made the device outputs reproduces them best."""

from __future__ import annotations

import json

import numpy as np
import torch
from typer.testing import CliRunner

from npuq.cli import app
from npuq.export.handoff import export_handoff
from npuq.models.checkpoint import load_model
from npuq.probe.confirm import confirm_on_network
from npuq.quant import simulate_ptq
from npuq.quant.profile import load_profile

runner = CliRunner()


def test_the_device_profile_reproduces_the_device_best(tmp_path):
    data, ckpt = tmp_path / "d", tmp_path / "m.pt"
    made = runner.invoke(app, ["data", "synth", "--out", str(data), "--n", "6", "--size", "64x64"])
    assert made.exit_code == 0, made.output
    trained = runner.invoke(app, ["train", "--data", str(data), "--out", str(ckpt), "--size", "64x64",
                                  "--steps", "2", "--batch-size", "2", "--json"])
    assert trained.exit_code == 0, trained.output
    manifest = export_handoff(ckpt, str(data), None, tmp_path / "h", n_calib=4)
    stems = [line.removesuffix(".npy") for line in (tmp_path / "h" / "calib_list.txt").read_text().split()]
    calib = torch.from_numpy(np.concatenate([np.load(tmp_path / "h" / f"{s}.npy") for s in stems]))
    device = simulate_ptq(load_model(ckpt), load_profile("npu-ort-entropy"), calib).eval()  # hidden toolchain
    for i, stem in enumerate(stems):
        (tmp_path / "out" / "calib").mkdir(parents=True, exist_ok=True)
        with torch.no_grad():
            np.save(tmp_path / "out" / f"{stem}.disp.npy", device(calib[i:i + 1]).numpy())
    result = confirm_on_network(ckpt, tmp_path / "h", tmp_path / "out", ["npu-default", "npu-ort-entropy"])
    best, other = result["profiles"]
    assert best["profile"] == "npu-ort-entropy" and best["within_one_step"] == 1.0
    assert other["within_one_step"] < 1.0 and result["ground_truth"]
    assert best["abs_rel"] == result["device_abs_rel"]
    cli = runner.invoke(app, ["probe", "fit", "--model", str(ckpt), "--handoff", str(tmp_path / "h"),
                              "--outputs", str(tmp_path / "out"), "--profile", "npu-ort-entropy", "--json"])
    assert cli.exit_code == 0, cli.output
    assert json.loads(cli.stdout)["profiles"][0]["within_one_step"] == 1.0
    assert manifest["outputs"][0]["name"] == "disp"
