"""Graph capture: BatchNorm folding and where the quantizers go, on three architectures."""

import copy

import pytest
import torch
from nets import PlainNet, TinyUNet, images, randomize_bn, seeded
from torch import nn

from npuq.errors import NpuqError
from npuq.models import DepthNetConfig, DepthResNet
from npuq.quant.graph import fold_batchnorm, plan_quantizers, propagate_shapes, trace
from npuq.quant.profile import QuantProfile, profile_from_dict
from npuq.quant.sim import build_quantsim

NO_CLE = QuantProfile(cle=False)


def placement(sim):
    return [(q.name, q.kind, q.op) for q in sim.quantizers.values()]


def test_bn_folding_is_exact():
    model = randomize_bn(seeded(PlainNet))
    x = images(3)
    gm = trace(copy.deepcopy(model))
    propagate_shapes(gm, (x[:1],))
    folded = fold_batchnorm(gm)
    assert folded == ["bn1", "bn2", "bn3"]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in gm.modules())
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_bn_not_folded_when_conv_output_has_other_users():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y

    model = randomize_bn(seeded(Branchy))
    gm = trace(copy.deepcopy(model))
    propagate_shapes(gm, (images(1),))
    assert fold_batchnorm(gm) == []


def test_plain_net_placement_folded():
    sim = build_quantsim(seeded(PlainNet), NO_CLE, images(1))
    # By hand: the input; conv+bn+relu fused three times; the pool; the linear is the model output
    # (flatten only moves data, so it gets none).
    assert placement(sim) == [
        ("input", "input", "input"),
        ("conv1", "activation", "conv+relu"),
        ("conv2", "activation", "conv+relu"),
        ("conv3", "activation", "conv+relu"),
        ("pool", "activation", "avgpool"),
        ("fc", "output", "linear"),
    ]
    assert [q.order for q in sim.quantizers.values()] == list(range(6))
    assert sim.quantizers["fc"].output_index == 0
    assert set(sim.weight_quantizers) == {"conv1", "conv2", "conv3", "fc"}
    assert sim.unsupported_ops == []


def test_plain_net_placement_unfolded_bn_gets_its_own_quantizer():
    sim = build_quantsim(seeded(PlainNet), NO_CLE.replace(fold_bn=False), images(1))
    ops = [(q.layer, q.op) for q in sim.quantizers.values()]
    assert ops == [("x", "input"), ("conv1", "conv"), ("bn1", "batchnorm+relu"), ("conv2", "conv"),
                   ("bn2", "batchnorm+relu"), ("conv3", "conv"), ("bn3", "batchnorm+relu"),
                   ("pool", "avgpool"), ("fc", "linear")]


@pytest.mark.filterwarnings("ignore:npuq. the NPU profile cannot express")
def test_conv_input_quantizer_found_through_data_movement():
    sim = build_quantsim(seeded(TinyUNet), NO_CLE, images(1))
    inputs = {name: layer.input_quantizer.name for name, layer in sim.layers.items()}
    # dec reads cat's output; mid reads the maxpool; aux reads mid's fused relu output
    assert inputs == {"enc": "input", "mid": "down", "dec": "cat", "head": "elu", "aux": "mid"}


def test_unet_reports_groupnorm_and_quantizes_both_outputs():
    with pytest.warns(UserWarning, match=r"norm \(GroupNorm\)"):
        sim = build_quantsim(seeded(TinyUNet), NO_CLE, images(1))
    assert sim.unsupported_ops == ["norm (GroupNorm)"]
    assert placement(sim) == [
        ("input", "input", "input"),
        ("enc", "activation", "conv"),
        ("norm", "activation", "groupnorm"),
        ("act", "activation", "relu"),
        ("down", "activation", "maxpool"),
        ("mid", "activation", "conv+relu"),  # F.relu fused; pixel shuffle gets no quantizer
        ("cat", "activation", "cat"),
        ("dec", "activation", "conv"),
        ("elu", "activation", "elu"),
        ("head", "activation", "conv"),
        ("sigmoid", "output", "sigmoid"),
        ("aux", "output", "conv"),
    ]
    assert not sim.quantizers["norm"].supported
    assert [sim.quantizers[n].output_index for n in ("sigmoid", "aux")] == [0, 1]


def test_output_without_own_quantizer_gets_a_separate_one():
    class SameTwice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 1)

        def forward(self, x):
            y = self.conv(x)
            return y, y.flatten(1)

    sim = build_quantsim(seeded(SameTwice), NO_CLE, images(1))
    assert placement(sim) == [("input", "input", "input"), ("conv", "output", "conv"),
                              ("flatten", "output", "output")]
    assert [q.output_index for q in sim.quantizers.values()] == [None, 0, 1]


def test_scalar_ops_fuse_and_unknown_functions_are_unsupported():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 1)

        def forward(self, x):
            x = self.conv((x - 0.5) * 2.0)
            return torch.softmax(x, 1) + x

    with pytest.warns(UserWarning, match="softmax"):
        sim = build_quantsim(seeded(Odd), NO_CLE, images(1))
    assert placement(sim) == [("input", "input", "input"), ("sub", "activation", "sub+mul"),
                              ("conv", "activation", "conv"), ("softmax", "activation", "softmax"),
                              ("add", "output", "add")]
    assert sim.unsupported_ops == ["softmax (softmax)"]


@pytest.fixture(scope="module")
def depth_gm():
    model = seeded(DepthResNet, DepthNetConfig(depth=18))
    gm = trace(copy.deepcopy(model))
    propagate_shapes(gm, (images(1, 64),))
    fold_batchnorm(gm)
    return model, gm


def test_depthresnet_placement(depth_gm):
    _, gm = depth_gm
    plan = plan_quantizers(gm)
    by_op = {}
    for p in plan.points:
        by_op.setdefault(p.op, []).append(p)
    assert plan.unsupported_ops == []
    assert [p.layer for p in by_op["elu"]] == [f"decoder.decoder.{i}.nonlin" for i in range(10)]
    assert len(by_op["interpolate"]) == 5 and len(by_op["cat"]) == 4
    assert len(by_op["add+relu"]) == 8  # one per BasicBlock of ResNet-18
    outputs = [p for p in plan.points if p.kind == "output"]
    assert [(p.layer, p.op, p.output_index) for p in outputs] == [("head.sigmoid", "sigmoid", 0)]
    assert plan.points[-1] is outputs[0]
    assert plan.points[0].kind == "input" and plan.points[1].op == "sub+div"  # input normalisation
    # every conv (20 encoder + 10 decoder + 1 head) has weights to quantize and a known input grid
    assert len(plan.weighted_layers) == 31
    assert all(plan.layer_inputs[name] is not None for name in plan.weighted_layers)
    assert plan.layer_inputs["decoder.decoder.1.conv.conv"] == "cat"  # through the ReflectionPad2d


class _ClipNet(nn.Module):
    """conv+ReLU+ReLU6, ELU+clamp, a clamp after a cat (nothing to fuse into) and a tensor-bound clamp."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
        self.relu, self.relu6, self.elu = nn.ReLU(), nn.ReLU6(), nn.ELU()

    def forward(self, x):
        y = self.relu6(self.relu(self.a(x)))
        z = torch.clamp(self.elu(self.b(y)), max=2.0)
        w = torch.cat([y, z], 1).clamp(-1.0, 1.0)
        return torch.clamp(w, max=torch.cat([z, z], 1))


def test_clip_fuses_into_the_conv_or_activation_before_it_so_only_the_clipped_tensor_is_stored():
    with pytest.warns(UserWarning, match=r"clamp_2 \(clamp\)"):
        sim = build_quantsim(seeded(_ClipNet), NO_CLE, images(1))
    ops = [(q.layer, q.op) for q in sim.quantizers.values()]
    assert ("a", "conv+relu+clip") in ops and ("elu", "elu+clip") in ops
    assert not any(layer in ("relu", "relu6") for layer, _ in ops)  # fused: no tensor stored between
    assert ("clamp_1", "clip") in ops  # after a cat: a Clip op of its own, supported
    assert sim.unsupported_ops == ["clamp_2 (clamp)"]  # bounds that are tensors are not an NPU Clip
    x = images(2)
    with torch.no_grad(), sim.quant_disabled():
        assert torch.equal(sim(x), seeded(_ClipNet)(x))


def test_an_unfused_clip_stores_and_quantizes_the_tensor_before_it_too():
    with pytest.warns(UserWarning, match=r"clamp_2 \(clamp\)"):
        sim = build_quantsim(seeded(_ClipNet), NO_CLE.replace(fuse_clip=False), images(1))
    ops = [(q.layer, q.op) for q in sim.quantizers.values()]
    assert ("a", "conv+relu") in ops and ("elu", "elu") in ops
    assert ("relu6", "clip") in ops and ("clamp", "clip") in ops
    with pytest.raises(NpuqError, match="fuse_clip"):
        profile_from_dict({"fuse_clip": "yes"})
