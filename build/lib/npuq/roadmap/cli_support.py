"""From command-line arguments to a plan, a start hand-off, a context and a test set."""

from __future__ import annotations

from pathlib import Path

from npuq.analysis.metrics import MetricConfig
from npuq.device import resolve_device
from npuq.errors import NpuqError
from npuq.quant.profile import load_profile
from npuq.remedies.base import Context, DataRef, Handoff
from npuq.roadmap.plan import Plan, load_plan
from npuq.roadmap.runner import start_handoff

VAL_FRACTION = 0.1


def split_validation(train: DataRef) -> tuple[DataRef, DataRef]:
    """Hold the last VAL_FRACTION of the training frames out as validation (splits are by index)."""
    from npuq.data.datasets import open_dataset

    start, stop = train.frames or (0, len(open_dataset(train.path)))
    cut = stop - max(1, round(VAL_FRACTION * (stop - start)))
    if cut <= start:
        raise NpuqError(f"{train}: too few frames to hold out validation frames; give --val")
    return DataRef(train.path, (start, cut)), DataRef(train.path, (cut, stop))


def roadmap_inputs(plan: str, *, data: str, test: str, model: Path | None, frames, val: str | None,
                   val_frames, test_frames, profile: str | None, n_calib: int | None, min_depth: float,
                   max_depth: float, seed: int, out: Path, device: str,
                   progress: bool) -> tuple[Plan, Handoff, Context, DataRef]:
    loaded = load_plan(plan)
    checkpoint = model or (Path(loaded.start) if loaded.start else None)
    if checkpoint is None:
        raise NpuqError(f"{loaded.source}: no start checkpoint; give --model")
    if not Path(checkpoint).is_file():
        raise NpuqError(f"{checkpoint}: no such checkpoint file (--model)")
    resolve_device(device)
    train_ref = DataRef(data, frames)
    if val is None:
        train_ref, val_ref = split_validation(train_ref)
    else:
        val_ref = DataRef(val, val_frames)
    ctx = Context(train_ref, val_ref, Path(out), MetricConfig(min_depth=min_depth, max_depth=max_depth), seed,
                  progress, device)
    prof = load_profile(profile or loaded.profile)
    start = start_handoff(checkpoint, ctx, prof, n_calib or loaded.calib_size, Path(out))
    return loaded, start, ctx, DataRef(test, test_frames)
