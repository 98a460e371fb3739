"""One row of the head comparison: a float checkpoint scored in FP32 and after a fresh simulated PTQ.

``measure_head(model, profiles, calib_rgb, test, metric_cfg)`` simulates the toolchain afresh for each
profile (same calibration images for every head) and reports:

- FP32 and INT8-sim abs_rel on ``test``;
- the output-quantizer floor: abs_rel of the ground truth pushed through the head's own encode, the
  calibrated output grids of the first profile's sim, and decode (no network error at all);
- for a head with an integer output (``int-frac``), under the first profile and on the first
  ``flip_frames`` test frames (``representability.int_frac_model_misassignment``): the share of valid
  GT pixels whose whole metre the INT8 model reads differently from the FP32 model, the share where
  it differs from floor(GT), and the mean depth error of the first group.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from npuq.analysis.metrics import MetricConfig
from npuq.analysis.representability import grids_from_sim, gt_quantization_floor, int_frac_model_misassignment


def measure_head(model: nn.Module, profiles: Mapping[str, Any], calib_rgb: torch.Tensor,
                 test: Sequence[dict], metric_cfg: MetricConfig, flip_frames: int = 16) -> dict[str, Any]:
    """FP32 / INT8-sim abs_rel per profile, the output floor and (int heads) integer flips; see module doc."""
    from npuq.measure import float_metrics, fresh_ptq_metrics

    head = model.head
    row: dict[str, Any] = {"head": head.name, "fp32": float_metrics(model, test, metric_cfg)["abs_rel"]}
    first = None
    for name, profile in profiles.items():
        result = fresh_ptq_metrics(model, profile, calib_rgb, test, metric_cfg)
        row[f"int8 {name}"], sim = result.metrics["abs_rel"], result.sim
        if first is None:
            first = sim
    grids = grids_from_sim(first, len(head.output_names))
    row["output floor"] = gt_quantization_floor(head, grids, test, metric_cfg)["abs_rel"]
    if hasattr(head, "integer_level"):
        mis = int_frac_model_misassignment(model, first, test[:flip_frames], metric_cfg)
        row.update({"integer misassigned (INT8 vs FP32)": mis["misassigned_share"],
                    "misassigned mean error m": mis["misassigned_mean_error_m"],
                    "integer wrong (INT8 vs GT)": mis["wrong_integer_share"]})
    return row
