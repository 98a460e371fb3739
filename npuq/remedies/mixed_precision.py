"""``mixed-precision``: request the smallest set of FP16 layers that brings INT8 within a target of FP32.

For NPUs that run some layers in FP16. The selection (``npuq.analysis.mixed_precision``) runs on the
context's validation frames with one simulated PTQ of the hand-off; the result is the Handoff's
profile with ``fp16_layers`` set to the chosen layers (replacing any list it had). The float checkpoint
and the calibration set pass through unchanged. ``selection.json`` in the work folder keeps the
one-at-a-time sensitivities and the greedy curve.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from npuq.errors import NpuqError
from npuq.remedies.base import Context, Handoff, RemedyConfig, input_size, register_remedy

SELECTION_FILE = "selection.json"


@dataclass(frozen=True)
class MixedPrecisionConfig(RemedyConfig):
    name = "mixed-precision"
    target: float = 1.05  # INT8 / FP32 on the validation frames
    max_mac_share: float = 1.0  # the budget: FP16 share of MACs ...
    max_act_share: float = 1.0  # ... and of stored activation elements, never exceeded
    val_frames: int = 32  # evenly spaced frames of the validation data (0: all)

    def __post_init__(self) -> None:
        if self.target < 1.0:
            raise NpuqError(f"mixed-precision: target must be >= 1, got {self.target}")
        for share in (self.max_mac_share, self.max_act_share):
            if not 0.0 <= share <= 1.0:
                raise NpuqError(f"mixed-precision: budget shares must be in [0, 1], got {share}")
        if self.val_frames < 0:
            raise NpuqError(f"mixed-precision: val_frames must be >= 0, got {self.val_frames}")

    @classmethod
    def smoke(cls) -> MixedPrecisionConfig:
        return cls(val_frames=2)


@register_remedy(MixedPrecisionConfig)
def request_fp16_layers(handoff: Handoff, cfg: MixedPrecisionConfig, ctx: Context) -> Handoff:
    """Choose FP16 layers by sensitivity on validation frames; hand them over in the profile."""
    from npuq.analysis.mixed_precision import fp16_pattern, select_fp16_layers
    from npuq.io import write_json
    from npuq.models.checkpoint import load_model
    from npuq.quant import simulate_ptq

    size = input_size(handoff)
    model = load_model(handoff.checkpoint).eval()
    base = handoff.profile.replace(fp16_layers=())
    sim = simulate_ptq(model, base, handoff.calib.rgb(size), progress=ctx.progress)
    val = ctx.val.open(size, depth_at="native")
    step = max(1, len(val) // cfg.val_frames) if cfg.val_frames else 1
    items = [val[i] for i in range(0, len(val), step)][: cfg.val_frames or None]
    result = select_fp16_layers(model, sim, items, ctx.metric, cfg.target, cfg.max_mac_share,
                                cfg.max_act_share, ctx.progress)
    write_json(ctx.work_dir / SELECTION_FILE, result.to_dict())
    profile = handoff.profile.replace(fp16_layers=tuple(fp16_pattern(n) for n in result.chosen))
    notes = {"fp16_layers": list(result.chosen), "mac_share": result.mac_share,
             "act_share": result.act_share, "reached": result.reached,
             "val_fp32": result.fp32, "val_int8": result.int8, "val_mixed": result.chosen_abs_rel}
    return dataclasses.replace(handoff, profile=profile, notes=notes)
