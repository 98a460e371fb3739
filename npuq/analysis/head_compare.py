"""One row of the head comparison: a float checkpoint scored in FP32 and after a fresh simulated PTQ.

``measure_head(model, profiles, calib_rgb, test, metric_cfg)`` simulates the toolchain afresh for each
profile (same calibration images for every head) and reports:

- FP32 and INT8-sim abs_rel on ``test``;
- the output-quantizer floor: abs_rel of the ground truth pushed through the head's own encode, the
  calibrated output grids of the first profile's sim, and decode (no network error at all);
- for a head with an integer output (``int-frac``): the share of output pixels whose integer part
  the INT8 model reads differently from the FP32 model, and the mean depth error of those pixels
  (against the FP32 depth), under the first profile.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from npuq.analysis.metrics import MetricConfig, evaluate
from npuq.analysis.representability import grids_from_sim, gt_quantization_floor
from npuq.pipeline import as_tuple, depth_predictor


def integer_flips(model: nn.Module, sim: nn.Module, rgb: torch.Tensor) -> dict[str, float]:
    """Share of output pixels whose integer part differs between INT8 sim and FP32, and their error."""
    head = model.head
    with torch.no_grad():
        float_out, quant_out = as_tuple(model(rgb)), as_tuple(sim(rgb))
        flipped = head.integer_level(quant_out[0]) != head.integer_level(float_out[0])
        error = (head.decode(quant_out) - head.decode(float_out)).abs()
    share = float(flipped.double().mean())
    mean_error = float(error[flipped].mean()) if bool(flipped.any()) else math.nan
    return {"integer_flip_share": share, "integer_flip_mean_error_m": mean_error}


def measure_head(model: nn.Module, profiles: Mapping[str, Any], calib_rgb: torch.Tensor,
                 test: Sequence[dict], metric_cfg: MetricConfig, flip_frames: int = 16) -> dict[str, Any]:
    """FP32 / INT8-sim abs_rel per profile, the output floor and (int heads) integer flips; see module doc."""
    from npuq.quant import simulate_ptq

    model.eval()
    head = model.head
    row: dict[str, Any] = {"head": head.name,
                           "fp32": evaluate(depth_predictor(model, head), test, metric_cfg)["abs_rel"]}
    first = None
    for name, profile in profiles.items():
        sim = simulate_ptq(model, profile, calib_rgb, progress=False)
        row[f"int8 {name}"] = evaluate(depth_predictor(sim, head), test, metric_cfg)["abs_rel"]
        first = first or sim
    grids = grids_from_sim(first, len(head.output_names))
    row["output floor"] = gt_quantization_floor(head, grids, test, metric_cfg)["abs_rel"]
    if hasattr(head, "integer_level"):
        rgb = torch.stack([item["rgb"] for item in test[:flip_frames]])
        row.update(integer_flips(model, first, rgb))
    return row
