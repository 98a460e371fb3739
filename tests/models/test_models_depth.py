"""DepthResNet: Monodepth2 wiring, train/eval outputs, predict_depth, fx traceability."""

import pytest
import torch
import torch.fx
import torch.nn.functional as F

from npuq.errors import NpuqError
from npuq.models import DepthNetConfig, DepthResNet


@pytest.fixture(scope="module")
def net18():
    torch.manual_seed(0)
    return DepthResNet(DepthNetConfig(depth=18))


@pytest.fixture(scope="module")
def net50():
    torch.manual_seed(0)
    return DepthResNet(DepthNetConfig(depth=50))


def test_state_dict_layout_is_packnet_like(net18):
    keys = set(net18.state_dict())
    assert "encoder.encoder.conv1.weight" in keys
    assert "encoder.encoder.layer2.0.downsample.1.running_mean" in keys
    assert {f"decoder.decoder.{n}.conv.conv.weight" for n in range(10)} <= keys
    assert "decoder.decoder.10.conv.conv.weight" not in keys
    assert {f"head.convs.{s}.conv.weight" for s in range(4)} <= keys


def test_decoder_channels_follow_monodepth2_order(net18):
    # upconv(4,0), (4,1), (3,0), (3,1), ..., (0,1) for ResNet-18 encoder channels [64,64,128,256,512].
    expected = [(512, 256), (512, 256), (256, 128), (256, 128), (128, 64), (128, 64),
                (64, 32), (96, 32), (32, 16), (16, 16)]
    convs = [blk.conv.conv for blk in net18.decoder.decoder]
    assert [(c.in_channels, c.out_channels) for c in convs] == expected
    assert all(c.kernel_size == (3, 3) and c.bias is not None and c.padding == (0, 0) for c in convs)
    assert all(isinstance(blk.nonlin, torch.nn.ELU) for blk in net18.decoder.decoder)
    assert [c.conv.in_channels for c in net18.head.convs] == [16, 32, 64, 128]


def reference_disp(net, rgb):
    """Monodepth2's DepthDecoder.forward written out, using the model's own layers."""
    feats = net.encoder.encoder((rgb - 0.45) / 0.225)
    dec = net.decoder.decoder
    x = feats[4]
    for i in range(4, -1, -1):
        x = dec[2 * (4 - i)](x)
        x = [F.interpolate(x, scale_factor=2, mode="nearest")]
        if i > 0:
            x += [feats[i - 1]]
        x = dec[2 * (4 - i) + 1](torch.cat(x, 1))
    return torch.sigmoid(net.head.convs[0](x))


def test_eval_forward_matches_monodepth2_reference(net18):
    net18.eval()
    rgb = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = net18(rgb)
        assert isinstance(out, torch.Tensor) and out.shape == (2, 1, 64, 64)
        assert torch.allclose(out, reference_disp(net18, rgb), atol=1e-6)


def test_train_forward_returns_four_scales(net18):
    net18.train()
    rgb = torch.rand(1, 3, 64, 96)
    out = net18(rgb)
    net18.eval()
    assert isinstance(out, list) and len(out) == 4
    assert [tuple(t.shape) for t in out] == [(1, 1, 64, 96), (1, 1, 32, 48), (1, 1, 16, 24), (1, 1, 8, 12)]
    assert all(float(t.detach().min()) > 0 and float(t.detach().max()) < 1 for t in out)
    out[0].mean().backward()
    assert net18.encoder.encoder.conv1.weight.grad is not None


def test_predict_depth_is_decoded_eval_output(net18):
    net18.eval()
    rgb = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        depth = net18.predict_depth(rgb)
        sig = net18(rgb)
    assert depth.shape == (1, 1, 64, 64)
    assert float(depth.min()) >= 0.1 - 1e-6 and float(depth.max()) <= 100.0 + 1e-3
    inv = 0.01 + (10.0 - 0.01) * sig
    assert torch.allclose(depth, 1.0 / inv)


def test_depth_range_comes_from_config():
    torch.manual_seed(1)
    net = DepthResNet(DepthNetConfig(min_depth=0.5, max_depth=20.0)).eval()
    with torch.no_grad():
        depth = net.predict_depth(torch.rand(1, 3, 64, 64))
    assert float(depth.min()) >= 0.5 - 1e-6 and float(depth.max()) <= 20.0 + 1e-4


def test_resnet50_train_and_eval_shapes(net50):
    rgb = torch.rand(1, 3, 64, 64)
    net50.train()
    train_out = net50(rgb)
    net50.eval()
    with torch.no_grad():
        eval_out = net50(rgb)
    assert net50.encoder.num_ch_enc == [64, 256, 512, 1024, 2048]
    assert [t.shape[-1] for t in train_out] == [64, 32, 16, 8]
    assert eval_out.shape == (1, 1, 64, 64)


@pytest.mark.parametrize("name", ["net18", "net50"])
def test_fx_symbolic_trace_in_eval_mode(name, request):
    net = request.getfixturevalue(name).eval()
    graph_module = torch.fx.symbolic_trace(net)
    targets = {n.target for n in graph_module.graph.nodes if n.op == "call_module"}
    assert "head.convs.0.conv" in targets
    assert "head.convs.1.conv" not in targets  # eval graph carries only the full-resolution output
    rgb = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(graph_module(rgb), net(rgb))


def test_single_scale_config():
    net = DepthResNet(DepthNetConfig(num_scales=1)).train()
    out = net(torch.rand(1, 3, 64, 64))
    assert len(out) == 1 and out[0].shape == (1, 1, 64, 64)
    assert len(net.head.convs) == 1


@pytest.mark.parametrize("kwargs, match", [
    ({"depth": 101}, "depth must be one of"),
    ({"head": "nope"}, "unknown head"),
    ({"min_depth": 0.0}, "min_depth < max_depth"),
    ({"num_scales": 5}, "num_scales"),
])
def test_bad_config_is_a_clear_error(kwargs, match):
    with pytest.raises(NpuqError, match=match):
        DepthNetConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    assert DepthNetConfig.from_dict({"depth": 34}).depth == 34
    with pytest.raises(NpuqError, match="unknown keys"):
        DepthNetConfig.from_dict({"depth": 18, "width": 3})
