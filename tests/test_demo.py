"""`npuq demo` end to end on a tiny configuration: every phase runs and lands in the roadmap table."""

import json

import pytest

from npuq.demo import DemoConfig, roadmap_rows, run_demo
from npuq.errors import NpuqError


def tiny(out, **changes):
    settings = dict(out=out, size=(64, 64), n_train=12, n_test=3, n_val=3, steps=2, batch_size=2, n_calib=4,
                    n_diverse=5, weight_norm_steps=2, head_steps=2, head_qaf_steps=1,
                    heads=("sigmoid-disp", "int-frac"))
    settings.update(changes)
    return DemoConfig(**settings)


def test_roadmap_rows_change_vs_baseline():
    rows = roadmap_rows(0.03, 0.10, [("Phase 1", 0.085), ("Phase 2", 0.12)])
    assert [r["Phase"] for r in rows] == ["FP32 reference", "Baseline", "Phase 1", "Phase 2"]
    assert [r["change vs baseline"] for r in rows] == ["", "+0.0%", "-15.0%", "+20.0%"]


def test_demo_runs_baseline_phase1_and_phase2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the reference model cache lives in ./.npuq-cache
    summary = run_demo(tiny(tmp_path / "demo"))
    phases = [row["Phase"] for row in summary["table"]]
    assert phases[:2] == ["FP32 reference", "Baseline"]
    assert any(p.startswith("Phase 1:") for p in phases)
    assert any(p.startswith("Phase 2:") and summary["phase2"]["best"] in p for p in phases)
    assert set(summary["phase2"]["heads"]) == {"sigmoid-disp", "int-frac"}
    best = summary["phase2"]["best"]
    assert summary["phase2"]["heads"][best]["val_int8"] == min(
        h["val_int8"] for h in summary["phase2"]["heads"].values())
    assert all(row["abs_rel (measured)"] > 0 for row in summary["table"])
    saved = json.loads((tmp_path / "demo" / "summary.json").read_text())
    assert saved["table"] == summary["table"]
    assert (tmp_path / "demo" / "analysis" / "report.md").exists()
    assert (tmp_path / "demo" / "phase1" / "calib-diverse.txt").read_text().count("\n") >= 5


def test_demo_refuses_a_foreign_folder(tmp_path):
    (tmp_path / "mine.txt").write_text("x")
    with pytest.raises(NpuqError, match="--force"):
        run_demo(tiny(tmp_path))
