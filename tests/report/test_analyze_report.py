"""The analysis report writer: files, JSON, images, findings computed from the numbers, no clobbering."""

import json
import math

import pytest
import torch
from PIL import Image

from npuq.analysis.metrics import MetricConfig
from npuq.analysis.representability import GridScenario, OutputGrid, analyze_representability, compare_heads
from npuq.errors import NpuqError
from npuq.models.heads import HEADS, SigmoidDispHead
from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import IntGrid
from npuq.report.analyze import (
    REPORT_FILES,
    budget_findings,
    json_ready,
    per_head_findings,
    sqnr_findings,
    sqnr_trend,
    write_analysis_report,
)

PNGS = ("sqnr_per_layer.png", "error_budget.png", "representability.png")


def sqnr_rows(values, isolated=None):
    sections = ["encoder", "decoder", "head"]
    return [{"index": i, "order": 10 * i, "name": f"q{i}", "layer": f"l{i}", "op": "conv",
             "kind": "activation", "stage": "s", "section": sections[min(i * 3 // len(values), 2)],
             "sqnr_db": v,
             "sqnr_db_isolated": None if isolated is None else isolated[i]} for i, v in enumerate(values)]


def budget_rows(fp32=0.03, int8=0.11, groups=(("weights", 0.04, 0.10), ("output", 0.09, 0.05))):
    rows = [{"group": "fp32", "partition": "reference", "description": "all off", "abs_rel": fp32},
            {"group": "int8", "partition": "reference", "description": "all on", "abs_rel": int8}]
    for name, on, off in groups:
        rows.append({"group": name, "partition": "kind", "n_act": 1, "n_weight": 0,
                     "abs_rel_only_enabled": on, "abs_rel_only_disabled": off,
                     "cost": on - fp32, "recovery": int8 - off})
    return rows


def representability():
    head = SigmoidDispHead([16])
    gt = torch.linspace(0.5, 10.0, 64).reshape(1, 1, 8, 8)
    grids = [GridScenario("full range", (OutputGrid(IntGrid(8, True), 1 / 127, 0),)),
             GridScenario("calibrated", (OutputGrid(IntGrid(8, True), 0.3 / 127, 0),))]
    return analyze_representability(head, grids, gt, MetricConfig())


def per_head(symmetric=True, lo=0.5, hi=10.0, **kw):
    gt = torch.linspace(lo, hi, 64).reshape(1, 1, 8, 8)
    return compare_heads(TensorQuantConfig(symmetric=symmetric), gt, MetricConfig(), **kw)


def test_sqnr_trend_is_the_least_squares_slope():
    trend = sqnr_trend(sqnr_rows([40.0, 38.0, 36.0, math.inf, 32.0]))
    assert trend["slope_db_per_quantizer"] == pytest.approx(-2.0)  # the inf (exact) point is left out
    assert trend["n"] == 4 and trend["min_db"] == 32.0 and trend["min_at"] == "q4"


def test_findings_follow_the_numbers():
    falling = " ".join(sqnr_findings(sqnr_rows([40.0, 35.0, 30.0])))
    assert "falls" in falling and "-5.000 dB per quantizer" in falling
    rising = " ".join(sqnr_findings(sqnr_rows([30.0, 35.0, 40.0])))
    assert "rises" in rising and "+5.000" in rising
    local = " ".join(sqnr_findings(sqnr_rows([40.0, 30.0, 20.0], isolated=[41.0, 40.0, 39.0])))
    assert "1.0 dB at the first quantizer and 19.0 dB at the last" in local
    budget = " ".join(budget_findings(budget_rows()))
    # output: 0.09 - 0.03 = 0.06 of the 0.08 gap (75%); its removal recovers 0.11 - 0.05 = 0.06
    assert "quantizing only `output` costs the most" in budget
    assert "+0.0600 over FP32, 75% of the INT8 gap" in budget
    assert "keeping only `output` in float recovers the most" in budget
    assert "3.67x" in budget
    swapped = " ".join(budget_findings(budget_rows(groups=(("weights", 0.10, 0.04), ("output", 0.05, 0.09)))))
    assert "quantizing only `weights` costs the most" in swapped
    flat = " ".join(budget_findings(budget_rows(int8=0.03, groups=(("weights", 0.028, 0.032),))))
    assert "no group raises abs_rel above FP32 when quantized alone (largest change -0.0020" in flat
    assert "does not lower abs_rel below INT8 (best change +0.0020" in flat


def test_report_files_json_and_images(tmp_path):
    out = tmp_path / "analysis"
    rep = representability()
    result = write_analysis_report(out, sqnr_rows([40.0, math.inf, 30.0], isolated=[45.0, math.inf, 44.0]),
                                   budget_rows(), rep, {"model": "m.ckpt", "profile": "npu-default"},
                                   per_head=per_head())
    for name in REPORT_FILES:
        assert (out / name).is_file(), name
    for png in (*PNGS, "representability_per_head.png"):
        with Image.open(out / png) as img:
            img.verify()
            assert img.format == "PNG"
    doc = json.loads((out / "analysis.json").read_text())
    assert doc["format"] == "npuq-analysis/1"
    assert doc["sqnr"][1]["sqnr_db"] is None  # inf -> null, the JSON stays standard
    assert doc["budget"][0]["abs_rel"] == 0.03
    floor = rep["scenarios"][0]["floor"]["abs_rel"]
    assert doc["representability"]["scenarios"][0]["floor"]["abs_rel"] == pytest.approx(floor)
    md = (out / "report.md").read_text()
    assert "![SQNR per layer](sqnr_per_layer.png)" in md and "![Error budget](error_budget.png)" in md
    assert f"abs_rel floor of {floor:.4f}" in md
    assert result["findings"]["budget"] and not list(out.glob(".*.tmp"))
    assert [r["head"] for r in doc["representability_per_head"]] == list(HEADS)
    assert "## (d) Representability per head" in md and "![Representability per head]" in md


def test_per_head_findings_check_the_claim_with_the_numbers():
    unsigned = " ".join(per_head_findings(per_head(symmetric=False)))
    # unsigned 8 bits: fraction step 1/255 m = 3.92 mm, +-1.96 mm; the sigmoid is +-19.25 mm at 1 m
    assert "step is 3.92 mm, a max rounding error of ±1.96 mm" in unsigned
    assert "consistent with the claimed ±2 mm" in unsigned
    assert "±19.2 mm at 1 m" in unsigned and "stays within ±28 mm only up to about 1.1" in unsigned
    signed = " ".join(per_head_findings(per_head(symmetric=True)))
    assert "±3.94 mm" in signed and "not the claimed ±2 mm (a signed grid spends half" in signed
    assert "±39.9 mm at 1 m" in signed  # the 8-bit signed sigmoid misses +-28 mm already at 1 m
    assert "reads 16 of 16 whole metres exactly (largest gap 1 m)" in signed
    # the lowest floor is named first; which it is follows the data
    far = per_head_findings(per_head(lo=6.0, hi=15.0))[0]
    near = per_head_findings(per_head(lo=0.15, hi=0.3))[0]
    assert "lowest for `int-frac`" in far and "highest for `sigmoid-disp`" in far
    assert "lowest for `sigmoid-disp`" in near
    assert per_head_findings([]) == []


def test_per_head_table_marks_misassignment_na_for_other_heads(tmp_path):
    rows = per_head(model_head=SigmoidDispHead([8], 0.1, 100.0))
    write_analysis_report(tmp_path, [], [], None, {}, per_head=rows)
    md = (tmp_path / "report.md").read_text()
    header = next(line for line in md.splitlines() if line.startswith("| head | grid | outputs | grid(s) |"))
    assert "step at 0.5 m" in header and "GT abs_rel floor" in header and "int misassignment" in header
    int_frac = next(line for line in md.splitlines() if line.startswith("| `int-frac`"))
    assert "n/a (model has head sigmoid-disp)" in int_frac and "whole metres exact 16/16" in int_frac
    assert "3.94 mm (±1.97 mm)" not in int_frac and "7.87 mm (±3.94 mm)" in int_frac
    assert "| `sigmoid-disp` (model) |" in md


def test_refuses_to_overwrite_without_force(tmp_path):
    write_analysis_report(tmp_path, [], budget_rows(), None, {})
    before = (tmp_path / "report.md").read_text()
    with pytest.raises(NpuqError, match=f"{tmp_path}: already exists"):
        write_analysis_report(tmp_path, sqnr_rows([40.0, 30.0]), budget_rows(), None, {})
    assert (tmp_path / "report.md").read_text() == before
    write_analysis_report(tmp_path, sqnr_rows([40.0, 30.0]), budget_rows(), None, {}, force=True)
    assert "Not computed" in (tmp_path / "report.md").read_text()  # the representability section
    assert (tmp_path / "sqnr_per_layer.png").is_file() and not (tmp_path / "representability.png").exists()


def test_json_ready_handles_tensors_and_non_finite():
    assert json_ready({"a": torch.tensor([1.0, float("nan")]), "b": (math.inf, 2)}) == {"a": [1.0, None],
                                                                                       "b": [None, 2]}


def test_run_analysis_refuses_before_any_work(tmp_path):
    from npuq.report.analyze import run_analysis

    (tmp_path / "report.md").write_text("earlier report")
    with pytest.raises(NpuqError, match="already exists"):
        run_analysis(None, None, None, MetricConfig(), tmp_path)  # would fail on None if it got further
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_run_analysis_on_a_tiny_quantsim(tmp_path):
    from npuq.data.datasets import open_dataset
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import QuantProfile, TensorQuantConfig
    from npuq.report.analyze import run_analysis

    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(depth=18)).eval()
    data = open_dataset("synth:n=1,seed=5,size=64x64")
    profile = QuantProfile(activations=TensorQuantConfig(range="minmax"), bias_correction="off", cle=False)
    sim = simulate_ptq(model, profile, torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    result = run_analysis(model, sim, data, MetricConfig(), tmp_path / "out", sqnr_frames=1,
                          partitions=("kind",), meta={"profile": profile.name})
    doc = json.loads((tmp_path / "out" / "analysis.json").read_text())
    assert doc["meta"]["profile"] == "custom" and doc["meta"]["head"] == "sigmoid-disp"
    assert [r["name"] for r in doc["sqnr"]] == list(sim.quantizers)
    assert [r["group"] for r in doc["budget"]] == ["fp32", "int8", "weights", "activations", "output"]
    scenarios = doc["representability"]["scenarios"]
    assert [s["label"] for s in scenarios] == ["calibrated", "full range"]
    out_q = sim.quantizers["head.sigmoid"]
    assert scenarios[0]["grids"][0]["scale"] == pytest.approx(out_q.scale)
    assert scenarios[1]["grids"][0]["scale"] == pytest.approx(1 / 127)
    assert result["floors"]["full range"] == pytest.approx(scenarios[1]["floor"]["abs_rel"])
    assert all(result["findings"][k] for k in ("sqnr", "budget", "representability", "per_head"))
    for png in (*PNGS, "representability_per_head.png"):
        with Image.open(tmp_path / "out" / png) as img:
            assert img.size[0] > 100
    assert all(q.enabled for q in sim.quantizers.values())
    rows = {r["head"]: r for r in doc["representability_per_head"]}
    assert list(rows) == list(HEADS) and rows["sigmoid-disp"]["model_head"]
    own = rows["sigmoid-disp"]["scenarios"]
    assert [s["label"] for s in own] == ["full range", "calibrated"]
    assert own[1]["grids"][0]["scale"] == pytest.approx(out_q.scale)
    # the same floors as section (c), computed separately
    assert own[0]["floor"]["abs_rel"] == pytest.approx(scenarios[1]["floor"]["abs_rel"])
    assert own[1]["floor"]["abs_rel"] == pytest.approx(scenarios[0]["floor"]["abs_rel"])
    assert rows["int-frac"]["misassignment_note"] == "n/a (model has head sigmoid-disp)"
    printed = result["representability_per_head"]
    assert [r["head"] for r in printed] == list(HEADS) and "step_curve" not in printed[0]["scenarios"][0]


def test_run_analysis_measures_the_int_frac_model_misassignment(tmp_path):
    from npuq.data.datasets import open_dataset
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import QuantProfile
    from npuq.report.analyze import run_analysis

    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(depth=18, head="int-frac", max_depth=16.0)).eval()
    data = open_dataset("synth:n=2,seed=5,size=64x64")
    profile = QuantProfile(activations=TensorQuantConfig(range="minmax"), bias_correction="off", cle=False)
    sim = simulate_ptq(model, profile, torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)))
    result = run_analysis(model, sim, data, MetricConfig(), tmp_path / "out", sqnr_frames=1,
                          partitions=("kind",))
    rows = {r["head"]: r for r in result["representability_per_head"]}
    m = rows["int-frac"]["misassignment"]
    assert rows["int-frac"]["model_head"] and rows["int-frac"]["misassignment_note"].startswith("measured")
    assert m["n_images"] == 2 and m["n_pixels"] > 0 and 0 <= m["misassigned_share"] <= 1
    assert m["wrong_integer"] >= 0 and rows["coarse-residual"]["misassignment"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "INT8 sim vs FP32" in md and "| `int-frac` (model) | full range |" in md
