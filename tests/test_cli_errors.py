"""Bad input, table-driven: every case ends in its exit status and exactly one ``error:`` line (the last)
naming the file or flag, and leaves no target or temporary file behind.

Each case runs in a folder of its own (``{c}``), prepared by its ``setup``; afterwards that folder must hold
exactly what it held before the command, hidden files included, and so must the shared fixtures.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from npuq.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shared")

    def ok(*args) -> None:
        made = runner.invoke(app, [str(a) for a in args])
        assert made.exit_code == 0, made.output

    ok("data", "synth", "--out", root / "d", "--n", 8, "--size", "64x64")
    for seed, name in ((0, "m.pt"), (1, "m2.pt")):
        ok("train", "--data", root / "d", "--out", root / name, "--size", "64x64", "--steps", 2,
           "--batch-size", 2, "--seed", seed, "--json")
    ok("ptq", "--model", root / "m.pt", "--calib", root / "d", "--n-calib", 4, "--out", root / "q", "--json")
    return {"d": root / "d", "m": root / "m.pt", "m2": root / "m2.pt", "q": root / "q", "root": root}


# ------------------------------------------------------------------------------------------ setups


def folder(c: Path, shared) -> None:
    (c / "folder").mkdir()


def file(c: Path, shared) -> None:
    (c / "file").write_text("not a folder\n")


def copy_data(c: Path, shared) -> Path:
    shutil.copytree(shared["d"], c / "data")
    return c / "data"


def unpaired_frames(c: Path, shared) -> None:
    """4 colour frames, 2 depth maps (7-Scenes layout)."""
    (c / "scene").mkdir()
    for i in range(4):
        shutil.copy(shared["d"] / "rgb" / f"{i:06d}.png", c / "scene" / f"frame-{i:06d}.color.png")
    for i in range(2):
        shutil.copy(shared["d"] / "depth" / f"{i:06d}.png", c / "scene" / f"frame-{i:06d}.depth.png")


def zero_depth(c: Path, shared) -> None:
    data = copy_data(c, shared)
    for p in (data / "depth").iterdir():
        Image.fromarray(np.zeros((64, 64), np.uint16)).save(p)


def tiny_images(c: Path, shared) -> None:
    data = copy_data(c, shared)
    for p in (data / "rgb").iterdir():
        Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(p)
    for p in (data / "depth").iterdir():
        Image.fromarray(np.full((1, 1), 1000, np.uint16)).save(p)


def three_output_flags(c: Path, shared) -> None:
    (c / "p.yaml").write_text("name: three\nquantize_outputs: [true, true, true]\n")


def duplicate_key(c: Path, shared) -> None:
    (c / "p.yaml").write_text("activations:\n  range: kl\n  range: mse\n")


def yaml_syntax(c: Path, shared) -> None:
    (c / "p.yaml").write_text("name: x\nactivations:\n  range: kl: mse\n")


def existing_report(c: Path, shared) -> None:
    (c / "rep").mkdir()
    (c / "rep" / "calib_report.json").write_text("{}\n")


def outside_list(c: Path, shared) -> None:
    (c / "list.txt").write_text("000000\n000006\n")


# ------------------------------------------------------------------------------------------- table


@dataclass
class Case:
    id: str
    args: str  # split on spaces; {c} = the case's folder, {d} {m} {m2} {q} = the shared fixtures
    needles: list[str]
    code: int = 2
    setup: object = None  # callable(case folder, shared fixtures) preparing the bad input


SIZE_CASES = {"eval": "eval --model {m} --data {d}", "ptq": "ptq --model {m} --calib {d} --out {c}/q",
              "train": "train --data {d} --out {c}/t.pt --steps 1",
              "export": "export --model {m} --float-onnx --out {c}/f.onnx"}
QDQ = "export --model {m} --onnx-qdq --quant {q} --out {c}/x.onnx"
SELECT = "calib select --calib {d} --n 2 --out {c}/sel.txt"


def report_folder_of_others(c: Path, shared) -> None:
    (c / "folder").mkdir()
    (c / "folder" / "mine.txt").write_text("not npuq's\n")


CASES = [
    # 1. tracebacks instead of one line
    *[Case(f"size-{size}-{cmd}", f"{line} --size {size}", ["--size"])
      for size in ("32x32", "32x64", "64x32") for cmd, line in SIZE_CASES.items()],
    Case("export-out-is-folder", "export --model {m} --float-onnx --out {c}/folder --force",
         ["folder", "is a folder"], setup=folder),
    Case("train-out-is-folder", "train --data {d} --out {c}/folder --size 64x64 --steps 1 --force",
         ["folder", "is a folder"], setup=folder),
    Case("ptq-out-is-file", "ptq --model {m} --calib {d} --n-calib 2 --out {c}/file",
         ["file", "not a folder"],
         setup=file),
    Case("export-out-under-a-file", "export --model {m} --float-onnx --out {c}/file/x.onnx",
         ["file", "is a file, not a folder"], setup=file),
    Case("ptq-out-under-a-file", "ptq --model {m} --calib {d} --n-calib 2 --out {c}/file/q",
         ["is a file, not a folder"], setup=file),
    Case("eval-batch-size-0", "eval --model {m} --data {d} --batch-size 0", ["--batch-size"]),
    Case("eval-batch-size-text", "eval --model {m} --data {d} --batch-size x", ["'--batch-size'"]),
    Case("train-lr-negative", "train --data {d} --out {c}/t.pt --lr -1", ["--lr"]),
    Case("train-lr-nan", "train --data {d} --out {c}/t.pt --lr nan", ["--lr"]),
    Case("train-steps-0", "train --data {d} --out {c}/t.pt --steps 0", ["--steps"]),
    Case("train-save-every-0", "train --data {d} --out {c}/t.pt --save-every 0", ["--save-every"]),
    Case("synth-size-abc", "data synth --out {c}/s --size abc", ["--size"]),
    Case("synth-n-0", "data synth --out {c}/s --n 0", ["--n"]),
    Case("ptq-n-calib-0", "ptq --model {m} --calib {d} --n-calib 0 --out {c}/q", ["--n-calib"]),
    Case("export-n-check-0", f"{QDQ} --n-check 0", ["--n-check"]),
    Case("export-min-agreement-2", f"{QDQ} --min-agreement 2", ["--min-agreement"]),
    Case("weight-norm-strength-negative", "weight-norm --model {m} --data {d} --out {c}/w.pt --strength -1",
         ["--strength"]),
    Case("eval-frames-text", "eval --model {m} --data {d} --frames abc", ["--frames"]),
    Case("eval-frames-empty", "eval --model {m} --data {d} --frames 5:2", ["selects none"]),
    Case("roadmap-lang", "roadmap path-c --data {d} --test {d} --out {c}/r --lang fr", ["--lang"]),
    Case("demo-device", "demo --device tpu --out {c}/demo", ["--device"]),
    # 2. bad data accepted silently
    Case("colour-frames-without-depth", "eval --model {m} --data {c}/scene",
         ["frame-000002.color.png", "no depth map"], setup=unpaired_frames),
    Case("all-zero-depth-train", "train --data {c}/data --out {c}/t.pt --size 64x64 --steps 2 --batch-size 2",
         ["data", "no valid depth"], setup=zero_depth),
    Case("one-pixel-images", "eval --model {m} --data {c}/data",
         ["000000.png", "at least 4"], setup=tiny_images),
    Case("n-calib-over-pool", "ptq --model {m} --calib {d} --n-calib 1000 --out {c}/q",
         ["--n-calib", "8 frames"]),
    Case("n-calib-over-frames", "ptq --model {m} --calib {d} --frames 0:4 --n-calib 5 --out {c}/q",
         ["--n-calib", "4 frames"]),
    Case("quantize-outputs-count", "ptq --model {m} --calib {d} --n-calib 2 --profile {c}/p.yaml --out {c}/q",
         ["quantize_outputs", "3 flags"], setup=three_output_flags),
    Case("yaml-duplicate-key", "profile show {c}/p.yaml", ["p.yaml", "line 3", "duplicate key"],
         setup=duplicate_key),
    Case("yaml-syntax-line", "profile show {c}/p.yaml", ["p.yaml", "line 3"], setup=yaml_syntax),
    Case("profile-unknown-name", "ptq --model {m} --calib {d} --profile nope --out {c}/q",
         ["nope", "no such profile"]),
    # 3. mismatched artefacts
    Case("eval-quant-of-another-model", "eval --model {m2} --data {d} --quant {q}",
         ["another checkpoint", "m2.pt"]),
    Case("qdq-quant-of-another-model", "export --model {m2} --onnx-qdq --quant {q} --out {c}/x.onnx",
         ["another checkpoint"]),
    Case("analyze-quant-of-another-model", "analyze --model {m2} --data {d} --quant {q} --out {c}/a",
         ["another checkpoint"]),
    Case("analyze-quant-and-profile", "analyze --model {m} --data {d} --quant {q} --profile npu-asym "
         "--out {c}/a",
         ["--profile", "--quant"]),
    Case("calib-list-outside-frames", "ptq --model {m} --calib {d} --frames 0:4 --calib-list {c}/list.txt "
         "--out {c}/q", ["list.txt", "000006"], setup=outside_list),
    Case("missing-quantsim", "eval --model {m} --data {d} --quant {c}/nope", ["nope", "scales.json"]),
    # 4. partial or orphaned output
    Case("calib-select-report-exists", f"{SELECT} --report {{c}}/rep", ["rep", "already exists"],
         setup=existing_report),
    Case("calib-select-report-of-others", f"{SELECT} --report {{c}}/folder --force",
         ["folder", "did not write"],
         setup=report_folder_of_others),
    Case("probe-fit-without-a-mode", "probe fit --outputs {c}", ["--kit", "--handoff"]),
    Case("probe-fit-missing-kit", "probe fit --kit {c}/nokit --outputs {c}", ["nokit", "kit.json"]),
    Case("probe-export-over-a-foreign-folder", "probe export --out {c}/folder --force", ["did not write"],
         setup=report_folder_of_others),
    # 8. CLI consistency
    Case("ptq-calib-required", "ptq --model {m} --out {c}/q", ["Missing option '--calib'"]),
    Case("json-takes-no-value", "eval --model {m} --data {d} --json true", ["unexpected extra", "true"]),
    Case("unknown-flag", "eval --model {m} --data {d} --bogus", ["--bogus"]),
    Case("old-pool-flag", "calib select --pool {d} --n 2 --out {c}/s.txt", ["--pool"]),
    Case("old-calib-set-flag", "export --model {m} --float-onnx --calib {d} --calib-set x --out {c}/h",
         ["--calib-set"]),
]


def render(args: str, c: Path, shared) -> list[str]:
    return [a.format(c=c, **{k: v for k, v in shared.items() if k != "root"}) for a in args.split()]


def entries(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_bad_input_is_one_line_and_leaves_nothing(case: Case, shared, tmp_path, monkeypatch):
    c = tmp_path / "case"
    c.mkdir()
    if case.setup:
        case.setup(c, shared)
    monkeypatch.chdir(c)
    before, shared_before = entries(c), entries(shared["root"])
    result = runner.invoke(app, render(case.args, c, shared))
    assert result.exit_code == case.code, result.output
    assert entries(c) == before, "left behind: " + ", ".join(sorted(entries(c) - before))
    assert entries(shared["root"]) == shared_before
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error: ")]  # a progress line may precede it on stderr
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in result.output, result.output
    for needle in case.needles:
        assert needle.format(c=c) in errors[0], errors[0]


def test_profile_named_like_a_cwd_folder_is_the_shipped_one(tmp_path, monkeypatch):
    (tmp_path / "npu-asym").mkdir()
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["profile", "show", "npu-asym"])
    assert result.exit_code == 0 and "name: npu-asym" in result.output


def test_bare_group_prints_its_help_not_an_error():
    result = runner.invoke(app, ["calib"])
    assert result.exit_code == 2 and "select" in result.output and "error:" not in result.output


def test_help_shows_flags_without_value_placeholders():
    text = runner.invoke(app, ["export", "--help"]).output
    for flag in ("--force", "--json", "--allow-pickle", "--float-onnx"):
        line = next(ln for ln in text.splitlines() if ln.strip().startswith(flag))
        assert "<bool>" not in line and "--no-" not in line, line
    assert "<bool>" not in text


def test_version():
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"npuq {version('npuq')}"


def test_a_qdq_export_that_disagrees_with_the_simulator_is_refused_and_not_written(shared, tmp_path,
                                                                                    monkeypatch):
    import npuq.export.ort_check as ort_check

    real = ort_check.compare_with_sim
    monkeypatch.setattr(ort_check, "compare_with_sim", lambda *a, **k: {**real(*a, **k), "agreement": 0.74})
    args = render("export --model {m} --onnx-qdq --quant {q} --out {c}/x.onnx", tmp_path, shared)
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and result.output.strip().splitlines()[-1].startswith("error: ")
    assert "74.0% of the output elements" in result.output and "not written" in result.output
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(ort_check, "compare_with_sim", real)
    assert runner.invoke(app, [*args, "--min-agreement", "0.99"]).exit_code == 0
    assert (tmp_path / "x.onnx").is_file()
