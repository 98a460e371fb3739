"""Error budget: which group of quantizers costs how much abs_rel.

For every group G the test set is evaluated twice: with only G quantized (everything else float)
and with only G float (everything else quantized). "Quantized" means as the profile configured the
quantizer (its ``enabled`` flag when the budget starts), so quantizers the profile leaves off stay
off in every run. Two reference rows go with them: FP32 (all disabled) and INT8 (all enabled).

Groups come in two partitions of the quantizers:

- by kind: ``weights`` (every weight quantizer), ``activations`` (every activation quantizer except
  the model outputs; the network-input quantizer included), ``output`` (the model-output
  quantizers);
- by stage: for DepthResNet ``stem`` (conv1/bn1/relu/maxpool, the input normalisation and the
  network-input quantizer), ``layer1``..``layer4``, ``dec4``..``dec0`` (decoder level i: upconv(i,0)
  = ``decoder.decoder.{2*(4-i)}``, upconv(i,1) = ``decoder.decoder.{2*(4-i)+1}`` and the
  upsample/concat between them), ``head`` (the head's conv and sigmoid, output quantizer excluded: it
  is the ``output`` group). Other models get one stage per top-level module.

Assignment rule for quantizers that do not sit on a module (fx function nodes: add, cat,
interpolate, the input placeholder): they join the stage of the nearest preceding quantizer in
network order that does sit on a module; with none before them, the nearest following one. In
DepthResNet this puts each decoder level's upsample and concat with the upconv(i,0) that produced
them (and that level's upconv(i,1) consumes them), each residual add with its block, and the input
quantizer and normalisation with the stem.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from torch import Tensor

from npuq.analysis.metrics import MetricConfig, evaluate
from npuq.errors import NpuqError
from npuq.progress import counter

StageRules = Sequence[tuple[str, str]]

DEPTH_RESNET_STAGES: StageRules = (
    *((f"encoder.encoder.{m}", "stem") for m in ("conv1", "bn1", "relu", "maxpool")),
    *((f"encoder.encoder.layer{n}", f"layer{n}") for n in range(1, 5)),
    *((f"decoder.decoder.{2 * (4 - i) + j}", f"dec{i}") for i in range(4, -1, -1) for j in (0, 1)),
    ("head", "head"),
    ("encoder", "stem"),  # the RGB normalisation (sub / div) when named by its module path
)

REFERENCE_ROWS = ("fp32", "int8")


@dataclass(frozen=True)
class QuantGroup:
    """A named set of activation quantizers (keys of ``sim.quantizers``) and weight quantizers."""

    name: str
    partition: str
    act: frozenset[str]
    weights: frozenset[str]


def matches(name: str, prefix: str) -> bool:
    """True when ``name`` is ``prefix`` or a submodule of it (dotted boundary: ``1`` is not ``10``)."""
    return name == prefix or name.startswith(prefix + ".")


def stage_by_rules(name: str, rules: StageRules) -> str | None:
    """The stage of the first rule whose prefix matches ``name``."""
    for prefix, stage in rules:
        if matches(name, prefix):
            return stage
    return None


def is_depth_resnet(layers: Iterable[str]) -> bool:
    """Whether quantizer layer names look like DepthResNet's (encoder.encoder.*, decoder.decoder.*)."""
    layers = list(layers)
    return all(any(matches(x, prefix) for x in layers) for prefix in ("encoder.encoder", "decoder.decoder"))


class StageAssigner:
    """Maps a quantizer's ``layer`` to a stage: DepthResNet rules, else the top-level module name.

    ``module_names`` (the float model's ``named_modules`` names) tells module layers from fx function
    nodes when the fallback applies; without it, a layer counts as a module when it holds a dot or
    names a weight-quantized module.
    """

    def __init__(self, rules: StageRules | None, module_names: Iterable[str]):
        self.rules = rules
        self.module_names = set(module_names)

    def __call__(self, layer: str) -> str | None:
        if self.rules is not None:
            return stage_by_rules(layer, self.rules)
        if layer in self.module_names or "." in layer:
            return layer.split(".")[0]
        return None


def stage_assigner(sim, module_names: Iterable[str] | None = None) -> StageAssigner:
    layers = [q.layer for q in sim.quantizers.values()] + list(sim.weight_quantizers)
    if is_depth_resnet(layers):
        return StageAssigner(DEPTH_RESNET_STAGES, ())
    names = set(module_names) if module_names is not None else set(sim.weight_quantizers)
    return StageAssigner(None, names)


def ordered_quantizers(sim) -> list[tuple[str, Any]]:
    """(key, ActQuantizer) pairs of ``sim.quantizers`` in network order."""
    return sorted(sim.quantizers.items(), key=lambda kv: kv[1].order)


def activation_stages(sim, assign: StageAssigner) -> dict[str, str]:
    """Stage of every non-output activation quantizer, with the neighbour rule for function nodes."""
    items = [(key, q) for key, q in ordered_quantizers(sim) if q.kind != "output"]
    direct = [assign(q.layer) for _, q in items]
    stages: dict[str, str] = {}
    previous = None
    for (key, _), stage in zip(items, direct, strict=True):
        previous = stage or previous
        if previous is not None:
            stages[key] = previous
    following = None
    for (key, _), stage in zip(reversed(items), reversed(direct), strict=True):
        following = stage or following
        if key not in stages and following is not None:
            stages[key] = following
    for key, _ in items:
        stages.setdefault(key, "other")
    return stages


def _stage_order(stages: Iterable[str], rules: StageRules | None) -> list[str]:
    seen = list(dict.fromkeys(stages))
    if rules is None:
        return seen
    ranked = list(dict.fromkeys(stage for _, stage in rules))
    return sorted(seen, key=lambda s: ranked.index(s) if s in ranked else len(ranked))


def kind_groups(sim) -> list[QuantGroup]:
    """``weights``, ``activations`` (outputs excluded) and ``output``; empty groups are left out."""
    act = [k for k, q in sim.quantizers.items() if q.kind != "output"]
    out = [k for k, q in sim.quantizers.items() if q.kind == "output"]
    groups = [QuantGroup("weights", "kind", frozenset(), frozenset(sim.weight_quantizers)),
              QuantGroup("activations", "kind", frozenset(act), frozenset()),
              QuantGroup("output", "kind", frozenset(out), frozenset())]
    return [g for g in groups if g.act or g.weights]


def stage_groups(sim, module_names: Iterable[str] | None = None) -> list[QuantGroup]:
    """One group per network stage, each holding that stage's activation and weight quantizers."""
    assign = stage_assigner(sim, module_names)
    act_stage = activation_stages(sim, assign)
    weight_stage = {name: assign(name) or name.split(".")[0] for name in sim.weight_quantizers}
    names = _stage_order([*act_stage.values(), *weight_stage.values()], assign.rules)
    return [QuantGroup(stage, "stage",
                       frozenset(k for k, s in act_stage.items() if s == stage),
                       frozenset(k for k, s in weight_stage.items() if s == stage))
            for stage in names]


def budget_groups(sim, module_names: Iterable[str] | None = None) -> list[QuantGroup]:
    """Both partitions: by kind (weights, activations, output) then by stage."""
    return kind_groups(sim) + stage_groups(sim, module_names)


def enabled_state(sim) -> tuple[dict[str, bool], dict[str, bool]]:
    """The current ``enabled`` flag of every activation and weight quantizer."""
    return ({k: bool(q.enabled) for k, q in sim.quantizers.items()},
            {k: bool(q.enabled) for k, q in sim.weight_quantizers.items()})


def apply_state(sim, act: dict[str, bool], weights: dict[str, bool]) -> None:
    for key, flag in act.items():
        sim.quantizers[key].enabled = flag
    for key, flag in weights.items():
        sim.weight_quantizers[key].enabled = flag


@contextmanager
def only_quantizing(sim, act: Iterable[str] | None, weights: Iterable[str] | None,
                    invert: bool = False) -> Iterator[None]:
    """Within the block, quantize only the named quantizers (None = all) as configured; restore after.

    ``invert=True`` quantizes everything except the named ones. Quantizers disabled when the block
    starts stay disabled.
    """
    base_act, base_w = enabled_state(sim)
    act = set(base_act) if act is None else set(act)
    weights = set(base_w) if weights is None else set(weights)
    try:
        apply_state(sim, {k: on and ((k in act) != invert) for k, on in base_act.items()},
                    {k: on and ((k in weights) != invert) for k, on in base_w.items()})
        yield
    finally:
        apply_state(sim, base_act, base_w)


def _check_groups(sim, groups: Sequence[QuantGroup]) -> None:
    for g in groups:
        unknown = sorted((g.act - set(sim.quantizers)) | (g.weights - set(sim.weight_quantizers)))
        if unknown:
            raise NpuqError(f"error budget: group {g.name!r} names unknown quantizers {unknown[:3]}")


def error_budget(sim, predict_depth_from_sim: Callable[[Tensor], Tensor], dataset, metric_cfg: MetricConfig,
                 groups: Sequence[QuantGroup] | None = None, batch_size: int = 8,
                 progress: bool = False) -> list[dict[str, Any]]:
    """abs_rel with only each group quantized and with only it float, plus FP32 and INT8 rows.

    ``predict_depth_from_sim(rgb)`` must run ``sim`` (whose quantizers are toggled here) and decode
    to metres. Returns the reference rows ``fp32`` and ``int8`` (``{"group", "partition":
    "reference", "abs_rel", "metrics"}``) and one row per group: ``{"group", "partition", "n_act",
    "n_weight", "abs_rel_only_enabled", "abs_rel_only_disabled", "cost", "recovery",
    "only_enabled", "only_disabled"}`` where ``cost`` = only-enabled minus FP32 abs_rel and
    ``recovery`` = INT8 minus only-disabled abs_rel.
    """
    groups = list(groups) if groups is not None else budget_groups(sim)
    _check_groups(sim, groups)
    runs = [("fp32", (set(), set()), False), ("int8", (None, None), False)]
    for g in groups:
        runs += [(f"{g.name}:on", (g.act, g.weights), False), (f"{g.name}:off", (g.act, g.weights), True)]
    results: dict[str, dict[str, Any]] = {}
    with _runs_bar(progress, len(runs)) as advance:
        for label, (act, weights), invert in runs:
            with only_quantizing(sim, act, weights, invert):
                results[label] = evaluate(predict_depth_from_sim, dataset, metric_cfg, batch_size=batch_size)
            advance(label)
    return _budget_rows(groups, results)


def _budget_rows(groups: Sequence[QuantGroup], results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    fp32, int8 = results["fp32"]["abs_rel"], results["int8"]["abs_rel"]
    rows: list[dict[str, Any]] = [
        {"group": "fp32", "partition": "reference", "description": "all quantizers disabled",
         "abs_rel": fp32, "metrics": results["fp32"]},
        {"group": "int8", "partition": "reference", "description": "all quantizers enabled",
         "abs_rel": int8, "metrics": results["int8"]},
    ]
    for g in groups:
        on, off = results[f"{g.name}:on"], results[f"{g.name}:off"]
        rows.append({"group": g.name, "partition": g.partition,
                     "n_act": len(g.act), "n_weight": len(g.weights),
                     "abs_rel_only_enabled": on["abs_rel"], "abs_rel_only_disabled": off["abs_rel"],
                     "cost": on["abs_rel"] - fp32, "recovery": int8 - off["abs_rel"],
                     "only_enabled": on, "only_disabled": off})
    return rows


@contextmanager
def _runs_bar(enabled: bool, total: int) -> Iterator[Callable[[str], None]]:
    with counter(enabled, total, "error budget") as advance:
        yield lambda label: advance()
