"""Cross-layer equalization: FP32 function preserved, ranges balanced, never across ELU."""

import copy

import torch
from nets import ConvPair, PlainNet, images, randomize_bn, seeded, unbalance
from torch import nn

from npuq.quant.cle import equalize, find_pairs
from npuq.quant.graph import fold_batchnorm, propagate_shapes, trace


def traced(model, x, fold=True):
    gm = trace(copy.deepcopy(model))
    propagate_shapes(gm, (x[:1],))
    if fold:
        fold_batchnorm(gm)
    return gm


def row_ranges(conv):
    return conv.weight.detach().abs().flatten(1).amax(1)


def column_ranges(conv):
    w = conv.weight.detach().abs()
    return w.flatten(1).amax(1) if conv.groups > 1 else w.transpose(0, 1).flatten(1).amax(1)


def test_relu_pair_is_balanced_and_function_preserved():
    model = seeded(ConvPair, nn.ReLU(), pad=True)
    unbalance(model.conv1)
    x = images(2)
    gm = traced(model, x)
    report = equalize(gm)
    assert report.pairs == [("conv1", "conv2")]  # through the ReLU and the reflection pad
    conv1, conv2 = gm.get_submodule("conv1"), gm.get_submodule("conv2")
    before = row_ranges(model.conv1) / column_ranges(model.conv2)
    assert before.max() / before.min() > 10  # unbalance() made them very different
    torch.testing.assert_close(row_ranges(conv1), column_ranges(conv2), rtol=1e-5, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_depthwise_second_conv_is_balanced_per_channel():
    model = seeded(ConvPair, nn.ReLU(), depthwise=True)
    unbalance(model.conv1, seed=3)
    x = images(2)
    gm = traced(model, x)
    assert equalize(gm).pairs == [("conv1", "conv2")]
    conv1, conv2 = gm.get_submodule("conv1"), gm.get_submodule("conv2")
    torch.testing.assert_close(row_ranges(conv1), column_ranges(conv2), rtol=1e-5, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_elu_pair_is_left_untouched():
    model = seeded(ConvPair, nn.ELU(), pad=True)
    unbalance(model.conv1)
    gm = traced(model, images(1))
    report = equalize(gm)
    assert report.pairs == []
    for name in ("conv1", "conv2"):
        assert torch.equal(gm.get_submodule(name).weight, getattr(model, name).weight)


def test_chain_converges_and_preserves_plain_net():
    model = randomize_bn(seeded(PlainNet))
    x = images(3)
    gm = traced(model, x)
    report = equalize(gm)
    assert report.pairs == [("conv1", "conv2"), ("conv2", "conv3")]  # not across flatten into fc
    assert report.max_change < 1e-6 and report.sweeps < 20
    for a, b in report.pairs:
        torch.testing.assert_close(row_ranges(gm.get_submodule(a)), column_ranges(gm.get_submodule(b)),
                                   rtol=1e-5, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), atol=1e-5, rtol=1e-5)


def test_unfolded_bn_blocks_equalization():
    model = randomize_bn(seeded(PlainNet))
    assert find_pairs(traced(model, images(1), fold=False)) == []

