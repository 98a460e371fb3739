"""`npuq demo` end to end on a tiny configuration: reference, then the demo plan through the runner."""

import dataclasses
import json

import pytest

from npuq.demo import DemoConfig, run_demo
from npuq.errors import NpuqError

PLAN = """name: tiny-demo
calibration: {size: 4}
profile: npu-asym
steps:
  - label: "Phase 1: diverse calibration set"
    remedy: calibration
    config: {strategy: diverse, size: 4}
    expect: phase1
  - label: "Phase 2: best head"
    remedy: best
    expect: phase2
    config:
      alternatives:
        sigmoid-disp: [{remedy: head, config: {head: sigmoid-disp, steps: 2, batch_size: 2}}]
        log-depth: [{remedy: head, config: {head: log-depth, steps: 2, batch_size: 2}}]
"""


def tiny(tmp_path, **changes):
    plan = tmp_path / "plan.yaml"
    plan.write_text(PLAN)
    cfg = DemoConfig(out=tmp_path / "demo", size=(64, 64), n_frames=80, steps=2, batch_size=2, plan=str(plan))
    return dataclasses.replace(cfg, **changes)


def test_demo_trains_the_reference_then_runs_its_plan(tmp_path):
    cfg = tiny(tmp_path)
    result = run_demo(cfg)
    assert [r["step"] for r in result["rows"]] == ["FP32 reference", "Baseline",
                                                   "Phase 1: diverse calibration set", "Phase 2: best head"]
    chosen = result["rows"][3]["notes"]["chosen"]
    validation = result["rows"][3]["notes"]["validation"]
    assert chosen in {"sigmoid-disp", "log-depth"}
    assert validation[chosen]["int8"] == min(v["int8"] for v in validation.values())
    out = cfg.out / "roadmap"
    for name in ("report.md", "report.ko.md", "roadmap.png", "roadmap.json", "handoff/model.onnx"):
        assert (out / name).is_file()
    assert json.loads((out / "roadmap.json").read_text())["rows"][1]["int8"] == result["rows"][1]["int8"]
    assert list((cfg.out / "cache").glob("reference-*.pt"))  # the cache lives under --out
    again = run_demo(cfg)  # reference and steps come from the cache
    assert [r["int8"] for r in again["rows"]] == [r["int8"] for r in result["rows"]]
    assert all(r["cached"] for r in again["rows"][2:])


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "demo").mkdir()
    (tmp_path / "demo" / "mine.txt").write_text("x")
    with pytest.raises(NpuqError, match="--force"):
        run_demo(tiny(tmp_path))


def test_the_quick_demo_uses_its_shipped_plan():
    from npuq.roadmap.plan import load_plan

    quick = DemoConfig.quick()
    assert load_plan(quick.plan).name == "demo-quick" and quick.size[0] % 32 == 0 and quick.size[1] % 32 == 0
