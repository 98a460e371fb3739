"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"), as NPU toolchains apply it.

For a pair conv1 -> f -> conv2 where f is positively homogeneous (f(s x) = s f(x) for s > 0), output
channel i of conv1 (weight row and bias) is divided by s_i and input channel i of conv2 multiplied by
s_i. The FP32 function is unchanged, and with s_i = sqrt(r1_i / r2_i) (r1_i = max |W1[i]|,
r2_i = max |W2[:, i]|) both ranges become sqrt(r1_i r2_i), so a per-tensor weight grid wastes less of
its range on the largest channel.

Which f qualify: ReLU and leaky ReLU (positively homogeneous), plus ops that only move values per
channel or scale them linearly (reflection / replication / zero padding, max and average pooling,
identity, dropout in eval). ELU, sigmoid, tanh, ReLU6, SiLU and the like are NOT positively homogeneous
(ELU(s x) != s ELU(x) for x < 0, ReLU6 clips at a fixed 6), so CLE is never applied across them;
neither across BatchNorm left unfolded, reshapes, pixel shuffles or concatenation (they change what
"channel i" means or mix in other tensors). Every intermediate tensor must have a single user, and the
convs must be ordinary (groups == 1) or depthwise (groups == channels); other grouped convs are
skipped. Pairs are balanced in sweeps over all pairs (a conv in two pairs is pulled both ways) until no
scale moves by more than ``tol``, at most ``max_sweeps`` times.

Run after BatchNorm folding and before calibration.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from npuq.quant.graph import PAD_MODULES, call_counts, single_user

EQUALIZABLE = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
TRANSPARENT_MODULES = PAD_MODULES + (
    nn.ReLU, nn.LeakyReLU, nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d,
    nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d,
)
TRANSPARENT_FUNCTIONS = {
    F.relu, torch.relu, torch.relu_, F.leaky_relu, F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d,
    F.avg_pool2d, F.avg_pool3d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
    F.dropout,
}
TRANSPARENT_METHODS = {"relu", "relu_", "contiguous"}


@dataclass
class CLEReport:
    """The equalized pairs (module names), the sweeps run and the last sweep's largest scale change."""

    pairs: list[tuple[str, str]] = field(default_factory=list)
    sweeps: int = 0
    max_change: float = 0.0


def _is_depthwise(mod: nn.Module) -> bool:
    return isinstance(mod, nn.Conv1d | nn.Conv2d | nn.Conv3d) and mod.groups > 1 and \
        mod.groups == mod.in_channels == mod.out_channels


def _equalizable(mod: nn.Module) -> bool:
    return type(mod) in EQUALIZABLE and (isinstance(mod, nn.Linear) or mod.groups == 1 or _is_depthwise(mod))


def _transparent(node: fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        mod = modules[node.target]
        if isinstance(mod, nn.ConstantPad1d | nn.ConstantPad2d | nn.ConstantPad3d) and mod.value != 0:
            return False
        return type(mod) in TRANSPARENT_MODULES
    if node.op == "call_function":
        if node.target is F.pad:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
            return mode != "constant" or not value
        return node.target in TRANSPARENT_FUNCTIONS
    return node.op == "call_method" and node.target in TRANSPARENT_METHODS


def find_pairs(gm: fx.GraphModule) -> list[tuple[str, str]]:
    """conv -> (positively homogeneous / data-movement ops) -> conv pairs with single-user links."""
    modules = dict(gm.named_modules())
    calls = call_counts(gm)

    def candidate(node: fx.Node) -> bool:
        return node.op == "call_module" and calls[node.target] == 1 and _equalizable(modules[node.target])

    pairs = []
    for node in gm.graph.nodes:
        if not candidate(node):
            continue
        current = node
        while (user := single_user(current)) is not None and user.args and user.args[0] is current:
            if candidate(user):
                first, second = modules[node.target], modules[user.target]
                if _out_channels(first) == _in_channels(second):
                    pairs.append((str(node.target), str(user.target)))
                break
            if not _transparent(user, modules):
                break
            current = user
    return pairs


def _out_channels(mod: nn.Module) -> int:
    return mod.weight.shape[0]


def _in_channels(mod: nn.Module) -> int:
    return mod.weight.shape[0] if _is_depthwise(mod) else mod.weight.shape[1]


def _input_channel_ranges(mod: nn.Module) -> torch.Tensor:
    w = mod.weight.detach().abs()
    ranges = w.flatten(1).amax(1) if _is_depthwise(mod) else w.transpose(0, 1).flatten(1).amax(1)
    return ranges.double()


@torch.no_grad()
def _balance(first: nn.Module, second: nn.Module) -> float:
    """Balance one pair in place; returns max |s_i - 1|. Scales are computed in float64 and applied in
    the weights' own precision."""
    r1 = first.weight.detach().abs().flatten(1).amax(1).double()
    r2 = _input_channel_ranges(second)
    scales = torch.where((r1 > 0) & (r2 > 0), torch.sqrt(r1 / r2.clamp(min=1e-300)), torch.ones_like(r1))
    first.weight.div_(scales.to(first.weight.dtype).reshape(-1, *([1] * (first.weight.dim() - 1))))
    if first.bias is not None:
        first.bias.div_(scales.to(first.bias.dtype))
    shape = [1] * second.weight.dim()
    shape[0 if _is_depthwise(second) else 1] = -1
    second.weight.mul_(scales.to(second.weight.dtype).reshape(shape))
    return float((scales - 1).abs().max()) if scales.numel() else 0.0


def equalize(gm: fx.GraphModule, max_sweeps: int = 20, tol: float = 1e-6) -> CLEReport:
    """Cross-layer equalize every pair in ``gm`` in place (see the module docstring).

    ``tol`` sits just above float32 rounding (~1e-7): the scales of balanced float32 weights never get
    closer to 1 than that.
    """
    report = CLEReport(pairs=find_pairs(gm))
    modules = dict(gm.named_modules())
    for sweep in range(1, max_sweeps + 1):
        change = max((_balance(modules[a], modules[b]) for a, b in report.pairs), default=0.0)
        report.sweeps, report.max_change = sweep, change
        if change < tol:
            break
    return report
