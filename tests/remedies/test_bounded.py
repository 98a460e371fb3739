"""Bounded activations: min(ELU(x), c) per decoder block, a standard Clip that the simulator fuses."""

import dataclasses

import onnx
import pytest
import torch

from npuq.errors import NpuqError
from npuq.export.onnx_export import export_float_onnx
from npuq.export.ort_check import run_onnx
from npuq.models.anchors import add_range_anchors
from npuq.models.checkpoint import load_model, save_checkpoint
from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
from npuq.quant import simulate_ptq
from npuq.quant.profile import load_profile
from npuq.remedies import apply_remedy
from npuq.remedies.activation import BoundedConfig
from npuq.remedies.base import module_outputs
from npuq.remedies.range_anchor import RangeAnchorConfig

CEILINGS = (0.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.3)


def bounded_model() -> DepthResNet:
    torch.manual_seed(0)
    return DepthResNet(DepthNetConfig(decoder_ceilings=CEILINGS)).eval()


def test_bounded_blocks_export_to_standard_clip_and_match_onnxruntime(tmp_path):
    model = bounded_model()
    path = export_float_onnx(model, (64, 64), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}
    assert sum(node.op_type == "Clip" for node in graph.node) == 2
    rgb = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(rgb).numpy()
        outputs = module_outputs(model, {b: model.decoder.decoder[b] for b in (1, 9)}, rgb)
    assert float(outputs[1].max()) <= 0.5 and float(outputs[9].max()) <= 0.3
    assert abs(run_onnx(path, rgb.numpy())[0] - expected).max() < 1e-4


def test_simulator_fuses_the_clip_into_the_elu_and_stores_only_the_clipped_tensor():
    sim = simulate_ptq(bounded_model(), load_profile("npu-default"), torch.rand(2, 3, 64, 64))
    bounded = sim.quantizers["decoder.decoder.1.nonlin"]
    assert bounded.op == "elu+clip" and bounded.observed_max <= 0.5 + 1e-6
    assert sim.quantizers["decoder.decoder.2.nonlin"].op == "elu"
    assert not any(name.startswith("decoder.decoder.1") and "clamp" in name for name in sim.quantizers)


def test_ceilings_survive_a_checkpoint_round_trip(tmp_path):
    path = save_checkpoint(tmp_path / "b.pt", bounded_model())
    assert load_model(path).decoder.decoder[1].ceiling == 0.5
    with pytest.raises(NpuqError, match="decoder_ceilings"):
        DepthNetConfig(decoder_ceilings=(1.0,) * 9)


def test_ceiling_is_where_the_requested_share_of_calibration_values_saturates(handoff, context):
    cfg = BoundedConfig(select="all", saturate=0.02, floor=0.0, steps=0)
    out = apply_remedy(handoff, cfg, context)
    model = load_model(out.checkpoint).eval()
    rgb = handoff.calib.rgb((64, 64))
    for block, module in enumerate(model.decoder.decoder):
        ceiling = module.ceiling
        assert ceiling == out.notes["ceilings"][str(block)] > 0
        x = module_outputs(model, {0: module}, rgb)[0]
        assert float(x.max()) == pytest.approx(ceiling)
        assert 0.01 <= float((x >= ceiling).float().mean()) <= 0.03


def test_tails_selects_only_blocks_whose_maximum_is_far_above_their_ceiling(handoff, context):
    every = apply_remedy(handoff, BoundedConfig(select="all", floor=0.0, steps=0), context).notes["blocks"]
    ratios = sorted(b["max"] / b["quantile"] for b in every.values())
    threshold = (ratios[0] + ratios[-1]) / 2
    out = apply_remedy(handoff, BoundedConfig(tail_ratio=threshold, floor=0.0, steps=0),
                       dataclasses.replace(context, work_dir=context.work_dir / "tails"))
    seen = out.notes["blocks"]
    chosen = {b for b, s in seen.items() if s["max"] > threshold * s["quantile"]}
    assert set(out.notes["ceilings"]) == chosen and 0 < len(chosen) < 10


def test_range_anchors_on_a_bounded_block_sit_at_its_ceiling_and_stay_exact(handoff, context):
    bounded = apply_remedy(handoff, BoundedConfig(blocks=(8, 9), select="all", floor=0.0, steps=0), context)
    anchored = apply_remedy(bounded, RangeAnchorConfig(blocks=(8, 9), counts=(1,), min_gain=0.0, frames=2),
                            dataclasses.replace(context, work_dir=context.work_dir / "anchors"))
    ceilings = bounded.notes["ceilings"]
    assert anchored.notes["anchors"] == {b: [1, ceilings[b]] for b in ("8", "9")}
    rgb = handoff.calib.rgb((64, 64))
    with torch.no_grad():
        before = load_model(bounded.checkpoint).eval()(rgb)
        after = load_model(anchored.checkpoint).eval()(rgb)
    assert torch.allclose(before, after, atol=1e-5)
    with pytest.raises(ValueError, match="bounded"):
        add_range_anchors(bounded_model(), 1, 1, 5.0)
    with pytest.raises(NpuqError, match="range anchors"):
        apply_remedy(apply_remedy(handoff, RangeAnchorConfig.smoke(), context), BoundedConfig(steps=0),
                     dataclasses.replace(context, work_dir=context.work_dir / "late"))


def test_no_ceiling_goes_below_the_floor(handoff, context):
    out = apply_remedy(handoff, BoundedConfig(select="all", floor=1e6, steps=0), context)
    assert out.notes["ceilings"] == {}  # every block stays below the floor: nothing to bound
    assert all(b["ceiling"] == 1e6 for b in out.notes["blocks"].values())
