"""Per-layer SQNR of the simulated INT8 model against FP32, in network order.

SQNR = 10 log10(sum ref² / sum (q - ref)²), summed over all images, at each activation quantizer's
output. Two flavours, both from two forward passes per batch:

- **accumulated** (``sqnr_db``): the sim as configured (normally everything quantized) against the
  all-float run at the same location. It contains the error of every quantizer upstream, so it
  answers whether error accumulates with depth.
- **local** (``sqnr_db_isolated``): the quantizer's own rounding/clipping of the *float* tensor,
  i.e. Q(x_fp32) against x_fp32. It does not include upstream error nor the producing layer's weight
  quantization. A large local-minus-accumulated gap means inherited error; a low local SQNR means the
  quantizer's own grid is the problem.

The measurement hooks the sim's ActQuantizer modules (forward hooks see each quantizer's input and
output) and uses only their ``enabled`` flags and ``quantize`` method. (``QuantSim.capture`` measures
a different local error: output against input within the quantized run, i.e. on already-quantized
inputs.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from npuq.analysis.budget import activation_stages, only_quantizing, ordered_quantizers, stage_assigner
from npuq.analysis.metrics import progress_bar
from npuq.errors import NpuqError

SECTION_OF_STAGE = {"stem": "encoder", "layer1": "encoder", "layer2": "encoder", "layer3": "encoder",
                    "layer4": "encoder", "head": "head", "output": "head",
                    **{f"dec{i}": "decoder" for i in range(5)}}


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10 log10(signal / noise); +inf for an exact tensor, -inf for noise on a zero signal."""
    if noise_power == 0.0:
        return math.inf
    if signal_power == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


def rgb_batches_of(rgb: Tensor | Iterable[Tensor], batch_size: int = 4) -> Iterator[Tensor]:
    """Batches from one [N,3,H,W] tensor (split along N) or an iterable of [B,3,H,W] batches."""
    if isinstance(rgb, Tensor):
        yield from rgb.split(batch_size)
        return
    yield from rgb


def _quantizer_module(sim, key: str) -> nn.Module:
    q = sim.quantizers[key]
    if not isinstance(q, nn.Module):
        raise NpuqError(f"quantsim: quantizer {key!r} is not an nn.Module; per-layer SQNR cannot hook it")
    return q


def is_active(q) -> bool:
    """Whether a quantizer acts in the current configuration (enabled, and not a float-mode output)."""
    return bool(getattr(q, "active", q.enabled))


def _local_quantize(q: nn.Module, x: Tensor, configured_on: bool) -> Tensor:
    """What the quantizer, as configured, makes of ``x`` (``ActQuantizer.quantize``: no hooks, no flags)."""
    return q.quantize(x) if configured_on else x


class _Sums:
    """Per quantizer: energy of the float reference and of both errors, over every call and image."""

    def __init__(self) -> None:
        self.ref = 0.0
        self.err = 0.0
        self.local_ref = 0.0
        self.local_err = 0.0
        self.n = 0

    @staticmethod
    def energy(t: Tensor) -> float:
        return float(t.double().pow(2).sum())


@contextmanager
def _hooks(sim, keys: list[str], hook: Callable[[str, Tensor, Tensor], None]) -> Iterator[None]:
    handles = []
    try:
        for key in keys:
            module = _quantizer_module(sim, key)
            handles.append(module.register_forward_hook(
                lambda _m, args, out, key=key: hook(key, args[0], out)))
        yield
    finally:
        for h in handles:
            h.remove()


def _float_pass(sim, rgb: Tensor, keys: list[str], configured: dict[str, bool], sums: dict[str, _Sums],
                isolated: bool) -> dict[str, list[Tensor]]:
    """All quantizers off; record each quantizer's output and, optionally, its local error."""
    refs: dict[str, list[Tensor]] = {k: [] for k in keys}

    def record(key: str, x: Tensor, out: Tensor) -> None:
        refs[key].append(out.detach().clone())
        if isolated:
            s = sums[key]
            s.local_ref += _Sums.energy(x)
            s.local_err += _Sums.energy(_local_quantize(sim.quantizers[key], x, configured[key]) - x)

    with only_quantizing(sim, set(), set()), _hooks(sim, keys, record):
        sim(rgb)
    return refs


def _quant_pass(sim, rgb: Tensor, keys: list[str], refs: dict[str, list[Tensor]],
                sums: dict[str, _Sums]) -> None:
    """The sim as configured; compare each quantizer's output with the float run's, call by call."""
    calls = dict.fromkeys(keys, 0)

    def compare(key: str, _x: Tensor, out: Tensor) -> None:
        i = calls[key]
        calls[key] += 1
        if i >= len(refs[key]) or refs[key][i].shape != out.shape:
            raise NpuqError(f"quantsim: quantizer {key!r} saw different tensors in the float and INT8 runs")
        ref = refs[key][i]
        sums[key].ref += _Sums.energy(ref)
        sums[key].err += _Sums.energy(out.detach() - ref)
        sums[key].n += 1

    with _hooks(sim, keys, compare):
        sim(rgb)


def _section(stage: str) -> str:
    return SECTION_OF_STAGE.get(stage, stage)


def layer_sqnr(sim, rgb_batches: Tensor | Iterable[Tensor], isolated: bool = True, batch_size: int = 4,
               module_names: Iterable[str] | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """Accumulated (and, with ``isolated``, local) SQNR of every activation quantizer, in network order.

    The "quantized" run uses the sim's current ``enabled`` flags (after ``simulate_ptq``: all on);
    the reference run has every activation and weight quantizer off. Rows: ``{index, order, name,
    layer, op, kind, stage, section, sqnr_db, sqnr_db_isolated, scale, zero_point, clip_lo,
    clip_hi}``; ``stage`` follows ``npuq.analysis.budget`` (the output quantizers are ``output``).
    """
    items = ordered_quantizers(sim)
    keys = [k for k, _ in items]
    if not keys:
        raise NpuqError("quantsim: has no activation quantizers")
    configured = {k: is_active(q) for k, q in items}
    sums = {k: _Sums() for k in keys}
    was_training = sim.training
    sim.eval()
    try:
        with torch.no_grad(), progress_bar(progress, None, "per-layer SQNR") as advance:
            for rgb in rgb_batches_of(rgb_batches, batch_size):
                refs = _float_pass(sim, rgb, keys, configured, sums, isolated)
                _quant_pass(sim, rgb, keys, refs, sums)
                advance(len(rgb))
    finally:
        sim.train(was_training)
    stages = activation_stages(sim, stage_assigner(sim, module_names))
    return [_row(i, key, q, stages.get(key, "output"), sums[key], isolated)
            for i, (key, q) in enumerate(items)]


def _row(index: int, key: str, q, stage: str, s: _Sums, isolated: bool) -> dict[str, Any]:
    return {
        "index": index, "order": int(q.order), "name": getattr(q, "name", key) or key,
        "layer": q.layer, "op": getattr(q, "op", ""), "kind": q.kind, "stage": stage,
        "section": _section(stage), "enabled": bool(q.enabled),
        "sqnr_db": sqnr_db(s.ref, s.err) if s.n else math.nan,
        "sqnr_db_isolated": (sqnr_db(s.local_ref, s.local_err) if s.n else math.nan) if isolated else None,
        "scale": _maybe_float(getattr(q, "scale", None)),
        "zero_point": _maybe_float(getattr(q, "zero_point", None)),
        "clip_lo": _maybe_float(getattr(q, "clip_lo", None)),
        "clip_hi": _maybe_float(getattr(q, "clip_hi", None)),
    }


def _maybe_float(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, Tensor):
        return float(value.item()) if value.numel() == 1 else None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
