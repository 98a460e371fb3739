"""``qaf``: quantization-aware fine-tuning through the simulated toolchain (the user's Path C).

Fake quantization of the hand-off's profile with straight-through gradients, through the decoder and
the head (``npuq.train.qaf_head``: the BN-folded encoder has no one-to-one float counterpart and stays
frozen). Every ``recalibrate_every`` steps the thresholds, weight scales and bias correction are
recomputed the way ``simulate_ptq`` would, so the model moves towards a fixed point of the toolchain
instead of fitting thresholds the vendor recomputes anyway. The float weights are handed over again.

Loss: the head's own loss on the simulated INT8 outputs, plus optionally ``anchor`` x the L1 between the
float model's own log depth (the same sim with quantization off) and the unchanged reference's: it
keeps the hand-off's FP32 from drifting while the INT8 model learns to cancel the clipping.

``calibrators``: re-calibrations cycle through the profile's own and these (e.g. "no-bias-correction",
"minmax"). Re-calibrating with the profile's alone fits its thresholds and bias correction: on both
datasets the worst matrix column of such a fine-tune is the same calibrator without bias correction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from npuq.errors import NpuqError
from npuq.measure import fresh_ptq_curve
from npuq.quant.profile import RECALIBRATION_VARIANTS
from npuq.remedies.base import Context, Handoff, RemedyConfig, input_size, register_remedy


@dataclass(frozen=True)
class QafConfig(RemedyConfig):
    name = "qaf"
    steps: int = 200
    lr: float = 2e-5
    batch_size: int = 4
    recalibrate_every: int | None = 25
    # a fresh PTQ on the validation frames at step 0, every k steps and at the end: notes["curve"] (0: off)
    curve_every: int = 0
    prefixes: tuple[str, ...] = ("decoder.", "head.")  # which float parameters train
    anchor: float = 0.0  # weight of the float-prediction anchor to the reference (0: off)
    # re-calibrations cycle through the profile's own calibrator, then these (RECALIBRATION_VARIANTS),
    # so the weights fit no single calibrator's thresholds; empty: the profile's own only
    calibrators: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.steps <= 0 or self.lr <= 0 or self.batch_size <= 0:
            raise NpuqError("qaf: steps, lr and batch_size must be positive")
        if self.recalibrate_every is not None and self.recalibrate_every <= 0:
            raise NpuqError("qaf: recalibrate_every must be positive or null")
        if self.curve_every < 0:
            raise NpuqError("qaf: curve_every must be >= 0")
        if self.anchor < 0:
            raise NpuqError("qaf: anchor must be >= 0")
        check_calibrators("qaf", self.calibrators, self.recalibrate_every)

    @classmethod
    def smoke(cls) -> QafConfig:
        return cls(steps=2, batch_size=2, recalibrate_every=1, anchor=0.5)


def check_calibrators(remedy: str, names: tuple[str, ...], recalibrate_every: int | None) -> None:
    unknown = [n for n in names if n not in RECALIBRATION_VARIANTS]
    if unknown:
        raise NpuqError(f"{remedy}: calibrators must be among {', '.join(RECALIBRATION_VARIANTS)}, "
                        f"got {unknown[0]!r}")
    if names and recalibrate_every is None:
        raise NpuqError(f"{remedy}: calibrators need recalibrate_every")


@register_remedy(QafConfig)
def finetune_through_toolchain(handoff: Handoff, cfg: QafConfig, ctx: Context) -> Handoff:
    """Fine-tune decoder and head through the simulated toolchain, re-calibrating as it goes."""
    from npuq.device import resolve_device
    from npuq.models.checkpoint import load_model
    from npuq.train import objectives
    from npuq.train.qaf_head import finetune_through_quantsim

    size = input_size(handoff)
    model = load_model(handoff.checkpoint).eval()
    out = ctx.work_dir / "qaf.pt"
    curve, record = fresh_ptq_curve(handoff, ctx) if cfg.curve_every else ([], None)
    objective_for = None
    if cfg.anchor:
        reference = load_model(handoff.checkpoint).to(resolve_device(ctx.device))
        objective_for = lambda sim: objectives.combine(  # noqa: E731
            objectives.head(model.head), objectives.float_anchor(sim, reference, model.head, cfg.anchor))
    finetune_through_quantsim(model, handoff.profile, handoff.calib.rgb(size), ctx.train.open(size),
                              steps=cfg.steps, lr=cfg.lr, seed=ctx.seed, out=out, batch_size=cfg.batch_size,
                              prefixes=cfg.prefixes, recalibrate_every=cfg.recalibrate_every, force=True,
                              progress=ctx.progress, device=ctx.device, objective_for=objective_for,
                              kind="qaf", curve_every=cfg.curve_every, on_curve=record,
                              rotate_with=cfg.calibrators)
    return dataclasses.replace(handoff, checkpoint=out, notes={"curve": curve} if curve else {})
