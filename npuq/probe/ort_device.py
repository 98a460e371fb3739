"""ONNX Runtime as a stand-in device: its own ``quantize_static`` compiles every probe of a kit, its
session runs the probe inputs, and the outputs land in the layout ``npuq probe fit`` reads.

A real, independent toolchain whose settings are known: the tests and ``bench/probe_onnxruntime.py``
check that the fit names them. The session runs the QDQ graph with its standard ops (graph
optimizations off), so the integer kernels' own rounding on CPUs without VNNI does not enter.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from npuq.io import atomic_folder, write_json, write_npy
from npuq.probe.kit import load_calibration, load_inputs, load_manifest


@dataclass(frozen=True)
class OrtSettings:
    activation_type: str = "QUInt8"  # QUInt8 or QInt8
    weight_type: str = "QInt8"
    per_channel: bool = False
    method: str = "MinMax"  # MinMax, Entropy or Percentile (onnxruntime.quantization.CalibrationMethod)
    symmetric_activations: bool = False  # extra_options ActivationSymmetric

    @property
    def label(self) -> str:
        grid = f"{self.activation_type}{' symmetric' if self.symmetric_activations else ''}"
        return f"{self.method}, {grid}, {'per-channel' if self.per_channel else 'per-tensor'}"


def frame_reader(frames: np.ndarray, input_name: str):
    """An ONNX Runtime ``CalibrationDataReader`` that feeds ``frames`` [N, C, H, W] one at a time."""
    from onnxruntime.quantization import CalibrationDataReader

    class Frames(CalibrationDataReader):
        def __init__(self):
            self.items = iter([{input_name: frame[None]} for frame in frames])

        def get_next(self):
            return next(self.items, None)

    return Frames()


def run_onnxruntime_device(kit_dir: str | Path, out_dir: str | Path, settings: OrtSettings,
                           force: bool = False) -> Path:
    """Quantize every probe with ``quantize_static(settings)`` and save its outputs under ``out_dir``."""
    import onnxruntime as ort
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kit = Path(kit_dir)
    manifest = load_manifest(kit)
    with atomic_folder(out_dir, force, "device.json") as tmp:
        for entry in manifest["probes"]:
            quantized = tmp / "models" / f"{entry['name']}.onnx"
            quantized.parent.mkdir(parents=True, exist_ok=True)
            with contextlib.redirect_stdout(io.StringIO()):  # its calibrators print progress to stdout
                quantize_static(str(kit / entry["model"]), str(quantized),
                                frame_reader(load_calibration(kit, entry), manifest["input_name"]),
                                quant_format=QuantFormat.QDQ,
                                activation_type=QuantType[settings.activation_type],
                                weight_type=QuantType[settings.weight_type], per_channel=settings.per_channel,
                                calibrate_method=CalibrationMethod[settings.method],
                                extra_options={"ActivationSymmetric": settings.symmetric_activations})
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
            options.log_severity_level = 3
            session = ort.InferenceSession(str(quantized), options, providers=["CPUExecutionProvider"])
            for name, array in load_inputs(kit, entry).items():
                outputs = session.run(None, {manifest["input_name"]: array})
                for output, values in zip(entry["outputs"], outputs, strict=True):
                    write_npy(tmp / entry["name"] / f"{name}.{output}.npy", values.astype(np.float32))
        write_json(tmp / "device.json", {"onnxruntime": dataclasses.asdict(settings)})
    return Path(out_dir)
