"""``best``: try several sub-plans and keep the one with the lowest INT8 error on validation frames.

Each alternative is a list of remedy steps applied in order to the same input. Every candidate is
judged like everything else, by a fresh simulated PTQ (``npuq.measure``), but on the context's
validation frames: the test frames pick nothing.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from npuq.errors import NpuqError
from npuq.measure import measure
from npuq.remedies.base import Context, Handoff, RemedyConfig, apply_remedy, register_remedy, remedy_config


def parse_steps(steps: Any, where: str) -> list[RemedyConfig]:
    """``[{remedy: NAME, config: {...}}, ...]`` -> configs (validated)."""
    if not isinstance(steps, list) or not steps:
        raise NpuqError(f"{where}: must be a non-empty list of {{remedy, config}} steps")
    configs = []
    for i, step in enumerate(steps):
        if not isinstance(step, Mapping) or "remedy" not in step or set(step) - {"remedy", "config"}:
            raise NpuqError(f"{where}[{i}]: a step is a mapping with 'remedy' and optional 'config'")
        configs.append(remedy_config(str(step["remedy"]), step.get("config"), f"{where}[{i}]"))
    return configs


@dataclass(frozen=True)
class BestConfig(RemedyConfig):
    name = "best"
    alternatives: Mapping[str, tuple[RemedyConfig, ...]] = field(default_factory=dict)
    metric: str = "abs_rel"

    def __post_init__(self) -> None:
        if len(self.alternatives) < 1:
            raise NpuqError("best: needs at least one alternative")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "") -> BestConfig:
        data = dict(data or {})
        where = where or "remedy 'best'"
        unknown = sorted(set(data) - {"alternatives", "metric"})
        if unknown:
            raise NpuqError(f"{where}: unknown config key {unknown[0]!r} (allowed: alternatives, metric)")
        alternatives = data.get("alternatives")
        if not isinstance(alternatives, Mapping) or not alternatives:
            raise NpuqError(f"{where}: alternatives must map names to lists of steps")
        parsed = {str(name): tuple(parse_steps(steps, f"{where}: alternatives.{name}"))
                  for name, steps in alternatives.items()}
        return cls(parsed, str(data.get("metric", "abs_rel")))

    def to_dict(self) -> dict[str, Any]:
        return {"alternatives": {name: [{"remedy": c.name, "config": c.to_dict()} for c in steps]
                                 for name, steps in self.alternatives.items()}, "metric": self.metric}

    @classmethod
    def smoke(cls) -> BestConfig:
        from npuq.remedies.calibration import CalibrationConfig

        return cls({"random": (CalibrationConfig("random", 2),),
                    "diverse": (CalibrationConfig("diverse", 2),)})


@register_remedy(BestConfig)
def pick_best(handoff: Handoff, cfg: BestConfig, ctx: Context) -> Handoff:
    """Apply every alternative and keep the lowest INT8 error on the validation frames."""
    results: dict[str, tuple[Handoff, dict[str, float]]] = {}
    for name, steps in cfg.alternatives.items():
        candidate = handoff
        for j, step in enumerate(steps):
            candidate = apply_remedy(candidate, step, ctx.within(f"{name}/{j}-{step.name}"))
        score = measure(candidate, ctx.val, ctx.metric, device=ctx.device, progress=ctx.progress)
        results[name] = (candidate, {"fp32": score.fp32[cfg.metric], "int8": score.int8[cfg.metric]})
    chosen = min(results, key=lambda n: results[n][1]["int8"])
    notes = {"chosen": chosen, "validation": {n: v for n, (_, v) in results.items()},
             "val_data": str(ctx.val)}
    return dataclasses.replace(results[chosen][0], notes=notes)
