"""The roadmap runner: apply a plan's steps in order, measure every one, cache and resume.

Each step is cached under ``OUT/steps/<digest>/`` where the digest covers the remedy, its config, the
input hand-off (checkpoint bytes, calibration frames, profile), the training/validation data and the
seed. A step works in ``<digest>.partial/`` and is renamed into place only when complete, so a run that
is killed mid-step leaves no half step behind: the rerun reuses every finished step and redoes the
interrupted one. Scores are cached per test set beside the step.

Outputs (``OUT``): ``roadmap.json``, ``report.md`` (and ``report.ko.md`` with ``lang="ko"``),
``roadmap.png`` and ``handoff/``, the final hand-off as ``npuq export`` writes it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npuq.errors import NpuqError
from npuq.io import file_sha256, write_json, write_text
from npuq.measure import Score, measure
from npuq.progress import stderr_console
from npuq.remedies.base import (
    MODEL_FILE,
    CalibSet,
    Context,
    DataRef,
    Handoff,
    apply_remedy,
    json_digest,
)
from npuq.roadmap.plan import USER_FP32, USER_TARGET, Plan, Step

STEPS_DIR = "steps"
HANDOFF_FILE = "handoff.json"
OUTPUTS = ("roadmap.json", "report.md", "roadmap.png", "handoff")


@dataclass
class StepResult:
    label: str
    remedy: str
    handoff: Handoff
    score: Score
    seconds: float
    cached: bool
    expected_ratio: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def row(self, baseline: Score) -> dict[str, Any]:
        int8 = self.score.int8[self.score.metric]
        return {"step": self.label, "remedy": self.remedy, "fp32": self.score.fp32[self.score.metric],
                "int8": int8, "int8_over_reference": self.score.int8_over_reference,
                "change_vs_baseline": int8 / baseline.int8[baseline.metric] - 1.0,
                "user_expects_vs_baseline": (None if self.expected_ratio is None
                                             else self.expected_ratio - 1.0),
                "seconds": self.seconds, "cached": self.cached, "notes": self.notes,
                "checkpoint": str(self.handoff.checkpoint)}


def start_handoff(checkpoint: str | Path, ctx: Context, profile, calib_size: int, out: Path) -> Handoff:
    """The Baseline: the float checkpoint (re-saved in npuq's format, empty lineage) with ``calib_size``
    random training frames, under ``profile``."""
    from npuq.data.calib import random_indices
    from npuq.models.checkpoint import load_model, save_checkpoint
    from npuq.pipeline import training_size

    target = out / STEPS_DIR / f"start-{file_sha256(checkpoint)[:16]}" / MODEL_FILE
    if not target.exists():
        size = training_size(checkpoint)
        model = load_model(checkpoint)
        extra = {"train": {"config": {"size": list(size)}, "finished": True}, "lineage": [],
                 "source": str(Path(checkpoint).resolve())}
        target.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(target, model, extra=_carry_extra(checkpoint, extra), force=True)
    size = training_size(target)
    pool = ctx.train.open(size)
    if calib_size > len(pool):
        raise NpuqError(f"{ctx.train}: the Baseline's calibration size {calib_size} exceeds its {len(pool)} "
                        "frames")
    names = [pool.names[i] for i in random_indices(len(pool), calib_size, ctx.seed)]
    return Handoff(target, CalibSet(ctx.train, tuple(names)), profile)


def _carry_extra(checkpoint: str | Path, extra: dict[str, Any]) -> dict[str, Any]:
    """Keep the source's own training record and lineage when it is an npuq checkpoint."""
    from npuq.models.checkpoint import load_checkpoint_dict

    try:
        saved = load_checkpoint_dict(checkpoint)["extra"]
    except NpuqError:
        return extra
    return {**extra, **{k: saved[k] for k in ("train", "lineage") if k in saved}}


class Runner:
    """Runs one plan from one start hand-off; ``run()`` returns the roadmap summary."""

    def __init__(self, plan: Plan, start: Handoff, ctx: Context, test: DataRef, out: Path) -> None:
        self.plan, self.start, self.ctx, self.test, self.out = plan, start, ctx, test, Path(out)
        self.console = stderr_console()

    # -- caching ------------------------------------------------------------------------------------

    def step_key(self, step: Step, source: Handoff) -> str:
        return json_digest({"remedy": step.config.name, "config": step.config.to_dict(),
                            "input": source.digest(), "train": self.ctx.train.to_dict(),
                            "val": self.ctx.val.to_dict(), "seed": self.ctx.seed})[:16]

    def _score(self, handoff: Handoff, folder: Path, reference_fp32: float | None) -> Score:
        test_key = json_digest({"test": self.test.to_dict(), "metric": repr(self.ctx.metric)})[:12]
        path = folder / f"score-{test_key}.json"
        if path.exists():
            cached = Score.from_dict(json.loads(path.read_text()))
            return Score(cached.fp32, cached.int8, reference_fp32, cached.metric)
        score = measure(handoff, self.test, self.ctx.metric, reference_fp32, self.ctx.device,
                        self.ctx.progress)
        write_json(path, score.to_dict())
        return score

    def _apply(self, index: int, step: Step, source: Handoff) -> tuple[Handoff, float, bool]:
        key = self.step_key(step, source)
        final = self.out / STEPS_DIR / f"{index:02d}-{key}"
        if (final / HANDOFF_FILE).exists():
            return _read_step(final), json.loads((final / HANDOFF_FILE).read_text())["seconds"], True
        partial = final.with_name(final.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)  # an interrupted earlier attempt
        self.console.print(f"step {index}: {step.label} ({step.config.name})", markup=False)
        started = time.monotonic()
        result = apply_remedy(source, step.config, dataclasses.replace(self.ctx, work_dir=partial))
        seconds = time.monotonic() - started
        record = {**result.to_dict(), "checkpoint": os.path.relpath(result.checkpoint, partial),
                  "seconds": seconds, "remedy": step.config.name, "label": step.label}
        write_json(partial / HANDOFF_FILE, record)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
        return _read_step(final), seconds, False

    # -- run ----------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        start_dir = self.start.checkpoint.parent
        self.console.print("baseline: fresh simulated PTQ of the start hand-off", markup=False)
        reference = self._score(self.start, start_dir, None)
        reference_fp32 = reference.fp32[reference.metric]
        baseline = Score(reference.fp32, reference.int8, reference_fp32, reference.metric)
        results = []
        current = self.start
        for index, step in enumerate(self.plan.steps, start=1):
            current, seconds, cached = self._apply(index, step, current)
            score = self._score(current, current.checkpoint.parent, reference_fp32)
            results.append(StepResult(step.label, step.config.name, current, score, seconds, cached,
                                      step.expected_ratio, dict(current.notes)))
            self.console.print(f"step {index}: INT8 {score.int8[score.metric]:.4f} "
                               f"({score.int8_over_reference:.2f}x reference FP32)"
                               + (" [cached]" if cached else ""), markup=False)
        self.final = current
        return summary(self.plan, self.start, baseline, results, self.ctx, self.test)


def _read_step(folder: Path) -> Handoff:
    data = json.loads((folder / HANDOFF_FILE).read_text())
    return Handoff.from_dict({**data, "checkpoint": str(folder / data["checkpoint"])})


def summary(plan: Plan, start: Handoff, baseline: Score, results: list[StepResult], ctx: Context,
            test: DataRef) -> dict[str, Any]:
    metric = baseline.metric
    base_int8 = baseline.int8[metric]
    rows = [{"step": "FP32 reference", "remedy": "", "fp32": baseline.fp32[metric], "int8": None,
             "int8_over_reference": None, "change_vs_baseline": None, "user_expects_vs_baseline": None,
             "seconds": None, "cached": None, "notes": {}, "checkpoint": str(start.checkpoint)},
            {"step": "Baseline", "remedy": "", "fp32": baseline.fp32[metric], "int8": base_int8,
             "int8_over_reference": baseline.int8_over_reference, "change_vs_baseline": 0.0,
             "user_expects_vs_baseline": 0.0, "seconds": None, "cached": None, "notes": {},
             "checkpoint": str(start.checkpoint)}]
    rows += [r.row(baseline) for r in results]
    final = results[-1].handoff if results else start
    return {
        "plan": plan.to_dict(), "metric": metric, "profile": start.profile.name,
        "calibrator": start.profile.activations.calibrator,
        "data": {"train": str(ctx.train), "val": str(ctx.val), "test": str(test)}, "seed": ctx.seed,
        "reference_fp32": baseline.fp32[metric], "baseline": baseline.to_dict(),
        "target": {"user_fp32": USER_FP32, "user_target": USER_TARGET,
                   "equivalent": baseline.fp32[metric] * USER_TARGET / USER_FP32},
        "rows": rows, "final": {"checkpoint": str(final.checkpoint), "calib": final.calib.to_dict(),
                                "lineage": final.lineage()},
    }


def check_outputs(out: Path, force: bool, lang: str | None = None) -> None:
    """Refuse, before any work, to overwrite the run's outputs without ``force``."""
    if out.exists() and not out.is_dir():
        raise NpuqError(f"{out}: exists and is not a folder")
    names = [*OUTPUTS, *(["report.ko.md"] if lang == "ko" else [])]
    taken = [n for n in names if (out / n).exists()]
    if taken and not force:
        raise NpuqError(f"{out / taken[0]}: already exists; pass --force to overwrite (finished steps are "
                        "reused either way)")


def run_roadmap(plan: Plan, start: Handoff, ctx: Context, test: DataRef, out: str | Path,
                force: bool = False, lang: str | None = None) -> dict[str, Any]:
    """Run ``plan`` and write its outputs to ``out``; the summary is also ``out/roadmap.json``."""
    from npuq.report.roadmap import render_plot, render_report

    out = Path(out)
    check_outputs(out, force, lang)
    runner = Runner(plan, start, ctx, test, out)
    result = runner.run()
    result["outputs"] = {"report": str(out / "report.md"), "json": str(out / "roadmap.json"),
                         "plot": str(out / "roadmap.png"), "handoff": str(out / "handoff")}
    write_handoff_folder(runner.final, out)
    render_plot(result, out / "roadmap.png")
    write_text(out / "report.md", render_report(result, "en"))
    if lang == "ko":
        write_text(out / "report.ko.md", render_report(result, "ko"))
        result["outputs"]["report_ko"] = str(out / "report.ko.md")
    write_json(out / "roadmap.json", result)
    return result


def write_handoff_folder(handoff: Handoff, out: Path) -> Path:
    """The final hand-off as ``npuq export`` writes it, plus the requested profile; all or nothing."""
    from npuq.export.handoff import export_handoff

    target = out / "handoff"
    partial = out / ".handoff.partial"
    frames = out / ".handoff-frames.txt"
    shutil.rmtree(partial, ignore_errors=True)
    write_text(frames, "".join(f"{n}\n" for n in handoff.calib.frames))
    try:
        export_handoff(handoff.checkpoint, handoff.calib.pool.path, frames, partial,
                       n_calib=len(handoff.calib.frames), force=True)
    finally:
        frames.unlink(missing_ok=True)
    write_text(partial / "profile.yaml", handoff.profile.to_yaml())
    old = out / ".handoff.old"
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    shutil.rmtree(old, ignore_errors=True)
    return target
