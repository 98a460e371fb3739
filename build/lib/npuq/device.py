"""Where tensors run: ``--device auto|cpu|cuda``."""

from __future__ import annotations

import torch

from npuq.errors import NpuqError

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA when available, else CPU. ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise NpuqError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise NpuqError("--device cuda: no CUDA device is available to torch here")
    return torch.device(device)
