"""Robustness matrix: each remedy's hand-off re-quantized under every calibrator variant npuq models.

    python bench/robustness.py --only 7scenes [--rows reference,relu,leaky_relu]

A remedy counts only if it holds under every calibrator: the vendor's is unknown. Rows are remedies
applied to the 7-Scenes reference (training frames 0-719, validation 720-799, the Baseline's 100
random calibration frames of 0-799, seed 0); columns are a fresh simulated PTQ of the hand-off under
npu-default (TensorRT-style KL, bias correction on and off), ONNX Runtime's entropy, MSE, percentile
99.99, min/max and npu-asym, scored on test frames 800-999. Remedy outputs are cached under
.npuq-cache/bench/robustness/.
"""

from __future__ import annotations

import argparse
import dataclasses

from common import CACHE, SEVEN_SCENES, Timer, publish
from reference import RUNS, reference_checkpoint

from npuq.analysis.metrics import MetricConfig
from npuq.measure import measure
from npuq.quant.profile import load_profile
from npuq.remedies import Context, DataRef, apply_remedy, remedy_config
from npuq.remedies.base import json_digest
from npuq.roadmap.runner import start_handoff

ROWS = {
    "reference": [],
    "relu": [("activation", {"activation": "relu", "steps": 300, "supervised": 1.0})],
    "leaky_relu": [("activation", {"activation": "leaky_relu", "steps": 300, "supervised": 1.0})],
    "qaf": [("qaf", {"steps": 200})],
}
DEFAULT = load_profile("npu-default")
COLUMNS = {
    "kl/tensorrt": DEFAULT,
    "kl/tensorrt, no bias corr": DEFAULT.replace(bias_correction="off"),
    "kl/onnxruntime": load_profile("npu-ort-entropy"),
    "mse": DEFAULT.replace(activations={"range": "mse"}),
    "percentile 99.99": DEFAULT.replace(activations={"range": "percentile"}),
    "minmax": DEFAULT.replace(activations={"range": "minmax"}),
    "npu-asym": load_profile("npu-asym"),
}
SCENES = str(SEVEN_SCENES)
DATA = {"7scenes": {"train": DataRef(SCENES, (0, 720)), "val": DataRef(SCENES, (720, 800)),
                    "calib_pool": DataRef(str(SEVEN_SCENES), (0, 800)),
                    "test": DataRef(str(SEVEN_SCENES), (800, 1000)), "metric": MetricConfig(0.1, 10.0)}}


def remedy_output(name: str, steps, start, ctx):
    handoff = start
    for remedy, config in steps:
        cfg = remedy_config(remedy, config)
        key = json_digest({"remedy": remedy, "config": cfg.to_dict(), "input": handoff.digest()})[:16]
        work = CACHE / "robustness" / f"{name}-{remedy}-{key}"
        if (work / "model.pt").exists():
            handoff = dataclasses.replace(handoff, checkpoint=work / "model.pt")
            continue
        with Timer() as t:
            handoff = apply_remedy(handoff, cfg, dataclasses.replace(ctx, work_dir=work))
        (work / "seconds.txt").write_text(f"{t.seconds:.0f}\n")
    return handoff


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(DATA), default="7scenes")
    parser.add_argument("--rows", default=",".join(ROWS))
    args = parser.parse_args()
    spec = DATA[args.only]
    ckpt, _ = reference_checkpoint(args.only)
    ctx = Context(spec["train"], spec["val"], CACHE / "robustness", spec["metric"], seed=0, progress=True)
    start = start_handoff(ckpt, dataclasses.replace(ctx, train=spec["calib_pool"]), DEFAULT, 100,
                          CACHE / "robustness")
    reference_fp32 = None
    rows = []
    for name in args.rows.split(","):
        handoff = remedy_output(name, ROWS[name], start, ctx)
        row = {"remedy": name}
        for column, profile in COLUMNS.items():
            score = measure(dataclasses.replace(handoff, profile=profile), spec["test"], spec["metric"],
                            reference_fp32, progress=False)
            reference_fp32 = reference_fp32 or score.fp32["abs_rel"]
            row.setdefault("FP32 (hand-off)", score.fp32["abs_rel"])
            row[column] = score.int8["abs_rel"]
            print(f"{name} {column}: INT8 {score.int8['abs_rel']:.4f}", flush=True)
        seconds = [float((p / "seconds.txt").read_text()) for p in (CACHE / "robustness").glob(f"{name}-*")
                   if (p / "seconds.txt").exists()]
        row["remedy s"] = sum(seconds) if seconds else 0.0
        row["worst / ref FP32"] = max(row[c] for c in COLUMNS) / reference_fp32
        rows.append(row)
        print(f"{name}: FP32 of the hand-off {row['FP32 (hand-off)']:.4f}", flush=True)
        _publish(args.only, rows, spec, ckpt, reference_fp32)  # after every row: a partial run keeps its rows


def _publish(only: str, rows: list[dict], spec: dict, ckpt: str, reference_fp32: float) -> None:
    title = f"Robustness matrix ({only}): INT8 abs_rel of each hand-off under every calibrator"
    publish(f"robustness-{only}", title, rows, list(rows[0]),
            {"reference": ckpt, "reference_fp32": reference_fp32, "train": str(spec["train"]),
             "val": str(spec["val"]), "calibration": f"100 random frames of {spec['calib_pool']}, seed 0",
             "test": str(spec["test"]), "reference_train": RUNS[only]["train"].to_dict()})


if __name__ == "__main__":
    main()
