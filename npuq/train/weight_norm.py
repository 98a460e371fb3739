"""Weight-range normalisation: a short fine-tune that evens out per-channel weight ranges.

A per-tensor INT8 weight grid is sized by the largest output channel of a conv (R = max_c r_c, with r_c
= max |W[c]|). A channel whose range is r_c uses only r_c / R of the grid, so its quantization noise,
relative to its own signal, is (R / r_c)^2 times what it would be on its own grid: the channel loses
20 log10(R / r_c) dB of SQNR to per-tensor scaling.

Penalty. For every conv with at least two output channels,

    penalty(W) = mean_c log(R / r_c)

which is that SQNR loss (in nepers, 1 Np = 8.69 dB) averaged over the channels; the regularizer is
the mean over convs. The alternative ``mean_c (1 - r_c/R)^2`` was not chosen because it saturates: a
channel at 1% of R and one at 0.1% cost almost the same although the second loses 20 dB more. Both are
invariant to scaling a whole tensor, so the penalty does not fight weight decay or change layer gains.
r_c is smoothed to the power mean ``(mean_i |w_ci|^p)^(1/p)`` (p = 8 by default): the hard max would
send the gradient to one element per channel and grow isolated outliers, the power mean scales the
whole channel (its largest weights the most). R is the hard max of the smoothed ranges. Ratios are
floored at 1e-6 (120 dB) so an all-zero channel gives a finite penalty.

Faithfulness. The NPU quantizes weights after folding BatchNorm, W' = W * gamma / sqrt(var + eps), so
the penalty and the reports (``weight_range_imbalance``, ``per_tensor_weight_sqnr``) work on the folded
weights of every conv directly followed by a BN (found by tracing the model with torch.fx, the same
rule as ``npuq.quant.graph.fold_batchnorm``); gamma gets gradients, the running variance is a constant.
Models that torch.fx cannot trace are measured on their raw conv weights. Cross-layer equalization,
which a profile may also apply, is not simulated here: ``per_tensor_weight_sqnr`` is the SQNR before
CLE. The penalty only matters for per-tensor weight profiles; with per-channel weights r_c / R is moot.

``finetune_weight_norm`` runs ``steps`` AdamW steps of the supervised FP32 loss (as in
``npuq.train.fp32``: same batches, augmentation and LR schedule) plus ``strength * penalty`` from a float
checkpoint, with BatchNorm statistics frozen by default (so the folded weights the penalty sees are the
ones the toolchain will fold), and saves a float checkpoint that the pipeline loads like any other.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from npuq.device import resolve_device
from npuq.errors import NpuqError
from npuq.io import check_writable
from npuq.models.modes import eval_mode
from npuq.quant.quantizer import IntGrid, fake_quant, scale_zero_point

WEIGHTED = (nn.Conv2d, nn.Linear)
RATIO_FLOOR = 1e-6
NP_TO_DB = 20.0 / math.log(10.0)


# --------------------------------------------------------------------------------------------------
# Folded weights.


def conv_bn_pairs(model: nn.Module) -> dict[str, str | None]:
    """Every conv / linear module name -> the BatchNorm folded into it, or None.

    A BN is paired when it directly consumes the conv's output, the conv output has no other user and
    both modules are called once (the folding rule of ``npuq.quant.graph.fold_batchnorm``).
    """
    import torch.fx as fx

    modules = dict(model.named_modules())
    pairs: dict[str, str | None] = {name: None for name, m in modules.items() if isinstance(m, WEIGHTED)}
    try:
        with eval_mode(model):
            gm = fx.symbolic_trace(model)
    except Exception:  # untraceable model: measure raw weights (documented in the module doc)
        return pairs
    calls: dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(node.target), _BatchNorm):
            continue
        conv = node.args[0] if node.args else None
        if not (isinstance(conv, fx.Node) and conv.op == "call_module" and conv.target in pairs):
            continue
        if len(conv.users) == 1 and calls[conv.target] == 1 and calls[node.target] == 1:
            pairs[conv.target] = node.target
    return pairs


def folded_weight(conv: nn.Module, bn: _BatchNorm | None) -> Tensor:
    """The weight the toolchain quantizes: W * gamma / sqrt(running_var + eps) (gradients to W, gamma)."""
    if bn is None or bn.running_var is None:
        return conv.weight
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    factor = gamma / torch.sqrt(bn.running_var.detach() + bn.eps)
    return conv.weight * factor.reshape(-1, *([1] * (conv.weight.dim() - 1)))


def folded_weights(model: nn.Module, pairs: dict[str, str | None] | None = None) -> dict[str, Tensor]:
    modules = dict(model.named_modules())
    pairs = conv_bn_pairs(model) if pairs is None else pairs
    return {name: folded_weight(modules[name], modules[bn] if bn else None) for name, bn in pairs.items()}


# --------------------------------------------------------------------------------------------------
# Measures.


def channel_ranges(weight: Tensor) -> Tensor:
    """max |W[c]| per output channel (axis 0)."""
    return weight.detach().flatten(1).abs().amax(dim=1)


def channel_imbalance_db(weight: Tensor) -> float:
    """Mean over the non-zero output channels of 20 log10(R / r_c): SQNR lost to per-tensor scaling."""
    ranges = channel_ranges(weight).double()
    ranges = ranges[ranges > 0]
    if ranges.numel() == 0:
        return 0.0
    return float((20.0 * torch.log10(ranges.max() / ranges)).mean())


def weight_range_imbalance(model: nn.Module) -> dict[str, float]:
    """Per conv / linear (BN folded): mean per-channel dB lost to the per-tensor weight range."""
    with torch.no_grad():
        return {name: channel_imbalance_db(w) for name, w in folded_weights(model).items()}


def weight_sqnr_db(weight: Tensor, bits: int = 8) -> float:
    """SQNR of symmetric per-tensor min/max quantization of ``weight`` (inf when it is exact)."""
    w = weight.detach().float()
    grid = IntGrid(bits=bits, signed=True)
    scale, zero_point = scale_zero_point(float(w.min()), float(w.max()), grid)
    noise = float(((fake_quant(w, scale, zero_point, grid) - w) ** 2).sum())
    signal = float((w**2).sum())
    if noise == 0.0:
        return float("inf")
    return 10.0 * math.log10(signal / noise) if signal > 0 else float("-inf")


def per_tensor_weight_sqnr(model: nn.Module, bits: int = 8) -> dict[str, float]:
    """Per conv / linear (BN folded, no CLE): SQNR in dB of its per-tensor symmetric ``bits`` weights."""
    with torch.no_grad():
        return {name: weight_sqnr_db(w, bits) for name, w in folded_weights(model).items()}


def summarize(values: dict[str, float]) -> dict[str, float]:
    finite = [v for v in values.values() if math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"mean": sum(finite) / len(finite), "min": min(finite), "max": max(finite)}


# --------------------------------------------------------------------------------------------------
# The regularizer.


def smooth_channel_ranges(weight: Tensor, p: float) -> Tensor:
    """Power mean (mean_i |w_ci|^p)^(1/p) per output channel, computed stably (scaled by the max)."""
    flat = weight.flatten(1).abs()
    top = flat.detach().amax().clamp_min(1e-30)
    return top * (flat / top).pow(p).mean(dim=1).pow(1.0 / p)


def layer_penalty(weight: Tensor, p: float) -> Tensor:
    """mean_c log(R / r_c) on the smoothed ranges."""
    ranges = smooth_channel_ranges(weight, p)
    top = ranges.max()
    return torch.log(top / torch.maximum(ranges, top * RATIO_FLOOR)).mean()


class WeightRangePenalty:
    """``penalty()`` -> mean over convs (>= 2 output channels) of ``layer_penalty`` of the folded weights.

    The conv-BN pairs are found once, at construction.
    """

    def __init__(self, model: nn.Module, p: float = 8.0):
        if not p >= 1.0:
            raise NpuqError(f"weight-norm: power p must be >= 1, got {p}")
        self.model, self.p = model, float(p)
        modules = dict(model.named_modules())
        self.layers = [(modules[name], modules[bn] if bn else None)
                       for name, bn in conv_bn_pairs(model).items() if modules[name].weight.shape[0] >= 2]
        if not self.layers:
            raise NpuqError(f"{type(model).__name__}: no conv or linear layer with 2+ output channels")

    def __call__(self) -> Tensor:
        terms = [layer_penalty(folded_weight(conv, bn), self.p) for conv, bn in self.layers]
        return torch.stack(terms).mean()


# --------------------------------------------------------------------------------------------------
# Fine-tune.


@dataclass
class WeightNormConfig:
    """A weight-norm fine-tune. ``size`` None = the checkpoint's training size."""

    strength: float = 0.05  # weight of the penalty next to the supervised loss (~0.1-0.3 when converged)
    steps: int = 300
    lr: float = 1e-4  # AdamW peak LR; linear warmup then cosine decay (npuq.train.fp32.lr_factor)
    batch_size: int = 8
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    loss: str = "l1_inv+silog"
    p: float = 8.0  # power-mean exponent of the smoothed channel range
    seed: int = 0
    size: tuple[int, int] | None = None
    frames: tuple[int, int] | None = None  # (start, stop) frame range of the training data
    augment: bool = True
    freeze_bn: bool = True  # BN layers use and keep their running statistics
    device: str = "cpu"  # auto, cpu or cuda

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.batch_size <= 0:
            raise NpuqError(f"weight-norm config: steps and batch_size must be positive ({self})")
        if self.strength < 0 or self.lr <= 0:
            raise NpuqError(f"weight-norm config: need strength >= 0 and lr > 0 ({self})")
        if self.size is not None:
            self.size = (int(self.size[0]), int(self.size[1]))
        if self.frames is not None:
            self.frames = (int(self.frames[0]), int(self.frames[1]))

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["size"] = list(self.size) if self.size else None
        data["frames"] = list(self.frames) if self.frames else None
        return data


def _train_config(model, model_path: Path, data: str, cfg: WeightNormConfig, size: tuple[int, int],
                  out: Path):
    """The fp32 TrainConfig that describes the batches, schedule and loss of this fine-tune."""
    from npuq.train.fp32 import TrainConfig

    mc = model.config
    return TrainConfig(
        data=data, steps=cfg.steps, frames=cfg.frames, out=str(out), depth=mc.depth, head=mc.head, size=size,
        batch_size=cfg.batch_size, lr=cfg.lr, weight_decay=cfg.weight_decay, warmup_frac=cfg.warmup_frac,
        loss=cfg.loss, seed=cfg.seed, min_depth=mc.min_depth, max_depth=mc.max_depth, augment=cfg.augment,
        init=str(model_path),
    )


def _set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    model.train()
    if freeze_bn:
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.eval()


def _weight_report(model: nn.Module) -> dict[str, Any]:
    imbalance, sqnr = weight_range_imbalance(model), per_tensor_weight_sqnr(model)
    return {"imbalance_db": summarize(imbalance), "per_tensor_sqnr_db": summarize(sqnr),
            "layers": {name: {"imbalance_db": imbalance[name], "per_tensor_sqnr_db": sqnr[name]}
                       for name in imbalance}}


def finetune_weight_norm(model_path: str | Path, data: str, cfg: WeightNormConfig, out: str | Path,
                         progress: bool = False, force: bool = False, allow_pickle: bool = False) -> Path:
    """Fine-tune a float checkpoint with the supervised loss + ``cfg.strength`` * weight-range penalty.

    Saves an npuq checkpoint at ``out`` whose ``extra["train"]`` follows ``npuq.train.fp32`` (so the
    input size is found) and whose ``extra["weight_norm"]`` holds the config, the losses and the
    per-layer imbalance / per-tensor SQNR before and after.
    """
    from npuq.data.datasets import check_has_depth, open_dataset
    from npuq.models.checkpoint import load_model, save_checkpoint
    from npuq.pipeline import training_size

    model_path, out = Path(model_path), Path(out)
    check_writable(out, force)
    model = load_model(model_path, allow_pickle=allow_pickle)
    size = cfg.size or training_size(model_path)
    tcfg = _train_config(model, model_path, data, cfg, size, out)
    frames = slice(*cfg.frames) if cfg.frames else None
    dataset = open_dataset(data, size=tcfg.size, depth_at="input", frames=frames)
    check_has_depth(dataset, str(data))
    before = _weight_report(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        losses = _run(model.to(resolve_device(cfg.device)), dataset, cfg, tcfg, progress)
    model.cpu()
    after = _weight_report(model)
    train_extra = {"step": cfg.steps, "finished": True, "loss": losses["supervised"],
                   "config": tcfg.to_dict()}
    extra = {"train": train_extra,
             "weight_norm": {"config": cfg.to_dict(), "source": str(model_path), "losses": losses,
                             "before": before, "after": after}}
    save_checkpoint(out, model, extra=extra, force=force)
    return out


def _run(model: nn.Module, dataset, cfg: WeightNormConfig, tcfg, progress: bool) -> dict[str, float]:
    """The fine-tune; returns the last step's supervised loss and the penalty at start and end."""
    from npuq.train import objectives
    from npuq.train.fp32 import fit_config
    from npuq.train.loop import Hooks, fit, new_state

    penalty = WeightRangePenalty(model, cfg.p)
    with torch.no_grad():
        start_penalty = float(penalty())
    fcfg = dataclasses.replace(fit_config(tcfg), label="weight-norm fine-tune")
    objective = objectives.combine(objectives.supervised(cfg.loss),
                                   objectives.weight_range(penalty, cfg.strength))
    state = fit(model, dataset, objective, fcfg, new_state(model.parameters(), fcfg),
                Hooks(train_mode=lambda m: _set_train_mode(m, cfg.freeze_bn)), progress,
                resolve_device(cfg.device))
    model.eval()
    with torch.no_grad():
        end_penalty = float(penalty())
    return {"supervised": state.last_terms["supervised"], "penalty_start": start_penalty,
            "penalty_end": end_penalty}
