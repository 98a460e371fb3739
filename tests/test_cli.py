"""The CLI end to end on a tiny model: figures as JSON, outputs on disk, bad input as one line + exit 2."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from npuq.cli import app

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def json_of(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    made = invoke("data", "synth", "--out", root / "d", "--n", 8, "--seed", 0, "--size", "64x64")
    assert made.exit_code == 0
    trained = invoke("train", "--data", root / "d", "--out", root / "m.pt", "--size", "64x64", "--steps", 2,
                     "--batch-size", 2, "--json")
    assert json_of(trained)["checkpoint"] == str(root / "m.pt")
    return root


def test_eval_ptq_and_int8_eval_report_figures(workdir):
    fp32 = json_of(invoke("eval", "--model", workdir / "m.pt", "--data", workdir / "d", "--json"))
    assert fp32["precision"] == "fp32" and fp32["n_images"] == 8 and fp32["abs_rel"] > 0
    ptq = json_of(invoke("ptq", "--model", workdir / "m.pt", "--calib", workdir / "d", "--n-calib", 4,
                         "--out", workdir / "q", "--json"))
    assert ptq["n_calib"] == 4 and ptq["quantizers"] > 30
    assert {"scales.json", "profile.yaml", "model.json"} <= {p.name for p in (workdir / "q").iterdir()}
    int8 = json_of(invoke("eval", "--model", workdir / "m.pt", "--data", workdir / "d",
                          "--quant", workdir / "q", "--json"))
    assert int8["precision"] == "int8-sim" and int8["abs_rel"] != fp32["abs_rel"]


def test_outputs_are_not_overwritten_without_force(workdir):
    export = ("export", "--model", workdir / "m.pt", "--float-onnx", "--out", workdir / "f.onnx")
    assert json_of(invoke(*export, "--json"))["max_abs_diff_vs_torch"] < 1e-4
    again = invoke(*export)
    assert again.exit_code == 2 and "already exists; pass --force" in again.output
    forced = invoke(*export, "--force")
    assert forced.exit_code == 0


def one_line_error(result, *needles: str) -> str:
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for needle in needles:
        assert needle in lines[0]
    return lines[0]


def test_missing_and_empty_datasets(workdir, tmp_path):
    one_line_error(invoke("eval", "--model", workdir / "m.pt", "--data", tmp_path / "nope"), "nope")
    (tmp_path / "empty").mkdir()
    one_line_error(invoke("eval", "--model", workdir / "m.pt", "--data", tmp_path / "empty"), "empty")


def test_corrupt_and_mismatched_checkpoints(workdir, tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    one_line_error(invoke("eval", "--model", tmp_path / "bad.pt", "--data", workdir / "d"), "bad.pt")
    import torch

    torch.save({"state_dict": {"encoder.encoder.conv1.weight": torch.zeros(1)}}, tmp_path / "other.pt")
    one_line_error(invoke("eval", "--model", tmp_path / "other.pt", "--data", workdir / "d"), "other.pt")


def test_frame_without_valid_depth_is_skipped_and_counted(workdir, tmp_path):
    import shutil

    data = tmp_path / "d"
    shutil.copytree(workdir / "d", data)
    depth = data / "depth" / "000000.png"
    Image.fromarray(np.zeros(np.asarray(Image.open(depth)).shape, np.uint16)).save(depth)
    result = json_of(invoke("eval", "--model", workdir / "m.pt", "--data", data, "--json"))
    assert result["n_skipped"] == 1 and result["n_images"] == 7


def test_profile_errors_name_the_file_and_key(tmp_path):
    bad = tmp_path / "p.yaml"
    bad.write_text("activations:\n  rnage: kl\n")
    one_line_error(invoke("profile", "show", bad), "p.yaml", "activations.rnage")
    assert "range: kl" in invoke("profile", "show", "npu-default").stdout


def test_bad_size_option(workdir):
    result = invoke("eval", "--model", workdir / "m.pt", "--data", workdir / "d", "--size", "60x64")
    one_line_error(result, "--size")


def test_analyze_json_and_report_hold_the_per_head_table(workdir):
    args = ("analyze", "--model", workdir / "m.pt", "--data", workdir / "d", "--calib", workdir / "d",
            "--n-calib", 2, "--frames", "0:2", "--out", workdir / "analysis")
    result = json_of(invoke(*args, "--json"))
    rows = {r["head"]: r for r in result["representability_per_head"]}
    assert list(rows) == ["sigmoid-disp", "int-frac", "coarse-residual", "log-depth", "centred-logit"]
    assert rows["sigmoid-disp"]["model_head"] and len(rows["sigmoid-disp"]["scenarios"]) == 2
    assert rows["int-frac"]["misassignment"] is None
    assert rows["int-frac"]["misassignment_note"] == "n/a (model has head sigmoid-disp)"
    fraction = rows["int-frac"]["scenarios"][0]["grids"][1]
    assert fraction["output"] == "fraction" and abs(fraction["scale"] - 1 / 127) < 1e-9  # npu-default: signed
    assert result["findings"]["per_head"]
    md = (workdir / "analysis" / "report.md").read_text()
    assert "## (d) Representability per head" in md and "| `int-frac` | full range |" in md
    doc = json.loads((workdir / "analysis" / "analysis.json").read_text())
    assert [r["head"] for r in doc["representability_per_head"]] == list(rows)
    one_line_error(invoke(*args), "analysis", "already exists")
