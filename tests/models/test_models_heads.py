"""Depth heads: decode/encode maths, registry, per-scale outputs."""

import pytest
import torch

from npuq.errors import NpuqError
from npuq.models.heads import HEADS, DepthHead, SigmoidDispHead, build_head, disp_to_depth


def head(min_depth=0.1, max_depth=100.0):
    return build_head("sigmoid-disp", [16, 32, 64, 128], min_depth, max_depth)


def test_registry_holds_sigmoid_disp():
    assert HEADS["sigmoid-disp"] is SigmoidDispHead
    h = head()
    assert isinstance(h, DepthHead)
    assert h.output_names == ("disp",)
    assert h.output_ranges() == [(0.0, 1.0)]


def test_unknown_head_is_a_clear_error():
    with pytest.raises(NpuqError, match="unknown; available: sigmoid-disp"):
        build_head("no-such-head", [16], 0.1, 100.0)


def test_bad_depth_range_is_rejected():
    with pytest.raises(NpuqError, match="min_depth < max_depth"):
        head(min_depth=5.0, max_depth=1.0)


def test_decode_ends_of_the_sigmoid():
    h = head(0.1, 100.0)
    sig = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 2)
    depth = h.decode((sig,))
    assert depth.flatten().tolist() == pytest.approx([100.0, 0.1])


def test_decode_midpoint_by_hand():
    # inv = 1/100 + (1/0.1 - 1/100) * 0.5 = 0.01 + 9.99 / 2 = 5.005 -> depth 1/5.005
    h = head(0.1, 100.0)
    depth = h.decode((torch.full((1, 1, 2, 2), 0.5),))
    assert torch.allclose(depth, torch.full_like(depth, 1 / 5.005))


def test_disp_to_depth_returns_inverse_and_depth():
    inv, depth = disp_to_depth(torch.tensor([0.25]), 0.5, 10.0)
    # inv = 0.1 + (2.0 - 0.1) * 0.25 = 0.575
    assert float(inv) == pytest.approx(0.575)
    assert float(depth) == pytest.approx(1 / 0.575)


def test_encode_decode_round_trip():
    h = head(0.2, 50.0)
    depth = torch.exp(torch.linspace(torch.log(torch.tensor(0.2)), torch.log(torch.tensor(50.0)), 64))
    depth = depth.reshape(1, 1, 8, 8)
    (sig,) = h.encode(depth)
    assert float(sig.min()) >= 0.0 and float(sig.max()) <= 1.0
    assert torch.allclose(h.decode((sig,)), depth, rtol=1e-5)


def test_encode_clamps_out_of_range_depth():
    h = head(0.1, 100.0)
    (sig,) = h.encode(torch.tensor([0.0, 0.01, 1e4, float("inf")]))
    assert sig.tolist() == pytest.approx([1.0, 1.0, 0.0, 0.0])


def test_forward_gives_one_tuple_per_given_scale():
    h = head()
    feats = [torch.randn(2, c, 32 >> s, 48 >> s) for s, c in enumerate([16, 32, 64, 128])]
    with torch.no_grad():
        out, only_full_res = h(feats), h(feats[:1])
    assert len(out) == 4
    for s, outputs in enumerate(out):
        assert isinstance(outputs, tuple) and len(outputs) == 1
        assert outputs[0].shape == (2, 1, 32 >> s, 48 >> s)
        assert float(outputs[0].min()) > 0.0 and float(outputs[0].max()) < 1.0
    assert len(only_full_res) == 1 and torch.equal(only_full_res[0][0], out[0][0])


def test_output_conv_names_match_monodepth2_conv3x3():
    keys = set(head().state_dict())
    assert keys == {f"convs.{s}.conv.{p}" for s in range(4) for p in ("weight", "bias")}
