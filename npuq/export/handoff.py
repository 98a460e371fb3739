"""Hand-off to the vendor toolchain: the float ONNX model plus its calibration set in plain files.

``export_handoff(model_path, calib_pool, calib_list, out_dir)`` writes::

    out_dir/
      model.onnx            float model, input "rgb" [1,3,H,W] float32 in [0,1], outputs per the head
      calib/0000.npy ...    one preprocessed image each, float32 [1,3,H,W] (NumPy .npy)
      calib/0000.bin ...    the same bytes without header (little-endian float32, C order NCHW)
      calib_list.txt        the .npy paths, one per line, relative to out_dir
      calib_bin_list.txt    the .bin paths, one per line, relative to out_dir
      calib_frames.txt      the source frame names in the same order (a selection file: --calib-list)
      handoff.json          machine-readable manifest (input, outputs, preprocessing, frames, check)
      README.md             the exact preprocessing and the input/output contract, for the vendor side

The images are exactly what npuq's simulator calibrates on (``DepthDataset`` items), so the toolchain
and the simulation see the same inputs. The ONNX model is checked in ONNX Runtime against PyTorch on
the first ``n_check`` calibration images; the largest absolute difference is in the manifest.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from npuq.io import (
    atomic_folder,
    check_output_folder,
    file_sha256,
    write_bytes,
    write_json,
    write_npy,
    write_text,
)
from npuq.progress import track

FORMAT = "npuq-handoff/1"
MODEL_FILE = "model.onnx"
CALIB_DIR = "calib"
NPY_LIST = "calib_list.txt"
BIN_LIST = "calib_bin_list.txt"
FRAMES_LIST = "calib_frames.txt"
MANIFEST = "handoff.json"
README = "README.md"


def calibration_indices(pool, calib_list: str | Path | None, n_calib: int, seed: int) -> list[int]:
    from npuq.data.calib import random_indices, read_selection

    if calib_list is not None:
        return read_selection(calib_list, pool)
    return random_indices(len(pool), n_calib, seed)


def write_tensor(stem: Path, array: np.ndarray) -> None:
    """``stem.npy`` and ``stem.bin`` (raw little-endian float32, C order) of one input tensor: the two
    forms vendor toolchains take a calibration or probe input in."""
    array = np.ascontiguousarray(array, dtype=np.float32)
    write_npy(stem.with_name(stem.name + ".npy"), array)
    write_bytes(stem.with_name(stem.name + ".bin"), array.astype("<f4").tobytes(order="C"))


def write_calibration_arrays(pool, indices: list[int], out_dir: Path, progress: bool = False) -> list[str]:
    """``calib/NNNN.npy`` and ``.bin`` per frame; returns the file stems relative to ``out_dir``."""
    width = max(4, len(str(len(indices) - 1)))
    stems = []
    for k, index in enumerate(track(indices, "writing calibration set", progress)):
        stem = f"{CALIB_DIR}/{k:0{width}d}"
        write_tensor(out_dir / stem, pool[index]["rgb"][None].numpy())
        stems.append(stem)
    return stems


def check_onnx_vs_torch(model, onnx_path: Path, rgb: torch.Tensor) -> float:
    """Largest absolute difference of any output between ONNX Runtime and PyTorch (eval mode)."""
    from npuq.export.ort_check import run_onnx
    from npuq.pipeline import as_tuple

    with torch.no_grad():
        ref = as_tuple(model.eval()(rgb))
    got = run_onnx(onnx_path, rgb)
    return max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, ref, strict=True))


def output_info(model, rgb: torch.Tensor) -> list[dict[str, Any]]:
    """Name, shape and value range of each model output (from one eval forward)."""
    from npuq.pipeline import as_tuple

    with torch.no_grad():
        outputs = as_tuple(model.eval()(rgb[:1]))
    ranges = model.head.output_ranges()
    return [{"name": name, "shape": list(out.shape), "dtype": "float32", "range": list(ranges[i])}
            for i, (name, out) in enumerate(zip(model.head.output_names, outputs, strict=True))]


def preprocessing(size: tuple[int, int]) -> dict[str, Any]:
    from npuq.models.depth_resnet import RGB_MEAN, RGB_STD

    h, w = size
    return {
        "decode": "Pillow; grey, alpha and palette images are converted to RGB",
        "channel_order": "RGB",
        "scale": "float32 value / 255, range [0, 1]",
        "resize": {"size": [h, w], "method": "bilinear, antialiased, align_corners=False "
                   "(torch.nn.functional.interpolate), after the /255 scaling, then clamped to [0, 1]; "
                   "only when the decoded image is not already HxW; no crop, aspect ratio not kept"},
        "layout": "NCHW", "dtype": "float32", "batch": 1,
        "normalisation_in_model": f"(x - {RGB_MEAN}) / {RGB_STD} on every channel",
    }


def export_handoff(model_path: str | Path, calib_pool: str, calib_list: str | Path | None,
                   out_dir: str | Path, n_calib: int = 100, seed: int = 0,
                   size: tuple[int, int] | None = None, force: bool = False, allow_pickle: bool = False,
                   n_check: int = 4, progress: bool = False, frames: slice | None = None) -> dict[str, Any]:
    """Write the float ONNX model and the calibration set (``.npy`` + ``.bin`` + lists + README).

    The calibration frames are those listed in ``calib_list`` (one frame name per line, as written by
    ``npuq.data.calib.write_selection``), else ``n_calib`` random frames of ``calib_pool`` (``seed``).
    ``size`` defaults to the checkpoint's training size. Refuses a non-empty ``out_dir`` without
    ``force``. Returns the manifest (also written as ``handoff.json``).
    """
    from npuq.data.datasets import open_dataset
    from npuq.pipeline import load_float_model

    out_dir = check_output_folder(out_dir, force, MANIFEST)
    model, size = load_float_model(model_path, size, allow_pickle)
    pool = open_dataset(calib_pool, size=size, frames=frames)
    indices = calibration_indices(pool, calib_list, n_calib, seed)
    with atomic_folder(out_dir, force, MANIFEST) as tmp:
        manifest = _write_handoff(model, model_path, size, pool, indices, calib_pool, calib_list, seed, tmp,
                                  n_check, progress)
    return {**manifest, "out_dir": str(out_dir)}


def _write_handoff(model, model_path, size, pool, indices, calib_pool, calib_list, seed, out_dir: Path,
                   n_check: int, progress: bool) -> dict[str, Any]:
    from npuq.export.onnx_export import INPUT_NAME, OPSET, export_float_onnx

    output_names = list(model.head.output_names)
    onnx_path = export_float_onnx(model, size, out_dir / MODEL_FILE, output_names=output_names, force=True)
    stems = write_calibration_arrays(pool, indices, out_dir, progress)
    names = [pool.names[i] for i in indices]
    write_text(out_dir / NPY_LIST, "".join(f"{s}.npy\n" for s in stems))
    write_text(out_dir / BIN_LIST, "".join(f"{s}.bin\n" for s in stems))
    write_text(out_dir / FRAMES_LIST, "".join(f"{n}\n" for n in names))
    check_rgb = torch.stack([pool[i]["rgb"] for i in indices[:max(1, n_check)]])
    manifest = {
        "format": FORMAT,
        "model": {"file": MODEL_FILE, "source": str(Path(model_path).resolve()), "opset": OPSET,
                  "sha256": file_sha256(model_path) if Path(model_path).is_file() else None,
                  "head": model.head.name},
        "input": {"name": INPUT_NAME, "shape": [1, 3, *size], "dtype": "float32", "layout": "NCHW",
                  "range": [0.0, 1.0], "channel_order": "RGB"},
        "outputs": output_info(model, check_rgb),
        "preprocessing": preprocessing(size),
        "calibration": {"pool": str(calib_pool), "list": str(calib_list) if calib_list else None,
                        "seed": None if calib_list else seed, "n": len(stems), "npy_list": NPY_LIST,
                        "bin_list": BIN_LIST, "frames_list": FRAMES_LIST, "frames": names},
        "check": {"images": len(check_rgb),
                  "max_abs_diff_onnxruntime_vs_torch": check_onnx_vs_torch(model, onnx_path, check_rgb)},
    }
    write_text(out_dir / README, render_readme(manifest, model))
    write_json(out_dir / MANIFEST, manifest)
    return manifest


def _decode_text(model) -> str:
    head = model.head
    if head.name == "sigmoid-disp":
        lo, hi = 1.0 / head.max_depth, 1.0 / head.min_depth
        return (f"depth_m = 1 / ({lo:g} + ({hi:g} - {lo:g}) * disp), i.e. Monodepth2's disp_to_depth with "
                f"min_depth {head.min_depth:g} m and max_depth {head.max_depth:g} m.")
    if head.name == "centred-logit":
        lo, hi = 1.0 / head.max_depth, 1.0 / head.min_depth
        return (f"disp = sigmoid(logit + {float(head.centre):.6g}); "
                f"depth_m = 1 / ({lo:g} + ({hi:g} - {lo:g}) * disp), i.e. Monodepth2's disp_to_depth "
                f"with min_depth {head.min_depth:g} m and max_depth {head.max_depth:g} m.")
    return (f"decode on the host with npuq's `{head.name}` head (`npuq.models.heads`, "
            f"min_depth {head.min_depth:g} m, max_depth {head.max_depth:g} m).")


def render_readme(manifest: dict[str, Any], model) -> str:
    inp, pre, cal = manifest["input"], manifest["preprocessing"], manifest["calibration"]
    h, w = inp["shape"][2:]
    n_values = 3 * h * w
    outputs = "\n".join(f"| `{o['name']}` | {o['shape']} | {o['dtype']} | {o['range'][0]:g} to "
                        f"{o['range'][1]:g} |" for o in manifest["outputs"])
    sha = f" (sha256 `{manifest['model']['sha256']}`)" if manifest["model"]["sha256"] else ""
    pick = (f"the frames listed in `{cal['list']}`" if cal["list"]
            else f"{cal['n']} frames drawn at random (seed {cal['seed']})")
    return f"""# Hand-off: float model and calibration set

`{MODEL_FILE}`: ONNX opset {manifest['model']['opset']}, float32, from `{manifest['model']['source']}`{sha},
head `{manifest['model']['head']}`.

## Input

| name | shape | dtype | layout | range | channels |
|---|---|---|---|---|---|
| `{inp['name']}` | {inp['shape']} | float32 | NCHW | 0 to 1 | R, G, B |

The mean/std normalisation is inside the graph: its first ops compute {pre['normalisation_in_model']}.
Do not configure a mean/std in the toolchain on top of it. A toolchain that feeds 8-bit images must map
them to [0, 1] only (mean 0, scale 1/255 or std 255 on every channel, channel order RGB, not BGR).

## Outputs

| name | shape | dtype | range |
|---|---|---|---|
{outputs}

Metric depth: {_decode_text(model)}

## Preprocessing (exactly what produced the calibration files)

1. Decode the image to 8-bit RGB ({pre['decode']}).
2. Convert to float32 and divide by 255 (values in [0, 1]).
3. If the image is not {h}x{w} (HxW): resize to {h}x{w} with bilinear interpolation, antialiased,
   `align_corners=False` (`torch.nn.functional.interpolate(x, size=({h}, {w}), mode="bilinear",
   align_corners=False, antialias=True)`), then clamp to [0, 1]. No crop, no padding: the aspect ratio is
   not kept.
4. Lay out as NCHW with batch 1: shape [1, 3, {h}, {w}], channel order R, G, B, dtype float32.

## Calibration set

{cal['n']} images from `{cal['pool']}`: {pick}; `{cal['frames_list']}` names the source frame of each.

- `{CALIB_DIR}/NNNN.npy`: NumPy array, float32, shape [1, 3, {h}, {w}], values in [0, 1].
- `{CALIB_DIR}/NNNN.bin`: the same values as raw little-endian float32 without a header, C order
  (N, C, H, W), {n_values} values = {4 * n_values} bytes.
- `{cal['npy_list']}` / `{cal['bin_list']}`: one path per line, relative to this folder, in the same order.

## Check

ONNX Runtime (CPU) reproduces PyTorch on {manifest['check']['images']} calibration images with a largest
absolute output difference of {manifest['check']['max_abs_diff_onnxruntime_vs_torch']:.3g}.
"""
