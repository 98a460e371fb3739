"""Supervised FP32 training of DepthResNet on metric depth, resumable and deterministic.

Determinism: the batch of step ``s`` (which frames, which flips, which brightness/contrast) is a pure
function of ``(seed, s)``, drawn from ``np.random.default_rng([seed, s, stream])``. The model is
initialised under ``torch.manual_seed(seed)`` inside ``torch.random.fork_rng`` so the caller's global
RNG is untouched; that forked torch RNG state is saved with every checkpoint and restored on resume
(nothing in the model draws from it today, but dropout would). Resuming therefore replays exactly the
same steps: weights, AdamW moments, scheduler position and RNG come back from the checkpoint.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from npuq.analysis.metrics import MetricConfig, evaluate
from npuq.device import resolve_device
from npuq.errors import NpuqError
from npuq.io import check_writable
from npuq.train import objectives
from npuq.train.loop import FitConfig, FitState, Hooks, Objective, fit, new_state, step_batch
from npuq.train.losses import parse_loss

HEAD_LOSS = "head"  # each head's own loss on its own targets (npuq.train.head_losses)
# Resuming with a different value of any of these would not replay the same run.
RUN_DEFINING_FIELDS = (
    "data", "frames", "depth", "head", "size", "batch_size", "steps", "lr", "weight_decay", "warmup_frac",
    "loss", "seed", "min_depth", "max_depth", "augment", "init_depth", "max_grad_norm",
)  # fmt: skip


@dataclass
class TrainConfig:
    """One FP32 training run. ``steps`` fixes the LR schedule; ``stop_at_step`` only pauses the run."""

    data: str  # dataset folder or "synth:n=...,seed=...,size=HxW"
    steps: int
    frames: tuple[int, int] | None = None  # (start, stop) frame range of ``data``, split by index
    out: str = "depth_fp32.pt"
    val_data: str | None = None  # scored at the end, stored in the checkpoint's extra["val"]
    depth: int = 18
    head: str = "sigmoid-disp"
    size: tuple[int, int] = (128, 160)  # (H, W) of the network input
    batch_size: int = 8
    lr: float = 1e-3  # AdamW peak LR: linear warmup then cosine decay to 1% of it
    weight_decay: float = 1e-4
    warmup_frac: float = 0.05
    # Gradients are clipped to this total L2 norm (None: never). About twice the typical norm of a
    # DepthResNet-18 step: normal steps pass, a rare spike cannot throw the sigmoid head into saturation.
    max_grad_norm: float | None = 10.0
    loss: str = "l1_inv+silog"
    seed: int = 0
    min_depth: float = 0.1
    max_depth: float = 100.0
    augment: bool = True  # horizontal flip + brightness/contrast jitter, a function of (seed, step)
    resume: bool = False  # continue the run saved at ``out``
    force: bool = False  # overwrite an existing ``out`` that is not being resumed
    save_every: int = 500
    init: str | None = None  # checkpoint whose weights start the run (fine-tuning)
    # A fresh model's output starts at this depth (m): the head's output bias, not a random scene scale.
    init_depth: float | None = None
    device: str = "cpu"  # auto, cpu or cuda (checkpoints are saved on the CPU either way)
    # Stop cleanly (resumable checkpoint) once exceeded. The result then depends on machine speed:
    # benchmarks use fixed steps and leave this None.
    time_budget_s: float | None = None
    stop_at_step: int | None = None  # pause after this step with a resumable checkpoint

    def __post_init__(self) -> None:
        self.size = (int(self.size[0]), int(self.size[1]))
        if self.frames is not None:
            self.frames = (int(self.frames[0]), int(self.frames[1]))
        if self.steps <= 0 or self.batch_size <= 0 or self.save_every <= 0:
            raise NpuqError(f"train config: steps, batch_size and save_every must be positive ({self})")
        if self.size[0] % 32 or self.size[1] % 32:
            raise NpuqError(f"train config: size {self.size} must be multiples of 32")
        if self.loss != HEAD_LOSS:
            parse_loss(self.loss)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["size"] = list(self.size)
        data["frames"] = list(self.frames) if self.frames else None
        return data


def fit_config(cfg: TrainConfig) -> FitConfig:
    """The loop settings of a training run."""
    return FitConfig(steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size, weight_decay=cfg.weight_decay,
                     warmup_frac=cfg.warmup_frac, seed=cfg.seed, augment=cfg.augment,
                     max_grad_norm=cfg.max_grad_norm)


def load_batch(dataset: Any, cfg: TrainConfig, step: int) -> tuple[Tensor, Tensor]:
    """RGB [B,3,H,W] and depth [B,1,H,W] of ``step`` of the run ``cfg``."""
    return step_batch(dataset, fit_config(cfg), step)


def objective_of(cfg: TrainConfig) -> Objective:
    return objectives.head() if cfg.loss == HEAD_LOSS else objectives.supervised(cfg.loss)


# ---------------------------------------------------------------------------------- model + optim


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet

    model = DepthResNet(DepthNetConfig(cfg.depth, cfg.head, cfg.min_depth, cfg.max_depth))
    if cfg.init is not None:
        _load_init_weights(model, cfg.init)
    elif cfg.init_depth is not None:
        model.head.init_output_depth(cfg.init_depth)
    return model


def _load_init_weights(model: torch.nn.Module, init: str) -> None:
    """Start from ``init``'s weights. When its head differs from the configured one (fine-tuning the
    reference into another output encoding), the encoder and decoder are taken and the new head's
    layers keep their fresh initialisation: the old head's weights mean something else."""
    from npuq.models.checkpoint import load_model

    source = load_model(init)
    state = source.state_dict()
    if source.config.head != model.config.head:
        state = {k: v for k, v in state.items() if not k.startswith("head.")}
        state.update({k: v for k, v in model.state_dict().items() if k.startswith("head.")})
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise NpuqError(f"{init}: weights do not fit the configured model ({first})") from None


# ------------------------------------------------------------------------------------ checkpoints


def _save(cfg: TrainConfig, model: torch.nn.Module, state: FitState, val: dict | None = None) -> None:
    from npuq.models.checkpoint import save_checkpoint

    finished = state.step >= cfg.steps
    train_extra: dict[str, Any] = {"step": state.step, "finished": finished, "loss": state.last_loss,
                                   "config": cfg.to_dict()}
    if not finished:  # optimizer moments are 2x the weights: only kept while the run can continue
        train_extra["resume"] = state.resume_state()
    extra: dict[str, Any] = {"train": train_extra}
    if val is not None:
        extra["val"] = val
    save_checkpoint(cfg.out, model, extra=extra, force=True)


def _restore(cfg: TrainConfig, model: torch.nn.Module, state: FitState) -> None:
    from npuq.models.checkpoint import load_checkpoint_dict

    if not Path(cfg.out).exists():
        raise NpuqError(f"{cfg.out}: nothing to resume (file does not exist)")
    saved = load_checkpoint_dict(cfg.out)
    train_extra = (saved.get("extra") or {}).get("train")
    if not train_extra:
        raise NpuqError(f"{cfg.out}: not a training checkpoint (no extra['train'])")
    _check_same_run(cfg, train_extra["config"])
    model.load_state_dict(saved["state_dict"])
    if train_extra.get("finished"):
        state.step, state.last_loss = int(train_extra["step"]), float(train_extra.get("loss", float("nan")))
        return
    state.load_resume_state(train_extra["resume"])


def _check_same_run(cfg: TrainConfig, saved: dict[str, Any]) -> None:
    now = cfg.to_dict()
    for name in RUN_DEFINING_FIELDS:
        if name in saved and saved[name] != now[name]:
            raise NpuqError(
                f"{cfg.out}: cannot resume, {name} was {saved[name]!r} and is now {now[name]!r}"
            )


# ------------------------------------------------------------------------------------------ train


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train (or resume) the run described by ``cfg``; returns the checkpoint path ``cfg.out``.

    Ctrl-C saves a resumable checkpoint first (``resume=True`` continues it)."""
    from npuq.data.datasets import check_has_depth, open_dataset

    if not cfg.resume:
        check_writable(cfg.out, cfg.force)
    frames = slice(*cfg.frames) if cfg.frames else None
    dataset = open_dataset(cfg.data, size=cfg.size, depth_at="input", frames=frames)
    check_has_depth(dataset, str(cfg.data))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        device = resolve_device(cfg.device)
        model = build_model(cfg).to(device)
        fcfg = fit_config(cfg)
        state = new_state(model.parameters(), fcfg)
        if cfg.resume:
            _restore(cfg, model, state)
        hooks = Hooks(save=lambda s: _save(cfg, model, s), save_every=cfg.save_every,
                      stop_at_step=cfg.stop_at_step, time_budget_s=cfg.time_budget_s)
        fit(model, dataset, objective_of(cfg), fcfg, state, hooks, progress, device)
        stopped = state.step < cfg.steps
        val = None if stopped or cfg.val_data is None else _validate(cfg, model, device, progress)
        _save(cfg, model, state, val)
    _report(cfg, state, val, progress)
    return Path(cfg.out)


def _validate(cfg: TrainConfig, model: torch.nn.Module, device: torch.device, progress: bool) -> dict:
    from npuq.data.datasets import open_dataset

    model.eval()
    val_set = open_dataset(cfg.val_data, size=cfg.size, depth_at="native")
    return evaluate(lambda rgb: model.predict_depth(rgb.to(device)).cpu(), val_set, MetricConfig(),
                    cfg.batch_size, progress)


def _report(cfg: TrainConfig, state: FitState, val: dict | None, progress: bool) -> None:
    if not progress:
        return
    from rich.console import Console

    status = "finished" if state.step >= cfg.steps else f"paused at step {state.step}/{cfg.steps}"
    line = f"{cfg.out}: {status}, loss {state.last_loss:.4f}"
    if val is not None:
        line += f", val abs_rel {val['abs_rel']:.4f} on {val['n_images']} frames"
    Console(stderr=True).print(line, markup=False)


# ------------------------------------------------------------------------------------- evaluation


def stored_training_size(model_path: str | Path) -> tuple[int, int] | None:
    """The input size an npuq checkpoint was trained at, or None (foreign format or not recorded)."""
    from npuq.models.checkpoint import load_checkpoint_dict

    try:
        saved = load_checkpoint_dict(model_path)
    except NpuqError:
        return None
    size = ((saved.get("extra") or {}).get("train") or {}).get("config", {}).get("size")
    return (int(size[0]), int(size[1])) if size else None
