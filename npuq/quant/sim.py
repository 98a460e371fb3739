"""QuantSim: the INT8 model a black-box NPU toolchain would make of a float model, simulated in PyTorch.

``simulate_ptq(model, profile, calib_data)`` does what the toolchain does, driven by the profile:

1. trace the model with torch.fx (no model-specific code; see ``graph.py``);
2. fold BatchNorm into the preceding conv (``fold_bn``), then cross-layer equalization (``cle``);
3. place activation quantizers where the NPU stores tensors and wrap every conv / linear so its weight
   is fake-quantized at forward time (per-tensor, or per-channel when the profile says so) and its bias
   is simulated as int32 with scale s_input * s_weight;
4. calibrate: with all quantizers off, pass 1 records min/max of every activation, pass 2 (only for
   histogram methods) fills histograms, then each quantizer's range, scale and zero-point are frozen;
5. empirical bias correction (``bias_correction: empirical`` or ``empirical-sequential``; see
   ``bias_correction.py``).

The result, a ``QuantSim`` (an ``nn.Module``), runs the simulated model: ``sim(x)`` returns the same
output structure as the float model. Gradients flow straight through the fake-quant ops to the float
weights (``sim.parameters()``), so the simulated model can be fine-tuned.

Quantizer state. Every activation quantizer (``ActQuantizer``) and weight quantizer
(``WeightQuantizer``) has a ``mode`` fixed by the profile: ``"int"`` (the integer grid), ``"fp16"``
(a layer the profile keeps in FP16) or ``"float"`` (a model output the profile leaves unquantized), and
an ``enabled`` switch for experiments (error budgets). A quantizer acts when it is enabled and its mode is
not ``"float"`` (``.active``). ``set_enabled`` / ``set_mode`` change subsets; ``quant_disabled()`` and
``preserve_state()`` are context managers that restore the state afterwards. A layer's bias correction
belongs to its quantized form: it is applied only while the layer's weight quantizer is active, so a
fully disabled QuantSim is the float model (up to BN-folding and CLE rounding).

Per-layer error: ``with sim.capture() as store`` records each activation quantizer's input (before
quantization) and output. The SQNR of the simulated model against FP32 at each quantizer location comes
from two passes over the same batch::

    with sim.quant_disabled(), sim.capture() as ref:
        sim(x)
    with sim.capture(reference=ref) as run:
        sim(x)
    run.sqnr_db()        # {quantizer name: 10 log10(sum ref^2 / sum (out - ref)^2)}

``sim.layer_sqnr(batches)`` does that over several batches with running sums only.

Saving: ``sim.save(out_dir, model_ref)`` writes ``scales.json`` (format ``npuq-quantsim/1``),
``profile.yaml`` and ``model.json``; ``load_quantsim(out_dir, model)`` rebuilds the identical simulated
model from the float model without calibration data.
"""

from __future__ import annotations

import copy
import dataclasses
import fnmatch
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx as fx
import torch.nn.functional as F
import yaml
from torch import nn

from npuq.errors import NpuqError
from npuq.io import atomic_folder, write_json, write_text
from npuq.progress import track
from npuq.quant.bias_correction import measure_output_shift, output_means
from npuq.quant.cle import CLEReport, equalize
from npuq.quant.graph import (
    QuantPlan,
    fold_batchnorm,
    insert_quantizers,
    plan_quantizers,
    propagate_shapes,
    trace,
)
from npuq.quant.observers import RangeObserver, weight_range
from npuq.quant.profile import QuantProfile, profile_from_dict
from npuq.quant.quantizer import IntGrid, fake_quant, fake_quant_per_channel, scale_zero_point

FORMAT = "npuq-quantsim/1"
SCALES_FILE = "scales.json"  # written last: a folder holding it is a whole QuantSim
MODES = ("int", "fp16", "float")
CALIB_BATCH = 16


def _half(x: torch.Tensor) -> torch.Tensor:
    """Round to FP16 and back (gradient passes straight through the casts)."""
    return x.half().to(x.dtype)


# -- quantizers -------------------------------------------------------------------------------------


class ActQuantizer(nn.Module):
    """Fake quantization of one stored activation tensor (per-tensor scale and zero-point).

    ``kind``: "input" | "activation" | "output"; ``layer``: the producing module's qualified name (or
    the fx node name for functions); ``op``: what produced it ("conv+relu", "add", "cat", "elu", ...);
    ``order``: position in network order; ``supported``: False for ops the NPU profile cannot express;
    ``output_index``: which model output it is (output quantizers only).
    """

    def __init__(self, name: str, kind: str, layer: str, op: str, grid: IntGrid, order: int,
                 mode: str = "int", supported: bool = True, output_index: int | None = None):
        super().__init__()
        self.name, self.kind, self.layer, self.op = name, kind, layer, op
        self.grid, self.order, self.supported, self.output_index = grid, order, supported, output_index
        self.mode = mode
        self.enabled = mode != "float"
        self.register_buffer("scale_buffer", torch.tensor(1.0))
        self.register_buffer("zero_point_buffer", torch.tensor(0, dtype=torch.int32))
        self.scale, self.zero_point = 1.0, 0
        self.calibrated = False
        self.observed_min: float | None = None
        self.observed_max: float | None = None
        self.range_lo: float | None = None  # the clipping range the calibration method chose
        self.range_hi: float | None = None
        self._observer: RangeObserver | None = None
        self._calib_pass = 0
        self._capture: CaptureStore | None = None

    @property
    def active(self) -> bool:
        return self.enabled and self.mode != "float"

    @property
    def clip_lo(self) -> float:
        """The lowest value the grid represents (values below are clipped to it)."""
        return (self.grid.qmin - self.zero_point) * self.scale

    @property
    def clip_hi(self) -> float:
        return (self.grid.qmax - self.zero_point) * self.scale

    def set_qparams(self, scale: float, zero_point: int, range_lo: float | None = None,
                    range_hi: float | None = None, observed_min: float | None = None,
                    observed_max: float | None = None) -> None:
        """Freeze the scale and zero-point (and record where they came from)."""
        self.scale, self.zero_point = float(scale), int(zero_point)
        self.scale_buffer.fill_(self.scale)
        self.zero_point_buffer.fill_(self.zero_point)
        self.range_lo, self.range_hi = range_lo, range_hi
        self.observed_min, self.observed_max = observed_min, observed_max
        self.calibrated = True

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` as stored in this quantizer's mode, regardless of ``enabled``."""
        if self.mode == "int":
            return fake_quant(x, self.scale, self.zero_point, self.grid)
        if self.mode == "fp16":
            return _half(x)
        return x

    def state_token(self) -> tuple:
        return self.enabled, self.mode, self.scale, self.zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._observer is not None:
            self._observe(x)
            return x
        y = self.quantize(x) if self.active else x
        if self._capture is not None:
            self._capture.record(self, x, y)
        return y

    def _observe(self, x: torch.Tensor) -> None:
        try:
            if self._calib_pass == 1:
                self._observer.observe_minmax(x)
            else:
                self._observer.observe_histogram(x)
        except ValueError as exc:
            raise NpuqError(f"calibration: activation {self.name!r} ({self.op}): {exc}") from None

    def row(self) -> dict[str, Any]:
        """A JSON-able description for tables and ``scales.json``."""
        return {
            "name": self.name, "kind": self.kind, "layer": self.layer, "op": self.op, "order": self.order,
            "enabled": self.enabled, "mode": self.mode, "supported": self.supported,
            "output_index": self.output_index, "bits": self.grid.bits, "signed": self.grid.signed,
            "qmin": self.grid.qmin, "qmax": self.grid.qmax, "scale": self.scale,
            "zero_point": self.zero_point, "observed_min": self.observed_min,
            "observed_max": self.observed_max, "range_lo": self.range_lo, "range_hi": self.range_hi,
            "clip_lo": self.clip_lo, "clip_hi": self.clip_hi,
        }

    def extra_repr(self) -> str:
        return (f"{self.name!r}, op={self.op}, mode={self.mode}, enabled={self.enabled}, "
                f"scale={self.scale:.4g}")


class WeightQuantizer(nn.Module):
    """Fake quantization of one layer's weight: per-tensor, or per output channel along ``axis``."""

    kind = "weight"

    def __init__(self, layer: str, op: str, grid: IntGrid, axis: int, per_channel: bool, mode: str = "int"):
        super().__init__()
        self.name = self.layer = layer
        self.op, self.grid, self.axis, self.per_channel, self.mode = op, grid, axis, per_channel, mode
        self.enabled = mode != "float"
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self._scale_float, self._zero_point_int = 1.0, 0
        self._version = 0

    @property
    def active(self) -> bool:
        return self.enabled and self.mode != "float"

    def set_qparams(self, scale: float | torch.Tensor, zero_point: int | torch.Tensor) -> None:
        device = self.scale.device
        if self.per_channel:
            self.scale = torch.as_tensor(scale, dtype=torch.float32, device=device).reshape(-1).clone()
            zero_point = torch.as_tensor(zero_point, dtype=torch.int32, device=device)
            self.zero_point = zero_point.reshape(-1).clone()
        else:
            self._scale_float, self._zero_point_int = float(scale), int(zero_point)
            self.scale = torch.tensor(self._scale_float, device=device)
            self.zero_point = torch.tensor(self._zero_point_int, dtype=torch.int32, device=device)
        self._version += 1

    def scale_list(self) -> float | list[float]:
        return self.scale.tolist() if self.per_channel else self._scale_float

    def zero_point_list(self) -> int | list[int]:
        return self.zero_point.tolist() if self.per_channel else self._zero_point_int

    def step(self) -> float | torch.Tensor:
        """The weight scale: a float, or a tensor per output channel."""
        return self.scale if self.per_channel else self._scale_float

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` as the NPU stores it in this mode, regardless of ``enabled``."""
        if self.mode == "int":
            if self.per_channel:
                return fake_quant_per_channel(w, self.scale, self.zero_point, self.grid, self.axis)
            return fake_quant(w, self._scale_float, self._zero_point_int, self.grid)
        if self.mode == "fp16":
            return _half(w)
        return w

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.quantize(w) if self.active else w

    def state_token(self) -> tuple:
        return self.enabled, self.mode, self._version

    def row(self) -> dict[str, Any]:
        return {"layer": self.layer, "op": self.op, "enabled": self.enabled, "mode": self.mode,
                "bits": self.grid.bits, "signed": self.grid.signed,
                "granularity": "per_channel" if self.per_channel else "per_tensor", "axis": self.axis,
                "scale": self.scale_list(), "zero_point": self.zero_point_list()}

    def extra_repr(self) -> str:
        gran = "per_channel" if self.per_channel else "per_tensor"
        return f"{self.layer!r}, {gran}, mode={self.mode}, enabled={self.enabled}"


# -- quantized layers -------------------------------------------------------------------------------


class QuantLayerMixin:
    """Swapped onto a conv / linear module of the traced copy: its weight is fake-quantized at forward
    time, its bias simulated as int32 (scale s_input * s_weight) and the bias correction applied.

    With gradients wanted (grad mode on and the weight requiring grad) or while an exporter traces, the
    quantized weight is recomputed every forward, so gradients reach the float weight straight through
    and the fake-quant ops appear in the trace; otherwise it is cached and recomputed only when the
    weight, the bias or a quantizer's state changes.
    """

    weight_quantizer: WeightQuantizer

    def _npuq_setup(self, weight_quantizer: WeightQuantizer, input_quantizer: ActQuantizer | None) -> None:
        self.weight_quantizer = weight_quantizer
        self._npuq_input = [input_quantizer] if input_quantizer is not None else []  # not a submodule
        self.register_buffer("bias_correction", None)
        self._correction_needs_input_quant = True
        self._npuq_cache: tuple | None = None

    @property
    def input_quantizer(self) -> ActQuantizer | None:
        """The activation quantizer whose grid this layer's input lies on (None when unknown)."""
        return self._npuq_input[0] if self._npuq_input else None

    def set_bias_correction(self, shift: torch.Tensor | None, needs_input_quant: bool = True) -> None:
        """Subtract ``shift`` (per output channel) from the bias of the quantized layer. A shift measured
        with the input quantized (``needs_input_quant``) applies only while the input quantizer is active."""
        self.bias_correction = None if shift is None else shift.detach().to(self.weight.device, torch.float32)
        self._correction_needs_input_quant = needs_input_quant

    def quantized_weight_bias(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The (weight, bias) the forward uses in the current quantizer state."""
        wq = self.weight_quantizer
        if not wq.active:
            return self.weight, self.bias
        wants_grad = torch.is_grad_enabled() and (
            self.weight.requires_grad or (self.bias is not None and self.bias.requires_grad))
        if wants_grad or _tracing():  # exporters must see the fake-quant ops, not a cached constant
            return wq.quantize(self.weight), self._quantized_bias()
        key = self._cache_key()
        if self._npuq_cache is None or self._npuq_cache[0] != key:
            self._npuq_cache = (key, wq.quantize(self.weight).detach(), _detach(self._quantized_bias()))
        return self._npuq_cache[1], self._npuq_cache[2]

    def _cache_key(self) -> tuple:
        iq = self.input_quantizer

        def tensor_key(t: torch.Tensor | None) -> tuple:
            return (None,) if t is None else (id(t), t._version, t.data_ptr(), t.dtype)

        return (tensor_key(self.weight), tensor_key(self.bias), tensor_key(self.bias_correction),
                self.weight_quantizer.state_token(), iq.state_token() if iq is not None else None)

    def _quantized_bias(self) -> torch.Tensor | None:
        wq, iq = self.weight_quantizer, self.input_quantizer
        bias = self.bias
        # The correction was measured with this layer's input quantized; in any other state (an error
        # budget that keeps activations in float) it would correct an error that is not there.
        input_quantized = iq is None or iq.active or not self._correction_needs_input_quant
        if self.bias_correction is not None and input_quantized:
            bias = -self.bias_correction if bias is None else bias - self.bias_correction
        if bias is None:
            return None
        if wq.mode == "fp16":
            return _half(bias)
        if wq.mode == "int" and iq is not None and iq.active and iq.mode == "int":
            step = iq.scale * wq.step()
            return bias + (torch.round(bias / step) * step - bias).detach()  # int32 grid, straight-through
        return bias

    def simulated_output(self, x: torch.Tensor) -> torch.Tensor:
        """The quantized layer on Q(x) with the float bias (bias correction's measurement), whatever the
        quantizers' ``enabled`` switches say."""
        iq = self.input_quantizer
        xq = iq.quantize(x) if iq is not None else x
        return self._forward_with(xq, self.weight_quantizer.quantize(self.weight), self.bias)

    def _forward_with(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_with(x, *self.quantized_weight_bias())


def _tracing() -> bool:
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


def _detach(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach()


class _QuantConvMixin(QuantLayerMixin):
    def _forward_with(self, x, weight, bias):
        return self._conv_forward(x, weight, bias)


class QuantConv1d(_QuantConvMixin, nn.Conv1d):
    pass


class QuantConv2d(_QuantConvMixin, nn.Conv2d):
    pass


class QuantConv3d(_QuantConvMixin, nn.Conv3d):
    pass


class QuantLinear(QuantLayerMixin, nn.Linear):
    def _forward_with(self, x, weight, bias):
        return F.linear(x, weight, bias)


class _QuantConvTransposeMixin(QuantLayerMixin):
    def _forward_with(self, x, weight, bias, output_size=None):
        dims = weight.dim() - 2
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size,
                                              dims, self.dilation)
        fn = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[dims - 1]
        return fn(x, weight, bias, self.stride, self.padding, output_padding, self.groups, self.dilation)

    def forward(self, x, output_size=None):
        return self._forward_with(x, *self.quantized_weight_bias(), output_size=output_size)


class QuantConvTranspose1d(_QuantConvTransposeMixin, nn.ConvTranspose1d):
    pass


class QuantConvTranspose2d(_QuantConvTransposeMixin, nn.ConvTranspose2d):
    pass


class QuantConvTranspose3d(_QuantConvTransposeMixin, nn.ConvTranspose3d):
    pass


QUANT_LAYER_CLASSES: dict[type, type] = {
    nn.Conv1d: QuantConv1d, nn.Conv2d: QuantConv2d, nn.Conv3d: QuantConv3d, nn.Linear: QuantLinear,
    nn.ConvTranspose1d: QuantConvTranspose1d, nn.ConvTranspose2d: QuantConvTranspose2d,
    nn.ConvTranspose3d: QuantConvTranspose3d,
}


# -- per-layer error capture ------------------------------------------------------------------------


@dataclass
class ErrorStats:
    """Running sums at one quantizer location (float64 Python floats)."""

    elements: int = 0
    input_power: float = 0.0  # sum of the quantizer's input squared
    local_noise: float = 0.0  # sum of (output - input)^2: this quantizer's own rounding and clipping
    reference_power: float = 0.0  # sum of the reference pass's output squared
    reference_noise: float = 0.0  # sum of (output - reference output)^2: all error accumulated so far

    @staticmethod
    def _db(power: float, noise: float) -> float:
        if noise <= 0.0:
            return math.inf
        return 10.0 * math.log10(power / noise) if power > 0 else -math.inf

    def local_sqnr_db(self) -> float:
        return self._db(self.input_power, self.local_noise)

    def sqnr_db(self) -> float:
        return self._db(self.reference_power, self.reference_noise)


class CaptureStore:
    """What ``QuantSim.capture`` records, keyed by quantizer name.

    ``inputs`` / ``outputs``: the last batch's tensors before / after each quantizer (detached clones;
    only with ``keep_tensors``). ``stats``: running ``ErrorStats`` over every batch recorded. With a
    ``reference`` store (a capture of the same batch, usually with quantization disabled) the error is
    also measured against the reference's outputs at the same location.
    """

    def __init__(self, keep_tensors: bool = True):
        self.keep_tensors = keep_tensors
        self.inputs: dict[str, torch.Tensor] = {}
        self.outputs: dict[str, torch.Tensor] = {}
        self.stats: dict[str, ErrorStats] = {}
        self.reference: CaptureStore | None = None

    def record(self, quantizer: ActQuantizer, x: torch.Tensor, y: torch.Tensor) -> None:
        x, y = x.detach(), y.detach()
        stats = self.stats.setdefault(quantizer.name, ErrorStats())
        stats.elements += x.numel()
        x64, y64 = x.double(), y.double()
        stats.input_power += float(x64.square().sum())
        stats.local_noise += float((y64 - x64).square().sum())
        if self.reference is not None:
            ref = self.reference.outputs.get(quantizer.name)
            if ref is None or ref.shape != y.shape:
                raise ValueError(f"reference capture has no matching tensor for {quantizer.name!r}; "
                                 "capture the same batch with keep_tensors=True first")
            ref64 = ref.double()
            stats.reference_power += float(ref64.square().sum())
            stats.reference_noise += float((y64 - ref64).square().sum())
        if self.keep_tensors:
            self.inputs[quantizer.name] = x.clone()
            self.outputs[quantizer.name] = y.clone()

    def local_sqnr_db(self) -> dict[str, float]:
        """Each quantizer's output against its own input (its local quantization noise), in dB."""
        return {name: s.local_sqnr_db() for name, s in self.stats.items()}

    def sqnr_db(self) -> dict[str, float]:
        """Each location's output against the reference pass, in dB (needs a reference)."""
        return {name: s.sqnr_db() for name, s in self.stats.items()}


# -- the simulated model ----------------------------------------------------------------------------


Quantizer = ActQuantizer | WeightQuantizer


class QuantSim(nn.Module):
    """The simulated quantized model (see the module docstring).

    Attributes: ``graph_module`` (the fx graph with quantizer nodes), ``profile``, ``quantizers``
    (activation quantizers by name, network order), ``weight_quantizers`` (by layer module name),
    ``layers`` (the quantized conv / linear modules by name), ``unsupported_ops``, ``bias_corrections``
    (layer -> per-channel shift subtracted from the bias), ``folded_bn``, ``cle`` (a ``CLEReport``),
    ``input_shapes``.
    """

    def __init__(self, graph_module: fx.GraphModule, profile: QuantProfile,
                 quantizers: dict[str, ActQuantizer], layers: dict[str, QuantLayerMixin],
                 unsupported_ops: list[str], folded_bn: list[str], cle: CLEReport,
                 input_shapes: list[list[int]]):
        super().__init__()
        self.graph_module = graph_module
        self.profile = profile
        self.quantizers = quantizers
        self.layers = layers
        self.weight_quantizers = {name: layer.weight_quantizer for name, layer in layers.items()}
        self.unsupported_ops = list(unsupported_ops)
        self.folded_bn = list(folded_bn)
        self.cle = cle
        self.input_shapes = input_shapes
        self.bias_corrections: dict[str, list[float]] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.graph_module(*args, **kwargs)

    def all_quantizers(self) -> list[Quantizer]:
        """Activation quantizers in network order, then weight quantizers."""
        return [*self.quantizers.values(), *self.weight_quantizers.values()]

    def set_enabled(self, predicate: Callable[[Quantizer], bool], enabled: bool) -> int:
        """Switch every activation and weight quantizer for which ``predicate(q)`` holds; returns how many.
        Tell the two apart by ``q.kind`` ("input" / "activation" / "output" / "weight")."""
        chosen = [q for q in self.all_quantizers() if predicate(q)]
        for q in chosen:
            q.enabled = enabled
        return len(chosen)

    def set_mode(self, predicate: Callable[[Quantizer], bool], mode: str) -> int:
        """Set ``mode`` ("int" | "fp16" | "float") of the chosen quantizers (what-if FP16 layers)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        chosen = [q for q in self.all_quantizers() if predicate(q)]
        for q in chosen:
            q.mode = mode
        return len(chosen)

    @contextmanager
    def preserve_state(self) -> Iterator[QuantSim]:
        """Restore every quantizer's ``enabled`` and ``mode`` on exit."""
        saved = [(q, q.enabled, q.mode) for q in self.all_quantizers()]
        try:
            yield self
        finally:
            for q, enabled, mode in saved:
                q.enabled, q.mode = enabled, mode

    @contextmanager
    def quant_disabled(self) -> Iterator[QuantSim]:
        """Everything off (the float model) inside the block; the previous state afterwards."""
        with self.preserve_state():
            self.set_enabled(lambda q: True, False)
            yield self

    @contextmanager
    def capture(self, reference: CaptureStore | None = None, keep_tensors: bool = True,
                store: CaptureStore | None = None) -> Iterator[CaptureStore]:
        """Record each activation quantizer's input and output into ``store`` (a new one by default)."""
        store = store if store is not None else CaptureStore(keep_tensors)
        previous = store.reference
        store.reference = reference
        for q in self.quantizers.values():
            q._capture = store
        try:
            yield store
        finally:
            for q in self.quantizers.values():
                q._capture = None
            store.reference = previous

    @torch.no_grad()
    def layer_sqnr(self, batches: Iterable[torch.Tensor]) -> dict[str, float]:
        """SQNR (dB) of the simulated model against FP32 at every activation quantizer, over ``batches``."""
        total = CaptureStore(keep_tensors=False)
        for batch in batches:
            batch = batch.to(self._device())
            with self.quant_disabled(), self.capture() as ref:
                self(batch)
            with self.capture(reference=ref, store=total):
                self(batch)
        return total.sqnr_db()

    def _device(self) -> torch.device:
        return next(iter(self.parameters()), torch.empty(0)).device

    def table(self) -> list[dict[str, Any]]:
        """One JSON-able row per activation quantizer, in network order."""
        return [q.row() for q in self.quantizers.values()]

    def weight_table(self) -> list[dict[str, Any]]:
        return [wq.row() for wq in self.weight_quantizers.values()]

    def scales_payload(self) -> dict[str, Any]:
        """The content of ``scales.json``."""
        return {
            "format": FORMAT, "profile": self.profile.name, "input_shapes": self.input_shapes,
            "folded_bn": self.folded_bn, "cle": {"pairs": [list(p) for p in self.cle.pairs],
                                                 "sweeps": self.cle.sweeps},
            "quantizers": self.table(), "weight_quantizers": self.weight_table(),
            "bias_corrections": self.bias_corrections, "unsupported_ops": self.unsupported_ops,
        }

    def save(self, out_dir: str | Path, model_ref: dict[str, Any] | None = None, force: bool = True) -> Path:
        """Write ``scales.json``, ``profile.yaml`` and ``model.json`` into ``out_dir``, as a whole: an
        interrupted save leaves the earlier QuantSim (or nothing), never a mix."""
        with atomic_folder(out_dir, force, SCALES_FILE) as tmp:
            write_text(tmp / "profile.yaml", self.profile.to_yaml())
            write_json(tmp / "model.json", model_ref or {})
            write_json(tmp / SCALES_FILE, self.scales_payload())
        return Path(out_dir)


# -- building ---------------------------------------------------------------------------------------


def _fp16_match(profile: QuantProfile, layer: str) -> bool:
    return any(fnmatch.fnmatchcase(layer, pattern) for pattern in profile.fp16_layers)


def _make_act_quantizers(plan: QuantPlan, profile: QuantProfile) -> dict[str, ActQuantizer]:
    grid = IntGrid.for_config(profile.activations)
    outputs = {p.output_index for p in plan.points if p.output_index is not None}
    flags = profile.quantize_outputs
    if not isinstance(flags, bool) and len(flags) != len(outputs):
        raise NpuqError(f"profile {profile.name}: quantize_outputs has {len(flags)} flags but the model has "
                        f"{len(outputs)} output{'s' if len(outputs) != 1 else ''}")
    quantizers = {}
    for p in plan.points:
        mode = "fp16" if _fp16_match(profile, p.layer) else "int"
        if p.output_index is not None and not profile.output_quantized(p.output_index):
            mode = "float"
        quantizers[p.name] = ActQuantizer(p.name, p.kind, p.layer, p.op, grid, p.order, mode, p.supported,
                                          p.output_index)
    return quantizers


def _make_quant_layers(gm: fx.GraphModule, plan: QuantPlan, profile: QuantProfile,
                       quantizers: dict[str, ActQuantizer]) -> dict[str, QuantLayerMixin]:
    modules = dict(gm.named_modules())
    grid = IntGrid.for_config(profile.weights)
    layers = {}
    for name, op in plan.weighted_layers.items():
        mod = modules[name]
        axis = 1 if op == "conv_transpose" else 0
        grouped_transpose = op == "conv_transpose" and mod.groups != 1  # no single output-channel axis
        per_channel = profile.weights.granularity == "per_channel" and not grouped_transpose
        mode = "fp16" if _fp16_match(profile, name) else "int"
        source = plan.layer_inputs.get(name)
        mod.__class__ = QUANT_LAYER_CLASSES[type(mod)]
        mod._npuq_setup(WeightQuantizer(name, op, grid, axis, per_channel, mode),
                        quantizers[source] if source is not None else None)
        layers[name] = mod
    return layers


def _disable_inplace(model: nn.Module) -> None:
    """In-place activations would overwrite tensors the quantizers and captures still refer to."""
    for mod in model.modules():
        if isinstance(getattr(mod, "inplace", None), bool):
            mod.inplace = False


def _warn_about(profile: QuantProfile, plan: QuantPlan) -> None:
    if plan.unsupported_ops:
        warnings.warn(f"npuq: the NPU profile cannot express {len(plan.unsupported_ops)} op(s); they run in "
                      f"float with an INT8 output: {', '.join(plan.unsupported_ops)}", stacklevel=3)
    layers = list(plan.weighted_layers) + [p.layer for p in plan.points]
    for pattern in profile.fp16_layers:
        if not any(fnmatch.fnmatchcase(layer, pattern) for layer in layers):
            warnings.warn(f"npuq: profile {profile.name}: fp16_layers pattern {pattern!r} matches no layer",
                          stacklevel=3)


def _model_device(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), torch.empty(0))
    return tensor.device


def build_quantsim(model: nn.Module, profile: QuantProfile, example_input: torch.Tensor) -> QuantSim:
    """Trace a copy of ``model``, apply the graph transforms and insert (uncalibrated) quantizers."""
    work = copy.deepcopy(model).eval()
    _disable_inplace(work)
    gm = trace(work)
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise NpuqError(f"model {type(model).__name__}: has {len(placeholders)} inputs; "
                        "npuq simulates single-input models")
    propagate_shapes(gm, (example_input.to(_model_device(model)),))
    folded = fold_batchnorm(gm) if profile.fold_bn else []
    cle = equalize(gm) if profile.cle else CLEReport()
    plan = plan_quantizers(gm, fuse_clip=profile.fuse_clip)
    quantizers = _make_act_quantizers(plan, profile)
    insert_quantizers(gm, plan, quantizers)
    layers = _make_quant_layers(gm, plan, profile, quantizers)
    _warn_about(profile, plan)
    return QuantSim(gm, profile, quantizers, layers, plan.unsupported_ops, folded, cle,
                    [list(example_input.shape)])


def _init_weight_qparams(sim: QuantSim) -> None:
    cfg = sim.profile.weights
    for layer in sim.layers.values():
        wq = layer.weight_quantizer
        weight = layer.weight.detach()
        weight = weight.transpose(0, 1) if wq.axis == 1 else weight
        layer_cfg = cfg if wq.per_channel else dataclasses.replace(cfg, granularity="per_tensor")
        lo, hi = weight_range(weight, layer_cfg, wq.grid)
        if wq.per_channel:
            pairs = [scale_zero_point(a, b, wq.grid) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
            wq.set_qparams(torch.tensor([s for s, _ in pairs]), torch.tensor([z for _, z in pairs]))
        else:
            wq.set_qparams(*scale_zero_point(lo, hi, wq.grid))


# -- calibration ------------------------------------------------------------------------------------


def _as_batch(item: Any, index: int) -> torch.Tensor:
    """A calibration element as a batch tensor (a single [C,H,W] image gets a batch axis)."""
    if isinstance(item, Mapping):
        if "rgb" not in item:
            raise NpuqError(f"calibration data: batch {index} is a dict without key 'rgb' "
                            f"(keys: {', '.join(map(str, item))})")
        item = item["rgb"]
    if not isinstance(item, torch.Tensor):
        raise NpuqError(f"calibration data: batch {index} is a {type(item).__name__}, "
                        "expected a Tensor or a dict with key 'rgb'")
    if not item.is_floating_point():
        raise NpuqError(f"calibration data: batch {index} has dtype {item.dtype}, expected floating point")
    return item.unsqueeze(0) if item.dim() == 3 else item


def _check_finite(batch: torch.Tensor, what: str) -> None:
    if torch.isnan(batch).any():
        raise NpuqError(f"calibration data: {what} contains NaN")
    if torch.isinf(batch).any():
        raise NpuqError(f"calibration data: {what} contains Inf")


def calibration_batches(calib_data: Any, batch_size: int = CALIB_BATCH) -> list[torch.Tensor]:
    """Validate calibration data (a Tensor [N,C,H,W], or an iterable of Tensors / dicts with "rgb") and
    regroup it into batches of ``batch_size`` when all samples share one shape."""
    if isinstance(calib_data, torch.Tensor):
        batch = _as_batch(calib_data, 0)
        for i in range(batch.shape[0]):
            _check_finite(batch[i], f"image {i}")
        items = [batch] if batch.shape[0] else []
    elif isinstance(calib_data, Iterable) and not isinstance(calib_data, str | bytes | Mapping):
        items = []
        for i, item in enumerate(calib_data):
            batch = _as_batch(item, i)
            _check_finite(batch, f"batch {i}")
            if batch.shape[0]:
                items.append(batch)
    else:
        raise NpuqError(f"calibration data: expected a Tensor or an iterable of batches, "
                        f"got {type(calib_data).__name__}")
    if not items:
        raise NpuqError("calibration data: empty (no images)")
    if len({tuple(b.shape[1:]) for b in items}) > 1:
        return items
    return list(torch.cat(items).split(batch_size))


def _progress(items: list, description: str, enabled: bool) -> Iterable:
    return track(items, description, enabled)


@torch.no_grad()
def calibrate(sim: QuantSim, batches: list[torch.Tensor], progress: bool = False) -> None:
    """Observe every activation quantizer over the batches (float model) and freeze its scale."""
    device = sim._device()
    observers = {name: RangeObserver(sim.profile.activations) for name in sim.quantizers}
    two_pass = any(obs.needs_histogram for obs in observers.values())
    passes = (1, 2) if two_pass else (1,)
    try:
        with sim.quant_disabled():
            for q in sim.quantizers.values():
                q._observer = observers[q.name]
            for calib_pass in passes:
                for q in sim.quantizers.values():
                    q._calib_pass = calib_pass
                for batch in _progress(batches, f"calibration pass {calib_pass}/{len(passes)}", progress):
                    sim(batch.to(device))
    finally:
        for q in sim.quantizers.values():
            q._observer = None
    for q in sim.quantizers.values():
        obs = observers[q.name]
        lo, hi = obs.compute_range(q.grid)
        scale, zero_point = scale_zero_point(lo, hi, q.grid)
        q.set_qparams(scale, zero_point, float(lo), float(hi), obs.min_val, obs.max_val)


def correct_biases_sequential(sim: QuantSim, batches: list[torch.Tensor], progress: bool = False) -> None:
    """AIMET's empirical bias correction (see ``bias_correction.py``): layer by layer in network order,
    the mean output of the weight-quantized model (layer output quantizers off, the model input still
    quantized, earlier corrections in) against the float model's."""
    device = sim._device()
    layers = {name: layer for name, layer in sim.layers.items() if layer.weight_quantizer.mode == "int"}

    def run(batch: torch.Tensor) -> None:
        sim(batch.to(device))

    with sim.quant_disabled():
        reference = output_means(run, layers, batches)
    with sim.preserve_state():
        sim.set_enabled(lambda q: q.kind in ("activation", "output"), False)  # AIMET keeps the input's
        for name in _progress(list(layers), "bias correction (sequential)", progress):
            shift = output_means(run, {name: layers[name]}, batches, stop_after=True)[name] - reference[name]
            layers[name].set_bias_correction(shift.float(), needs_input_quant=False)
            sim.bias_corrections[name] = shift.float().tolist()


def correct_biases(sim: QuantSim, batches: list[torch.Tensor], progress: bool = False) -> None:
    """Empirical bias correction of every INT8 conv / linear (see ``bias_correction.py``)."""
    device = sim._device()
    layers = {name: layer for name, layer in sim.layers.items() if layer.weight_quantizer.mode == "int"}
    with sim.quant_disabled():
        shifts = measure_output_shift(lambda batch: sim(batch.to(device)), layers,
                                      lambda layer, x: layer.simulated_output(x),
                                      _progress(batches, "bias correction", progress))
    for name, shift in shifts.items():
        sim.layers[name].set_bias_correction(shift.float())
        sim.bias_corrections[name] = shift.float().tolist()


def simulate_ptq(model: nn.Module, profile: QuantProfile, calib_data: Any,
                 progress: bool = False) -> QuantSim:
    """Simulate the vendor toolchain's PTQ of ``model`` (left untouched) with ``calib_data``.

    ``calib_data``: a Tensor [N,3,H,W], an iterable of Tensors (batches), or an iterable of dicts with
    key "rgb" (dataset items or DataLoader batches). NpuqError for empty data or NaN / Inf in it.
    """
    batches = calibration_batches(calib_data)
    sim = build_quantsim(model, profile, batches[0][:1])
    recalibrate(sim, batches, progress)
    return sim


def recalibrate(sim: QuantSim, batches: list[torch.Tensor], progress: bool = False) -> None:
    """What the toolchain computes for the sim's current weights: weight scales, activation thresholds
    and the profile's bias correction (``simulate_ptq`` after building the graph). Earlier corrections
    are dropped first, as a fresh PTQ has none."""
    with torch.no_grad():
        for layer in sim.layers.values():
            layer.set_bias_correction(None)
        sim.bias_corrections.clear()
        _init_weight_qparams(sim)
        calibrate(sim, batches, progress)
        if sim.profile.bias_correction == "empirical":
            correct_biases(sim, batches, progress)
        elif sim.profile.bias_correction == "empirical-sequential":
            correct_biases_sequential(sim, batches, progress)


# -- loading ----------------------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise NpuqError(f"{path}: not found (a QuantSim folder from `npuq ptq` holds it)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NpuqError(f"{path}: cannot read ({exc})") from None
    if not isinstance(data, dict):
        raise NpuqError(f"{path}: expected a JSON object")
    return data


def _read_profile(path: Path) -> QuantProfile:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise NpuqError(f"{path}: not found (a QuantSim folder from `npuq ptq` holds it)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise NpuqError(f"{path}: cannot read profile ({str(exc).splitlines()[0]})") from None
    return profile_from_dict(data, source=str(path))


def _restore_activations(sim: QuantSim, rows: Any, path: Path) -> None:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise NpuqError(f"{path}: 'quantizers' must be a list of objects")
    stored = [(r.get("name"), r.get("kind"), r.get("op")) for r in rows]
    built = [(q.name, q.kind, q.op) for q in sim.quantizers.values()]
    if stored != built:
        diff = next((f"stored {s} vs model {b}" for s, b in zip(stored, built, strict=False) if s != b),
                    f"stored {len(stored)} quantizers, the model's graph has {len(built)}")
        raise NpuqError(f"{path}: quantizers do not match the model's graph ({diff})")
    for row in rows:
        q = sim.quantizers[row["name"]]
        try:
            q.set_qparams(float(row["scale"]), int(row["zero_point"]), row.get("range_lo"),
                          row.get("range_hi"), row.get("observed_min"), row.get("observed_max"))
        except (KeyError, TypeError, ValueError) as exc:
            raise NpuqError(f"{path}: quantizer {row['name']!r} has a bad scale or zero_point ({exc})") \
                from None
        q.mode = row["mode"] if row.get("mode") in MODES else q.mode
        q.enabled = bool(row.get("enabled", q.enabled))


def _restore_weights(sim: QuantSim, rows: Any, path: Path) -> None:
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise NpuqError(f"{path}: 'weight_quantizers' must be a list of objects")
    by_layer = {r.get("layer"): r for r in rows}
    if set(by_layer) != set(sim.weight_quantizers):
        missing = sorted(set(sim.weight_quantizers) - set(by_layer))
        extra = sorted(set(by_layer) - set(sim.weight_quantizers), key=str)
        raise NpuqError(f"{path}: weight quantizers do not match the model's layers "
                        f"(missing: {missing[:3]}, unknown: {extra[:3]})")
    for name, wq in sim.weight_quantizers.items():
        row = by_layer[name]
        scale, zero_point = row.get("scale"), row.get("zero_point")
        channels = sim.layers[name].weight.shape[wq.axis]
        if wq.per_channel:
            ok = isinstance(scale, list) and isinstance(zero_point, list) and \
                len(scale) == len(zero_point) == channels
        else:
            ok = isinstance(scale, int | float) and isinstance(zero_point, int)
        if not ok:
            raise NpuqError(f"{path}: weight quantizer {name!r}: scale/zero_point do not fit the layer "
                            f"({'per_channel' if wq.per_channel else 'per_tensor'}, {channels} channels)")
        wq.set_qparams(torch.tensor(scale) if wq.per_channel else scale,
                       torch.tensor(zero_point) if wq.per_channel else zero_point)
        wq.mode = row["mode"] if row.get("mode") in MODES else wq.mode
        wq.enabled = bool(row.get("enabled", wq.enabled))


def _restore_bias_corrections(sim: QuantSim, corrections: Any, path: Path) -> None:
    if not isinstance(corrections, dict):
        raise NpuqError(f"{path}: 'bias_corrections' must be an object")
    for name, shift in corrections.items():
        layer = sim.layers.get(name)
        if layer is None:
            raise NpuqError(f"{path}: bias correction for {name!r}, which is not a layer of the model")
        channels = getattr(layer, "out_channels", None) or layer.out_features
        if not isinstance(shift, list) or len(shift) != channels:
            raise NpuqError(f"{path}: bias correction for {name!r} has the wrong number of channels")
        layer.set_bias_correction(torch.tensor(shift, dtype=torch.float32),
                                  needs_input_quant=sim.profile.bias_correction != "empirical-sequential")
        sim.bias_corrections[name] = [float(v) for v in shift]


def load_quantsim(out_dir: str | Path, model: nn.Module) -> QuantSim:
    """Rebuild the QuantSim saved in ``out_dir`` from the float ``model`` (no calibration)."""
    out = Path(out_dir)
    scales_path = out / SCALES_FILE
    data = _read_json(scales_path)
    if data.get("format") != FORMAT:
        raise NpuqError(f"{scales_path}: format is {data.get('format')!r}, expected {FORMAT!r}")
    profile = _read_profile(out / "profile.yaml")
    shapes = data.get("input_shapes")
    if not (isinstance(shapes, list) and len(shapes) == 1 and isinstance(shapes[0], list)
            and all(isinstance(v, int) and v > 0 for v in shapes[0])):
        raise NpuqError(f"{scales_path}: 'input_shapes' must hold one list of positive integers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # reported when the QuantSim was made
        sim = build_quantsim(model, profile, torch.zeros(shapes[0]))
    _restore_activations(sim, data.get("quantizers"), scales_path)
    _restore_weights(sim, data.get("weight_quantizers"), scales_path)
    _restore_bias_corrections(sim, data.get("bias_corrections", {}), scales_path)
    return sim
