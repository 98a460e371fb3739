"""Weight-range normalisation: BN-folded measures, the penalty, and a 2-step fine-tune of a tiny model."""

import math

import pytest
import torch
from torch import nn

from npuq.errors import NpuqError
from npuq.train.weight_norm import (
    WeightNormConfig,
    WeightRangePenalty,
    conv_bn_pairs,
    finetune_weight_norm,
    layer_penalty,
    per_tensor_weight_sqnr,
    summarize,
    weight_range_imbalance,
    weight_sqnr_db,
)

DATA = "synth:n=8,seed=0,size=64x64"


def toy_net(seed: int = 0) -> nn.Module:
    """conv-BN-ReLU-conv with channel ranges spread over two decades (and BN gammas over 1.5)."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3))
    with torch.no_grad():
        net[3].weight.mul_(torch.logspace(0, -2, 16).view(-1, 1, 1, 1))
        net[1].weight.copy_(torch.logspace(0, -1.5, 8))
    return net.eval()


def test_bn_is_paired_with_the_conv_it_folds_into():
    assert conv_bn_pairs(toy_net()) == {"0": "1", "3": None}


def test_imbalance_is_measured_after_bn_folding():
    net = toy_net()
    with torch.no_grad():
        net[0].weight.copy_(torch.ones_like(net[0].weight))  # every raw channel has range 1
    imbalance = weight_range_imbalance(net)
    # folded ranges are gamma / sqrt(1 + eps) = logspace(0, -1.5, 8): mean of 20*log10(R/r_c) = 15 dB
    assert imbalance["0"] == pytest.approx(15.0, abs=0.01)
    net[1].weight.data.fill_(0.7)
    assert weight_range_imbalance(net)["0"] == pytest.approx(0.0, abs=1e-4)


def test_per_tensor_sqnr_drops_with_channel_imbalance():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    spread = w * torch.logspace(0, -2, 16).view(-1, 1, 1, 1)
    # the signal power falls to mean(scale^2) = -8.6 dB while the grid (set by the top channel) stays
    assert weight_sqnr_db(spread) < weight_sqnr_db(w) - 5
    assert weight_sqnr_db(w, bits=4) < weight_sqnr_db(w, bits=8) - 20
    assert weight_sqnr_db(torch.zeros(4, 2)) == math.inf


def test_penalty_is_scale_invariant_and_zero_when_balanced():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(1)) * torch.logspace(0, -2, 16).view(
        -1, 1, 1, 1)
    assert float(layer_penalty(10 * w, 8.0)) == pytest.approx(float(layer_penalty(w, 8.0)), rel=1e-5)
    assert float(layer_penalty(torch.ones(4, 9), 8.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(layer_penalty(w, 8.0)) > 1.0
    assert math.isfinite(float(layer_penalty(torch.cat([w, torch.zeros(1, 8, 3, 3)]), 8.0)))


def test_penalty_alone_reduces_imbalance_and_raises_per_tensor_sqnr():
    net = toy_net()
    imbalance_before, sqnr_before = weight_range_imbalance(net), per_tensor_weight_sqnr(net)
    penalty = WeightRangePenalty(net)
    start = penalty().item()
    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(20):
        loss = penalty()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert penalty().item() < 0.5 * start
    imbalance_after, sqnr_after = weight_range_imbalance(net), per_tensor_weight_sqnr(net)
    for layer in ("0", "3"):
        assert imbalance_after[layer] < 0.5 * imbalance_before[layer], layer
        assert sqnr_after[layer] > sqnr_before[layer] + 3.0, layer


def test_penalty_needs_a_multi_channel_layer():
    with pytest.raises(NpuqError, match="no conv"):
        WeightRangePenalty(nn.Sequential(nn.Conv2d(3, 1, 1)))


def test_config_validation():
    with pytest.raises(NpuqError, match="positive"):
        WeightNormConfig(steps=0)
    with pytest.raises(NpuqError, match="strength"):
        WeightNormConfig(strength=-1.0)


def test_finetune_writes_a_loadable_checkpoint(tmp_path, tiny_checkpoint):
    from npuq.models.checkpoint import load_checkpoint_dict, load_model
    from npuq.pipeline import training_size

    cfg = WeightNormConfig(steps=2, batch_size=2, strength=1.0, lr=1e-3)
    out = finetune_weight_norm(tiny_checkpoint, DATA, cfg, tmp_path / "wn.pt")
    model = load_model(out)
    assert training_size(out) == (64, 64)
    before, after = load_model(tiny_checkpoint).state_dict(), model.state_dict()
    key = "encoder.encoder.conv1.weight"
    assert not torch.equal(before[key], after[key])
    bn = "encoder.encoder.bn1.running_mean"  # BN statistics frozen by default
    assert torch.equal(before[bn], after[bn])
    extra = load_checkpoint_dict(out)["extra"]
    wn = extra["weight_norm"]
    assert wn["config"]["steps"] == 2 and extra["train"]["finished"] is True
    assert math.isfinite(wn["losses"]["supervised"]) and wn["losses"]["penalty_start"] > 0
    per_layer = {k: v["imbalance_db"] for k, v in wn["after"]["layers"].items()}
    assert wn["after"]["imbalance_db"] == summarize(per_layer)
    pairs = conv_bn_pairs(model)
    assert set(wn["before"]["layers"]) == set(pairs)
    assert sum(bn is not None for bn in pairs.values()) == 20  # R18: stem + 16 block convs + 3 shortcuts
    with pytest.raises(NpuqError, match="already exists"):
        finetune_weight_norm(tiny_checkpoint, DATA, cfg, out)
