"""Whole-model agreement: npuq's simulation against ONNX Runtime's real ``quantize_static``.

    python bench/ort_agreement.py [--only synthetic|7scenes]

For each calibrator that ONNX Runtime has (min/max, percentile 99.99, entropy) the reference float
model is exported to ONNX and quantized by ``onnxruntime.quantization.quantize_static`` (QDQ,
per-tensor, symmetric INT8 activations and weights, no bias correction), then run by ONNX Runtime on
the test frames. npuq simulates the same settings with the matching variant (bias correction and CLE
off). Both calibrate on the same 100 random training frames (seed 0) and are scored on the same test
frames. The thresholds of every activation both place a quantizer on are compared (T = 127 * scale).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from baseline_ptq import N_CALIB, SEED, calibration_pool, preload
from common import Timer, publish
from onnx import numpy_helper
from reference import RUNS, input_size, reference_checkpoint

from npuq.analysis.metrics import evaluate
from npuq.data.calib import random_calibration
from npuq.data.datasets import open_dataset
from npuq.export.onnx_export import export_float_onnx
from npuq.export.ort_check import cpu_has_vnni, run_onnx
from npuq.measure import fresh_ptq_metrics
from npuq.pipeline import depth_predictor, load_float_model
from npuq.quant.profile import QuantProfile, TensorQuantConfig

TEST_FRAMES = 200
# ORT calibrator -> (npuq activation config, ORT extra options)
CALIBRATORS = {
    "minmax": (TensorQuantConfig(range="minmax"), {}),
    "percentile 99.99": (TensorQuantConfig(range="percentile", percentile=99.99,
                                           percentile_variant="onnxruntime"), {"CalibPercentile": 99.99}),
    "entropy": (TensorQuantConfig(range="kl", kl_variant="onnxruntime"), {}),
}
ONNX_OPS = {"conv": "Conv", "elu": "Elu", "sigmoid": "Sigmoid", "relu": "Relu"}


def ort_quantize(float_onnx: Path, calib: torch.Tensor, method: str, extra: dict, out: Path) -> float:
    """quantize_static on the float export; returns its wall seconds (calibration + quantization)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from npuq.probe.ort_device import frame_reader

    methods = {"minmax": CalibrationMethod.MinMax, "percentile 99.99": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    with Timer() as t:
        quantize_static(str(float_onnx), str(out), frame_reader(calib.numpy(), "rgb"),
                        quant_format=QuantFormat.QDQ, per_channel=False, activation_type=QuantType.QInt8,
                        weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, **extra})
    return t.seconds


def ort_thresholds(qdq: Path) -> dict[str, float]:
    """Float-graph tensor name -> 127 * the scale ORT quantizes it with."""
    graph = onnx.load(str(qdq)).graph
    consts = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    found = {}
    for node in graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in consts and node.input[1] in consts:
            found[node.input[0]] = float(consts[node.input[1]]) * 127.0
    return found


def float_tensor_names(float_onnx: Path) -> dict[tuple[str, str], str]:
    """(module path, ONNX op) -> output tensor of the float export (torch scopes nodes by module)."""
    names = {}
    for node in onnx.load(str(float_onnx)).graph.node:
        scope = node.name.strip("/").replace("/", ".")
        names[(scope.rsplit(".", 1)[0], node.op_type)] = node.output[0]
    return names


def threshold_rows(sim, float_onnx: Path, ort: dict[str, float]) -> list[dict]:
    tensors = float_tensor_names(float_onnx)
    rows = []
    for q in sim.quantizers.values():
        tensor = tensors.get((q.layer, ONNX_OPS.get(q.op, "")))
        if tensor is None or tensor not in ort:
            continue
        npuq_t = max(abs(q.range_lo), abs(q.range_hi))
        rows.append({"tensor": q.name, "observed max|x|": max(abs(q.observed_min), abs(q.observed_max)),
                     "ORT T": ort[tensor], "npuq T": npuq_t,
                     "rel diff": abs(npuq_t - ort[tensor]) / max(ort[tensor], 1e-12)})
    return rows


def ort_abs_rel(qdq: Path, head, test: list[dict], metric, integer_kernels: bool) -> dict:
    """abs_rel of ORT running the QDQ model: as standard QuantizeLinear/DequantizeLinear ops, or fused
    into its integer kernels (inexact on x86 without VNNI, see npuq.export.ort_check)."""
    def predict(rgb: torch.Tensor) -> torch.Tensor:
        return head.decode(tuple(torch.from_numpy(o) for o in run_onnx(qdq, rgb, optimize=integer_kernels)))

    return evaluate(predict, test, metric)


def run(name: str) -> None:
    ckpt, _ = reference_checkpoint(name)
    model, _ = load_float_model(ckpt, input_size(name))
    spec = RUNS[name]
    test = preload(open_dataset(spec["test"], size=input_size(name), depth_at="native",
                                frames=spec["test_frames"]), TEST_FRAMES)
    calib = random_calibration(calibration_pool(name), N_CALIB, SEED)
    metric = spec["metric"]
    fp32 = evaluate(depth_predictor(model, model.head), test, metric)["abs_rel"]
    summary, decoder_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        float_onnx = export_float_onnx(model, input_size(name), Path(tmp) / "float.onnx")
        for method, (act, extra) in CALIBRATORS.items():
            qdq = Path(tmp) / f"{method.replace(' ', '-')}.qdq.onnx"
            ort_seconds = ort_quantize(float_onnx, calib, method, extra, qdq)
            ort_m = ort_abs_rel(qdq, model.head, test, metric, integer_kernels=False)
            ort_int = ort_abs_rel(qdq, model.head, test, metric, integer_kernels=True)
            profile = QuantProfile(name=f"ort-{method}", activations=act, bias_correction="off", cle=False)
            result = fresh_ptq_metrics(model, profile, calib, test, metric)
            sim, npuq_m = result.sim, result.metrics
            rows = threshold_rows(sim, float_onnx, ort_thresholds(qdq))
            diffs = [r["rel diff"] for r in rows]
            summary.append({
                "dataset": name, "ORT calibrator": method, "npuq variant": act.calibrator,
                "FP32 abs_rel": fp32, "ORT INT8 abs_rel": ort_m["abs_rel"],
                "npuq INT8 abs_rel": npuq_m["abs_rel"], "ORT integer kernels abs_rel": ort_int["abs_rel"],
                "abs_rel rel diff": abs(npuq_m["abs_rel"] - ort_m["abs_rel"]) / ort_m["abs_rel"],
                "tensors compared": len(rows), "median T rel diff": statistics.median(diffs),
                "max T rel diff": max(diffs), "share T within 5%": float(np.mean(np.array(diffs) <= 0.05)),
                "ORT quantize_static s": ort_seconds, "npuq simulate_ptq s": result.ptq_seconds,
            })
            decoder_rows += [{"calibrator": method, **r} for r in rows if r["tensor"].startswith("decoder.")]
    context = {"seed": SEED, "calibration": f"{N_CALIB} random frames of the training pool (seed {SEED})",
               "ORT INT8": "the QDQ model run as standard QDQ ops (graph optimizations off); 'integer "
                           f"kernels': fused QLinearConv etc., this CPU has VNNI: {cpu_has_vnni()}",
               "test data": spec["test"], "test frames": len(test), "checkpoint": ckpt,
               "settings": "QDQ, per-tensor, symmetric INT8 activations and weights, bias correction and "
                           "CLE off (npuq), ORT defaults otherwise (entropy: 128 bins, 128 quantized bins)"}
    publish(f"ort-calibrators-{name}", f"npuq vs ONNX Runtime quantize_static, {name}", summary,
            list(summary[0]), context)
    publish(f"ort-calibrators-decoder-{name}", f"Decoder activation thresholds, npuq vs ONNX Runtime, {name}",
            decoder_rows, list(decoder_rows[0]), context)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RUNS))
    args = parser.parse_args()
    for name in [args.only] if args.only else list(RUNS):
        run(name)


if __name__ == "__main__":
    main()
