"""Probe kit against a real toolchain: ONNX Runtime's quantize_static under several of its settings plays
the vendor; `npuq probe fit` must name what it did.

    python bench/probe_onnxruntime.py

Every setting compiles the 11 probes of `npuq probe export` with quantize_static (QDQ, the kit's
calibration sets), runs them in ONNX Runtime (standard ops) and fits a profile to the outputs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from common import Timer, publish

from npuq.probe import export_kit, fit_kit
from npuq.probe.ort_device import OrtSettings, run_onnxruntime_device

SETTINGS = [
    # settings, what a correct fit names: grid, calibrator, weight granularity
    (OrtSettings("QUInt8", method="MinMax"), ("zero-point 8-bit", "minmax", "per_tensor")),
    (OrtSettings("QUInt8", method="MinMax", per_channel=True), ("zero-point 8-bit", "minmax", "per_channel")),
    (OrtSettings("QInt8", method="MinMax"), ("zero-point 8-bit", "minmax", "per_tensor")),
    (OrtSettings("QInt8", method="MinMax", symmetric_activations=True, per_channel=True),
     ("signed symmetric 8-bit", "minmax", "per_channel")),
    (OrtSettings("QUInt8", method="Entropy"), ("zero-point 8-bit", "minmax", "per_tensor")),
    (OrtSettings("QInt8", method="Entropy", symmetric_activations=True),
     ("signed symmetric 8-bit", "minmax", "per_tensor")),
    (OrtSettings("QUInt8", method="Percentile"), ("zero-point 8-bit", "percentile 99.999", "per_tensor")),
    (OrtSettings("QInt8", method="Percentile", per_channel=True),
     ("zero-point 8-bit", "percentile 99.999", "per_channel")),
]


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        kit = export_kit(Path(tmp) / "kit")["out_dir"]
        for i, (settings, (grid, calibrator, granularity)) in enumerate(SETTINGS):
            outputs = run_onnxruntime_device(kit, Path(tmp) / f"ort{i}", settings)
            with Timer() as t:
                result = fit_kit(kit, outputs)
            fields = {f.field: f for f in result.fields}
            fitted = result.profile
            correct = (fields["activations.grid"].value == grid and
                       fitted.activations.calibrator.startswith(calibrator) and
                       fitted.weights.granularity == granularity)
            rng = fields["activations.range"]
            others = (f"{fitted.bias_correction} / {'on' if fitted.cle else 'off'} / "
                      f"{'fused' if fitted.fuse_clip else 'not fused'} / "
                      f"{'quantized' if fitted.quantize_outputs else 'float'}")
            rows.append({"onnxruntime setting": settings.label,
                         "fitted grid": fields["activations.grid"].value,
                         "fitted range": f"{fitted.activations.calibrator} ({rng.confidence})",
                         "fitted weights": fitted.weights.granularity,
                         "bias correction / CLE / Clip / outputs": others,
                         "worst probe agreement": round(min(result.agreement.values()), 4),
                         "grid, range and granularity right": "yes" if correct else "NO",
                         "fit seconds": round(t.seconds, 1)})
    publish("probe-onnxruntime", "npuq probe fit against ONNX Runtime quantize_static", rows, list(rows[0]),
            {"kit": "npuq probe export (11 probes, calibration and inputs fixed by their definitions)",
             "device": "onnxruntime.quantization.quantize_static, QDQ, weights QInt8; session with graph "
                       "optimizations off", "seed": "none (the kit is deterministic)"})


if __name__ == "__main__":
    main()
