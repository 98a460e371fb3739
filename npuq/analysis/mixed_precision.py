"""Mixed precision by sensitivity: which layers to request in FP16 from an NPU that allows some.

A *unit* is one layer name of the simulated graph: its weights and every activation quantizer it
produces (a conv and its stored output, an ELU output, a cat). Keeping a unit in FP16 is what the
profile's ``fp16_layers`` requests. On validation frames, with the thresholds of one simulated PTQ:

1. one at a time: each unit in FP16 alone (what it buys) and each unit quantized alone with the rest
   in FP16 (what it costs);
2. greedy: add units in the order of what they buy (ties: what they cost) while the budget allows,
   until INT8 is within ``target`` x FP32; then drop every unit the target does not need;
3. the Pareto curve: INT8 abs_rel against the FP16 share of MACs and of stored activation elements
   along the greedy order.

The thresholds of the other tensors do not depend on which layers run in FP16, so one calibration
serves every candidate; the figure that counts is a fresh ``simulate_ptq`` with the chosen list.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from npuq.analysis.metrics import MetricConfig, evaluate
from npuq.errors import NpuqError
from npuq.models.heads import depth_predictor
from npuq.progress import counter
from npuq.quant import QuantSim


@dataclass(frozen=True)
class Unit:
    """One layer name: its weighted-layer MACs and stored activation elements per frame."""

    name: str
    macs: int
    act_elements: int


@dataclass(frozen=True)
class CurvePoint:
    units: tuple[str, ...]
    mac_share: float
    act_share: float
    abs_rel: float


@dataclass
class MixedPrecisionResult:
    """What the selection measured on the validation frames (``metric`` abs_rel unless told)."""

    fp32: float
    int8: float
    target: float
    chosen: tuple[str, ...]
    mac_share: float
    act_share: float
    chosen_abs_rel: float
    reached: bool
    sensitivity: list[dict[str, Any]] = field(default_factory=list)
    curve: list[CurvePoint] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"fp32": self.fp32, "int8": self.int8, "target": self.target, "chosen": list(self.chosen),
                "mac_share": self.mac_share, "act_share": self.act_share,
                "chosen_abs_rel": self.chosen_abs_rel, "reached": self.reached,
                "sensitivity": self.sensitivity,
                "curve": [{"units": list(p.units), "mac_share": p.mac_share, "act_share": p.act_share,
                           "abs_rel": p.abs_rel} for p in self.curve]}


def fp16_pattern(layer: str) -> str:
    """An ``fp16_layers`` pattern that matches exactly ``layer`` (fnmatch's specials escaped)."""
    return "".join(f"[{c}]" if c in "*?[" else c for c in layer)


def measure_units(sim: QuantSim, example: Tensor) -> list[Unit]:
    """Every unit of ``sim`` with its MACs and activation elements for one frame of ``example``'s size."""
    macs: dict[str, int] = defaultdict(int)
    elements: dict[str, int] = defaultdict(int)
    hooks = []

    def on_layer(name: str, transpose: bool):
        def hook(mod: nn.Module, inputs: tuple, output: Tensor) -> None:
            per_out = mod.weight[0].numel()
            counted = inputs[0] if transpose else output
            macs[name] += counted[0].numel() * per_out

        return hook

    def on_quantizer(layer: str):
        def hook(_mod: nn.Module, _inputs: tuple, output: Tensor) -> None:
            elements[layer] += output[0].numel()

        return hook

    for name, layer in sim.layers.items():
        transpose = layer.weight_quantizer.op == "conv_transpose"
        hooks.append(layer.register_forward_hook(on_layer(name, transpose)))
    for q in sim.quantizers.values():
        hooks.append(q.register_forward_hook(on_quantizer(q.layer)))
    try:
        with torch.no_grad():
            sim(example[:1])
    finally:
        for h in hooks:
            h.remove()
    names = list(dict.fromkeys([q.layer for q in sim.quantizers.values()] + list(sim.layers)))
    return [Unit(n, macs.get(n, 0), elements.get(n, 0)) for n in names]


def _shares(units: Sequence[Unit], chosen: set[str]) -> tuple[float, float]:
    total_macs = sum(u.macs for u in units) or 1
    total_elements = sum(u.act_elements for u in units) or 1
    return (sum(u.macs for u in units if u.name in chosen) / total_macs,
            sum(u.act_elements for u in units if u.name in chosen) / total_elements)


class _Switch:
    """Puts units in FP16 or back on the integer grid. The toolchain corrects the bias of INT8 layers
    only, so an FP16 layer drops its correction; the corrections of the other layers were measured
    with every input on the grid and stay (an approximation that the final fresh PTQ does not make)."""

    def __init__(self, sim: QuantSim):
        self.sim = sim
        self.corrections = {name: getattr(layer, "bias_correction", None)
                            for name, layer in sim.layers.items()}

    def __call__(self, fp16: set[str]) -> None:
        for q in self.sim.all_quantizers():
            if q.mode != "float":
                q.mode = "fp16" if q.layer in fp16 else "int"
        for name, layer in self.sim.layers.items():
            layer.bias_correction = None if name in fp16 else self.corrections[name]

    def restore(self) -> None:
        self(set())


def select_fp16_layers(model: nn.Module, sim: QuantSim, val: Sequence[dict], metric: MetricConfig,
                       target: float = 1.05, max_mac_share: float = 1.0, max_act_share: float = 1.0,
                       progress: bool = False) -> MixedPrecisionResult:
    """The smallest FP16 unit set (greedy, within the budget) that brings INT8 within ``target`` x FP32.

    ``sim``: a calibrated ``simulate_ptq`` of ``model`` (profile without FP16 layers); ``val``: labelled
    validation items (native depth). The budget caps the FP16 share of MACs and of activation elements.
    """
    if target < 1.0 or not 0.0 <= max_mac_share <= 1.0 or not 0.0 <= max_act_share <= 1.0:
        raise NpuqError("mixed precision: target >= 1 and budget shares in [0, 1]")
    if not val:
        raise NpuqError("mixed precision: needs validation frames")
    units = measure_units(sim, val[0]["rgb"].unsqueeze(0))
    score = _scorer(sim, model.head, val, metric)
    switch = _Switch(sim)
    with sim.preserve_state():
        try:
            with sim.quant_disabled():
                fp32 = score()
            switch(set())
            int8 = score()
            switch({u.name for u in units})
            all_fp16 = score()
            sensitivity = _one_at_a_time(switch, units, score, int8, all_fp16, progress)
            order = [row["unit"] for row in sorted(sensitivity, key=lambda r: (-r["buys"], -r["costs"]))]
            goal = target * fp32
            curve = _greedy(switch, units, order, score, int8, goal, (max_mac_share, max_act_share))
            if curve[-1].abs_rel <= goal:
                chosen, current = _prune(switch, list(curve[-1].units), goal, curve[-1].abs_rel, score)
            else:  # out of reach within the budget: the best point of the curve
                best = min(curve, key=lambda p: p.abs_rel)
                chosen, current = list(best.units), best.abs_rel
        finally:
            switch.restore()
    mac, act = _shares(units, set(chosen))
    return MixedPrecisionResult(fp32, int8, target, tuple(chosen), mac, act, current, current <= goal,
                                sensitivity, curve)


def _greedy(switch: _Switch, units: Sequence[Unit], order: Sequence[str], score: Callable[[], float],
            int8: float, goal: float, budget: tuple[float, float]) -> list[CurvePoint]:
    """Add units in ``order`` while the budget allows, until the score reaches ``goal``; the curve."""
    chosen: list[str] = []
    curve = [CurvePoint((), 0.0, 0.0, int8)]
    for name in order:
        if curve[-1].abs_rel <= goal:
            break
        mac, act = _shares(units, {*chosen, name})
        if mac > budget[0] + 1e-12 or act > budget[1] + 1e-12:
            continue
        chosen.append(name)
        switch(set(chosen))
        curve.append(CurvePoint(tuple(chosen), mac, act, score()))
    return curve


def _scorer(sim: QuantSim, head: nn.Module, val: Sequence[dict], metric: MetricConfig) -> Callable[[], float]:
    predict = depth_predictor(sim, head)

    def score() -> float:
        return float(evaluate(predict, list(val), metric)["abs_rel"])

    return score


def _one_at_a_time(switch: _Switch, units: Sequence[Unit], score: Callable[[], float], int8: float,
                   all_fp16: float, progress: bool) -> list[dict[str, Any]]:
    everything = {u.name for u in units}
    rows = []
    with counter(progress, len(units), "FP16 sensitivity") as advance:
        for u in units:
            switch({u.name})
            alone_fp16 = score()
            switch(everything - {u.name})
            alone_int8 = score()
            mac, act = _shares(units, {u.name})
            rows.append({"unit": u.name, "fp16_alone": alone_fp16, "quantized_alone": alone_int8,
                         "buys": int8 - alone_fp16, "costs": alone_int8 - all_fp16,
                         "mac_share": mac, "act_share": act})
            advance(1)
    return rows


def _prune(switch: _Switch, chosen: list[str], goal: float, current: float,
           score: Callable[[], float]) -> tuple[list[str], float]:
    """Drop, latest first, every chosen unit the target does not need."""
    kept = list(chosen)
    for name in reversed(chosen):
        trial = [n for n in kept if n != name]
        switch(set(trial))
        value = score()
        if value <= goal:
            kept, current = trial, value
    return kept, current
