"""Output representability on cases small enough to compute by hand."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import Tensor

from npuq.analysis.metrics import MetricConfig
from npuq.analysis.representability import (
    GridScenario,
    OutputGrid,
    analyze_representability,
    default_scenarios,
    depth_step_curve,
    full_range_grids,
    grids_from_sim,
    gt_quantization_floor,
    representable_depths,
    steps_at,
)
from npuq.errors import NpuqError
from npuq.models.heads import DepthHead, SigmoidDispHead
from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import IntGrid

CFG = MetricConfig(min_depth=0.1, max_depth=20.0)
SYM8 = OutputGrid(IntGrid(8, signed=True), 1 / 127, 0)


def head() -> SigmoidDispHead:
    return SigmoidDispHead([16], min_depth=0.1, max_depth=100.0)


def depth_of_level(k: int, levels: int = 127) -> float:
    """inv = 1/100 + (1/0.1 - 1/100) * k/levels; depth = 1/inv."""
    return 1.0 / (0.01 + 9.99 * k / levels)


def const_gt(value: float, h: int = 4, w: int = 5) -> Tensor:
    return torch.full((1, 1, h, w), value)


def test_full_range_grid_is_the_profile_grid_over_0_1():
    (sym,) = full_range_grids(head(), TensorQuantConfig(bits=8, symmetric=True))
    assert (sym.scale, sym.zero_point, sym.grid.qmin, sym.grid.qmax) == (pytest.approx(1 / 127), 0, -128, 127)
    (asym,) = full_range_grids(head(), TensorQuantConfig(bits=8, symmetric=False))
    assert (asym.scale, asym.zero_point) == (pytest.approx(1 / 255), 0)


def test_representable_depths_symmetric_8bit():
    depths = representable_depths(head(), SYM8)
    # a sigmoid is never negative: only levels 0..127 of the signed grid are reachable
    assert len(depths) == 128
    assert float(depths[0]) == pytest.approx(0.1)  # level 127 -> sigmoid 1
    assert float(depths[-1]) == pytest.approx(100.0)  # level 0 -> sigmoid 0
    assert float(depths[-2]) == pytest.approx(depth_of_level(1))  # 1/(0.01 + 9.99/127) = 11.28 m
    assert depths.tolist() == pytest.approx(sorted(depth_of_level(k) for k in range(128)))


def test_representable_depths_asymmetric_uses_all_levels():
    grid = OutputGrid(IntGrid(8, signed=False), 1 / 255, 0)
    depths = representable_depths(head(), grid)
    assert len(depths) == 256
    assert float(depths[-2]) == pytest.approx(depth_of_level(1, 255))


def test_step_at_two_metres_by_hand():
    # depth 2 m -> inv 0.5 -> sigmoid (0.5 - 0.01)/9.99 = 0.04905 -> 6.229 levels: bracketed by 6 and 7
    step = steps_at(head(), torch.tensor([2.0], dtype=torch.float64), (SYM8,))
    assert float(step[0]) == pytest.approx(depth_of_level(6) - depth_of_level(7), rel=1e-5)  # 0.2911 m
    # 10 m -> sigmoid 0.00901 -> 1.144 levels: bracketed by 1 and 2 (a step of several metres)
    far = steps_at(head(), torch.tensor([10.0], dtype=torch.float64), (SYM8,))
    assert float(far[0]) == pytest.approx(depth_of_level(1) - depth_of_level(2), rel=1e-5)


def test_floor_on_constant_gt_is_the_relative_rounding_error():
    # 2 m rounds to level round(6.229) = 6, i.e. depth_of_level(6) = 2.0748 m
    floor = gt_quantization_floor(head(), SYM8, const_gt(2.0), CFG)
    assert floor["abs_rel"] == pytest.approx((depth_of_level(6) - 2.0) / 2.0, rel=1e-4)  # 0.0374
    assert floor["n_images"] == 1


def test_floor_ignores_invalid_pixels_and_accepts_dataset_items():
    gt = const_gt(2.0)
    gt[..., :2] = 0.0  # invalid GT
    items = [{"depth": gt[0], "rgb": torch.zeros(3, 4, 5)}]
    floor = gt_quantization_floor(head(), [SYM8], items, CFG)
    assert floor["abs_rel"] == pytest.approx((depth_of_level(6) - 2.0) / 2.0, rel=1e-4)


def test_floor_without_valid_pixels_is_an_error():
    with pytest.raises(NpuqError, match="no frame"):
        gt_quantization_floor(head(), SYM8, const_gt(0.0), CFG)


def test_wrong_number_of_grids_is_an_error():
    with pytest.raises(NpuqError, match="2 grids"):
        gt_quantization_floor(head(), [SYM8, SYM8], const_gt(2.0), CFG)


def test_clipped_calibrated_range():
    # a toolchain that clipped the sigmoid to [0, 0.3]: finer steps far away, clipping close by
    clipped = OutputGrid.from_range(0.0, 0.3, IntGrid(8, signed=True))
    assert clipped.scale == pytest.approx(0.3 / 127)
    # 0.2 m -> sigmoid 0.4995 > 0.3 -> stored as 0.3 -> 1/(0.01 + 9.99 * 0.3) = 0.3326 m
    floor = gt_quantization_floor(head(), clipped, const_gt(0.2), CFG)
    assert floor["abs_rel"] == pytest.approx((1 / (0.01 + 9.99 * 0.3) - 0.2) / 0.2, rel=1e-4)
    near, two = steps_at(head(), torch.tensor([0.2, 2.0], dtype=torch.float64), (clipped,)).tolist()
    assert math.isnan(near)  # clipped: no bracketing levels
    sig = (0.5 - 0.01) / 9.99
    k = math.floor(sig / clipped.scale)
    expected = 1 / (0.01 + 9.99 * k * clipped.scale) - 1 / (0.01 + 9.99 * (k + 1) * clipped.scale)
    assert two == pytest.approx(expected, rel=1e-5)
    assert two < float(steps_at(head(), torch.tensor([2.0], dtype=torch.float64), (SYM8,))[0])


def test_step_curve_spans_the_head_range_and_matches_quantized_depths():
    curve = depth_step_curve(head(), (SYM8,), n=50)
    assert curve["depth_m"][0] == pytest.approx(0.1) and curve["depth_m"][-1] == pytest.approx(100.0)
    reps = set(round(d, 4) for d in representable_depths(head(), SYM8).tolist())
    assert all(round(q, 4) in reps for q in curve["quantized_m"])
    finite = [s for s in curve["rel_step"][5:-5] if not math.isnan(s)]
    assert finite[-1] > finite[0]  # relative resolution gets worse with depth


class SplitHead(DepthHead):
    """Toy two-output head: integer metres (rounded on decode) plus fraction."""

    name = "toy-split"
    output_names = ("int", "frac")

    def encode(self, depth):
        d = depth.clamp(self.min_depth, self.max_depth)
        return torch.floor(d), d - torch.floor(d)

    def decode(self, outputs):
        return torch.round(outputs[0]) + outputs[1]

    def output_ranges(self):
        return [(0.0, self.max_depth), (0.0, 1.0)]


def test_generic_two_output_head():
    split = SplitHead([16], min_depth=0.5, max_depth=15.0)
    grids = (OutputGrid(IntGrid(8, False), 1.0, 0), OutputGrid(IntGrid(8, False), 0.01, 0))
    # 2.3437 -> (2, 0.3437) -> fraction stored as 0.34 -> 2.34
    floor = gt_quantization_floor(split, grids, const_gt(2.3437), CFG)
    assert floor["abs_rel"] == pytest.approx(0.0037 / 2.3437, rel=1e-3)
    # one level of the integer output moves depth by 1 m, one level of the fraction by 1 cm
    assert float(steps_at(split, torch.tensor([2.3437]), grids)[0]) == pytest.approx(1.0)
    fraction_only = steps_at(split, torch.tensor([2.3437]), (None, grids[1]))
    assert float(fraction_only[0]) == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(NpuqError, match="2 outputs"):
        representable_depths(split, grids[0])


def fake_sim(scale, enabled=True):
    out = SimpleNamespace(kind="output", order=9, enabled=enabled, grid=IntGrid(8, True),
                          scale=torch.tensor(scale), zero_point=torch.tensor(0))
    act = SimpleNamespace(kind="activation", order=1, enabled=True, grid=IntGrid(8, True),
                          scale=1.0, zero_point=0)
    profile = SimpleNamespace(activations=TensorQuantConfig(bits=8, symmetric=True))
    return SimpleNamespace(quantizers={"a": act, "out": out}, profile=profile)


def test_scenarios_from_a_sim():
    (grid,) = grids_from_sim(fake_sim(0.25 / 127), 1)
    assert grid.scale == pytest.approx(0.25 / 127)
    labels = [s.label for s in default_scenarios(head(), fake_sim(0.25 / 127))]
    assert labels == ["calibrated", "full range"]
    # a profile that leaves the output float: only the full-range what-if remains
    assert [s.label for s in default_scenarios(head(), fake_sim(0.25 / 127, enabled=False))] == ["full range"]


def test_analyze_representability_report_dict():
    rep = analyze_representability(head(), [GridScenario("full range", (SYM8,))],
                                   torch.cat([const_gt(2.0), const_gt(0.0)]), CFG, probe_depths=(2.0,))
    (sc,) = rep["scenarios"]
    assert sc["n_representable"] == 128
    assert sc["floor"]["abs_rel"] == pytest.approx((depth_of_level(6) - 2.0) / 2.0, rel=1e-4)
    assert sc["floor"]["n_skipped"] == 1
    assert sc["step_at"][0]["step_m"] == pytest.approx(depth_of_level(6) - depth_of_level(7), rel=1e-5)
    assert sum(rep["gt_histogram"]["counts"]) == 20  # the 4x5 valid pixels of the first map
