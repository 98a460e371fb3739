"""Module-mode helpers shared by export, calibration selection and weight normalization."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module | None) -> Iterator[nn.Module | None]:
    """Put ``model`` (if any) in eval mode for the block and restore its previous mode afterwards."""
    was_training = bool(model is not None and model.training)
    if model is not None:
        model.eval()
    try:
        yield model
    finally:
        if model is not None:
            model.train(was_training)
