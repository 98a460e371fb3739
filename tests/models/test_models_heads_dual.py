"""The Phase 2 heads (int-frac, coarse-residual, log-depth): encode/decode maths, registry, model wiring."""

import math

import pytest
import torch

from npuq.errors import NpuqError
from npuq.models import DepthNetConfig, DepthResNet
from npuq.models.heads import (
    HEADS,
    CoarseResidualHead,
    IntFracHead,
    LogDepthHead,
    build_head,
)
from npuq.quant.graph import trace

NEW_HEADS = ("int-frac", "coarse-residual", "log-depth")
CHANNELS = [16, 32, 64, 128]


def head(name, min_depth=0.1, max_depth=100.0):
    return build_head(name, CHANNELS, min_depth, max_depth)


def depth_map(lo, hi, n=400):
    """Log-spaced depths as a [1,1,20,n/20] map, both ends included."""
    d = torch.logspace(math.log10(lo), math.log10(hi), n, dtype=torch.float64).float()
    return d.reshape(1, 1, 20, n // 20)


def test_registry_and_output_names():
    assert HEADS["int-frac"] is IntFracHead
    assert HEADS["coarse-residual"] is CoarseResidualHead
    assert HEADS["log-depth"] is LogDepthHead
    assert head("int-frac").output_names == ("integer", "fraction")
    assert head("coarse-residual").output_names == ("coarse", "residual")
    assert head("log-depth").output_names == ("log_depth",)
    assert list(HEADS)[0] == "sigmoid-disp"


def test_unknown_head_lists_the_new_heads():
    with pytest.raises(NpuqError, match="unknown; available: sigmoid-disp, .*int-frac"):
        build_head("hilbert", [16], 0.1, 100.0)


def test_output_ranges():
    assert head("int-frac").output_ranges() == [(0.0, 15.0), (0.0, 1.0)]
    assert head("coarse-residual", 0.2, 16.0).output_ranges() == [(0.2, 16.0), (-0.5, 0.5)]
    (lo, hi), = head("log-depth", 0.1, 100.0).output_ranges()
    assert (lo, hi) == (pytest.approx(math.log(0.1)), pytest.approx(math.log(100.0)))


def test_int_frac_range_ends_at_16_m():
    h = head("int-frac", 0.1, 100.0)
    assert h.max_depth == 16.0
    assert head("int-frac", 0.1, 10.0).max_depth == 10.0
    with pytest.raises(NpuqError, match="min_depth < max_depth"):
        head("int-frac", 17.0, 100.0)


@pytest.mark.parametrize("name", NEW_HEADS)
def test_round_trip_over_0_1_to_15_m(name):
    h = head(name)
    d = depth_map(0.1, 15.0)
    torch.testing.assert_close(h.decode(h.encode(d)), d, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["coarse-residual", "log-depth"])
def test_round_trip_over_the_full_range(name):
    h = head(name, 0.1, 100.0)
    d = depth_map(0.1, 100.0)
    torch.testing.assert_close(h.decode(h.encode(d)), d, rtol=1e-6, atol=1e-6)


def test_int_frac_round_trip_up_to_16_m_and_at_whole_metres():
    h = head("int-frac")
    d = torch.cat([depth_map(0.1, 16.0).flatten(), torch.arange(1.0, 17.0)]).reshape(1, 1, 1, -1)
    torch.testing.assert_close(h.decode(h.encode(d)), d, rtol=0, atol=1e-6)


def test_int_frac_encode_by_hand():
    h = head("int-frac")
    d = torch.tensor([0.05, 0.3, 2.0, 2.75, 14.5, 15.99, 16.0, 40.0]).reshape(1, 1, 1, -1)
    integer, fraction = h.encode(d)
    assert integer.flatten().tolist() == [0, 0, 2, 2, 14, 15, 15, 15]
    # 0.05 is clamped to min_depth 0.1; 16 and 40 to the 16 m end: integer 15 + fraction 1
    assert fraction.flatten().tolist() == pytest.approx([0.1, 0.3, 0.0, 0.75, 0.5, 0.99, 1.0, 1.0], abs=1e-6)


def test_int_frac_decode_rounds_the_integer_output():
    h = head("int-frac")
    integer = torch.tensor([2.4, 2.6, 2.5, 3.5, -1.0, 20.0]).reshape(1, 1, 1, -1)
    fraction = torch.tensor([0.25, 0.25, 0.0, 0.0, 0.05, 1.5]).reshape(1, 1, 1, -1)
    depth = h.decode((integer, fraction))
    # round half to even: 2.5 -> 2, 3.5 -> 4; -1 -> 0 (+0.05 -> clamped to 0.1); 20 -> 15, fraction <= 1
    assert depth.flatten().tolist() == pytest.approx([2.25, 3.25, 2.0, 4.0, 0.1, 16.0])


def test_coarse_residual_decode_by_hand():
    h = head("coarse-residual", 0.1, 16.0)
    coarse = torch.tensor([2.0, 5.0, 0.1, 16.0, 3.0]).reshape(1, 1, 1, -1)
    residual = torch.tensor([0.3, -0.2, -0.4, 0.4, 0.9]).reshape(1, 1, 1, -1)
    # residual clamped to +-0.5, depth to [0.1, 16]
    assert h.decode((coarse, residual)).flatten().tolist() == pytest.approx([2.3, 4.8, 0.1, 16.0, 3.5])
    c, r = h.encode(torch.tensor([[[[0.0, 3.0, 20.0]]]]))
    assert c.flatten().tolist() == pytest.approx([0.1, 3.0, 16.0]) and r.abs().max() == 0


def test_log_depth_decode_by_hand():
    h = head("log-depth", 0.1, 100.0)
    x = torch.tensor([0.0, 1.0, -10.0, 10.0]).reshape(1, 1, 1, -1)
    assert h.decode((x,)).flatten().tolist() == pytest.approx([1.0, math.e, 0.1, 100.0], rel=1e-6)


@pytest.mark.parametrize("name", NEW_HEADS)
def test_forward_gives_one_tuple_per_scale_in_range(name):
    h = head(name, 0.1, 16.0)
    feats = [torch.randn(2, c, 32 // 2**s, 32 // 2**s, generator=torch.Generator().manual_seed(s)) * 3
             for s, c in enumerate(CHANNELS)]
    with torch.no_grad():
        outs = h(feats)
    assert len(outs) == 4
    for s, scale_out in enumerate(outs):
        assert isinstance(scale_out, tuple) and len(scale_out) == len(h.output_names)
        for o, (lo, hi) in zip(scale_out, h.output_ranges(), strict=True):
            assert o.shape == (2, 1, 32 // 2**s, 32 // 2**s)
            if name != "log-depth":  # log-depth is linear; its range is enforced by decode
                assert float(o.min()) >= lo - 1e-5 and float(o.max()) <= hi + 1e-5
    assert len(h(feats[:1])) == 1


@pytest.mark.parametrize("name", NEW_HEADS)
def test_model_eval_output_traces_and_decodes(name):
    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(head=name, num_scales=2)).eval()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)
        traced = trace(model)(x)
        depth = model.predict_depth(x)
    n = len(model.head.output_names)
    outs = out if isinstance(out, tuple) else (out,)
    touts = traced if isinstance(traced, tuple) else (traced,)
    assert len(outs) == len(touts) == n
    for a, b in zip(outs, touts, strict=True):
        torch.testing.assert_close(a, b)
    assert depth.shape == (1, 1, 64, 64)
    assert float(depth.min()) >= model.head.min_depth and float(depth.max()) <= model.head.max_depth


def test_train_mode_returns_tuples_per_scale_and_fp32_decodes_them():
    from npuq.train.objectives import scale_depths

    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(head="int-frac")).train()
    x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    outs = model(x)
    assert len(outs) == 4 and all(isinstance(o, tuple) and len(o) == 2 for o in outs)
    depths = scale_depths(model, x)
    assert [tuple(d.shape) for d in depths] == [(1, 1, 64 // 2**s, 64 // 2**s) for s in range(4)]


def test_sigmoid_disp_state_dict_names_unchanged():
    model = DepthResNet(DepthNetConfig(num_scales=4))
    head_keys = sorted(k for k in model.state_dict() if k.startswith("head."))
    assert head_keys == sorted(f"head.convs.{s}.conv.{p}" for s in range(4) for p in ("weight", "bias"))


def test_int_frac_state_dict_names():
    model = DepthResNet(DepthNetConfig(head="int-frac", num_scales=1))
    head_keys = sorted(k for k in model.state_dict() if k.startswith("head."))
    assert head_keys == ["head.frac_convs.0.conv.bias", "head.frac_convs.0.conv.weight",
                         "head.int_convs.0.conv.bias", "head.int_convs.0.conv.weight"]
