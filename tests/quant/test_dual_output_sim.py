"""Two-output heads through simulate_ptq: one output quantizer per output, each with its own scale; the
int-frac misassignment measure of the representability module, by hand."""

import math
import warnings

import pytest
import torch

from npuq.analysis.representability import (
    OutputGrid,
    full_range_grids,
    grids_from_sim,
    int_frac_misassignment,
    output_quantizers,
)
from npuq.errors import NpuqError
from npuq.models import DepthNetConfig, DepthResNet
from npuq.models.heads import build_head
from npuq.quant import simulate_ptq
from npuq.quant.profile import QuantProfile, TensorQuantConfig, load_profile
from npuq.quant.quantizer import IntGrid

SIZE = (64, 64)


def images(n, seed):
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def build(head, profile):
    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(depth=18, head=head, max_depth=16.0)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = simulate_ptq(model, profile, images(4, seed=1))
    return model, sim


@pytest.fixture(scope="module")
def int_frac():
    # MSE clipping: TensorRT's KL would clip the untrained fraction output (around 0.5, away from 0) to
    # about its minimum, as ModelOpt does (see test_observers); these tests are about the two grids
    return build("int-frac", load_profile("npu-default").replace(activations={"range": "mse"}))


def on_grid(t, q):
    ints = t / q.scale + q.zero_point
    return bool(((ints - ints.round()).abs() < 1e-3).all())


def test_two_output_quantizers_with_their_own_scales(int_frac):
    model, sim = int_frac
    outs = output_quantizers(sim)
    assert [q.output_index for q in outs] == [0, 1]
    integer_q, fraction_q = outs
    assert fraction_q.layer == "head.frac_sigmoid" and fraction_q.op == "sigmoid"
    assert integer_q.op == "mul"  # 15 * sigmoid: the scalar multiply stores the integer output
    assert integer_q.scale > 5 * fraction_q.scale  # the integer output spans ~15x the fraction's values
    # each scale is the one its own calibrated range gives
    for q in outs:
        assert q.scale == pytest.approx(max(abs(q.range_lo), abs(q.range_hi)) / 127)
    assert integer_q.observed_max > 1.0 >= fraction_q.observed_max


def test_each_output_lies_on_its_own_grid(int_frac):
    model, sim = int_frac
    x = images(2, seed=5)
    with torch.no_grad():
        integer, fraction = sim(x)
        ref_integer, ref_fraction = model(x)
    integer_q, fraction_q = output_quantizers(sim)
    assert on_grid(integer, integer_q) and on_grid(fraction, fraction_q)
    assert not on_grid(integer, fraction_q)
    # quantization error of each output stays within a few of its own steps of the float model
    assert float((integer - ref_integer).abs().max()) < 10 * integer_q.scale
    assert float((fraction - ref_fraction).abs().max()) < 10 * fraction_q.scale


def test_grids_from_sim_gives_one_grid_per_output(int_frac):
    model, sim = int_frac
    grids = grids_from_sim(sim, 2)
    assert [g.scale for g in grids] == [q.scale for q in output_quantizers(sim)]


@pytest.mark.parametrize("head", ["coarse-residual", "log-depth"])
def test_other_heads_simulate_with_one_quantizer_per_output(head):
    model, sim = build(head, QuantProfile(activations=TensorQuantConfig(range="minmax")))
    outs = output_quantizers(sim)
    assert len(outs) == len(model.head.output_names) and not sim.unsupported_ops
    if head == "log-depth":  # linear output: the head conv's own quantizer is the output's
        assert outs[0].layer == "head.convs.0.conv" and outs[0].op == "conv"
    else:
        assert outs[0].scale != outs[1].scale


# -- int-frac misassignment, by hand ----------------------------------------------------------------

HEAD = build_head("int-frac", [8], 0.1, 16.0)
# integer grid of step 1.4: levels ..., 1.4, 2.8, 4.2, ... (round half to even, like the NPU)
COARSE = OutputGrid(IntGrid(8, signed=True), 1.4, 0)


def row(values):
    return torch.tensor(values, dtype=torch.float32).reshape(1, 1, 1, -1)


def test_misassignment_by_hand():
    integer = row([2.0, 2.6, 3.3, 4.0, 4.6, 2.0])
    fraction = row([0.3, 0.2, 0.4, 0.5, 0.1, 0.3])
    gt = row([2.3, 2.2, 3.4, 4.5, 5.1, 0.0])  # the last pixel has no GT
    # Q(integer) = [1.4, 2.8, 2.8, 4.2, 4.2] -> whole metres [1, 3, 3, 4, 4]; float rounds to [2, 3, 3, 4, 5]
    # floor(gt) = [2, 2, 3, 4, 5]
    r = int_frac_misassignment(HEAD, gt, (COARSE, None), (integer, fraction))
    assert r["n_pixels"] == 5
    assert r["misassigned"] == 2 and r["misassigned_share"] == pytest.approx(0.4)  # pixels 0 and 4
    # decoded 1.3 vs 2.3 and 4.1 vs 5.1: one metre each
    assert r["misassigned_mean_error_m"] == pytest.approx(1.0, abs=1e-5)
    assert r["misassigned_max_error_m"] == pytest.approx(1.0, abs=1e-5)
    assert r["wrong_integer"] == 3 and r["wrong_integer_share"] == pytest.approx(0.6)  # pixels 0, 1, 4
    # pixel 1 decodes to 3.2 for 2.2 m: also one metre
    assert r["wrong_integer_mean_error_m"] == pytest.approx(1.0, abs=1e-5)
    assert r["float_wrong_integer"] == 1 and r["float_wrong_integer_share"] == pytest.approx(0.2)


def test_fine_grid_on_exact_targets_misassigns_nothing_but_clipping_does():
    gt = row([0.4, 1.0, 2.5, 7.9, 11.2, 15.5])
    full = full_range_grids(HEAD, TensorQuantConfig(bits=8, symmetric=True))  # step 15/127
    r = int_frac_misassignment(HEAD, gt, full)
    assert r["misassigned"] == 0 and r["wrong_integer"] == 0 and math.isnan(r["misassigned_mean_error_m"])
    # a grid clipped at 10.2 m (as a tight calibration could give) reads 11 and 15 as 10
    clipped = (OutputGrid(IntGrid(8, signed=True), 10.2 / 127, 0), None)
    r = int_frac_misassignment(HEAD, gt, clipped)
    assert r["wrong_integer"] == 2 and r["wrong_integer_mean_error_m"] == pytest.approx((1 + 5) / 2, abs=1e-4)


def test_misassignment_needs_an_int_frac_head_and_matching_shapes():
    with pytest.raises(NpuqError, match="not an integer/fraction head"):
        int_frac_misassignment(build_head("coarse-residual", [8], 0.1, 16.0), row([1.0]), (None, None))
    with pytest.raises(NpuqError, match="do not match GT"):
        int_frac_misassignment(HEAD, row([1.0, 2.0]), (None, None), (row([1.0]), row([0.0])))
