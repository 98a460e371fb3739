"""The probe kit on disk: float ONNX probes, their calibration sets and inputs, and the device's outputs.

Layout of a kit folder (``npuq probe export``)::

    kit.json                      manifest: every probe, its files, input shape and output names
    README.md                     what to do with the vendor flow
    <probe>/model.onnx            float model, input ``x`` [1, C, 32, 32] float32
    <probe>/calib/NNNN.npy|.bin   calibration tensors (as the hand-off: .npy and raw little-endian f32)
    <probe>/calib_list.txt        the .npy files, one per line (calib_bin_list.txt: the .bin files)
    <probe>/inputs/<input>.npy|.bin

and of the outputs folder the user fills: ``<probe>/<input>.<output>.npy``, float32 dequantized values, or
the raw integers with ``<probe>/<input>.<output>.json`` holding ``{"scale": s, "zero_point": z}``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npuq.errors import NpuqError
from npuq.io import atomic_folder, check_output_folder, write_json, write_text
from npuq.probe.probes import FP16_LAYER, PROBES, PROBES_BY_NAME, Probe

FORMAT = "npuq-probe-kit/1"
MANIFEST = "kit.json"
INPUT_NAME = "x"


def output_names(probe: Probe) -> list[str]:
    outputs = probe.build()(torch.zeros(1, probe.channels, 4, 4))
    return ["signed", "relu"] if isinstance(outputs, tuple) else ["y"]


def export_kit(out_dir: str | Path, force: bool = False) -> dict[str, Any]:
    """Write every probe (ONNX, calibration set, inputs) with a manifest and README into ``out_dir``."""
    out_dir = check_output_folder(out_dir, force, MANIFEST)
    with atomic_folder(out_dir, force, MANIFEST) as tmp:
        entries = [_write_probe(probe, tmp) for probe in PROBES]
        manifest = {"format": FORMAT, "input_name": INPUT_NAME, "fp16_layer": FP16_LAYER, "probes": entries}
        write_text(tmp / "README.md", render_readme(manifest))
        write_json(tmp / MANIFEST, manifest)
    return {**manifest, "out_dir": str(out_dir)}


def _write_probe(probe: Probe, out: Path) -> dict[str, Any]:
    from npuq.export.handoff import write_tensor
    from npuq.export.onnx_export import save_onnx, trace_to_onnx

    folder = out / probe.name
    model = probe.build().eval()
    names = output_names(probe)
    example = torch.from_numpy(next(iter(probe.probe_inputs().values())))
    save_onnx(trace_to_onnx(model, example, names, folder / "model.onnx", INPUT_NAME), folder / "model.onnx",
              force=True)
    calib = probe.calibration_set()
    stems = [f"calib/{i:04d}" for i in range(len(calib))]
    for stem, frame in zip(stems, calib, strict=True):
        write_tensor(folder / stem, frame[None])
    write_text(folder / "calib_list.txt", "".join(f"{s}.npy\n" for s in stems))
    write_text(folder / "calib_bin_list.txt", "".join(f"{s}.bin\n" for s in stems))
    inputs = probe.probe_inputs()
    for name, array in inputs.items():
        write_tensor(folder / "inputs" / name, array)
    return {"name": probe.name, "reveals": probe.reveals, "note": probe.note,
            "model": f"{probe.name}/model.onnx",
            "input_shape": [1, probe.channels, *calib.shape[2:]], "outputs": names,
            "calibration": {"n": len(stems), "list": f"{probe.name}/calib_list.txt",
                            "bin_list": f"{probe.name}/calib_bin_list.txt"},
            "inputs": {name: f"{probe.name}/inputs/{name}.npy" for name in inputs},
            "expected_outputs": [f"{probe.name}/{i}.{o}.npy" for i in inputs for o in names]}


def load_manifest(kit_dir: str | Path) -> dict[str, Any]:
    path = Path(kit_dir) / MANIFEST
    if not path.is_file():
        raise NpuqError(f"{path}: not found (a probe kit folder from `npuq probe export` holds it)")
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NpuqError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise NpuqError(f"{path}: format is not {FORMAT!r}")
    unknown = [p["name"] for p in manifest["probes"] if p["name"] not in PROBES_BY_NAME]
    if unknown:
        raise NpuqError(f"{path}: probes {unknown} are not known to this npuq version")
    return manifest


def load_calibration(kit_dir: str | Path, entry: dict[str, Any]) -> np.ndarray:
    """The calibration set the kit handed to the toolchain, (N, C, H, W) float32."""
    root = Path(kit_dir)
    names = (root / entry["calibration"]["list"]).read_text().split()
    return np.concatenate([_read_array(root / entry["name"] / name) for name in names])


def load_inputs(kit_dir: str | Path, entry: dict[str, Any]) -> dict[str, np.ndarray]:
    return {name: _read_array(Path(kit_dir) / rel) for name, rel in entry["inputs"].items()}


def _read_array(path: Path) -> np.ndarray:
    if not path.is_file():
        raise NpuqError(f"{path}: not found")
    try:
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise NpuqError(f"{path}: not a readable .npy file ({exc})") from None


def load_device_outputs(outputs_dir: str | Path, entry: dict[str, Any],
                        shapes: dict[str, tuple[int, ...]]) -> dict[str, dict[str, np.ndarray]]:
    """``{input: {output: float64 array}}`` the device returned for one probe; problems name the file."""
    root = Path(outputs_dir)
    if not root.is_dir():
        raise NpuqError(f"{root}: no such outputs folder")
    result: dict[str, dict[str, np.ndarray]] = {}
    for name in entry["inputs"]:
        result[name] = {}
        for output in entry["outputs"]:
            path = root / entry["name"] / f"{name}.{output}.npy"
            result[name][output] = read_device_array(path, shapes[output])
    return result


def read_device_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    """One output file of the device as float64 of ``shape``: float values as they are, integers
    dequantized with the scale and zero-point of the ``.json`` beside them."""
    array = _read_array(path)
    if array.size != int(np.prod(shape)):
        raise NpuqError(f"{path}: {array.size} values, the probe's output has {int(np.prod(shape))} "
                        f"(shape {list(shape)})")
    if np.issubdtype(array.dtype, np.integer):
        array = _dequantize(array, path.with_suffix(".json"))
    elif not np.issubdtype(array.dtype, np.floating):
        raise NpuqError(f"{path}: dtype {array.dtype}; save float32 values or integers with a .json scale")
    array = array.astype(np.float64).reshape(shape)
    if not np.isfinite(array).all():
        raise NpuqError(f"{path}: holds NaN or Inf values")
    return array


def _dequantize(array: np.ndarray, qparams: Path) -> np.ndarray:
    if not qparams.is_file():
        raise NpuqError(f"{qparams}: missing; integer outputs need their scale and zero_point")
    try:
        params = json.loads(qparams.read_text())
        scale, zero_point = float(params["scale"]), float(params.get("zero_point", 0))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        raise NpuqError(f'{qparams}: expected {{"scale": S, "zero_point": Z}}') from None
    if not (np.isfinite(scale) and scale > 0):
        raise NpuqError(f"{qparams}: scale must be a positive number, got {scale}")
    return (array.astype(np.float64) - zero_point) * scale


def render_readme(manifest: dict[str, Any]) -> str:
    lines = [
        "# npuq probe kit",
        "",
        "Tiny float ONNX models whose quantized outputs reveal how your vendor toolchain quantizes.",
        "",
        "## What to do",
        "",
        "For every folder below:",
        "",
        "1. Compile `<probe>/model.onnx` with your toolchain's INT8 post-training quantization, exactly as",
        "   you would compile the depth network (same options), calibrating on the files listed in",
        "   `<probe>/calib_list.txt` (`.npy`) or `calib_bin_list.txt` (raw little-endian float32, NCHW).",
        f"   The input is named `{manifest['input_name']}`, shape `[1, C, 32, 32]` float32, used as is (no",
        "   normalisation, no resizing).",
        "2. Run the compiled model on every file in `<probe>/inputs/` and save each output as",
        "   `outputs/<probe>/<input>.<output>.npy` (for example `outputs/grid/ramp.signed.npy`):",
        "   the dequantized float32 values; or, if the runtime gives raw integers, the integers with",
        "   `outputs/<probe>/<input>.<output>.json` holding `{\"scale\": S, \"zero_point\": Z}`.",
        "3. Run `npuq probe fit --kit KIT --outputs outputs --out fitted.yaml`, then use the fitted",
        "   profile with `npuq roadmap ... --profile fitted.yaml`.",
        "",
        "## Probes",
        "",
        "| probe | reveals | inputs | outputs | note |",
        "|---|---|---|---|---|",
    ]
    for p in manifest["probes"]:
        lines.append(f"| `{p['name']}` | {p['reveals']} | {', '.join(f'`{i}`' for i in p['inputs'])} | "
                     f"{', '.join(f'`{o}`' for o in p['outputs'])} | {p['note'] or '-'} |")
    files = [f for p in manifest["probes"] for f in p["expected_outputs"]]
    lines += ["", "## The files `npuq probe fit` reads", "", *[f"- `outputs/{f}`" for f in files], ""]
    return "\n".join(lines)
