"""ResNet-18/34/50 feature encoder with torchvision's attribute and state-dict names (no ``fc``).

Differences from torchvision that do not touch the state dict: ReLUs are not in-place (so hooks and
quantization observers see each tensor as it was produced), and there is no avgpool/fc.
Initialisation follows torchvision: Kaiming-normal (fan_out, relu) convolutions, BN gamma=1 beta=0;
``zero_init_residual=True`` additionally zeroes the last BN gamma of every block (off by default, as in
torchvision).
"""

from __future__ import annotations

from torch import Tensor, nn

from npuq.errors import NpuqError

# Blocks per stage for each supported depth.
RESNET_LAYERS: dict[int, tuple[int, int, int, int]] = {
    18: (2, 2, 2, 2),
    34: (3, 4, 6, 3),
    50: (3, 4, 6, 3),
}


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (strided, torchvision v1.5 style), 1x1 expand, with a residual (ResNet-50)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = conv1x1(inplanes, planes)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNetEncoder(nn.Module):
    """ResNet trunk returning five feature maps at strides 2, 4, 8, 16 and 32."""

    def __init__(self, depth: int = 18, zero_init_residual: bool = False):
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise NpuqError(f"ResNetEncoder: depth must be one of {sorted(RESNET_LAYERS)}, got {depth}")
        self.depth = depth
        block: type[BasicBlock] | type[Bottleneck] = Bottleneck if depth == 50 else BasicBlock
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        blocks = RESNET_LAYERS[depth]
        self.layer1 = self._make_layer(block, 64, blocks[0])
        self.layer2 = self._make_layer(block, 128, blocks[1], stride=2)
        self.layer3 = self._make_layer(block, 256, blocks[2], stride=2)
        self.layer4 = self._make_layer(block, 512, blocks[3], stride=2)
        self.num_ch_enc: list[int] = [64] + [c * block.expansion for c in (64, 128, 256, 512)]
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int,
                    stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.zeros_(m.bn3.weight)
                elif isinstance(m, BasicBlock):
                    nn.init.zeros_(m.bn2.weight)

    def forward(self, x: Tensor) -> list[Tensor]:
        """Features after relu(bn1(conv1)), layer1 (after maxpool), layer2, layer3 and layer4."""
        f0 = self.relu(self.bn1(self.conv1(x)))
        f1 = self.layer1(self.maxpool(f0))
        f2 = self.layer2(f1)
        f3 = self.layer3(f2)
        f4 = self.layer4(f3)
        return [f0, f1, f2, f3, f4]


def infer_resnet_depth(keys: list[str] | set[str], prefix: str = "") -> int | None:
    """Depth of a torchvision-named ResNet state dict (``prefix`` + ``layer1.0.conv1.weight`` ...)."""
    keys = set(keys)
    if f"{prefix}layer1.0.conv3.weight" in keys:
        return 50
    if f"{prefix}layer3.5.conv1.weight" in keys:
        return 34
    if f"{prefix}layer1.0.conv1.weight" in keys:
        return 18
    return None


__all__ = ["RESNET_LAYERS", "BasicBlock", "Bottleneck", "ResNetEncoder", "infer_resnet_depth"]
