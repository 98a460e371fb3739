"""Signals, for real: the CLI runs in a subprocess that is stopped midway (SIGKILL, SIGTERM, SIGINT).

A small driver patches one npuq function to announce the moment and wait there, so the signal always lands
at the same point of the work, never by timing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from npuq.models.checkpoint import load_checkpoint_dict

# A shell starts background jobs with SIGINT ignored, and Python then installs no KeyboardInterrupt
# handler: restore it, so that the test sees what an interactive user's Ctrl-C does.
STALL = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
import {module} as target
original = target.{name}
def stalled(*args, **kwargs):
    if {condition}:
        print("stalled", flush=True)
        time.sleep(120)
    return original(*args, **kwargs)
target.{name} = stalled
from npuq.cli import main
sys.argv = ["npuq", *sys.argv[1:]]
main()
"""


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def npuq(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "npuq.cli", *map(str, args)], capture_output=True, text=True,
                          env=env(), timeout=300)


def stop_midway(sig: int, module: str, name: str, condition: str, *args) -> subprocess.CompletedProcess:
    """Run the CLI with ``module.name`` stalling when ``condition`` holds; send ``sig`` there."""
    driver = STALL.format(module=module, name=name, condition=condition)
    child = subprocess.Popen([sys.executable, "-c", driver, *map(str, args)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env())
    line = child.stdout.readline()
    assert line.strip() == "stalled", (line, child.stderr.read() if child.poll() is not None else "")
    child.send_signal(sig)
    out, err = child.communicate(timeout=120)
    return subprocess.CompletedProcess(child.args, child.returncode, line + out, err)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("signals")
    assert npuq("data", "synth", "--out", root / "d", "--n", 8, "--size", "64x64").returncode == 0
    made = npuq("train", "--data", root / "d", "--out", root / "m.pt", "--size", "64x64", "--steps", 2,
                "--batch-size", 2, "--json")
    assert made.returncode == 0, made.stderr
    return root


def ptq(work: Path, out: Path, seed: int) -> list:
    return ["ptq", "--model", work / "m.pt", "--calib", work / "d", "--n-calib", 4, "--seed", seed,
            "--out", out, "--force", "--json"]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_killed_quantsim_save_keeps_the_old_one_and_the_next_save_clears_up(work, tmp_path):
    q = tmp_path / "q"
    assert npuq(*ptq(work, q, seed=0)).returncode == 0
    old = {p.name: p.read_bytes() for p in q.iterdir()}
    # QuantSim.save writes profile.yaml, model.json, then scales.json: stop it between the files
    killed = stop_midway(signal.SIGKILL, "npuq.quant.sim", "write_json", "args[0].name == 'scales.json'",
                         *ptq(work, q, seed=1))
    assert killed.returncode == -signal.SIGKILL
    assert {p.name: p.read_bytes() for p in q.iterdir()} == old  # the old QuantSim, whole
    assert len(leftovers(tmp_path)) == 1  # the killed writer's partial folder ...
    assert npuq(*ptq(work, q, seed=1)).returncode == 0
    assert leftovers(tmp_path) == []  # ... is removed by the next write to the same target
    assert json.loads((q / "model.json").read_text())["calibration"]["seed"] == 1


def test_sigterm_midway_is_one_line_exit_130_and_leaves_nothing(work, tmp_path):
    q = tmp_path / "q"
    assert npuq(*ptq(work, q, seed=0)).returncode == 0
    old = {p.name: p.read_bytes() for p in q.iterdir()}
    stopped = stop_midway(signal.SIGTERM, "npuq.quant.sim", "write_json", "args[0].name == 'scales.json'",
                          *ptq(work, q, seed=1))
    assert stopped.returncode == 130
    assert [ln for ln in stopped.stderr.splitlines() if ln.strip()] == ["error: interrupted"]
    assert {p.name: p.read_bytes() for p in q.iterdir()} == old
    assert leftovers(tmp_path) == []


def test_sigterm_during_an_onnx_export_leaves_no_temporary(work, tmp_path):
    out = tmp_path / "f.onnx"
    stopped = stop_midway(signal.SIGTERM, "onnx", "save", "True", "export", "--model", work / "m.pt",
                          "--float-onnx", "--out", out)
    assert stopped.returncode == 130 and "error: interrupted" in stopped.stderr
    assert list(tmp_path.iterdir()) == []


def train_args(work: Path, out: Path) -> list:
    return ["train", "--data", work / "d", "--out", out, "--size", "64x64", "--steps", 8, "--batch-size", 2,
            "--save-every", 100, "--json"]


def test_training_interrupted_by_sigint_resumes_to_the_uninterrupted_result(work, tmp_path):
    run = tmp_path / "run.pt"
    # stall before step 5 (0-based 4): steps 0-3 are done, and no periodic save has happened yet
    stopped = stop_midway(signal.SIGINT, "npuq.train.loop", "_step", "args[4].step == 4",
                          *train_args(work, run))
    assert stopped.returncode == 130, stopped.stderr
    lines = [ln for ln in stopped.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: training interrupted") and "--resume" in lines[0]
    saved = load_checkpoint_dict(run)
    assert saved["extra"]["train"]["step"] == 4 and not saved["extra"]["train"]["finished"]
    resumed = npuq(*train_args(work, run), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    straight = tmp_path / "straight.pt"
    assert npuq(*train_args(work, straight)).returncode == 0
    a, b = load_checkpoint_dict(run), load_checkpoint_dict(straight)
    assert a["extra"]["train"]["finished"] and a["extra"]["train"]["step"] == 8
    for key, value in b["state_dict"].items():
        assert torch.equal(a["state_dict"][key], value), key


def test_tables_in_a_pipe_are_full_width_markdown_and_progress_stays_off_stdout(work):
    command = [sys.executable, "-m", "npuq.cli", "eval", "--model", str(work / "m.pt"), "--data",
               str(work / "d")]
    result = subprocess.run(command, capture_output=True, text=True, env={**env(), "COLUMNS": "40"},
                            timeout=300)
    assert result.returncode == 0, result.stderr
    rows = [ln for ln in result.stdout.splitlines() if ln.startswith("| ")]
    assert rows[0] == "| metric | value |" and any(ln.startswith("| abs_rel | 0.") for ln in rows)
    assert str(work / "m.pt") in result.stdout  # a long value, not cut at 40 columns
    assert "…" not in result.stdout and "━" not in result.stdout
