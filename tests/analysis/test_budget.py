"""Error-budget groups and toggling on name lists, then the budget on a real tiny QuantSim."""

from types import SimpleNamespace

import pytest

from npuq.analysis.budget import (
    activation_stages,
    budget_groups,
    kind_groups,
    matches,
    only_quantizing,
    stage_assigner,
    stage_groups,
)
from npuq.errors import NpuqError


def q(layer, kind="activation", op="conv", enabled=True):
    return SimpleNamespace(layer=layer, kind=kind, op=op, enabled=enabled)


# Quantizer layers as the fx planner names them in DepthResNet: modules by qualified name,
# function nodes (sub, add, interpolate, cat) by fx node name.
DEPTH_LAYERS = [
    ("rgb", "input"), ("sub", "activation"), ("encoder.encoder.conv1", "activation"),
    ("encoder.encoder.maxpool", "activation"), ("encoder.encoder.layer1.0.conv1", "activation"),
    ("add", "activation"), ("encoder.encoder.layer2.0.conv1", "activation"), ("add_1", "activation"),
    ("encoder.encoder.layer4.1.conv2", "activation"), ("add_7", "activation"),
    ("decoder.decoder.0.conv.conv", "activation"), ("decoder.decoder.0.nonlin", "activation"),
    ("interpolate", "activation"), ("cat", "activation"), ("decoder.decoder.1.conv.conv", "activation"),
    ("decoder.decoder.1.nonlin", "activation"), ("decoder.decoder.8.nonlin", "activation"),
    ("interpolate_4", "activation"), ("decoder.decoder.9.conv.conv", "activation"),
    ("head.convs.0.conv", "activation"), ("head.sigmoid", "output"),
]
WEIGHTS = ["encoder.encoder.conv1", "encoder.encoder.layer1.0.conv1", "encoder.encoder.layer2.0.conv1",
           "encoder.encoder.layer4.1.conv2", "decoder.decoder.0.conv.conv", "decoder.decoder.1.conv.conv",
           "decoder.decoder.9.conv.conv", "head.convs.0.conv"]


def depth_sim(disabled=()):
    quantizers = {}
    for order, (layer, kind) in enumerate(DEPTH_LAYERS):
        quantizers[layer] = q(layer, kind, enabled=layer not in disabled)
        quantizers[layer].order = order
    weights = {name: SimpleNamespace(enabled=True) for name in WEIGHTS}
    return SimpleNamespace(quantizers=quantizers, weight_quantizers=weights)


def test_prefix_match_respects_dotted_boundaries():
    assert matches("decoder.decoder.1.conv.conv", "decoder.decoder.1")
    assert not matches("decoder.decoder.10.conv", "decoder.decoder.1")
    assert matches("head", "head") and not matches("headroom", "head")


def test_depth_resnet_stage_assignment():
    sim = depth_sim()
    stages = activation_stages(sim, stage_assigner(sim))
    # input and normalisation precede every module quantizer: they join the first one (stem)
    assert stages["rgb"] == stages["sub"] == "stem"
    assert stages["encoder.encoder.maxpool"] == "stem"
    assert stages["add"] == "layer1" and stages["add_1"] == "layer2" and stages["add_7"] == "layer4"
    # decoder level 4 = decoder.decoder.0/1, with the upsample and concat between them
    level4 = ("decoder.decoder.0.nonlin", "interpolate", "cat", "decoder.decoder.1.nonlin")
    assert {stages[k] for k in level4} == {"dec4"}
    level0 = ("decoder.decoder.8.nonlin", "interpolate_4", "decoder.decoder.9.conv.conv")
    assert {stages[k] for k in level0} == {"dec0"}
    assert stages["head.convs.0.conv"] == "head"
    assert "head.sigmoid" not in stages  # the output quantizer is its own group


def test_groups_partition_the_quantizers():
    sim = depth_sim()
    groups = budget_groups(sim)
    names = [g.name for g in groups]
    assert names == ["weights", "activations", "output", "stem", "layer1", "layer2", "layer4", "dec4", "dec0",
                     "head"]
    for partition in ("kind", "stage"):
        part = [g for g in groups if g.partition == partition]
        acts = [k for g in part for k in g.act]
        weights = [k for g in part for k in g.weights]
        expected_acts = set(sim.quantizers) - ({"head.sigmoid"} if partition == "stage" else set())
        assert sorted(acts) == sorted(expected_acts)  # disjoint and complete
        assert sorted(weights) == sorted(WEIGHTS)
    stage = {g.name: g for g in stage_groups(sim)}
    assert stage["dec0"].weights == {"decoder.decoder.9.conv.conv"}
    assert stage["stem"].weights == {"encoder.encoder.conv1"}


def test_fallback_groups_by_top_level_module():
    quantizers = {"x": q("x", "input"), "body.0": q("body.0"), "add": q("add"), "tail.conv": q("tail.conv"),
                  "tail.act": q("tail.act", "output")}
    for order, item in enumerate(quantizers.values()):
        item.order = order
    weights = {"body.0": SimpleNamespace(enabled=True), "tail.conv": SimpleNamespace(enabled=True)}
    sim = SimpleNamespace(quantizers=quantizers, weight_quantizers=weights)
    stages = {g.name: (set(g.act), set(g.weights)) for g in stage_groups(sim)}
    assert stages == {"body": ({"x", "body.0", "add"}, {"body.0"}), "tail": ({"tail.conv"}, {"tail.conv"})}
    assert [g.name for g in kind_groups(sim)] == ["weights", "activations", "output"]


def test_only_quantizing_toggles_and_restores():
    sim = depth_sim(disabled={"cat"})  # a quantizer the profile leaves off
    with only_quantizing(sim, {"cat", "add"}, set()):
        on = {k for k, v in sim.quantizers.items() if v.enabled}
        assert on == {"add"}  # cat stays off: "enabled" means "as configured"
        assert not any(w.enabled for w in sim.weight_quantizers.values())
    with only_quantizing(sim, {"add"}, {"head.convs.0.conv"}, invert=True):
        assert not sim.quantizers["add"].enabled and not sim.quantizers["cat"].enabled
        assert sim.quantizers["sub"].enabled and not sim.weight_quantizers["head.convs.0.conv"].enabled
        assert sim.weight_quantizers["encoder.encoder.conv1"].enabled
    assert {k for k, v in sim.quantizers.items() if not v.enabled} == {"cat"}
    assert all(w.enabled for w in sim.weight_quantizers.values())


def test_unknown_group_members_are_an_error():
    from npuq.analysis.budget import QuantGroup, error_budget

    bad = [QuantGroup("x", "stage", frozenset({"nope"}), frozenset())]
    with pytest.raises(NpuqError, match="unknown quantizers"):
        error_budget(depth_sim(), lambda rgb: rgb, [], None, groups=bad)


# -- on a real QuantSim of a tiny DepthResNet-18 -------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    import torch

    from npuq.data.datasets import open_dataset
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import QuantProfile, TensorQuantConfig

    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(depth=18)).eval()
    data = open_dataset("synth:n=1,seed=3,size=64x64")  # one frame: each budget row is two evaluations
    calib = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    profile = QuantProfile(activations=TensorQuantConfig(range="minmax"))
    return model, simulate_ptq(model, profile, calib), data


def test_every_group_is_evaluated_with_exactly_its_quantizers(tiny, monkeypatch):
    import npuq.analysis.budget as budget

    model, sim, _ = tiny
    seen = []

    def fake_evaluate(predict, dataset, cfg, batch_size=8):
        seen.append(({k for k, v in sim.quantizers.items() if v.enabled},
                     {k for k, v in sim.weight_quantizers.items() if v.enabled}))
        return {"abs_rel": float(len(seen))}

    monkeypatch.setattr(budget, "evaluate", fake_evaluate)
    groups = budget_groups(sim, [n for n, _ in model.named_modules()])
    rows = budget.error_budget(sim, None, None, None, groups=groups)
    stages = ["stem", "layer1", "layer2", "layer3", "layer4", "dec4", "dec3", "dec2", "dec1", "dec0", "head"]
    assert [r["group"] for r in rows] == ["fp32", "int8", "weights", "activations", "output", *stages]
    everything = (set(sim.quantizers), set(sim.weight_quantizers))
    assert seen[0] == (set(), set()) and seen[1] == everything
    for i, g in enumerate(groups):
        assert seen[2 + 2 * i] == (set(g.act), set(g.weights)), g.name
        assert seen[3 + 2 * i] == (everything[0] - g.act, everything[1] - g.weights), g.name
    assert rows[2]["abs_rel_only_enabled"] == 3.0 and rows[2]["abs_rel_only_disabled"] == 4.0
    assert all(q.enabled for q in sim.quantizers.values())


def test_budget_on_a_real_sim(tiny):
    from npuq.analysis.budget import error_budget
    from npuq.analysis.metrics import MetricConfig, evaluate
    from npuq.pipeline import depth_predictor

    model, sim, data = tiny
    cfg = MetricConfig(min_depth=0.1, max_depth=20.0)
    rows = error_budget(sim, depth_predictor(sim, model.head), data, cfg, groups=kind_groups(sim))
    by_group = {r["group"]: r for r in rows}
    assert list(by_group) == ["fp32", "int8", "weights", "activations", "output"]
    fp32 = evaluate(depth_predictor(model, model.head), data, cfg)
    int8 = evaluate(depth_predictor(sim, model.head), data, cfg)
    for name in ("abs_rel", "rmse", "a1"):
        # bias correction and CLE are on: all disabled must still be the float model
        assert by_group["fp32"]["metrics"][name] == pytest.approx(fp32[name], rel=1e-4, abs=1e-6)
        assert by_group["int8"]["metrics"][name] == pytest.approx(int8[name], rel=1e-9)
    assert by_group["fp32"]["abs_rel"] != by_group["int8"]["abs_rel"]
    # the kind groups together hold every quantizer
    assert by_group["activations"]["n_act"] + by_group["output"]["n_act"] == len(sim.quantizers)
    assert by_group["weights"]["n_weight"] == len(sim.weight_quantizers)
    for r in rows[2:]:
        assert r["cost"] == pytest.approx(r["abs_rel_only_enabled"] - by_group["fp32"]["abs_rel"])
        assert r["recovery"] == pytest.approx(by_group["int8"]["abs_rel"] - r["abs_rel_only_disabled"])
    assert all(q.enabled for q in sim.quantizers.values())  # restored
    assert all(w.enabled for w in sim.weight_quantizers.values())
