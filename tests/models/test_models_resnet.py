"""ResNet encoder: torchvision-compatible names, sizes, features and initialisation."""

import pytest
import torch
from torch import nn

from npuq.errors import NpuqError
from npuq.models.resnet import ResNetEncoder, infer_resnet_depth

# A few names straight from torchvision.models.resnet18().state_dict().
TORCHVISION_RESNET18_KEYS = [
    "conv1.weight",
    "bn1.weight",
    "bn1.running_var",
    "bn1.num_batches_tracked",
    "layer1.0.conv1.weight",
    "layer1.1.bn2.bias",
    "layer2.0.downsample.0.weight",
    "layer2.0.downsample.1.running_mean",
    "layer3.1.conv2.weight",
    "layer4.0.downsample.1.weight",
    "layer4.1.bn2.running_mean",
]


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return ResNetEncoder(18).eval()


def test_resnet18_state_dict_uses_torchvision_names(resnet18):
    keys = resnet18.state_dict().keys()
    for key in TORCHVISION_RESNET18_KEYS:
        assert key in keys
    assert not any(k.startswith("fc.") for k in keys)
    # torchvision's resnet18 has 122 state-dict tensors; 120 once fc.weight and fc.bias are gone.
    assert len(keys) == 120


def test_resnet18_parameter_count_matches_torchvision_without_fc(resnet18):
    # torchvision resnet18: 11,689,512 parameters, of which fc holds 512*1000 + 1000.
    assert sum(p.numel() for p in resnet18.parameters()) == 11_689_512 - 513_000


def test_resnet50_names_and_parameter_count():
    with torch.device("meta"):
        enc = ResNetEncoder(50)
    keys = enc.state_dict().keys()
    for key in ("layer1.0.conv3.weight", "layer1.0.downsample.0.weight", "layer4.2.bn3.running_var"):
        assert key in keys
    # torchvision resnet50: 25,557,032 parameters, fc holds 2048*1000 + 1000.
    assert sum(p.numel() for p in enc.parameters()) == 25_557_032 - 2_049_000
    assert enc.num_ch_enc == [64, 256, 512, 1024, 2048]


def test_features_have_expected_channels_and_strides(resnet18):
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        feats = resnet18(x)
    assert resnet18.num_ch_enc == [64, 64, 128, 256, 512]
    assert [tuple(f.shape) for f in feats] == [
        (2, 64, 32, 48), (2, 64, 16, 24), (2, 128, 8, 12), (2, 256, 4, 6), (2, 512, 2, 3)]
    assert all(float(f.min()) >= 0.0 for f in feats)  # every feature comes out of a ReLU


def test_first_feature_is_relu_bn_conv(resnet18):
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        expected = torch.relu(resnet18.bn1(resnet18.conv1(x)))
        assert torch.equal(resnet18(x)[0], expected)


def test_kaiming_init_like_torchvision(resnet18):
    w = resnet18.layer3[0].conv1.weight  # 128 -> 256, 3x3: fan_out = 256 * 9
    assert float(w.detach().std()) == pytest.approx((2.0 / (256 * 9)) ** 0.5, rel=0.05)
    bns = [m for m in resnet18.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)
    assert float(resnet18.layer1[0].bn2.weight.detach().abs().sum()) > 0  # no zero-init unless asked


def test_zero_init_residual_zeroes_last_bn_of_each_block():
    enc = ResNetEncoder(18, zero_init_residual=True)
    for layer in (enc.layer1, enc.layer2, enc.layer3, enc.layer4):
        for block in layer:
            assert torch.all(block.bn2.weight == 0)
            assert torch.all(block.bn1.weight == 1)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_infer_depth_from_state_dict_keys(depth):
    with torch.device("meta"):
        keys = list(ResNetEncoder(depth).state_dict())
    assert infer_resnet_depth(keys) == depth
    assert infer_resnet_depth(["encoder.encoder." + k for k in keys], prefix="encoder.encoder.") == depth


def test_infer_depth_none_without_resnet_keys():
    assert infer_resnet_depth(["decoder.0.conv.conv.weight"]) is None


def test_unsupported_depth_is_a_clear_error():
    with pytest.raises(NpuqError, match="depth must be one of"):
        ResNetEncoder(101)
