"""Baseline PTQ benchmark: FP32 vs simulated INT8 of the reference model, what-if matrix, ORT, cost.

    python bench/baseline_ptq.py [--only synthetic|7scenes] [--parts shipped,ort,cost,matrix]

Uses the reference checkpoints of bench/reference.py (trained first if not cached), 100 random
calibration images from each training pool (seed 0), and the held-out test frames.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import torch
from common import RESULTS, Timer, publish
from reference import RUNS, input_size, reference_checkpoint

from npuq.analysis.metrics import evaluate
from npuq.data.calib import random_calibration
from npuq.data.datasets import open_dataset
from npuq.measure import fresh_ptq_metrics
from npuq.pipeline import depth_predictor, load_float_model
from npuq.quant import simulate_ptq
from npuq.quant.profile import PROFILE_DIR, load_profile

N_CALIB = 100
SEED = 0
SHIPPED = ("npu-default", "npu-ort-entropy", "npu-asym", "npu-fp16-decoder", "per-channel-whatif")
# (range, variant field, variant): every activation calibrator the simulator models
CALIBRATORS = (("minmax", None, None), ("percentile", "percentile_variant", "npuq"),
               ("percentile", "percentile_variant", "onnxruntime"), ("mse", "mse_variant", "npuq"),
               ("mse", "mse_variant", "modelopt"), ("kl", "kl_variant", "tensorrt"),
               ("kl", "kl_variant", "onnxruntime"))
BIAS_CORRECTIONS = ("off", "empirical", "empirical-sequential")
MATRIX_TEST_FRAMES = 200
PARTS = ("shipped", "ort", "cost", "matrix", "bias", "analyze")  # ort and cost run on the synthetic model
ANALYSIS_SYNTH_TEST = "synth:n=200,seed=1,size=128x160"


def calibration_pool(name: str):
    cfg = RUNS[name]["train"]
    frames = slice(*cfg.frames) if cfg.frames else None
    return open_dataset(cfg.data, size=input_size(name), frames=frames)


def preload(dataset, limit: int | None = None) -> list[dict]:
    """Decode the test frames once; every configuration is scored on exactly these tensors."""
    n = len(dataset) if limit is None else min(limit, len(dataset))
    return [dataset[i] for i in range(n)]


def int8_abs_rel(model, profile, calib, test, metric) -> tuple[dict, float, object]:
    result = fresh_ptq_metrics(model, profile, calib, test, metric)
    return result.metrics, result.ptq_seconds, result.sim


def shipped_rows(name, model, calib, test, metric, fp32) -> list[dict]:
    rows = [{"dataset": name, "model": "FP32", "calibrator": "", "abs_rel": fp32["abs_rel"],
             "rmse": fp32["rmse"], "a1": fp32["a1"], "x FP32": 1.0}]
    for prof_name in SHIPPED:
        profile = load_profile(prof_name)
        m, _, _ = int8_abs_rel(model, profile, calib, test, metric)
        rows.append({"dataset": name, "model": f"INT8 sim ({prof_name})",
                     "calibrator": profile.activations.calibrator, "abs_rel": m["abs_rel"],
                     "rmse": m["rmse"], "a1": m["a1"], "x FP32": m["abs_rel"] / fp32["abs_rel"]})
    return rows


def what_if_matrix(name, model, calib, test, metric, fp32) -> list[dict]:
    """npu-default with each activation grid x calibrator variant x bias correction (CLE on: on both
    references CLE on/off moved INT8 abs_rel by <= 0.0006 in the earlier matrix)."""
    base = load_profile("npu-default")
    rows = []
    for symmetric, (method, field, variant), bc in itertools.product(
            (True, False), CALIBRATORS, ("empirical", "off")):
        if (method, variant) == ("mse", "modelopt") and not symmetric:
            continue  # ModelOpt's MSE search has no asymmetric form
        act = {"symmetric": symmetric, "range": method, **({field: variant} if field else {})}
        prof = base.replace(activations=act, bias_correction=bc)
        m, _, _ = int8_abs_rel(model, prof, calib, test, metric)
        rows.append({"activations": "sym int8" if symmetric else "asym uint8",
                     "calibrator": prof.activations.calibrator, "bias corr": bc, "abs_rel": m["abs_rel"],
                     "x FP32": m["abs_rel"] / fp32["abs_rel"], "a1": m["a1"]})
    return rows


def bias_correction_rows(name, model, calib, test, metric, fp32) -> list[dict]:
    """npu-default under the main symmetric calibrators with bias correction off, npuq's (Brevitas
    semantics) and AIMET's sequential one, with its cost."""
    base = load_profile("npu-default")
    rows = []
    calibrators = [c for c in CALIBRATORS if c[0] in ("minmax", "kl") or c[2] == "npuq" and c[0] == "mse"]
    for (method, field, variant), bc in itertools.product(calibrators, BIAS_CORRECTIONS):
        act = {"range": method, **({field: variant} if field else {})}
        prof = base.replace(activations=act, bias_correction=bc)
        m, seconds, _ = int8_abs_rel(model, prof, calib, test, metric)
        rows.append({"dataset": name, "calibrator": prof.activations.calibrator, "bias corr": bc,
                     "abs_rel": m["abs_rel"], "x FP32": m["abs_rel"] / fp32["abs_rel"],
                     "simulate_ptq s": seconds})
    return rows


def ort_agreement(sim, model, test) -> dict:
    from npuq.export.onnx_export import export_qdq_onnx
    from npuq.export.ort_check import compare_with_sim, fused_integer_ops, integer_op_count

    rgb = torch.stack([item["rgb"] for item in test[:8]])
    with tempfile.TemporaryDirectory() as tmp:
        names = list(model.head.output_names)
        size = tuple(rgb.shape[-2:])
        path = export_qdq_onnx(sim, size, Path(tmp) / "model.qdq.onnx", output_names=names)
        check = compare_with_sim(sim, path, rgb)
        ops = fused_integer_ops(path)
    return {"agreement within 1 output step": check["agreement"], "frames": len(rgb),
            "integer ops in ORT graph": integer_op_count(ops), "QLinearConv": ops.get("QLinearConv", 0)}


def cost_rows(model, name, test, metric) -> list[dict]:
    pool = calibration_pool(name)
    calib500 = random_calibration(pool, 500, SEED)
    rows = []
    for method in ("kl", "mse"):
        prof = load_profile("npu-default").replace(activations={"range": method})
        with Timer() as t:
            sim = simulate_ptq(model, prof, calib500, progress=True)
        h, w = input_size(name)
        rows.append({"what": f"simulate_ptq, {method} clipping, 500 images {h}x{w}",
                     "seconds": t.seconds})
    eval_set = test[:MATRIX_TEST_FRAMES]
    timings = {}
    for label, net in (("fp32", model), ("int8-sim", sim)):
        evaluate(depth_predictor(net, model.head), eval_set[:16], metric)  # warm-up
        start = time.perf_counter()
        evaluate(depth_predictor(net, model.head), eval_set, metric)
        timings[label] = time.perf_counter() - start
    rows.append({"what": f"FP32 evaluation, {len(eval_set)} frames", "seconds": timings["fp32"]})
    rows.append({"what": f"INT8-sim evaluation, {len(eval_set)} frames", "seconds": timings["int8-sim"]})
    rows.append({"what": "INT8-sim / FP32 evaluation time", "seconds": timings["int8-sim"] / timings["fp32"]})
    return rows


def run_analyze(ckpt: str, name: str, run: dict, model, calib) -> None:
    """`npuq analyze` on a reference model: npu-default, the baseline's 100 calibration frames, 200 test
    frames. The QuantSim is made here from the training pool (the CLI's --calib would draw from a whole
    folder, test frames included) and passed to analyze as a saved --quant folder."""
    from npuq.pipeline import analyze

    test, frames = (run["test"], run["test_frames"]) if run["test_frames"] else (ANALYSIS_SYNTH_TEST, None)
    sim = simulate_ptq(model, load_profile("npu-default"), calib, progress=True)
    with tempfile.TemporaryDirectory() as quant_dir:
        sim.save(quant_dir, {"checkpoint": ckpt, "calibration": f"{N_CALIB} random frames, seed {SEED}"})
        result = analyze(ckpt, test, RESULTS / f"analysis-{name}", run["metric"], quant_dir=quant_dir,
                         frames=frames, size=input_size(name), force=True, progress=True)
    print(f"analysis report: {result['out_dir']}/report.md")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated subset of the parts")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    names = [args.only] if args.only else list(RUNS)
    context = {"seed": SEED, "calibration": f"{N_CALIB} random frames of each training pool (seed {SEED})",
               "profiles": str(PROFILE_DIR)}
    for name in names:
        ckpt, _ = reference_checkpoint(name)
        model, _ = load_float_model(ckpt, input_size(name))
        run = RUNS[name]
        test = preload(open_dataset(run["test"], size=input_size(name), depth_at="native",
                                    frames=run["test_frames"]))
        calib = random_calibration(calibration_pool(name), N_CALIB, SEED)
        metric = run["metric"]
        fp32 = evaluate(depth_predictor(model, model.head), test, metric)
        ctx = {**context, "checkpoint": ckpt, "test data": run["test"], "test frames": len(test)}
        if "analyze" in parts:
            run_analyze(ckpt, name, run, model, calib)
        if "shipped" in parts:
            rows = shipped_rows(name, model, calib, test, metric, fp32)
            publish(f"baseline-{name}", f"FP32 vs simulated INT8, {name}", rows, list(rows[0]), ctx)
        if name == "synthetic":
            if "ort" in parts:
                _, _, default_sim = int8_abs_rel(model, load_profile("npu-default"), calib, test[:8], metric)
                agreement = ort_agreement(default_sim, model, test)
                publish("ort-agreement", "ONNX Runtime INT8 (QDQ) vs simulator, DepthResNet-18, npu-default",
                        [agreement], list(agreement), ctx)
            if "cost" in parts:
                cost = cost_rows(model, name, test, metric)
                publish("ptq-cost", "Cost of the simulation", cost, ["what", "seconds"], ctx)
        if parts & {"matrix", "bias"}:
            matrix_test = test[:MATRIX_TEST_FRAMES]
            fp32_m = evaluate(depth_predictor(model, model.head), matrix_test, metric)
            mctx = {**ctx, "test frames": len(matrix_test)}
        if "matrix" in parts:
            matrix = what_if_matrix(name, model, calib, matrix_test, metric, fp32_m)
            publish(f"what-if-{name}", f"What-if matrix on {len(matrix_test)} {name} test frames "
                    f"(FP32 abs_rel {fp32_m['abs_rel']:.4f})", matrix, list(matrix[0]), mctx)
        if "bias" in parts:
            rows = bias_correction_rows(name, model, calib, matrix_test, metric, fp32_m)
            title = (f"Bias correction semantics under each calibrator, {name} "
                     f"(npu-default otherwise; FP32 abs_rel {fp32_m['abs_rel']:.4f})")
            publish(f"bias-correction-{name}", title, rows, list(rows[0]), mctx)


if __name__ == "__main__":
    main()
