"""Every registered head side by side at the profile's bit width: grids, steps, GT floors, int-frac
misassignment. The int-frac / sigmoid-disp figures check the user's "+-28 mm -> +-2 mm" claim."""

import math
from types import SimpleNamespace

import pytest
import torch

from npuq.analysis.metrics import MetricConfig
from npuq.analysis.representability import (
    OutputGrid,
    activation_config,
    compare_heads,
    int_frac_model_misassignment,
    merge_misassignment,
    representable_set,
    snap_to,
    whole_metres,
)
from npuq.errors import NpuqError
from npuq.models.heads import HEADS, build_head
from npuq.quant.profile import QuantProfile, TensorQuantConfig
from npuq.quant.quantizer import IntGrid

CFG = MetricConfig(min_depth=0.1, max_depth=20.0)
SYM = TensorQuantConfig(bits=8, symmetric=True)
ASYM = TensorQuantConfig(bits=8, symmetric=False)


def ramp(lo: float, hi: float, n: int = 400) -> torch.Tensor:
    return torch.linspace(lo, hi, n).reshape(1, 1, 20, n // 20)


def by_head(rows) -> dict:
    return {r["head"]: r for r in rows}


def full(row) -> dict:
    assert row["scenarios"][0]["label"] == "full range"
    return row["scenarios"][0]


@pytest.fixture(scope="module")
def asym_rows():
    return by_head(compare_heads(QuantProfile(activations=ASYM), ramp(0.3, 15.0), CFG))


def test_one_row_per_registered_head_in_registry_order(asym_rows):
    rows = compare_heads(SYM, ramp(0.3, 15.0), CFG)
    assert [r["head"] for r in rows] == list(HEADS)
    assert list(HEADS) == ["sigmoid-disp", "int-frac", "coarse-residual", "log-depth", "centred-logit"]
    assert all(len(full(r)["grids"]) == len(r["outputs"]) for r in rows)
    assert all(not r["model_head"] and len(r["scenarios"]) == 1 for r in rows)
    assert by_head(rows)["int-frac"]["misassignment_note"] == "n/a (no model)"


def test_int_frac_unsigned_8bit_gives_whole_metres_and_a_1_255_m_fraction_step(asym_rows):
    sc = full(asym_rows["int-frac"])
    integer, fraction = sc["grids"]
    assert (integer["output"], fraction["output"]) == ("integer", "fraction")
    # each output its own per-tensor scale over its own range
    assert integer["scale"] == pytest.approx(15 / 255) and fraction["scale"] == pytest.approx(1 / 255)
    assert sc["whole_metres"] == {"whole_metres": 16, "exact": 16, "readable": 16, "max_gap_m": 1.0,
                                  "highest_m": 15.0}
    # only the probes inside 0.1..16 m; the resolution is the fraction's 1/255 m everywhere: +-1.96 mm
    assert [p["depth_m"] for p in sc["probes"]] == [0.5, 1.0, 2.0, 5.0, 10.0]
    for p in sc["probes"]:  # the host decodes in float32: equal to within a micrometre
        assert p["step_m"] == pytest.approx(1 / 255, abs=2e-6)
        assert p["max_error_mm"] == pytest.approx(1000 / 510, abs=1e-3)
        assert p["typical_error_mm"] == pytest.approx(p["max_error_mm"] / 2)
    # n + k/255 from 0 to 16 m in steps of 1/255, where the 26 values below 0.1 m collapse into 0.1
    assert sc["n_representable"] == 16 * 255 + 1 - 25


def test_int_frac_signed_grid_wastes_half_the_fraction_levels():
    sc = full(by_head(compare_heads(SYM, ramp(0.3, 15.0), CFG))["int-frac"])
    assert sc["grids"][1]["scale"] == pytest.approx(1 / 127)
    assert [p["max_error_mm"] for p in sc["probes"]] == pytest.approx([1000 / 254] * 5, abs=1e-3)  # +-3.94
    assert sc["whole_metres"]["exact"] == 16  # 15/127 = 0.118 is far below the 0.5 that flips round()


def test_sigmoid_step_grows_with_depth(asym_rows):
    steps = [p["step_m"] for p in full(asym_rows["sigmoid-disp"])["probes"]]
    assert len(steps) == 7  # 0.5 .. 50 m all inside 0.1..100 m
    assert all(a < b for a, b in zip(steps, steps[1:], strict=False))
    # by hand at 1 m: sigmoid (1 - 0.01)/9.99 * 255 = 25.27 levels, bracketed by 25 and 26
    def depth(k):
        return 1 / (0.01 + 9.99 * k / 255)

    assert steps[1] == pytest.approx(depth(25) - depth(26), rel=1e-5)
    # the +-28 mm of the claim sits near 1 m; at 10 m the sigmoid is metres off
    assert 10 < 500 * steps[1] < 28 < 500 * steps[2] and steps[4] > 1.0


def test_log_depth_beats_sigmoid_far_away_and_loses_close_by():
    far = by_head(compare_heads(SYM, ramp(8.0, 19.0), CFG))
    assert full(far["log-depth"])["floor"]["abs_rel"] < 0.5 * full(far["sigmoid-disp"])["floor"]["abs_rel"]
    near = by_head(compare_heads(SYM, ramp(0.2, 0.4), CFG))
    assert full(near["sigmoid-disp"])["floor"]["abs_rel"] < full(near["log-depth"])["floor"]["abs_rel"]


def test_floor_counts_gt_beyond_the_head_range():
    rows = by_head(compare_heads(SYM, ramp(10.0, 19.9), CFG))
    split = full(rows["int-frac"])
    # int-frac ends at 16 m: (19.9 - 16) / 9.9 of a uniform ramp is clamped, and that dominates its floor
    assert split["gt_outside_range_share"] == pytest.approx(3.9 / 9.9, abs=0.01)
    assert full(rows["sigmoid-disp"])["gt_outside_range_share"] == 0
    assert split["floor"]["abs_rel"] > 0.03


def test_coarse_residual_nearest_floor_is_far_below_its_float_target_floor(asym_rows):
    sc = full(asym_rows["coarse-residual"])
    # float targets (d, 0): the coarse grid of 100/255 m alone rounds; the nearest depth uses the residual
    assert sc["probes"][2]["step_m"] == pytest.approx(100 / 255, rel=1e-4)
    assert sc["floor_nearest"]["abs_rel"] < 0.05 * sc["floor"]["abs_rel"]


def test_model_head_gets_its_calibrated_grids_and_the_measured_misassignment():
    head = build_head("int-frac", [8], 0.1, 100.0)
    clipped = SimpleNamespace(kind="output", order=1, output_index=0, enabled=True, grid=IntGrid(8, True),
                              scale=torch.tensor(10.2 / 127), zero_point=torch.tensor(0))
    frac = SimpleNamespace(kind="output", order=2, output_index=1, enabled=True, grid=IntGrid(8, True),
                           scale=torch.tensor(1 / 127), zero_point=torch.tensor(0))
    sim = SimpleNamespace(quantizers={"i": clipped, "f": frac}, profile=QuantProfile())
    measured = {"n_pixels": 10, "misassigned": 1, "misassigned_share": 0.1}
    rows = by_head(compare_heads(None, ramp(0.3, 15.0), CFG, model_head=head, sim=sim,
                                 misassignment=measured, depth_range=(0.1, 100.0)))
    own = rows["int-frac"]
    assert own["model_head"] and [s["label"] for s in own["scenarios"]] == ["full range", "calibrated"]
    calibrated = own["scenarios"][1]
    assert calibrated["grids"][0]["scale"] == pytest.approx(10.2 / 127)
    # a range clipped at 10.2 reads no whole metre above 10: 11..15 m are lost
    assert calibrated["whole_metres"]["highest_m"] == 10.0 and calibrated["whole_metres"]["exact"] == 11
    assert calibrated["floor"]["abs_rel"] > own["scenarios"][0]["floor"]["abs_rel"]
    assert own["misassignment"] == measured and own["misassignment_note"].startswith("measured")
    # the other heads use the model's 0.1..100 m range; int-frac narrows itself to 16 m
    assert rows["sigmoid-disp"]["max_depth"] == 100.0 and own["max_depth"] == 16.0
    assert rows["sigmoid-disp"]["misassignment"] is None
    assert rows["sigmoid-disp"]["misassignment_note"] == "no integer output"


def test_non_int_frac_model_reports_na_instead_of_a_number():
    head = build_head("sigmoid-disp", [8], 0.1, 100.0)
    rows = by_head(compare_heads(SYM, ramp(0.3, 15.0), CFG, model_head=head,
                                 misassignment={"n_pixels": 1, "misassigned": 0}))
    assert rows["int-frac"]["misassignment"] is None
    assert rows["int-frac"]["misassignment_note"] == "n/a (model has head sigmoid-disp)"
    assert rows["sigmoid-disp"]["model_head"] and rows["sigmoid-disp"]["misassignment"] is None


def test_whole_metres_of_a_coarse_integer_grid():
    head = build_head("int-frac", [8], 0.1, 16.0)
    coarse = OutputGrid(IntGrid(8, signed=True), 1.4, 0)  # levels 0, 1.4, 2.8, 4.2, ...
    w = whole_metres(head, coarse)
    # Q(2) = 1.4, Q(5) = 5.6, Q(9) = 8.4, Q(12) = 12.6 round to 1, 6, 8, 13: 2, 5, 9 and 12 m are lost
    assert w["exact"] == 12 and w["readable"] == 12 and w["max_gap_m"] == 2.0
    assert whole_metres(build_head("log-depth", [8], 0.1, 16.0), coarse) is None


def test_representable_set_and_snapping_by_hand():
    head = build_head("int-frac", [8], 0.5, 3.0)
    grids = (OutputGrid(IntGrid(2, False), 1.0, 0), OutputGrid(IntGrid(2, False), 1 / 3, 0))
    # integer levels 0..3 over [0, 15] -> 0, 1, 2, 3; fraction 0, 1/3, 2/3, 1; clamped to [0.5, 3]
    table = representable_set(head, grids)
    expected = [0.5, 2 / 3, 1.0, 4 / 3, 5 / 3, 2.0, 7 / 3, 8 / 3, 3.0]
    assert table.tolist() == pytest.approx(expected, abs=1e-6)
    snapped = snap_to(table, torch.tensor([[0.1, 1.1, 1.9, 2.9, 7.0]]))
    assert snapped.tolist()[0] == pytest.approx([0.5, 1.0, 2.0, 3.0, 3.0], abs=1e-6)
    assert representable_set(head, (grids[0], None)) is None  # a float output is continuous


def test_bad_probes_and_missing_profile_are_one_line_errors():
    with pytest.raises(NpuqError, match="probe depths"):
        compare_heads(SYM, ramp(0.3, 1.0), CFG, probe_depths=(0.0, 1.0))
    with pytest.raises(NpuqError, match="activation config"):
        activation_config(None)
    with pytest.raises(NpuqError, match="no frame"):
        compare_heads(SYM, torch.zeros(1, 1, 4, 4), CFG)


# -- misassignment of a whole int-frac model ----------------------------------------------------------


class Passthrough(torch.nn.Module):
    """A stand-in "model" whose two outputs are the RGB's first two channels, plus a shift on the first."""

    def __init__(self, head, shift: float = 0.0):
        super().__init__()
        self.head, self.shift = head, shift

    def forward(self, rgb):
        return rgb[:, :1] + self.shift, rgb[:, 1:2]


def frame(integer, fraction, gt, gt_scale: int = 1):
    rgb = torch.stack([torch.tensor(integer), torch.tensor(fraction), torch.zeros(len(integer))]).reshape(
        3, 1, -1)
    depth = torch.tensor(gt).reshape(1, 1, -1).repeat_interleave(gt_scale, -1).repeat_interleave(gt_scale, -2)
    return {"rgb": rgb.float(), "depth": depth.float()}


def test_model_misassignment_counts_sim_against_fp32_and_gt():
    head = build_head("int-frac", [8], 0.1, 16.0)
    model, sim = Passthrough(head), Passthrough(head, shift=0.3)
    # FP32 integers 2.0, 2.3, 4.1, 7.4 -> 2, 2, 4, 7; the sim's +0.3 -> 2.3, 2.6, 4.4, 7.7 -> 2, 3, 4, 8
    data = [frame([2.0, 2.3, 4.1, 7.4], [0.5, 0.5, 0.2, 0.1], [2.5, 2.5, 4.2, 25.0], gt_scale=2)]
    r = int_frac_model_misassignment(model, sim, data, CFG)
    # GT 25 m is outside the metric range: 3 valid pixels, each upsampled 2x2 (nearest) to the GT size
    assert r["n_pixels"] == 12 and r["n_images"] == 1
    assert r["misassigned"] == 4 and r["misassigned_share"] == pytest.approx(1 / 3)
    assert r["misassigned_mean_error_m"] == pytest.approx(1.0, abs=1e-5)  # 3.5 for 2.5 m
    assert r["wrong_integer"] == 4 and r["float_wrong_integer"] == 0
    with pytest.raises(NpuqError, match="no integer output"):
        int_frac_model_misassignment(Passthrough(build_head("log-depth", [8], 0.1, 16.0)), sim, data, CFG)


def test_merge_weights_the_mean_errors_by_count():
    def part(n, k, err):
        return {"n_pixels": n, "misassigned": k, "misassigned_share": k / n, "misassigned_mean_error_m": err,
                "misassigned_max_error_m": err, "wrong_integer": 0, "wrong_integer_share": 0.0,
                "wrong_integer_mean_error_m": math.nan, "wrong_integer_max_error_m": math.nan,
                "float_wrong_integer": 1, "float_wrong_integer_share": 1 / n}

    m = merge_misassignment([part(10, 1, 1.0), part(30, 3, 2.0)])
    assert m["misassigned"] == 4 and m["misassigned_share"] == pytest.approx(0.1)
    assert m["misassigned_mean_error_m"] == pytest.approx(1.75) and m["misassigned_max_error_m"] == 2.0
    assert math.isnan(m["wrong_integer_mean_error_m"]) and m["float_wrong_integer"] == 2
