"""Cross-check an exported ONNX graph in ONNX Runtime (CPU) against the PyTorch simulator.

Two runs. With graph optimizations off, ONNX Runtime executes the QuantizeLinear / DequantizeLinear
ops as the ONNX standard defines them (``agreement``): more than one grid step away from the simulator
means the QDQ graph does not carry the simulator's numbers. With every optimization on, it fuses the
pairs around Conv, Add, Concat, Sigmoid, ... into integer kernels (QLinearConv, QLinearAdd, ...)
(``integer_agreement``); their requantisation rounds the int32 accumulator in its own way, so a value
can land one step away. On x86 CPUs without VNNI the u8 x s8 kernels add pairs of products in int16
with saturation (ONNX Runtime's documented reason for ``reduce_range``), so the integer kernels can
also be wrong by many steps where activations and weights both use their full 8-bit range: that is a
property of the CPU and of ONNX Runtime, not of the exported graph, and ``cpu_has_vnni()`` says which.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from npuq.errors import NpuqError

# Op types that only exist when ONNX Runtime runs integer kernels.
INTEGER_OPS = ("QLinearConv", "ConvInteger", "QLinearMatMul", "MatMulInteger", "QLinearAdd", "QLinearMul",
               "QLinearConcat", "QLinearSigmoid", "QLinearAveragePool", "QLinearGlobalAveragePool",
               "QLinearLeakyRelu")
# Slack on "within one step" for float rounding of the difference itself.
STEP_EPS = 1e-4


def session_options(optimize: bool = True, optimized_path: str | Path | None = None) -> ort.SessionOptions:
    """Single-threaded, deterministic CPU session; ``optimize`` enables every fusion (QDQ included)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize
                                     else ort.GraphOptimizationLevel.ORT_DISABLE_ALL)
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return opts


def open_session(path: str | Path, opts: ort.SessionOptions) -> ort.InferenceSession:
    path = Path(path)
    if not path.is_file():
        raise NpuqError(f"{path}: no such ONNX file")
    try:
        return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for bad files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NpuqError(f"{path}: ONNX Runtime cannot load it: {first}") from None


def as_batch(rgb: np.ndarray | torch.Tensor) -> np.ndarray:
    """[B,3,H,W] (or one [3,H,W] image) as contiguous float32."""
    array = rgb.detach().cpu().numpy() if isinstance(rgb, torch.Tensor) else np.asarray(rgb)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[1] != 3:
        raise NpuqError(f"rgb: expected [B,3,H,W] or [3,H,W], got shape {list(array.shape)}")
    return np.ascontiguousarray(array, dtype=np.float32)


def run_onnx(path: str | Path, rgb: np.ndarray | torch.Tensor, optimize: bool = True) -> list[np.ndarray]:
    """Run the graph on CPU, one image at a time (the export has batch 1); outputs concatenated over B."""
    session = open_session(path, session_options(optimize))
    batch = as_batch(rgb)
    inputs = session.get_inputs()
    if len(inputs) != 1:
        raise NpuqError(f"{path}: expected one input, the graph has {len(inputs)}")
    expected = inputs[0].shape
    if len(expected) == 4 and all(isinstance(d, int) for d in expected[2:]) and \
            tuple(expected[2:]) != batch.shape[2:]:
        raise NpuqError(f"{path}: exported for {expected[2]}x{expected[3]} input, got "
                        f"{batch.shape[2]}x{batch.shape[3]}")
    per_image = [session.run(None, {inputs[0].name: batch[i:i + 1]}) for i in range(len(batch))]
    return [np.concatenate([outs[k] for outs in per_image]) for k in range(len(per_image[0]))]


def optimized_model(path: str | Path) -> onnx.ModelProto:
    """The graph as ONNX Runtime runs it after all its fusions."""
    with tempfile.TemporaryDirectory(prefix="npuq-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        open_session(path, session_options(True, optimized))
        return onnx.load(str(optimized))


def fused_integer_ops(path: str | Path) -> dict[str, int]:
    """Op-type counts of the graph ONNX Runtime optimized (``QLinearConv`` > 0: integer kernels ran)."""
    proto = optimized_model(path)
    return dict(sorted(Counter(node.op_type for node in proto.graph.node).items()))


def integer_op_count(op_counts: dict[str, int]) -> int:
    return sum(op_counts.get(op, 0) for op in INTEGER_OPS)


def output_quantizer(sim: torch.nn.Module, index: int):
    """The simulator's quantizer of model output ``index`` (None when there is none)."""
    return next((q for q in sim.quantizers.values() if q.kind == "output" and q.output_index == index), None)


def output_step(quantizer) -> float | None:
    """One grid step of an active INT8 output quantizer, else None (FP16 / float outputs)."""
    if quantizer is None or not quantizer.active or quantizer.mode != "int":
        return None
    return float(quantizer.scale)


def compare_output(ort_out: np.ndarray, sim_out: np.ndarray, step: float | None) -> dict[str, float | None]:
    """Agreement of one output: the fraction within one grid step and the largest gap.

    Without a grid (FP16 / float output) "one step" is 1e-3 of the output's largest magnitude.
    """
    if ort_out.shape != sim_out.shape:
        raise NpuqError(f"ONNX output shape {list(ort_out.shape)} differs from the simulator's "
                        f"{list(sim_out.shape)}")
    diff = np.abs(ort_out.astype(np.float64) - sim_out.astype(np.float64))
    tolerance = step if step is not None else 1e-3 * max(float(np.abs(sim_out).max()), 1e-12)
    return {
        "scale": step,
        "within_one_step": float(np.mean(diff <= tolerance * (1.0 + STEP_EPS))),
        "max_abs_diff": float(diff.max()),
        "max_abs_diff_steps": float(diff.max() / step) if step is not None else None,
        "exact": float(np.mean(diff <= tolerance * STEP_EPS)),
    }


def sim_device(sim: torch.nn.Module) -> torch.device:
    tensor = next(iter(sim.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")


def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (x86 int8 dot products without int16 saturation); True off x86."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_vnni" in flags or "avx_vnni" in flags


def compare_with_sim(sim: torch.nn.Module, onnx_path: str | Path, rgb: np.ndarray | torch.Tensor) -> dict:
    """Run the QDQ export in ONNX Runtime, as standard QDQ ops and with integer kernels, and the QuantSim
    in PyTorch on ``rgb``.

    Returns ``{"outputs": {name: {scale, within_one_step, max_abs_diff, max_abs_diff_steps, exact}},
    "agreement": min of within_one_step over outputs (standard ops), "integer_outputs" and
    "integer_agreement" (the same with integer kernels), "cpu_has_vnni", "n_images": B}``. ``scale``
    is the output quantizer's step (None for an FP16 / float output); the target is agreement >= 0.99.
    """
    batch = as_batch(rgb)
    names = [o.name for o in open_session(onnx_path, session_options(False)).get_outputs()]
    was_training = sim.training
    sim.eval()
    try:
        with torch.no_grad():
            sim_outs = sim(torch.from_numpy(batch).to(sim_device(sim)))
    finally:
        sim.train(was_training)
    sim_outs = [sim_outs] if isinstance(sim_outs, torch.Tensor) else list(sim_outs)
    result = {"n_images": len(batch), "cpu_has_vnni": cpu_has_vnni()}
    for key, optimize in (("", False), ("integer_", True)):
        ort_outs = run_onnx(onnx_path, batch, optimize=optimize)
        if len(sim_outs) != len(ort_outs):
            raise NpuqError(f"{onnx_path}: {len(ort_outs)} outputs, the simulator has {len(sim_outs)}")
        outputs = {
            name: compare_output(ort_out, sim_out.cpu().numpy(), output_step(output_quantizer(sim, i)))
            for i, (name, ort_out, sim_out) in enumerate(zip(names, ort_outs, sim_outs, strict=True))
        }
        result[f"{key}outputs"] = outputs
        result[f"{key}agreement"] = min(o["within_one_step"] for o in outputs.values())
    return result
