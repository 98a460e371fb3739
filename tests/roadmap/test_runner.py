"""The roadmap runner: every step measured, cached by digest, resumed after a kill; best uses validation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import fake_remedies
import pytest

from npuq.measure import Score
from npuq.quant.profile import load_profile
from npuq.remedies import Context, DataRef
from npuq.roadmap.plan import plan_from_dict
from npuq.roadmap.runner import run_roadmap, start_handoff

HERE = Path(__file__).parent
SPEC = "synth:mode=sequence,n=48,seed=0,size=64x64"
PROFILE = load_profile("npu-default").replace(activations={"range": "mse"})
PLAN = {"name": "fake", "calibration": {"size": 4},
        "steps": [{"label": "nudge", "remedy": "fake-nudge"},
                  {"label": "hang", "remedy": "fake-hang", "expect": "phase2"}]}


@pytest.fixture(autouse=True)
def fakes(tmp_path, monkeypatch):
    fake_remedies.register()
    monkeypatch.setenv("NPUQ_FAKE_LOG", str(tmp_path / "calls.log"))
    yield tmp_path / "calls.log"
    fake_remedies.unregister()


def _context(out):
    return Context(DataRef(SPEC + ",part=train"), DataRef(SPEC + ",part=val"), out)


def _run(checkpoint, out, plan=PLAN, force=True):
    ctx = _context(out)
    start = start_handoff(checkpoint, ctx, PROFILE, 4, out)
    test = DataRef(SPEC + ",part=test")
    return run_roadmap(plan_from_dict(plan, "fake"), start, ctx, test, out, force=force)


def test_every_step_is_measured_and_outputs_are_written(tiny_checkpoint, tmp_path):
    result = _run(tiny_checkpoint, tmp_path / "run")
    steps = [r["step"] for r in result["rows"]]
    assert steps == ["FP32 reference", "Baseline", "nudge", "hang"]
    for row in result["rows"][1:]:
        assert row["int8"] > 0
        assert row["int8_over_reference"] == pytest.approx(row["int8"] / result["reference_fp32"])
    assert result["rows"][3]["user_expects_vs_baseline"] == pytest.approx(0.055 / 0.1133 - 1)
    out = tmp_path / "run"
    for name in ("roadmap.json", "report.md", "roadmap.png", "handoff/model.onnx", "handoff/profile.yaml",
                 "handoff/calib_frames.txt"):
        assert (out / name).is_file(), name
    assert json.loads((out / "roadmap.json").read_text())["rows"][2]["step"] == "nudge"
    assert [e["remedy"] for e in result["final"]["lineage"]] == ["fake-nudge", "fake-hang"]
    assert not list(out.rglob("*.partial"))


def test_finished_steps_are_cached_by_digest(tiny_checkpoint, tmp_path, fakes):
    first = _run(tiny_checkpoint, tmp_path / "run")
    assert fake_remedies.log_lines(fakes) == ["fake-nudge", "fake-hang"]
    again = _run(tiny_checkpoint, tmp_path / "run")
    assert fake_remedies.log_lines(fakes) == ["fake-nudge", "fake-hang"]  # nothing recomputed
    assert [r["int8"] for r in again["rows"]] == [r["int8"] for r in first["rows"]]
    assert all(r["cached"] for r in again["rows"][2:])
    changed = {**PLAN, "steps": [{"label": "nudge", "remedy": "fake-nudge", "config": {"factor": 1.5}},
                                 PLAN["steps"][1]]}
    _run(tiny_checkpoint, tmp_path / "run", changed)  # a new config invalidates that step and every later one
    assert fake_remedies.log_lines(fakes)[2:] == ["fake-nudge", "fake-hang"]


def test_outputs_are_not_overwritten_without_force(tiny_checkpoint, tmp_path):
    from npuq.errors import NpuqError

    _run(tiny_checkpoint, tmp_path / "run")
    with pytest.raises(NpuqError, match="already exists"):
        _run(tiny_checkpoint, tmp_path / "run", force=False)


def test_a_run_killed_mid_step_resumes_where_it_stopped(tiny_checkpoint, tmp_path, fakes):
    out = tmp_path / "run"
    script = (f"import sys; from pathlib import Path; sys.path.insert(0, {str(HERE)!r}); "
              "import fake_remedies, test_runner; fake_remedies.register(); "
              f"test_runner._run(Path({str(tiny_checkpoint)!r}), Path({str(out)!r}))")
    env = {**os.environ, "NPUQ_FAKE_HANG": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(out.glob("steps/02-*.partial/started")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the hanging step never started"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert fake_remedies.log_lines(fakes) == ["fake-nudge", "fake-hang"]
    assert not (out / "roadmap.json").exists() and list(out.glob("steps/02-*.partial"))
    result = _run(tiny_checkpoint, out)  # NPUQ_FAKE_HANG unset here: the step finishes
    assert fake_remedies.log_lines(fakes) == ["fake-nudge", "fake-hang", "fake-hang"]  # step 1 reused
    assert result["rows"][2]["cached"] and not result["rows"][3]["cached"]
    assert not list(out.rglob("*.partial"))


def test_best_chooses_on_validation_frames_only(handoff_parts, monkeypatch):
    from npuq.remedies import apply_remedy, best, remedy_config

    handoff, ctx, test = handoff_parts
    seen = []

    def fake_measure(candidate, data, metric=None, reference_fp32=None, device="cpu", progress=False):
        seen.append(data)
        int8 = {1.5: 0.2, 0.5: 0.1}[float(candidate.lineage()[-1]["config"]["factor"])]
        return Score({"abs_rel": 0.1}, {"abs_rel": int8})

    monkeypatch.setattr(best, "measure", fake_measure)
    config = remedy_config("best", {"alternatives": {
        "big": [{"remedy": "fake-nudge", "config": {"factor": 1.5}}],
        "small": [{"remedy": "fake-nudge", "config": {"factor": 0.5}}]}})
    result = apply_remedy(handoff, config, ctx)
    assert result.notes["chosen"] == "small" and seen == [ctx.val, ctx.val]
    assert test not in seen


@pytest.fixture
def handoff_parts(tiny_checkpoint, tmp_path):
    from npuq.remedies import CalibSet, Handoff

    ctx = _context(tmp_path / "work")
    pool = ctx.train.open((64, 64))
    return Handoff(tiny_checkpoint, CalibSet(ctx.train, tuple(pool.names[:4])), PROFILE), ctx, \
        DataRef(SPEC + ",part=test")
