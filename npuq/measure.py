"""``measure``: the one code path that turns a hand-off into an INT8 figure.

A fresh ``simulate_ptq`` of the hand-off's float checkpoint with its calibration set under its profile,
scored on test frames, next to the FP32 score of the same checkpoint. The CLI, the demo, the roadmap
runner, ``best`` (on validation frames) and ``bench/`` all call it.

It lives at the package top (not in ``roadmap/``) because the ``best`` remedy measures its
alternatives too, and remedies must not import the runner that imports them.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from npuq.analysis.metrics import MetricConfig, evaluate
from npuq.device import resolve_device
from npuq.quant import QuantSim, simulate_ptq
from npuq.quant.profile import QuantProfile

if TYPE_CHECKING:
    from npuq.remedies.base import Context, DataRef, Handoff


@dataclass(frozen=True)
class Score:
    """FP32 and INT8-sim metrics of one hand-off on one test set."""

    fp32: dict[str, float]
    int8: dict[str, float]
    reference_fp32: float | None = None  # abs_rel of the untouched reference on the same frames
    metric: str = "abs_rel"

    @property
    def int8_over_fp32(self) -> float:
        """INT8 over the hand-off's own FP32."""
        return self.int8[self.metric] / self.fp32[self.metric]

    @property
    def int8_over_reference(self) -> float | None:
        """INT8 over the reference FP32: the headline ratio."""
        return None if self.reference_fp32 is None else self.int8[self.metric] / self.reference_fp32

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "fp32": self.fp32, "int8": self.int8,
                "reference_fp32": self.reference_fp32, "int8_over_fp32": self.int8_over_fp32,
                "int8_over_reference": self.int8_over_reference}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Score:
        return cls(data["fp32"], data["int8"], data.get("reference_fp32"), data.get("metric", "abs_rel"))


def _predictor(net: torch.nn.Module, head: torch.nn.Module, device: torch.device):
    from npuq.models.heads import as_tuple

    def predict(rgb: torch.Tensor) -> torch.Tensor:
        return head.decode(as_tuple(net(rgb.to(device)))).cpu()

    return predict


@dataclass(frozen=True)
class PtqResult:
    metrics: dict[str, float]
    sim: QuantSim
    ptq_seconds: float  # simulate_ptq alone, without the scoring


def float_metrics(model: torch.nn.Module, test: Any, metric: MetricConfig, device: str = "cpu",
                  progress: bool = False, batch_size: int = 8) -> dict[str, float]:
    """Metrics of the float model on ``test`` (a dataset or a list of its items)."""
    dev = resolve_device(device)
    model = model.eval().to(dev)
    return _numbers(evaluate(_predictor(model, model.head, dev), test, metric, batch_size, progress))


def fresh_ptq_metrics(model: torch.nn.Module, profile: QuantProfile, calib_rgb: torch.Tensor, test: Any,
                      metric: MetricConfig, device: str = "cpu", progress: bool = False,
                      batch_size: int = 8) -> PtqResult:
    """A fresh ``simulate_ptq`` of ``model`` with ``calib_rgb``, scored on ``test``."""
    dev = resolve_device(device)
    model = model.eval().to(dev)
    started = time.perf_counter()
    sim = simulate_ptq(model, profile, calib_rgb.to(dev), progress=progress)
    seconds = time.perf_counter() - started
    metrics = evaluate(_predictor(sim, model.head, dev), test, metric, batch_size, progress)
    return PtqResult(_numbers(metrics), sim, seconds)


def measure(handoff: Handoff, test: DataRef, metric: MetricConfig | None = None,
            reference_fp32: float | None = None, device: str = "cpu", progress: bool = False,
            batch_size: int = 8) -> Score:
    """Fresh ``simulate_ptq`` of ``handoff``, then FP32 and INT8 metrics on ``test`` (native depth)."""
    from npuq.models.checkpoint import load_model
    from npuq.pipeline import training_size

    metric = metric or MetricConfig()
    model = load_model(handoff.checkpoint)
    size = training_size(handoff.checkpoint)
    dataset = test.open(size, depth_at="native")
    fp32 = float_metrics(model, dataset, metric, device, progress, batch_size)
    int8 = fresh_ptq_metrics(model, handoff.profile, handoff.calib.rgb(size), dataset, metric, device,
                             progress, batch_size)
    return Score(fp32, int8.metrics, reference_fp32)


def fresh_ptq_curve(handoff: Handoff, ctx: Context) -> tuple[list[dict[str, float]],
                                                            Callable[[int, torch.nn.Module], None]]:
    """The points and the recorder for a fine-tune's ``on_curve(step, model)``: the float model's and
    a fresh PTQ's abs_rel (the hand-off's profile and calibration set) on the validation frames."""
    from npuq.pipeline import training_size

    size = training_size(handoff.checkpoint)
    val = ctx.val.open(size, "native")
    calib = handoff.calib.rgb(size)
    points: list[dict[str, float]] = []

    def record(step: int, model: torch.nn.Module) -> None:
        fp32 = float_metrics(model, val, ctx.metric, ctx.device)["abs_rel"]
        int8 = fresh_ptq_metrics(model, handoff.profile, calib, val, ctx.metric, ctx.device)
        points.append({"step": step, "val_fp32": fp32, "val_int8": int8.metrics["abs_rel"]})

    return points, record


def _numbers(result: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in result.items() if isinstance(v, int | float) and not isinstance(v, bool)}
