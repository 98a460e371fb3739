"""Robustness matrix: each remedy's hand-off re-quantized under every calibrator variant npuq models.

    python bench/robustness.py --only 7scenes|synthetic [--rows reference,relu,leaky_relu]

A remedy counts only if it holds under every calibrator: the vendor's is unknown. Rows are remedies
applied to the reference: 7-Scenes (training frames 0-719, validation 720-799, the Baseline's 100
random calibration frames of 0-799, seed 0) or the embedded synthetic sequences (their train, val and
test parts; calibration from the train part); columns are a fresh simulated PTQ of the hand-off under
npu-default (TensorRT-style KL, bias correction on and off), ONNX Runtime's entropy, MSE, percentile
99.99, min/max and TensorRT-style KL on an asymmetric grid (npu-asym), each keeping what the hand-off
requests (its FP16 layers), scored on the test frames (7-Scenes 800-999). Remedy outputs are cached under
.npuq-cache/bench/robustness/.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from common import CACHE, RESULTS, SEVEN_SCENES, Timer, publish
from reference import RUNS, input_size, reference_checkpoint

from npuq.analysis.metrics import MetricConfig
from npuq.io import write_json
from npuq.measure import float_metrics, measure
from npuq.models.checkpoint import load_model
from npuq.quant.profile import QuantProfile, calibrator_variants, load_profile
from npuq.remedies import Context, DataRef, Handoff, apply_remedy, remedy_config
from npuq.remedies.base import json_digest
from npuq.roadmap.runner import start_handoff

RELU = ("activation", {"activation": "relu", "steps": 300, "supervised": 1.0})
LOG_DEPTH = ("head", {"head": "log-depth", "steps": 400})
ANCHORS = ("range-anchor", {})
CENTRE = ("centre-logit", {})
FP16 = ("mixed-precision", {"target": 1.05})
CALIB = ("calib-search", {})
QAF = ("qaf", {"steps": 200, "curve_every": 50})
QAF_ANCHOR = ("qaf", {**QAF[1], "anchor": 1.0})  # the recommended-qaf plan's: float prediction kept
# re-calibrated in turn by the profile's own, without bias correction and by min/max (the fine-tunes'
# worst columns): fits no single calibrator
QAF_ROTATE = ("qaf", {**QAF_ANCHOR[1], "calibrators": ["no-bias-correction", "minmax"]})
QAF_ROTATE_400 = ("qaf", {**QAF_ROTATE[1], "steps": 400, "curve_every": 100})  # recommended-ft's since 12-04
BOUNDED = ("bounded", {})  # the long-tailed blocks clamped where 1% of the calibration values saturate
DISTILL = ("distill", {"steps": 200, "curve_every": 50})
DISTILL_OUTPUT = ("distill", {**DISTILL[1], "feature_weight": 0.0})  # output KD only, no feature term
ROWS = {
    "reference": [],
    "range-anchor": [ANCHORS],
    "centre-logit": [CENTRE],
    "centre-logit+range-anchor": [CENTRE, ANCHORS],
    "calib-search": [CALIB],
    "centre-logit+calib-search": [CENTRE, CALIB],
    "bounded": [BOUNDED],
    "bounded-all": [("bounded", {"select": "all"})],
    "centre-logit+bounded": [CENTRE, BOUNDED],
    "centre-logit+bounded+range-anchor": [CENTRE, BOUNDED, ANCHORS],
    "relu": [RELU],
    "leaky_relu": [("activation", {"activation": "leaky_relu", "steps": 300, "supervised": 1.0})],
    "log-depth": [LOG_DEPTH],
    "mixed-precision": [FP16],
    "qaf": [QAF],
    "distill": [DISTILL],
    "centre-logit+qaf": [CENTRE, QAF],
    "centre-logit+range-anchor+qaf": [CENTRE, ANCHORS, QAF],
    "centre-logit+qaf-anchor": [CENTRE, QAF_ANCHOR],
    "centre-logit+range-anchor+qaf-anchor": [CENTRE, ANCHORS, QAF_ANCHOR],
    "centre-logit+qaf-rotate": [CENTRE, QAF_ROTATE],
    "centre-logit+range-anchor+qaf-rotate": [CENTRE, ANCHORS, QAF_ROTATE],
    "centre-logit+range-anchor+qaf-rotate-400": [CENTRE, ANCHORS, QAF_ROTATE_400],
    "centre-logit+distill": [CENTRE, DISTILL],
    "centre-logit+distill-output": [CENTRE, DISTILL_OUTPUT],
    "centre-logit+range-anchor+distill-output": [CENTRE, ANCHORS, DISTILL_OUTPUT],
    "centre-logit+range-anchor+distill-rotate": [CENTRE, ANCHORS, ("distill", {**DISTILL_OUTPUT[1],
                                                 "calibrators": ["no-bias-correction", "minmax"]})],
}
DEFAULT = load_profile("npu-default")


def columns(profile: QuantProfile) -> dict[str, QuantProfile]:
    """The hand-off's profile (what it requests, e.g. FP16 layers, kept) under every calibrator."""
    variants = calibrator_variants(profile)
    return {"kl/tensorrt": variants["kl/tensorrt"],
            "kl/tensorrt, no bias corr": variants["kl/tensorrt"].replace(bias_correction="off"),
            **{name: v for name, v in variants.items() if name != "kl/tensorrt"}}


COLUMNS = list(columns(DEFAULT))
SCENES = str(SEVEN_SCENES)
SYNTH = RUNS["synthetic"]["test"].removesuffix(",part=test")
DATA = {"7scenes": {"train": DataRef(SCENES, (0, 720)), "val": DataRef(SCENES, (720, 800)),
                    "calib_pool": DataRef(SCENES, (0, 800)),
                    "test": DataRef(SCENES, (800, 1000)), "metric": MetricConfig(0.1, 10.0)},
        "synthetic": {"train": DataRef(f"{SYNTH},part=train"), "val": DataRef(f"{SYNTH},part=val"),
                      "calib_pool": DataRef(f"{SYNTH},part=train"), "test": DataRef(f"{SYNTH},part=test"),
                      "metric": RUNS["synthetic"]["metric"]}}


def remedy_output(steps, start, ctx):
    """The hand-off after ``steps``, each step cached by (remedy, config, input): chains share their
    common first steps. Returns it with the seconds its steps took (when they were computed)."""
    handoff, seconds = start, 0.0
    for remedy, config in steps:
        cfg = remedy_config(remedy, config)
        key = json_digest({"remedy": remedy, "config": cfg.to_dict(), "input": handoff.digest()})[:16]
        work = CACHE / "robustness" / f"{remedy}-{key}"
        if not (work / "model.pt").exists():
            with Timer() as t:
                result = apply_remedy(handoff, cfg, dataclasses.replace(ctx, work_dir=work))
            write_json(work / "handoff.json", result.to_dict(), force=True)
            (work / "seconds.txt").write_text(f"{t.seconds:.0f}\n")
        handoff = Handoff.from_dict(json.loads((work / "handoff.json").read_text()))
        seconds += float((work / "seconds.txt").read_text())
    return handoff, seconds


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
    reference_fp32 = float_metrics(load_model(ckpt), spec["test"].open(input_size(args.only), "native"),
                                   spec["metric"])["abs_rel"]
    rows = _earlier_rows(args.only)
    for name in args.rows.split(","):
        rows = [r for r in rows if not (r["remedy"] == name and _same_reference(r, reference_fp32))]
        handoff, seconds = remedy_output(ROWS[name], start, ctx)
        row = {"remedy": name}
        for column, profile in columns(handoff.profile).items():
            score = measure(dataclasses.replace(handoff, profile=profile), spec["test"], spec["metric"],
                            reference_fp32, progress=False)
            row.setdefault("FP32 (hand-off)", score.fp32["abs_rel"])
            row[column] = score.int8["abs_rel"]
            print(f"{name} {column}: INT8 {score.int8['abs_rel']:.4f}", flush=True)
        row["remedy s"] = seconds
        row["ref FP32"] = reference_fp32
        row["FP32 change"] = row["FP32 (hand-off)"] / reference_fp32 - 1.0
        row["npu-default / ref FP32"] = row["kl/tensorrt"] / reference_fp32
        row["worst / ref FP32"] = max(row[c] for c in COLUMNS) / reference_fp32
        rows = sorted([*rows, row], key=lambda r: (list(ROWS).index(r["remedy"]), -r["ref FP32"]))
        if "curve" in handoff.notes:
            _publish_curve(args.only, name, handoff.notes["curve"], reference_fp32)
        print(f"{name}: FP32 of the hand-off {row['FP32 (hand-off)']:.4f}", flush=True)
        _publish(args.only, rows, spec, ckpt, reference_fp32)  # after every row: a partial run keeps its rows


def _publish_curve(only: str, name: str, curve: list[dict], reference_fp32: float) -> None:
    """The fine-tune's curve: a fresh PTQ of its weights every k steps, on the validation frames."""
    start = curve[0]["val_fp32"]  # step 0: the fine-tune's input
    rows = [{"step": p["step"], "val FP32 (hand-off)": p["val_fp32"], "val INT8": p["val_int8"],
             "val INT8 / step-0 val FP32": p["val_int8"] / start} for p in curve]
    publish(f"curve-{name}-{only}", f"{name} ({only}): fresh PTQ along the fine-tune, validation frames",
            rows, list(rows[0]), {"steps": ROWS[name], "validation": str(DATA[only]["val"]),
                                  "reference_fp32": round(reference_fp32, 4)})


def _same_reference(row: dict, reference_fp32: float) -> bool:
    return abs(row["ref FP32"] - reference_fp32) < 1e-6


def _earlier_rows(only: str) -> list[dict]:
    """Rows of the last runs, in ``ROWS`` order. A re-run row replaces the row of the same remedy on
    the same reference and keeps those on others: a reference retrained on another machine type is
    not bit-identical, and each row's ratios are against its own ``ref FP32``."""
    path = RESULTS / f"robustness-{only}.json"
    if not path.exists():
        return []
    earlier = json.loads(path.read_text())
    context = earlier["context"]
    last = context.get("reference_fp32 (rows run last)", context.get("reference_fp32"))
    return [{**r, "ref FP32": r.get("ref FP32", last)}
            for r in earlier["rows"] if r["remedy"] in ROWS]


def _publish(only: str, rows: list[dict], spec: dict, ckpt: str, reference_fp32: float) -> None:
    title = f"Robustness matrix ({only}): INT8 abs_rel of each hand-off under every calibrator"
    order = ["remedy", "ref FP32", "FP32 (hand-off)", *COLUMNS, "remedy s", "FP32 change",
             "npu-default / ref FP32", "worst / ref FP32"]
    publish(f"robustness-{only}", title, rows, order,
            {"reference": ckpt, "reference_fp32 (rows run last)": reference_fp32, "train": str(spec["train"]),
             "val": str(spec["val"]), "calibration": f"100 random frames of {spec['calib_pool']}, seed 0",
             "test": str(spec["test"]), "reference_train": RUNS[only]["train"].to_dict()})


if __name__ == "__main__":
    main()
