"""Roadmap plans: YAML files with an ordered list of labelled remedy steps, validated on load.

    name: path-b
    title: "Path B: Phase 1 -> Phase 2"
    profile: npu-default          # optional: the toolchain the plan is judged under
    calibration: {size: 100}      # optional: the Baseline's random calibration set
    start: path/to/model.pt       # optional: the float checkpoint to start from (else --model)
    steps:
      - label: "Phase 1: diverse calibration set"
        remedy: calibration
        config: {strategy: diverse, size: 300}
        expect: phase1            # the user's own expectation for this step (USER_EXPECTATIONS)

Shipped plans live in ``npuq/plans`` (package data); a plan argument is a shipped name or a YAML path.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from npuq.errors import NpuqError
from npuq.io import load_yaml
from npuq.remedies.base import RemedyConfig, remedy_config

# The user's plan (shared/user-plan): abs_rel they expect after each phase, from their INT8 baseline 0.1133.
USER_BASELINE = 0.1133
USER_EXPECTATIONS = {"phase1": 0.085, "phase2": 0.055, "phase3": 0.040, "path-c": 0.065}
USER_FP32, USER_TARGET = 0.0304, 0.05  # their FP32 and the abs_rel they need
PLAN_KEYS = {"name", "title", "description", "profile", "calibration", "start", "steps"}
STEP_KEYS = {"label", "remedy", "config", "expect"}


@dataclass(frozen=True)
class Step:
    label: str
    config: RemedyConfig
    expect: str | None = None

    @property
    def expected_ratio(self) -> float | None:
        """The user's expected abs_rel for this step over their baseline (None: no expectation)."""
        return None if self.expect is None else USER_EXPECTATIONS[self.expect] / USER_BASELINE

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "remedy": self.config.name, "config": self.config.to_dict(),
                "expect": self.expect}


@dataclass(frozen=True)
class Plan:
    name: str
    steps: tuple[Step, ...]
    title: str = ""
    description: str = ""
    profile: str = "npu-default"
    calib_size: int = 100
    start: str | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "profile": self.profile, "calibration": {"size": self.calib_size}, "start": self.start,
                "steps": [s.to_dict() for s in self.steps]}


def shipped_plans() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("npuq.plans").iterdir() if p.name.endswith(".yaml"))


def _plan_text(name_or_path: str | Path) -> tuple[str, str]:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.parent != Path("."):
        if not path.is_file():
            raise NpuqError(f"{path}: no such plan file")
        return path.read_text(), str(path)
    shipped = resources.files("npuq.plans") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise NpuqError(f"{name_or_path}: no such shipped plan (shipped: {', '.join(shipped_plans())}); "
                        "give a .yaml path for your own")
    return shipped.read_text(), f"plan {name_or_path}"


def load_plan(name_or_path: str | Path) -> Plan:
    """Parse and validate a plan; every problem is one NpuqError line naming the plan and the step."""
    text, source = _plan_text(name_or_path)
    return plan_from_dict(load_yaml(text, source), source)


def plan_from_dict(data: Any, source: str) -> Plan:
    if not isinstance(data, dict):
        raise NpuqError(f"{source}: a plan is a mapping with 'name' and 'steps'")
    unknown = sorted(set(data) - PLAN_KEYS, key=str)
    if unknown:
        raise NpuqError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(PLAN_KEYS))})")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise NpuqError(f"{source}: 'steps' must be a non-empty list")
    calib = data.get("calibration") or {}
    if not isinstance(calib, dict) or set(calib) - {"size"} or not isinstance(calib.get("size", 100), int) \
            or calib.get("size", 100) < 1:
        raise NpuqError(f"{source}: 'calibration' must be {{size: N}} with N >= 1")
    return Plan(name=str(data.get("name") or Path(source).stem), title=str(data.get("title", "")),
                description=str(data.get("description", "")), profile=str(data.get("profile", "npu-default")),
                calib_size=int(calib.get("size", 100)), start=data.get("start"),
                steps=tuple(_step(s, i, source) for i, s in enumerate(steps)), source=source)


def _step(data: Any, index: int, source: str) -> Step:
    where = f"{source}: step {index + 1}"
    if not isinstance(data, dict) or "remedy" not in data:
        raise NpuqError(f"{where}: a step is a mapping with 'label', 'remedy' and optional 'config', "
                        "'expect'")
    unknown = sorted(set(data) - STEP_KEYS, key=str)
    if unknown:
        raise NpuqError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(STEP_KEYS))})")
    label = str(data.get("label") or data["remedy"])
    expect = data.get("expect")
    if expect is not None and expect not in USER_EXPECTATIONS:
        raise NpuqError(f"{where}: expect must be one of {', '.join(USER_EXPECTATIONS)}, got {expect!r}")
    config = remedy_config(str(data["remedy"]), data.get("config"), f"{where} ({label!r})")
    return Step(label, config, expect)
