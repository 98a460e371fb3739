"""Weight normalization before/after (Phase 1): per-layer weight SQNR, INT8 abs_rel with CLE on/off, FP32.

    python bench/weight_norm.py [--only synthetic|7scenes] [--steps 300] [--strengths 0.05,0.5]

From each FP32 reference (bench/reference.py): a weight-norm fine-tune (npuq.train.weight_norm) and, as
a control, the same fine-tune with strength 0 (so the effect of the penalty is separated from the
effect of extra training). Each float checkpoint is scored FP32 and after a fresh simulate_ptq under
npu-default with CLE on and off, with the same 100 random calibration frames (seed 0) as the baseline.
"""

from __future__ import annotations

import argparse

from common import CACHE, publish
from reference import RUNS, input_size, reference_checkpoint, test_description

from npuq.data.calib import random_calibration
from npuq.data.datasets import open_dataset
from npuq.measure import float_metrics, fresh_ptq_metrics
from npuq.models.checkpoint import load_checkpoint_dict, load_model
from npuq.quant.profile import load_profile
from npuq.train.weight_norm import (
    WeightNormConfig,
    finetune_weight_norm,
    per_tensor_weight_sqnr,
    summarize,
    weight_range_imbalance,
)

N_CALIB, SEED, PROFILE = 100, 0, "npu-default"


def finetuned(name: str, reference: str, cfg: WeightNormConfig, label: str) -> str:
    path = CACHE / "weight-norm" / f"{name}-{label}.pt"
    if path.exists() and load_checkpoint_dict(path)["extra"]["weight_norm"]["config"] == cfg.to_dict():
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tcfg = RUNS[name]["train"]
    return str(finetune_weight_norm(reference, tcfg.data, cfg, path, progress=True, force=True))


def score(model, calib, test, metric) -> dict:
    row = {"FP32": float_metrics(model, test, metric)["abs_rel"]}
    for cle in (True, False):
        result = fresh_ptq_metrics(model, load_profile(PROFILE).replace(cle=cle), calib, test, metric)
        row[f"INT8 CLE {'on' if cle else 'off'}"] = result.metrics["abs_rel"]
    sqnr, imbalance = per_tensor_weight_sqnr(model), weight_range_imbalance(model)
    sqnr_summary = summarize(sqnr)
    row["weight SQNR mean dB"], row["weight SQNR min dB"] = sqnr_summary["mean"], sqnr_summary["min"]
    row["imbalance mean dB"] = summarize(imbalance)["mean"]
    return row, sqnr


def run_dataset(name: str, steps: int, strengths: list[float]) -> tuple[list[dict], list[dict]]:
    run = RUNS[name]
    reference, _ = reference_checkpoint(name)
    tcfg = run["train"]
    frames = slice(*tcfg.frames) if tcfg.frames else None
    calib = random_calibration(open_dataset(tcfg.data, size=input_size(name), frames=frames), N_CALIB, SEED)
    test_set = open_dataset(run["test"], size=input_size(name), depth_at="native", frames=run["test_frames"])
    test = [test_set[i] for i in range(len(test_set))]
    variants = {"reference": reference}
    for s in [0.0, *strengths]:
        label = "control (strength 0)" if s == 0 else f"weight-norm (strength {s})"
        cfg = WeightNormConfig(strength=s, steps=steps, frames=tcfg.frames, seed=SEED)
        variants[label] = finetuned(name, reference, cfg, f"s{s}")
    rows, sqnrs = [], {}
    for label, path in variants.items():
        row, sqnrs[label] = score(load_model(path).eval(), calib, test, run["metric"])
        rows.append({"dataset": name, "model": label, **row})
        print(rows[-1], flush=True)
    fp32_ref = rows[0]["FP32"]
    for row in rows:
        row["FP32 change"] = f"{100 * (row['FP32'] / fp32_ref - 1):+.2f}%"
    labels = list(variants)
    layers = [{"dataset": name, "layer": layer, **{f"SQNR dB: {lab}": sqnrs[lab][layer] for lab in labels}}
              for layer in sqnrs["reference"]]
    return rows, layers


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--strengths", default=f"{WeightNormConfig().strength},0.5")
    args = parser.parse_args()
    strengths = [float(v) for v in args.strengths.split(",")]
    for name in [args.only] if args.only else list(RUNS):
        rows, layers = run_dataset(name, args.steps, strengths)
        context = {"seed": SEED, "profile": PROFILE, "steps": args.steps, "strengths": strengths,
                   "calibration": f"{N_CALIB} random frames of the training pool (seed {SEED})",
                   "test data": test_description(RUNS[name])}
        columns = ["model", "FP32", "FP32 change", "INT8 CLE on", "INT8 CLE off", "weight SQNR mean dB",
                   "weight SQNR min dB", "imbalance mean dB"]
        publish(f"weight-norm-{name}", f"Weight normalization before/after, {name} (abs_rel; per-tensor "
                "weight SQNR of BN-folded weights)", rows, columns, context)
        publish(f"weight-norm-layers-{name}", f"Per-layer per-tensor weight SQNR (dB), {name}", layers,
                list(layers[0])[1:], context)


if __name__ == "__main__":
    main()
