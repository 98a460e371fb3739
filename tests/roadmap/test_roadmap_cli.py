"""`npuq roadmap` end to end on a tiny model: JSON figures, the four outputs, Korean report, bad input."""

import json

from typer.testing import CliRunner

from npuq.cli import app

SPEC = "synth:mode=sequence,n=48,seed=0,size=64x64"
PLAN = """name: tiny
calibration: {size: 4}
profile: npu-asym
steps:
  - label: "Phase 1a: diverse calibration set"
    remedy: calibration
    config: {strategy: diverse, size: 4}
  - label: "Phase 1: + weight normalization"
    remedy: weight-norm
    config: {steps: 2, batch_size: 2}
    expect: phase1
"""


def invoke(*args):
    return CliRunner().invoke(app, ["roadmap", *(str(a) for a in args)])


def test_roadmap_runs_a_plan_and_writes_report_json_plot_and_handoff(tiny_checkpoint, tmp_path):
    plan = tmp_path / "tiny.yaml"
    plan.write_text(PLAN)
    out = tmp_path / "run"
    done = invoke(plan, "--model", tiny_checkpoint, "--data", SPEC + ",part=train", "--val",
                  SPEC + ",part=val", "--test", SPEC + ",part=test", "--out", out, "--lang", "ko", "--json")
    assert done.exit_code == 0, done.output
    result = json.loads(done.stdout)
    assert [r["step"] for r in result["rows"]][2:] == ["Phase 1a: diverse calibration set",
                                                      "Phase 1: + weight normalization"]
    assert result["profile"] == "npu-asym"
    for name in ("report.md", "report.ko.md", "roadmap.json", "roadmap.png", "handoff/model.onnx"):
        assert (out / name).is_file()
    korean = (out / "report.ko.md").read_text()
    assert "단계" in korean and f"{result['rows'][3]['int8']:.4f}" in korean
    assert f"{result['rows'][3]['int8']:.4f}" in (out / "report.md").read_text()


def test_validation_defaults_to_held_out_training_frames(tiny_checkpoint, tmp_path):
    plan = tmp_path / "tiny.yaml"
    plan.write_text(PLAN)
    done = invoke(plan, "--model", tiny_checkpoint, "--data", SPEC, "--frames", "0:36", "--test", SPEC,
                  "--test-frames", "40:48", "--out", tmp_path / "run", "--json")
    assert done.exit_code == 0, done.output
    data = json.loads(done.stdout)["data"]
    assert data["train"].endswith("frames 0:32") and data["val"].endswith("frames 32:36")


def test_bad_input_is_one_error_line(tiny_checkpoint, tmp_path):
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("name: x\nsteps:\n  - remedy: fp16-magic\n")
    cases = [
        ([unknown, "--model", tiny_checkpoint], "unknown remedy 'fp16-magic'"),
        (["path-z", "--model", tiny_checkpoint], "no such shipped plan"),
        (["path-b", "--model", tmp_path / "none.pt"], "none.pt: no such checkpoint file"),
        (["path-b", "--model", tiny_checkpoint, "--lang", "fr"], "--lang must be en or ko"),
        (["path-b", "--model", tiny_checkpoint, "--device", "tpu"], "--device must be auto, cpu or cuda"),
    ]
    for args, message in cases:
        done = invoke(*args, "--data", SPEC, "--test", SPEC, "--out", tmp_path / "bad")
        assert done.exit_code == 2, done.output
        errors = [line for line in done.output.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and message in errors[0], done.output
    assert not (tmp_path / "bad").exists()
