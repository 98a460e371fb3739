"""Workflows shared by the CLI, the demo and the benchmarks: load, calibrate, simulate, evaluate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from npuq.errors import NpuqError
from npuq.io import file_sha256
from npuq.models.heads import as_tuple, depth_predictor  # noqa: F401  (re-exported)

DEFAULT_SIZE = (128, 160)
QDQ_AGREEMENT_TARGET = 0.99  # share of QDQ output elements within one step of the simulator


def training_size(model_path: str | Path) -> tuple[int, int]:
    """The input size the checkpoint was trained at, or the default for foreign checkpoints."""
    from npuq.train.fp32 import stored_training_size

    return stored_training_size(model_path) or DEFAULT_SIZE


def load_float_model(model_path: str | Path, size: tuple[int, int] | None = None,
                     allow_pickle: bool = False) -> tuple[nn.Module, tuple[int, int]]:
    from npuq.models.checkpoint import load_model

    model = load_model(model_path, allow_pickle=allow_pickle).eval()
    return model, size or training_size(model_path)


def load_calibration(calib: str, size: tuple[int, int], n_calib: int, seed: int,
                     calib_list: str | Path | None = None, frames: slice | None = None) -> torch.Tensor:
    """Calibration RGB [N,3,H,W]: the frames listed in ``calib_list``, else ``n_calib`` random ones, of
    the pool ``calib`` (only its ``frames`` when given)."""
    from npuq.data.calib import random_calibration, read_selection, stack_rgb
    from npuq.data.datasets import open_dataset

    pool = open_dataset(calib, size=size, frames=frames)
    if calib_list is None:
        return random_calibration(pool, n_calib, seed)
    return stack_rgb(pool, read_selection(calib_list, pool))


def run_ptq(model_path: str | Path, profile: str, calib: str, n_calib: int, seed: int, out: str | Path,
            calib_list: str | Path | None = None, size: tuple[int, int] | None = None,
            allow_pickle: bool = False, force: bool = False, progress: bool = True,
            frames: slice | None = None) -> dict[str, Any]:
    """Simulate the vendor toolchain on a float checkpoint and save the QuantSim to ``out``."""
    from npuq.io import check_output_folder
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import load_profile
    from npuq.quant.sim import SCALES_FILE

    out = check_output_folder(out, force, SCALES_FILE)
    prof = load_profile(profile)
    model, size = load_float_model(model_path, size, allow_pickle)
    calib_rgb = load_calibration(calib, size, n_calib, seed, calib_list, frames)
    sim = simulate_ptq(model, prof, calib_rgb, progress=progress)
    span = None if frames is None else [frames.start, frames.stop]
    model_ref = {"checkpoint": str(Path(model_path).resolve()), "sha256": file_sha256(model_path),
                 "input_size": list(size), "calibration": {"pool": calib, "frames": span, "n": len(calib_rgb),
                                                           "seed": seed}}
    sim.save(out, model_ref=model_ref, force=force)
    return {"out": str(out), "profile": prof.name, "n_calib": len(calib_rgb),
            "quantizers": len(sim.quantizers), "unsupported_ops": list(sim.unsupported_ops)}


def load_saved_quantsim(quant_dir: str | Path, model: nn.Module, model_path: str | Path | None = None):
    """A QuantSim saved by ``npuq ptq``; refused when made from another checkpoint than ``model_path``."""
    import json

    from npuq.quant.sim import load_quantsim

    if model_path is not None and Path(model_path).is_file():
        ref_file = Path(quant_dir) / "model.json"
        try:
            stored = json.loads(ref_file.read_text()).get("sha256") if ref_file.is_file() else None
        except (OSError, ValueError, AttributeError):
            stored = None
        if stored and stored != file_sha256(model_path):
            raise NpuqError(f"{quant_dir}: made from another checkpoint than {model_path} (sha256 differs); "
                            "run npuq ptq on this model")
    return load_quantsim(quant_dir, model)


def evaluate_model(model_path: str | Path, data: str, metric_cfg, quant_dir: str | Path | None = None,
                   frames: slice | None = None, size: tuple[int, int] | None = None, batch_size: int = 8,
                   allow_pickle: bool = False, progress: bool = True) -> dict[str, Any]:
    """Metrics of the float model, or of its simulated INT8 version when ``quant_dir`` is given."""
    from npuq.analysis.metrics import evaluate
    from npuq.data.datasets import open_dataset

    model, size = load_float_model(model_path, size, allow_pickle)
    net = load_saved_quantsim(quant_dir, model, model_path) if quant_dir else model
    dataset = open_dataset(data, size=size, depth_at="native", frames=frames)
    result = evaluate(depth_predictor(net, model.head), dataset, metric_cfg, batch_size=batch_size,
                      progress=progress)
    result.update(model=str(model_path), data=str(data), precision="int8-sim" if quant_dir else "fp32")
    return result


def build_sim(model_path: str | Path, quant_dir: str | Path | None, profile: str | None, calib: str | None,
              n_calib: int, seed: int, size: tuple[int, int] | None, allow_pickle: bool, progress: bool):
    """The float model and its QuantSim: loaded from ``quant_dir`` or simulated afresh from a profile."""
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import load_profile

    if quant_dir and (profile or calib):
        flags = " and ".join(f for f, v in (("--profile", profile), ("--calib", calib)) if v)
        raise NpuqError(f"{flags}: not used with --quant {quant_dir} (its QuantSim already has a profile "
                        "and calibration); give one or the other")
    model, size = load_float_model(model_path, size, allow_pickle)
    if quant_dir:
        return model, load_saved_quantsim(quant_dir, model, model_path), size
    if not calib:
        raise NpuqError("give --quant (a folder from `npuq ptq`) or --calib to simulate PTQ afresh")
    calib_rgb = load_calibration(calib, size, n_calib, seed)
    sim = simulate_ptq(model, load_profile(profile or "npu-default"), calib_rgb, progress=progress)
    return model, sim, size


def analyze(model_path: str | Path, data: str, out: str | Path, metric_cfg, quant_dir=None, profile=None,
            calib=None, n_calib: int = 100, seed: int = 0, frames: slice | None = None,
            size: tuple[int, int] | None = None, allow_pickle: bool = False, force: bool = False,
            progress: bool = True) -> dict[str, Any]:
    """Per-layer SQNR, error budget and output representability (the model's head, and every registered
    head at the profile's bit width), written as a report to ``out``; the result holds the per-head rows."""
    from npuq.data.datasets import open_dataset
    from npuq.report.analyze import check_report_writable, run_analysis

    check_report_writable(out, force)
    model, sim, size = build_sim(model_path, quant_dir, profile, calib, n_calib, seed, size, allow_pickle,
                                 progress)
    dataset = open_dataset(data, size=size, depth_at="native", frames=frames)
    meta = {"model": str(model_path), "data": str(data), "profile": sim.profile.name,
            "quant": str(quant_dir) if quant_dir else None}
    return run_analysis(model, sim, dataset, metric_cfg, out, progress=progress, meta=meta, force=force)


def export_onnx(model_path: str | Path, out: str | Path, quant_dir: str | Path | None = None,
                qdq: bool = False, check_data: str | None = None, n_check: int = 8,
                size: tuple[int, int] | None = None, allow_pickle: bool = False,
                force: bool = False, min_agreement: float = QDQ_AGREEMENT_TARGET) -> dict[str, Any]:
    """Write the float or QDQ ONNX model and cross-check it in ONNX Runtime.

    A QDQ export whose standard-op outputs agree with the simulator (within one grid step) on fewer than
    ``min_agreement`` of the elements is refused and not written: it would not run the simulated model."""
    import numpy as np

    from npuq.export.onnx_export import export_float_onnx, export_qdq_onnx
    from npuq.export.ort_check import compare_with_sim, fused_integer_ops, integer_op_count, run_onnx
    from npuq.io import atomic_write, check_writable

    check_writable(out, force)
    model, size = load_float_model(model_path, size, allow_pickle)
    names = list(model.head.output_names)
    check_rgb = (load_calibration(check_data, size, n_check, seed=0) if check_data
                 else torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(0)))
    if not qdq:
        path = export_float_onnx(model, size, out, output_names=names, force=force)
        with torch.no_grad():
            ref = as_tuple(model(check_rgb))
        got = [np.concatenate([run_onnx(path, x[None])[i] for x in check_rgb]) for i in range(len(ref))]
        diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True))
        return {"out": str(path), "outputs": names, "input": [1, 3, *size], "max_abs_diff_vs_torch": diff}
    if not quant_dir:
        raise NpuqError("--onnx-qdq needs --quant (a folder from `npuq ptq`)")
    sim = load_saved_quantsim(quant_dir, model, model_path)
    checks = []

    def export_checked(tmp: Path) -> None:
        export_qdq_onnx(sim, size, tmp, force=True, output_names=names)
        checks.append(compare_with_sim(sim, tmp, check_rgb))
        if checks[0]["agreement"] < min_agreement:
            raise NpuqError(f"{out}: ONNX Runtime agrees with the simulator on only "
                            f"{100 * checks[0]['agreement']:.1f}% of the output elements (within one step; "
                            f"--min-agreement {min_agreement:g}); not written")
        checks.append(fused_integer_ops(tmp))

    path = atomic_write(out, export_checked, force)
    check, ops = checks
    return {"out": str(path), "outputs": names, "agreement_within_one_step": check["agreement"],
            "integer_kernel_agreement": check["integer_agreement"], "cpu_has_vnni": check["cpu_has_vnni"],
            "per_output": check["outputs"], "integer_ops": integer_op_count(ops), "ort_ops": ops}
