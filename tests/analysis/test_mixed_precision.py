"""Mixed precision by sensitivity: unit costs, the budget, and a list that a fresh PTQ reproduces."""

import fnmatch

import pytest
import torch

from npuq.analysis.metrics import MetricConfig, evaluate
from npuq.analysis.mixed_precision import fp16_pattern, measure_units, select_fp16_layers
from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
from npuq.models.heads import depth_predictor
from npuq.quant import simulate_ptq
from npuq.quant.profile import load_profile
from npuq.remedies import DataRef

SPEC = "synth:mode=sequence,n=48,seed=0,size=64x64"
# 4-bit activations: an untrained model then loses enough to INT8 for the FP16 choice to matter
PROFILE = load_profile("npu-default").replace(bias_correction="off",
                                             activations={"bits": 4, "range": "minmax"})
METRIC = MetricConfig(0.1, 20.0)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig()).eval()
    calib = torch.stack([DataRef(SPEC + ",part=train").open((64, 64))[i]["rgb"] for i in range(4)])
    val_set = DataRef(SPEC + ",part=val").open((64, 64), depth_at="native")
    val = [val_set[i] for i in range(2)]
    return model, calib, val


def test_units_count_the_macs_and_stored_elements_of_a_layer(setup):
    model, calib, _ = setup
    sim = simulate_ptq(model, PROFILE, calib)
    units = {u.name: u for u in measure_units(sim, calib[:1])}
    shapes = {}

    def keep(key):
        def hook(_module, _inputs, output):
            shapes[key] = output.shape

        return hook

    conv = model.decoder.decoder[0].conv.conv
    hooks = [conv.register_forward_hook(keep("conv")),
             model.decoder.decoder[0].nonlin.register_forward_hook(keep("elu"))]
    with torch.no_grad():
        model(calib[:1])
    for h in hooks:
        h.remove()
    out = shapes["conv"]
    assert units["decoder.decoder.0.conv.conv"].macs == out[1] * out[2] * out[3] * conv.in_channels * 9
    assert units["decoder.decoder.0.conv.conv"].act_elements == out[1] * out[2] * out[3]
    assert units["decoder.decoder.0.nonlin"].macs == 0
    assert units["decoder.decoder.0.nonlin"].act_elements == shapes["elu"].numel()


@pytest.mark.parametrize("budget", [(0.0, 1.0), (0.05, 0.1)])
def test_selection_never_exceeds_its_budget(setup, budget):
    model, calib, val = setup
    sim = simulate_ptq(model, PROFILE, calib)
    result = select_fp16_layers(model, sim, val, METRIC, target=1.0, max_mac_share=budget[0],
                                max_act_share=budget[1])
    assert len(result.curve) > 1  # the walk added units
    for point in result.curve:
        assert point.mac_share <= budget[0] + 1e-9 and point.act_share <= budget[1] + 1e-9
    assert result.mac_share <= budget[0] + 1e-9 and result.act_share <= budget[1] + 1e-9
    assert len(result.sensitivity) == len(measure_units(sim, calib[:1]))


def test_the_chosen_list_reproduces_in_a_fresh_ptq_and_nothing_is_needed_at_a_loose_target(setup):
    model, calib, val = setup
    sim = simulate_ptq(model, PROFILE, calib)
    plain = float(evaluate(depth_predictor(sim, model.head), val, METRIC)["abs_rel"])
    result = select_fp16_layers(model, sim, val, METRIC, target=1.0)
    assert result.int8 == pytest.approx(plain)
    assert result.chosen and result.chosen_abs_rel < result.int8
    patterns = tuple(fp16_pattern(n) for n in result.chosen)
    fresh = simulate_ptq(model, PROFILE.replace(fp16_layers=patterns), calib)
    assert {q.layer for q in fresh.all_quantizers() if q.mode == "fp16"} == set(result.chosen)
    again = float(evaluate(depth_predictor(fresh, model.head), val, METRIC)["abs_rel"])
    assert again == pytest.approx(result.chosen_abs_rel, rel=1e-6)
    loose = select_fp16_layers(model, sim, val, METRIC, target=1e6)
    assert loose.chosen == () and loose.reached


def test_fp16_pattern_matches_exactly_its_layer():
    assert fnmatch.fnmatchcase("head.convs[0]", fp16_pattern("head.convs[0]"))
    assert not fnmatch.fnmatchcase("head.convs0", fp16_pattern("head.convs[0]"))
    assert not fnmatch.fnmatchcase("decoder.decoder.10.nonlin", fp16_pattern("decoder.decoder.1*"))
