"""Output representability: which depths the quantized NPU output can express, and what that costs.

The NPU stores each raw head output (for ``sigmoid-disp``: the sigmoid "disparity" in [0, 1]) on an
integer grid. The host decodes those integers to metres, so only a finite set of depths can come
out of the network, however good the layers before it are. This module measures that limit,
generically over heads through ``head.encode`` / ``head.decode``:

- ``representable_depths``: the decoded depth of every integer level that the head's output range
  can reach (one-output heads);
- ``depth_step_curve``: the gap in metres between neighbouring representable depths around each depth
  of a sweep, i.e. the resolution (the worst rounding error at a depth is about half the step);
- ``gt_quantization_floor``: metrics of ``decode(Q(encode(gt)))`` against ``gt`` — the abs_rel that
  the output quantizer alone imposes even on a perfect network.

Grids come from a calibrated QuantSim (``grids_from_sim``: the scale the toolchain chose, e.g. a
KL-clipped range) or from the profile's bit width over the head's full output range
(``full_range_grids``).

``compare_heads`` puts every registered head side by side at the profile's bit width, so that a
claim such as "splitting depth into an integer and a fraction output turns +-28 mm into +-2 mm" is
checked with the same grids and the same ground truth; ``int_frac_model_misassignment`` measures how
often a simulated INT8 ``int-frac`` model reads a different whole metre than its FP32 original.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from npuq.analysis.metrics import MetricAccumulator, MetricConfig, valid_mask
from npuq.errors import NpuqError
from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import IntGrid, scale_zero_point

STEP_CURVE_POINTS = 200
HIST_BINS = 40


@dataclass(frozen=True)
class OutputGrid:
    """How one raw NPU output is stored: integer grid, scale and zero-point."""

    grid: IntGrid
    scale: float
    zero_point: int

    @classmethod
    def from_range(cls, lo: float, hi: float, grid: IntGrid) -> OutputGrid:
        """The grid that a range [lo, hi] gets (same rule as the simulator's quantizers)."""
        scale, zero_point = scale_zero_point(lo, hi, grid)
        return cls(grid, scale, zero_point)

    @property
    def lo(self) -> float:
        """The smallest value the grid stores."""
        return (self.grid.qmin - self.zero_point) * self.scale

    @property
    def hi(self) -> float:
        """The largest value the grid stores (values above are clipped to it)."""
        return (self.grid.qmax - self.zero_point) * self.scale

    def level_of(self, x: Tensor) -> Tensor:
        """The integer each value is stored as (round half to even, clamped), as a float tensor."""
        return torch.clamp(torch.round(x / self.scale) + self.zero_point, self.grid.qmin, self.grid.qmax)

    def value_of(self, level: Tensor) -> Tensor:
        """The real value an integer level stands for."""
        return (level - self.zero_point) * self.scale

    def quantize(self, x: Tensor) -> Tensor:
        """Quantize-dequantize, as the NPU output tensor."""
        return self.value_of(self.level_of(x.double())).to(x.dtype)

    def to_dict(self) -> dict[str, Any]:
        return {"bits": self.grid.bits, "signed": self.grid.signed, "scale": self.scale,
                "zero_point": self.zero_point, "lo": self.lo, "hi": self.hi}


@dataclass(frozen=True)
class GridScenario:
    """One way of quantizing every head output: a label and one OutputGrid per output (None = kept float)."""

    label: str
    grids: tuple[OutputGrid | None, ...]


def full_range_grids(head, act_cfg: TensorQuantConfig) -> tuple[OutputGrid, ...]:
    """Per head output: the profile's activation grid stretched over the head's whole output range."""
    grid = IntGrid.for_config(act_cfg)
    return tuple(OutputGrid.from_range(lo, hi, grid) for lo, hi in head.output_ranges())


def _scalar(value: Any, what: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise NpuqError(f"output quantizer: {what} has {value.numel()} values; per-tensor expected")
        return float(value.item())
    return float(value)


def grid_of_quantizer(quantizer) -> OutputGrid | None:
    """The integer grid of a QuantSim ActQuantizer; None when it is off, not calibrated or not on an
    integer grid (mode "float" or "fp16")."""
    active = getattr(quantizer, "active", getattr(quantizer, "enabled", True))
    if not active or getattr(quantizer, "mode", "int") != "int" or getattr(quantizer, "scale", None) is None:
        return None
    return OutputGrid(quantizer.grid, _scalar(quantizer.scale, "scale"),
                      int(_scalar(quantizer.zero_point, "zero_point")))


def output_quantizers(sim) -> list:
    """The sim's output quantizers in output order."""
    outs = [q for q in sim.quantizers.values() if q.kind == "output"]
    return sorted(outs, key=lambda q: (getattr(q, "output_index", None) or 0, q.order))


def grids_from_sim(sim, num_outputs: int) -> tuple[OutputGrid | None, ...]:
    """The calibrated grid of each model output (None where the output is not quantized)."""
    outs = output_quantizers(sim)
    if len(outs) not in (0, num_outputs):
        raise NpuqError(f"quantsim: {len(outs)} output quantizers for a head with {num_outputs} outputs")
    if not outs:
        return (None,) * num_outputs
    return tuple(grid_of_quantizer(q) for q in outs)


def _check_grids(head, grids: Sequence[OutputGrid | None]) -> None:
    n = len(head.output_names)
    if len(grids) != n:
        raise NpuqError(f"representability: {len(grids)} grids given for head {head.name!r} with {n} outputs")


def _as_map(depth: Tensor) -> Tensor:
    """Depths of any shape as a [1,1,1,N] map, the layout every head's encode/decode accepts."""
    return depth.reshape(1, 1, 1, -1)


def quantize_outputs(outputs: Sequence[Tensor], grids: Sequence[OutputGrid | None]) -> tuple[Tensor, ...]:
    return tuple(x if g is None else g.quantize(x) for x, g in zip(outputs, grids, strict=True))


def quantized_depth(head, depth: Tensor, grids: Sequence[OutputGrid | None]) -> Tensor:
    """``decode(Q(encode(depth)))``: the depth a perfect network would report after output quantization."""
    _check_grids(head, grids)
    with torch.no_grad():
        return head.decode(quantize_outputs(head.encode(depth), grids))


def reachable_levels(grid: OutputGrid, lo: float, hi: float) -> Tensor:
    """The integer levels that values in [lo, hi] round to, ascending (float tensor)."""
    ends = grid.level_of(torch.tensor([lo, hi], dtype=torch.float64))
    return torch.arange(int(ends[0]), int(ends[1]) + 1, dtype=torch.float64)


def representable_depths(head, grid: OutputGrid) -> Tensor:
    """Ascending, distinct depths (m) that a one-output head can report through ``grid``.

    Only levels reachable from the head's output range count (a sigmoid never goes negative, so a
    signed grid over [0, 1] uses only its non-negative half).
    """
    if len(head.output_names) != 1:
        raise NpuqError(f"representable_depths: head {head.name!r} has {len(head.output_names)} outputs; "
                        "use depth_step_curve for multi-output heads")
    lo, hi = head.output_ranges()[0]
    values = grid.value_of(reachable_levels(grid, lo, hi)).float()
    with torch.no_grad():
        depths = head.decode((_as_map(values),)).flatten().double()
    return torch.unique(depths[torch.isfinite(depths)])


def _step_of_output(head, exact: tuple[Tensor, ...], index: int, grid: OutputGrid) -> Tensor:
    """|decode(level below) - decode(level above)| of output ``index``, the other outputs left exact."""
    u = exact[index].double() / grid.scale + grid.zero_point
    below = torch.clamp(torch.floor(u), grid.grid.qmin, grid.grid.qmax)
    above = torch.clamp(below + 1, grid.grid.qmin, grid.grid.qmax)
    depths = []
    for level in (below, above):
        outs = list(exact)
        outs[index] = grid.value_of(level).to(exact[index].dtype)
        depths.append(head.decode(tuple(outs)))
    step = (depths[1] - depths[0]).abs().double()
    inside = (exact[index] >= grid.lo) & (exact[index] <= grid.hi) & (above > below)
    return torch.where(inside, step, torch.full_like(step, math.nan))


def steps_at(head, depth: Tensor, grids: Sequence[OutputGrid | None]) -> Tensor:
    """The resolution (m) at each depth: the gap between the two representable depths that bracket it.

    For several outputs, the largest such gap over the outputs, each moved one level with the others
    exact. NaN where an output value lies outside its grid (clipped: the error there is clipping, not
    rounding); 0 when no output is quantized.
    """
    _check_grids(head, grids)
    with torch.no_grad():
        exact = head.encode(_as_map(depth.float()))
        steps = [_step_of_output(head, exact, i, g).flatten() for i, g in enumerate(grids) if g is not None]
    return torch.stack(steps).amax(0) if steps else torch.zeros(depth.numel(), dtype=torch.float64)


def depth_step_curve(head, grids: Sequence[OutputGrid | None], n: int = STEP_CURVE_POINTS) -> dict[str, list]:
    """Resolution across the head's depth range, on ``n`` log-spaced depths.

    ``step_m``: see ``steps_at``; ``quantized_m``: what each depth becomes after output quantization;
    ``rel_error``: its relative error.
    """
    depth = torch.logspace(math.log10(head.min_depth), math.log10(head.max_depth), n, dtype=torch.float64)
    step = steps_at(head, depth, grids)
    q = quantized_depth(head, _as_map(depth.float()), grids).flatten().double()
    return {"depth_m": depth.tolist(), "step_m": step.tolist(), "rel_step": (step / depth).tolist(),
            "quantized_m": q.tolist(), "rel_error": ((q - depth).abs() / depth).tolist()}


def _gt_maps(source: Any) -> Iterable[Tensor]:
    """GT depth maps [1,H,W] from a DepthDataset, a [N,1,H,W] tensor, or an iterable of tensors."""
    if isinstance(source, Tensor):
        yield from (t.reshape(1, *t.shape[-2:]) for t in source.reshape(-1, *source.shape[-2:]))
        return
    if hasattr(source, "__getitem__") and hasattr(source, "__len__") and not isinstance(source, list | tuple):
        for i in range(len(source)):
            item = source[i]
            yield item["depth"] if isinstance(item, dict) else item
        return
    for item in source:
        yield item["depth"] if isinstance(item, dict) else item


def floor_scenarios(head, scenarios: Sequence[GridScenario], gt_source: Any, metric_cfg: MetricConfig,
                    bins: int = HIST_BINS) -> dict[str, Any]:
    """The GT quantization floor of every scenario, plus a histogram of valid GT depths, in one data pass.

    Returns ``{"floors": {label: metrics}, "gt_histogram": {"edges_m", "counts"}}``.
    """
    for sc in scenarios:
        _check_grids(head, sc.grids)
    accs = {sc.label: MetricAccumulator(metric_cfg) for sc in scenarios}
    edges = np.geomspace(max(metric_cfg.min_depth, head.min_depth), metric_cfg.max_depth, bins + 1)
    counts = np.zeros(bins, dtype=np.int64)
    for gt in _gt_maps(gt_source):
        gt = gt.float().reshape(1, *gt.shape[-2:])
        counts += np.histogram(gt[0][valid_mask(gt[0], metric_cfg)].double().numpy(), edges)[0]
        for sc in scenarios:
            accs[sc.label].add_image(quantized_depth(head, gt.unsqueeze(0), sc.grids)[0], gt)
    floors = {label: acc.result() for label, acc in accs.items()}
    if any(f["n_images"] == 0 for f in floors.values()):
        raise NpuqError(f"ground truth: no frame has a pixel inside ({metric_cfg.min_depth}, "
                        f"{metric_cfg.max_depth}) m")
    return {"floors": floors, "gt_histogram": {"edges_m": edges.tolist(), "counts": counts.tolist()}}


def gt_quantization_floor(head, grids: OutputGrid | Sequence[OutputGrid | None], gt_source: Any,
                          metric_cfg: MetricConfig) -> dict[str, float | int]:
    """Metrics of ``decode(Q(encode(gt)))`` against ``gt``: the abs_rel floor the output quantizer imposes.

    ``grids``: one OutputGrid per head output (a bare OutputGrid for a one-output head).
    ``gt_source``: a DepthDataset, a [N,1,H,W] tensor, or an iterable of [1,H,W] depth maps (metres).
    """
    grids = (grids,) if isinstance(grids, OutputGrid) else tuple(grids)
    result = floor_scenarios(head, [GridScenario("floor", grids)], gt_source, metric_cfg)
    return result["floors"]["floor"]


def scenario_summary(head, scenario: GridScenario, probe_depths: Sequence[float]) -> dict[str, Any]:
    """JSON-ready description of one scenario: grids, representable depths, step curve, probe steps."""
    summary: dict[str, Any] = {
        "label": scenario.label,
        "grids": [None if g is None else g.to_dict() for g in scenario.grids],
        "step_curve": depth_step_curve(head, scenario.grids),
    }
    if len(scenario.grids) == 1 and scenario.grids[0] is not None:
        depths = representable_depths(head, scenario.grids[0])
        summary.update(n_representable=len(depths), representable_depths_m=depths.tolist(),
                       nearest_m=float(depths[0]), farthest_m=float(depths[-1]))
    probes = torch.tensor(probe_depths, dtype=torch.float64).clamp(head.min_depth, head.max_depth)
    summary["step_at"] = [{"depth_m": float(d), "step_m": float(s), "rel_step": float(s / d)}
                          for d, s in zip(probes, steps_at(head, probes, scenario.grids), strict=True)]
    return summary


def analyze_representability(head, scenarios: Sequence[GridScenario], gt_source: Any,
                             metric_cfg: MetricConfig,
                             probe_depths: Sequence[float] = (0.5, 1.0, 2.0, 5.0, 10.0)) -> dict[str, Any]:
    """Everything section (c) of the analysis report shows, for each scenario.

    Returns ``{"head", "min_depth", "max_depth", "scenarios": [summary + "floor"], "gt_histogram"}``.
    """
    floors = floor_scenarios(head, scenarios, gt_source, metric_cfg)
    out = []
    for sc in scenarios:
        summary = scenario_summary(head, sc, probe_depths)
        summary["floor"] = floors["floors"][sc.label]
        out.append(summary)
    return {"head": head.name, "output_names": list(head.output_names), "min_depth": head.min_depth,
            "max_depth": head.max_depth, "scenarios": out, "gt_histogram": floors["gt_histogram"]}


def default_scenarios(head, sim=None, act_cfg: TensorQuantConfig | None = None) -> list[GridScenario]:
    """The sim's calibrated output grids (when it quantizes the output) and the full-range grid."""
    scenarios = []
    if sim is not None:
        grids = grids_from_sim(sim, len(head.output_names))
        if any(g is not None for g in grids):
            scenarios.append(GridScenario("calibrated", grids))
        if act_cfg is None:
            act_cfg = _act_cfg_of(sim)
    if act_cfg is None:
        raise NpuqError("representability: need a QuantSim or the profile's activation config")
    scenarios.append(GridScenario("full range", full_range_grids(head, act_cfg)))
    return scenarios


def _act_cfg_of(sim) -> TensorQuantConfig | None:
    profile = getattr(sim, "profile", None)
    return getattr(profile, "activations", None)


# -- int-frac: integer parts misassigned by the output grid -------------------------------------------


def _mean_error(error: Tensor, chosen: Tensor) -> tuple[float, float]:
    if not bool(chosen.any()):
        return math.nan, math.nan
    return float(error[chosen].mean()), float(error[chosen].max())


def int_frac_misassignment(head, gt: Tensor, grids: Sequence[OutputGrid | None],
                           outputs: Sequence[Tensor] | None = None, *,
                           quantized: Sequence[Tensor] | None = None) -> dict[str, float | int]:
    """How often the INT8 grid of the ``int-frac`` integer output changes the whole metres the host reads.

    ``outputs``: the head's float (integer, fraction) outputs, the same shape as ``gt`` (e.g. the float
    model's, or the QuantSim's with its output quantizers disabled); default ``head.encode(gt)``, the
    exact targets, where only a grid step near 1 or clipping can misassign. ``grids``: one per output
    (e.g. ``grids_from_sim(sim, 2)`` or ``full_range_grids``). ``quantized``: the outputs after INT8
    when they come from elsewhere (a QuantSim's, whose error also holds every earlier layer's); the
    grids then only fix the count of outputs. Pixels with finite ``gt > 0`` count.

    Returns counts and shares of valid pixels:

    - ``misassigned``: round(Q(integer)) != round(integer), the integer part the quantizer flips;
      ``misassigned_mean_error_m`` / ``_max_error_m``: |decode(Q(outputs)) - gt| on those pixels;
    - ``wrong_integer``: round(Q(integer)) != floor(gt) after quantization, and its errors likewise;
    - ``float_wrong_integer``: round(integer) != floor(gt) before quantization (the network's own
      misassignment, for comparison). Errors are NaN when no pixel is in the group.
    """
    if not hasattr(head, "integer_level") or len(head.output_names) != 2:
        raise NpuqError(f"int_frac_misassignment: head {head.name!r} is not an integer/fraction head")
    _check_grids(head, grids)
    with torch.no_grad():
        target_int = head.encode(gt)[0]
        outputs = tuple(head.encode(gt)) if outputs is None else tuple(outputs)
        quantized = quantize_outputs(outputs, grids) if quantized is None else tuple(quantized)
        if any(o.shape != gt.shape for o in (*outputs, *quantized)):
            shapes = [list(o.shape) for o in (*outputs, *quantized)]
            raise NpuqError(f"int_frac_misassignment: outputs {shapes} do not match GT {list(gt.shape)}")
        float_int, quant_int = head.integer_level(outputs[0]), head.integer_level(quantized[0])
        error = (head.decode(quantized) - gt).abs().double()
    valid = (gt > 0) & torch.isfinite(gt)
    n = int(valid.sum())
    groups = {"misassigned": quant_int != float_int, "wrong_integer": quant_int != target_int}
    result: dict[str, float | int] = {"n_pixels": n}
    for key, chosen in groups.items():
        chosen = chosen & valid
        count = int(chosen.sum())
        result[key] = count
        result[f"{key}_share"] = count / n if n else math.nan
        result[f"{key}_mean_error_m"], result[f"{key}_max_error_m"] = _mean_error(error, chosen)
    float_wrong = int(((float_int != target_int) & valid).sum())
    result["float_wrong_integer"] = float_wrong
    result["float_wrong_integer_share"] = float_wrong / n if n else math.nan
    return result


def merge_misassignment(parts: Sequence[dict[str, float | int]]) -> dict[str, float | int]:
    """Combine per-image ``int_frac_misassignment`` results: counts add, mean errors weight by count."""
    n = sum(int(p["n_pixels"]) for p in parts)
    merged: dict[str, float | int] = {"n_pixels": n, "n_images": len(parts)}
    for key in ("misassigned", "wrong_integer", "float_wrong_integer"):
        count = sum(int(p[key]) for p in parts)
        merged[key] = count
        merged[f"{key}_share"] = count / n if n else math.nan
        if key == "float_wrong_integer":
            continue
        hit = [p for p in parts if p[key]]
        merged[f"{key}_mean_error_m"] = (sum(p[f"{key}_mean_error_m"] * p[key] for p in hit) / count
                                         if count else math.nan)
        merged[f"{key}_max_error_m"] = max((p[f"{key}_max_error_m"] for p in hit), default=math.nan)
    return merged


def _as_tuple(outputs: Tensor | tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)


def _at_size(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize: an integer output keeps its values (no blend of two whole metres)."""
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="nearest")


def _run_both(model, sim, rgbs: list[Tensor]) -> list[tuple[tuple[Tensor, ...], tuple[Tensor, ...]]]:
    """(FP32 outputs, INT8-sim outputs) per frame, batched when the frames share a size."""
    batches = [torch.stack(rgbs)] if len({tuple(r.shape) for r in rgbs}) == 1 else [r[None] for r in rgbs]
    pairs = []
    for rgb in batches:
        fp32, int8 = _as_tuple(model(rgb)), _as_tuple(sim(rgb))
        pairs += [(tuple(o[i:i + 1] for o in fp32), tuple(o[i:i + 1] for o in int8)) for i in range(len(rgb))]
    return pairs


def int_frac_model_misassignment(model, sim, dataset, metric_cfg: MetricConfig,
                                 batch_size: int = 8) -> dict[str, float | int]:
    """``int_frac_misassignment`` of a whole model: the QuantSim's outputs against the float model's.

    Unlike the grid-only measure, this counts every whole metre that the simulated INT8 network reads
    differently from FP32 (``misassigned``) or from floor(GT) (``wrong_integer``), whatever layer's
    error caused it: that is what the user would see on the NPU. Outputs are resized (nearest) to the
    native GT size; only GT pixels valid under ``metric_cfg`` count. Summed over ``dataset``.
    """
    head = model.head
    if not hasattr(head, "integer_level"):
        raise NpuqError(f"int_frac_model_misassignment: head {head.name!r} has no integer output")
    if len(dataset) == 0:
        raise NpuqError(f"{getattr(dataset, 'root', 'dataset')}: no frames to analyse")
    parts = []
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            for item, (fp32, int8) in zip(items, _run_both(model, sim, [it["rgb"] for it in items]),
                                          strict=True):
                gt = item["depth"].float().reshape(1, 1, *item["depth"].shape[-2:])
                gt = torch.where(valid_mask(gt[0, 0], metric_cfg), gt, torch.zeros_like(gt))
                size = tuple(gt.shape[-2:])
                parts.append(int_frac_misassignment(
                    head, gt, (None,) * len(fp32), tuple(_at_size(o.float(), size) for o in fp32),
                    quantized=tuple(_at_size(o.float(), size) for o in int8)))
    return merge_misassignment(parts)


# -- every registered head at the profile's bit width -------------------------------------------------

PROBE_DEPTHS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
HEAD_CURVE_POINTS = 60
MAX_ENUMERATED = 1 << 21  # representable depths of a multi-output head: product of its level counts


def activation_config(profile_or_act_cfg: Any, sim=None) -> TensorQuantConfig:
    """The activation grid settings from a QuantProfile or a TensorQuantConfig (else from ``sim``)."""
    if isinstance(profile_or_act_cfg, TensorQuantConfig):
        return profile_or_act_cfg
    cfg = getattr(profile_or_act_cfg, "activations", None)
    cfg = cfg if cfg is not None else (_act_cfg_of(sim) if sim is not None else None)
    if not isinstance(cfg, TensorQuantConfig):
        raise NpuqError("representability per head: need the profile's activation config")
    return cfg


def representable_set(head, grids: Sequence[OutputGrid | None],
                      limit: int = MAX_ENUMERATED) -> Tensor | None:
    """Every depth (ascending, distinct) the head can report with each output on its grid.

    The product over outputs of their reachable levels, decoded: for a two-output head, whatever the
    network learns to put in each output, its depth is one of these. None when an output is float
    (continuous) or the product exceeds ``limit``.
    """
    _check_grids(head, grids)
    if any(g is None for g in grids):
        return None
    values = [g.value_of(reachable_levels(g, lo, hi)) for g, (lo, hi) in zip(grids, head.output_ranges(),
                                                                          strict=True)]
    if math.prod(len(v) for v in values) > limit:
        return None
    mesh = torch.meshgrid(*values, indexing="ij")
    with torch.no_grad():
        depths = head.decode(tuple(_as_map(m.reshape(-1).float()) for m in mesh)).flatten().double()
    return torch.unique(depths[torch.isfinite(depths)])


def snap_to(table: Tensor, depth: Tensor) -> Tensor:
    """Each depth replaced by the nearest entry of the ascending ``table`` (same shape and dtype)."""
    flat = depth.double().flatten()
    if len(table) == 1:
        return torch.full_like(depth, float(table[0]))
    idx = torch.searchsorted(table, flat).clamp(1, len(table) - 1)
    lower, upper = table[idx - 1], table[idx]
    picked = torch.where((flat - lower).abs() <= (upper - flat).abs(), lower, upper)
    return picked.reshape(depth.shape).to(depth.dtype)


def whole_metres(head, grid: OutputGrid | None) -> dict[str, float | int] | None:
    """For a head with an integer output: which whole metres its grid lets the host read.

    ``exact``: how many of the whole metres in the output range come back unchanged from
    ``round(Q(n))``; ``readable``: distinct whole metres any level decodes to; ``max_gap_m``: the
    largest jump between them (1 when the integer part is fine-grained enough, 2+ when a step over
    1 skips some); ``highest_m``: the largest (below the range's top when the grid is clipped).
    None for heads without an integer output or a float integer output.
    """
    if grid is None or not hasattr(head, "integer_level"):
        return None
    lo, hi = head.output_ranges()[0]
    wanted = torch.arange(math.ceil(lo), math.floor(hi) + 1, dtype=torch.float64)
    with torch.no_grad():
        exact = head.integer_level(grid.quantize(wanted)) == wanted
        readable = torch.unique(head.integer_level(grid.value_of(reachable_levels(grid, lo, hi))))
    gaps = torch.diff(readable)
    return {"whole_metres": len(wanted), "exact": int(exact.sum()), "readable": len(readable),
            "max_gap_m": float(gaps.max()) if len(gaps) else math.nan, "highest_m": float(readable.max())}


def probe_steps(head, grids: Sequence[OutputGrid | None], probe_depths: Sequence[float]) -> list[dict]:
    """Resolution at each probe depth inside the head's range, with the rounding error it allows.

    ``max_error_mm`` is half a step (a value rounds to the nearer of the two bracketing depths);
    ``typical_error_mm`` a quarter of a step, the mean absolute error of a rounding error spread
    evenly over the step. NaN where the output is clipped there.
    """
    probes = [float(d) for d in probe_depths if head.min_depth <= float(d) <= head.max_depth]
    if not probes:
        return []
    steps = steps_at(head, torch.tensor(probes, dtype=torch.float64), grids).tolist()
    return [{"depth_m": d, "step_m": s, "rel_step": s / d, "max_error_mm": 500.0 * s,
             "typical_error_mm": 250.0 * s} for d, s in zip(probes, steps, strict=True)]


def _check_probes(probe_depths: Sequence[float]) -> None:
    bad = [d for d in probe_depths if not (math.isfinite(float(d)) and float(d) > 0)]
    if bad or not probe_depths:
        raise NpuqError(f"representability per head: probe depths must be positive metres, got {bad or '[]'}")


def _grid_dicts(head, grids: Sequence[OutputGrid | None]) -> list[dict[str, Any]]:
    return [{"output": name, **({"float": True} if g is None else g.to_dict())}
            for name, g in zip(head.output_names, grids, strict=True)]


def _head_floors(entries: Sequence[tuple[Any, GridScenario, Tensor | None]], gt_source: Any,
                 metric_cfg: MetricConfig) -> list[tuple[dict, dict | None, float]]:
    """Per (head, scenario, representable set), in one data pass: the encode floor, the nearest-depth
    floor and the share of valid GT pixels outside the head's depth range (clamped, so part of the floor).
    """
    accs = [(MetricAccumulator(metric_cfg), MetricAccumulator(metric_cfg) if table is not None else None)
            for _, _, table in entries]
    outside, n_valid = [0] * len(entries), 0
    for gt in _gt_maps(gt_source):
        gt = gt.float().reshape(1, *gt.shape[-2:])
        valid = gt[0][valid_mask(gt[0], metric_cfg)]
        n_valid += valid.numel()
        for i, ((head, sc, table), (enc, near)) in enumerate(zip(entries, accs, strict=True)):
            enc.add_image(quantized_depth(head, gt.unsqueeze(0), sc.grids)[0], gt)
            if near is not None:
                near.add_image(snap_to(table, gt), gt)
            outside[i] += int(((valid < head.min_depth) | (valid > head.max_depth)).sum())
    floors = [(enc.result(), None if near is None else near.result(), out / max(n_valid, 1))
              for (enc, near), out in zip(accs, outside, strict=True)]
    if any(enc["n_images"] == 0 for enc, _, _ in floors):
        raise NpuqError(f"ground truth: no frame has a pixel inside ({metric_cfg.min_depth}, "
                        f"{metric_cfg.max_depth}) m")
    return floors


def _misassignment_note(head, model_head, measured: bool) -> str:
    if not hasattr(head, "integer_level"):
        return "no integer output"
    if model_head is None:
        return "n/a (no model)"
    if model_head.name != head.name:
        return f"n/a (model has head {model_head.name})"
    return "measured (INT8 sim vs FP32)" if measured else "not measured (needs the model and its QuantSim)"


def _head_scenarios(head, act_cfg: TensorQuantConfig, own: bool, sim) -> list[GridScenario]:
    scenarios = [GridScenario("full range", full_range_grids(head, act_cfg))]
    if own and sim is not None:
        grids = grids_from_sim(sim, len(head.output_names))
        if any(g is not None for g in grids):
            scenarios.append(GridScenario("calibrated", grids))
    return scenarios


def _heads_to_compare(model_head, depth_range: tuple[float, float] | None) -> list:
    """A fresh instance of every registered head (encode/decode need no weights), plus an unregistered
    model head; all over the model's depth range."""
    from npuq.models.heads import HEADS, build_head

    if depth_range is None:
        depth_range = (model_head.min_depth, model_head.max_depth) if model_head is not None else (0.1, 100.0)
    heads = [build_head(name, [1], *depth_range) for name in HEADS]
    if model_head is not None and model_head.name not in HEADS:
        heads.append(model_head)
    return heads


def _scenario_summary(head, sc: GridScenario, table: Tensor | None, floors: tuple[dict, dict | None, float],
                      probe_depths: Sequence[float], curve_points: int) -> dict[str, Any]:
    curve = depth_step_curve(head, sc.grids, n=curve_points)
    return {"label": sc.label, "grids": _grid_dicts(head, sc.grids),
            "probes": probe_steps(head, sc.grids, probe_depths),
            "n_representable": None if table is None else len(table),
            "floor": floors[0], "floor_nearest": floors[1], "gt_outside_range_share": floors[2],
            "whole_metres": whole_metres(head, sc.grids[0]),
            "step_curve": {"depth_m": curve["depth_m"], "step_m": curve["step_m"]}}


def compare_heads(profile_or_act_cfg: Any, gt_source: Any, metric_cfg: MetricConfig,
                  probe_depths: Sequence[float] = PROBE_DEPTHS, model_head=None, sim=None,
                  misassignment: dict[str, float | int] | None = None,
                  depth_range: tuple[float, float] | None = None,
                  curve_points: int = HEAD_CURVE_POINTS) -> list[dict[str, Any]]:
    """One row per registered head at the profile's activation grid: resolution, error, GT floor.

    Each head is built with ``build_head`` over ``depth_range`` (default: ``model_head``'s range, else
    0.1-100 m; a head may narrow it, as ``int-frac`` does to 16 m) and each of its outputs gets its
    own per-tensor grid over that output's full range, as the NPU stores dual outputs. For the
    model's own head the sim's calibrated grids are a second scenario. Per scenario:

    - ``probes``: ``probe_steps`` at the probe depths inside the head's range (``+-max_error_mm`` is
      what a "+-28 mm" claim means);
    - ``floor``: metrics of ``decode(Q(encode(gt)))`` on ``gt_source`` (the network's float targets
      rounded onto the grids); ``floor_nearest``: of gt snapped to the nearest depth in
      ``representable_set`` (what outputs trained through the quantizer could reach; for
      ``coarse-residual`` far below ``floor``, because its residual can then cancel the coarse rounding);
    - ``gt_outside_range_share``: valid GT pixels beyond the head's range (clamped: part of the floor);
    - ``whole_metres`` (integer heads) and ``step_curve`` (``depth_m``, ``step_m``) for plotting.

    ``misassignment``: ``int_frac_model_misassignment`` of the model, attached to its own head's row;
    other integer heads' rows say "n/a" rather than guess.
    """
    act_cfg = activation_config(profile_or_act_cfg, sim)
    _check_probes(probe_depths)
    heads = _heads_to_compare(model_head, depth_range)
    plan = [(head, model_head is not None and head.name == model_head.name) for head in heads]
    plan = [(head, own, _head_scenarios(head, act_cfg, own, sim)) for head, own in plan]
    entries = [(head, sc, representable_set(head, sc.grids)) for head, _, scs in plan for sc in scs]
    floors = _head_floors(entries, gt_source, metric_cfg)
    summaries = iter([_scenario_summary(head, sc, table, floor, probe_depths, curve_points)
                      for (head, sc, table), floor in zip(entries, floors, strict=True)])
    rows = []
    for head, own, scs in plan:
        measured = own and misassignment is not None and hasattr(head, "integer_level")
        rows.append({"head": head.name, "outputs": list(head.output_names), "model_head": own,
                     "min_depth": head.min_depth, "max_depth": head.max_depth,
                     "bits": act_cfg.bits, "symmetric": act_cfg.symmetric,
                     "scenarios": [next(summaries) for _ in scs],
                     "misassignment": dict(misassignment) if measured else None,
                     "misassignment_note": _misassignment_note(head, model_head, measured)})
    return rows
