"""Fake remedies for runner tests: cheap, countable, and one that can hang until it is killed."""

import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from npuq.io import save_torch
from npuq.models.checkpoint import load_checkpoint_dict
from npuq.remedies.base import REMEDIES, RemedyConfig, register_remedy


def _count(name: str) -> None:
    log = os.environ.get("NPUQ_FAKE_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(name + "\n")


@dataclass(frozen=True)
class Nudge(RemedyConfig):
    """Scales the head's bias: a different checkpoint, a different INT8 figure."""

    name = "fake-nudge"
    factor: float = 1.01


@dataclass(frozen=True)
class Hang(RemedyConfig):
    """Writes ``started`` into the work folder, then sleeps while ``NPUQ_FAKE_HANG`` is set."""

    name = "fake-hang"


def nudge(handoff, cfg, ctx):
    _count(cfg.name)
    return _nudged(handoff, cfg.factor, ctx)


def _nudged(handoff, factor, ctx):
    saved = load_checkpoint_dict(handoff.checkpoint)
    for key, value in saved["state_dict"].items():
        if key.startswith("head.") and key.endswith("bias"):
            saved["state_dict"][key] = value * factor + torch.zeros_like(value)
    out = ctx.work_dir / "nudged.pt"
    save_torch(out, saved)
    return dataclasses.replace(handoff, checkpoint=out, notes={})


def hang(handoff, cfg, ctx):
    _count(cfg.name)
    (ctx.work_dir / "started").write_text("1")
    while os.environ.get("NPUQ_FAKE_HANG"):
        time.sleep(0.1)
    return _nudged(handoff, 1.02, ctx)


def register() -> None:
    for config, handler in ((Nudge, nudge), (Hang, hang)):
        if config.name not in REMEDIES:
            register_remedy(config)(handler)


def unregister() -> None:
    for name in (Nudge.name, Hang.name):
        REMEDIES.pop(name, None)


def log_lines(path: Path) -> list[str]:
    return path.read_text().split() if path.exists() else []
