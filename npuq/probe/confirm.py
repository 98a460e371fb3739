"""Confirm a profile on the user's own network: the device's outputs of the hand-off model on the
hand-off's calibration frames against each profile's simulation of the same model, calibrated on the
same frames (``npuq probe fit --model CKPT --handoff DIR --outputs DIR``).

The device outputs are ``OUTPUTS/calib/NNNN.<output>.npy``, one per calibration tensor of the hand-off
(``calib/NNNN.npy``) and model output (names in ``handoff.json``). Where the hand-off's calibration pool
is still readable, its depth maps give abs_rel of the device's outputs and of every simulation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npuq.errors import NpuqError
from npuq.io import file_sha256
from npuq.probe.kit import read_device_array

SHIPPED = ("npu-default", "npu-ort-entropy", "npu-asym", "npu-fp16-decoder")


def confirm_on_network(model_path: str | Path, handoff_dir: str | Path, outputs_dir: str | Path,
                       profiles: list[str] | None = None, allow_pickle: bool = False) -> dict[str, Any]:
    """One row per profile: the share of the device's output elements its simulation reproduces within
    one output step, the mean gap in steps, and abs_rel against GT where the pool has depth."""
    from npuq.pipeline import load_float_model

    handoff = Path(handoff_dir)
    manifest = _read_manifest(handoff)
    stored = manifest["model"].get("sha256")
    if stored and Path(model_path).is_file() and file_sha256(model_path) != stored:
        raise NpuqError(f"{model_path}: not the model of the hand-off {handoff} (sha256 differs)")
    size = tuple(manifest["input"]["shape"][2:])
    model, _ = load_float_model(model_path, size, allow_pickle)
    listing = (handoff / manifest["calibration"]["npy_list"]).read_text().split()
    stems = [line.removesuffix(".npy") for line in listing]
    calib = torch.from_numpy(np.concatenate([np.load(handoff / f"{stem}.npy") for stem in stems]))
    names = [o["name"] for o in manifest["outputs"]]
    shapes = {o["name"]: tuple(o["shape"]) for o in manifest["outputs"]}
    device = [[read_device_array(Path(outputs_dir) / f"{stem}.{name}.npy", shapes[name]) for name in names]
              for stem in stems]
    gt = _ground_truth(manifest, size)
    rows = [_score(model, name, calib, device, gt) for name in (profiles or list(SHIPPED))]
    device_abs_rel = _abs_rel(model, device, gt)
    return {"handoff": str(handoff), "frames": len(stems), "device_abs_rel": device_abs_rel,
            "ground_truth": gt is not None,
            "profiles": sorted(rows, key=lambda r: (-r["within_one_step"], r["mean_gap_steps"]))}


def _read_manifest(handoff: Path) -> dict[str, Any]:
    path = handoff / "handoff.json"
    if not path.is_file():
        raise NpuqError(f"{path}: not found (a hand-off folder from `npuq export --float-onnx` has it)")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NpuqError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _ground_truth(manifest: dict[str, Any], size) -> list[torch.Tensor] | None:
    """Depth of every calibration frame from the hand-off's pool, or None when the pool is gone."""
    from npuq.data.datasets import open_dataset

    try:
        pool = open_dataset(manifest["calibration"]["pool"], size=size, depth_at="native")
    except NpuqError:
        return None
    index = {name: i for i, name in enumerate(pool.names)}
    frames = manifest["calibration"]["frames"]
    if not all(name in index for name in frames):
        return None
    return [pool[index[name]]["depth"] for name in frames]


def _score(model, profile_name: str, calib: torch.Tensor, device, gt) -> dict[str, Any]:
    from npuq.export.ort_check import output_quantizer, output_step
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import load_profile

    profile = load_profile(profile_name)
    sim = simulate_ptq(model, profile, calib)
    sim.eval()
    within, gaps, predicted = [], [], []
    with torch.no_grad():
        for i, frame_outputs in enumerate(device):
            outputs = sim(calib[i:i + 1])
            outputs = outputs if isinstance(outputs, tuple) else (outputs,)
            predicted.append([o.double().numpy() for o in outputs])
            for k, (mine, theirs) in enumerate(zip(predicted[-1], frame_outputs, strict=True)):
                step = output_step(output_quantizer(sim, k)) or _fine_step(theirs)
                gap = np.abs(mine - theirs) / step
                within.append(float((gap <= 1.001).mean()))
                gaps.append(float(gap.mean()))
    return {"profile": profile.name, "calibrator": profile.activations.calibrator,
            "within_one_step": float(np.mean(within)), "mean_gap_steps": float(np.mean(gaps)),
            "abs_rel": _abs_rel(model, predicted, gt)}


def _fine_step(values: np.ndarray) -> float:
    """A float output has no grid: judge it at 1/255 of its range."""
    return max(float(values.max() - values.min()) / 255, 1e-12)


def _abs_rel(model, outputs, gt) -> float | None:
    from npuq.analysis.metrics import MetricAccumulator, MetricConfig

    if gt is None:
        return None
    head = model.head
    acc = MetricAccumulator(MetricConfig(min_depth=getattr(head, "min_depth", 0.1),
                                         max_depth=getattr(head, "max_depth", 100.0)))
    for frame_outputs, depth in zip(outputs, gt, strict=True):
        pred = head.decode(tuple(torch.from_numpy(np.asarray(o, dtype=np.float32)) for o in frame_outputs))
        acc.add_image(pred[0], depth)
    return acc.result()["abs_rel"] if acc.n_images else None
