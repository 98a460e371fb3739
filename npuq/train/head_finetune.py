"""Output heads on equal terms: the same reference model fine-tuned into each head with the same budget.

``finetune_head(reference, cfg, calib_rgb, out)`` runs two stages, identical for every head (the
baseline ``sigmoid-disp`` included, so it gets the same extra training as the others):

1. FP32 fine-tune from the reference weights (``npuq.train.fp32.train`` with ``init``): encoder and
   decoder start from the reference; a head other than the reference's starts freshly initialised.
   Each head trains on its own loss (``npuq.train.head_losses``).
2. Optionally (``qaf_steps > 0``), a short fake-quant fine-tune of the head's layers through the
   QuantSim of ``cfg.profile`` (``npuq.train.qaf_head.finetune_through_quantsim``), where e.g. the
   ``coarse-residual`` head's residual learns to correct the quantized coarse output. It writes float
   weights back. Only the head trains (``qaf_prefixes``): on the 7-Scenes reference, 20 steps at lr 5e-5
   through the npu-default sim on the whole decoder took FP32 abs_rel (test frames 800-839) from 0.065
   to 0.388; the decoder learns to fit a KL clipping that the fresh PTQ of the result does not repeat.

The result is a float checkpoint, what would be handed to the vendor toolchain: INT8 figures must come
from a fresh ``simulate_ptq`` on it (``npuq.analysis.heads.measure_head``), never from stage 2's sim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from npuq.errors import NpuqError
from npuq.io import check_writable
from npuq.quant.profile import QuantProfile


@dataclass(frozen=True)
class HeadFinetuneConfig:
    head: str
    data: str  # training data of the reference (folder or synth: spec)
    frames: tuple[int, int] | None = None
    size: tuple[int, int] = (128, 160)
    steps: int = 400  # stage 1, FP32
    lr: float = 3e-4
    batch_size: int = 8
    qaf_steps: int = 0  # stage 2, through the QuantSim (0 skips it)
    qaf_lr: float = 2e-5
    qaf_batch_size: int = 4
    qaf_prefixes: tuple[str, ...] = ("head.",)
    profile: str | QuantProfile = "npu-default"
    seed: int = 0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.qaf_steps < 0:
            raise NpuqError(f"head fine-tune: steps must be positive and qaf_steps >= 0 ({self})")


def finetune_head(reference: str | Path, cfg: HeadFinetuneConfig, calib_rgb: torch.Tensor, out: str | Path,
                  force: bool = False, progress: bool = False) -> Path:
    """Fine-tune ``reference`` into ``cfg.head`` (both stages) and save the float checkpoint ``out``."""
    from npuq.models.checkpoint import load_model
    from npuq.train.fp32 import TrainConfig, train

    out = check_writable(out, force)
    reference_model = load_model(reference)
    mc = reference_model.config
    stage1 = out.with_name(out.stem + ".fp32" + out.suffix)
    tcfg = TrainConfig(data=cfg.data, frames=cfg.frames, steps=cfg.steps, out=str(stage1), depth=mc.depth,
                       head=cfg.head, size=cfg.size, batch_size=cfg.batch_size, lr=cfg.lr, loss="head",
                       seed=cfg.seed, min_depth=mc.min_depth, max_depth=mc.max_depth, init=str(reference),
                       force=True, save_every=cfg.steps, device=cfg.device)
    train(tcfg, progress=progress)
    if cfg.qaf_steps == 0:
        stage1.replace(out)
        return out
    quantsim_stage(stage1, cfg, calib_rgb, out, progress=progress)
    stage1.unlink()
    return out


def quantsim_stage(stage1: str | Path, cfg: HeadFinetuneConfig, calib_rgb: torch.Tensor, out: str | Path,
                   progress: bool = False) -> Path:
    """Stage 2 alone: fake-quant fine-tune of ``cfg.qaf_prefixes``, from the float checkpoint ``stage1``."""
    from npuq.data.datasets import open_dataset
    from npuq.models.checkpoint import load_model
    from npuq.train.qaf_head import finetune_through_quantsim

    model = load_model(stage1).eval()
    frames = slice(*cfg.frames) if cfg.frames else None
    data = open_dataset(cfg.data, size=cfg.size, depth_at="input", frames=frames)
    return finetune_through_quantsim(model, cfg.profile, calib_rgb, data, steps=cfg.qaf_steps, lr=cfg.qaf_lr,
                                     seed=cfg.seed, out=out, batch_size=cfg.qaf_batch_size,
                                     prefixes=cfg.qaf_prefixes, force=True, progress=progress,
                                     device=cfg.device)


def config_dict(cfg: HeadFinetuneConfig) -> dict:
    data = dataclasses.asdict(cfg)
    data["size"] = list(cfg.size)
    data["frames"] = list(cfg.frames) if cfg.frames else None
    data["qaf_prefixes"] = list(cfg.qaf_prefixes)
    return data
