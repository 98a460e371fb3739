"""Output heads on equal terms (Phase 2): sigmoid-disp, int-frac, coarse-residual, log-depth.

    python bench/heads.py [--only synthetic|7scenes] [--steps 400] [--qaf-steps 100]

Each head is fine-tuned from the FP32 reference of bench/reference.py with the same budget, data and
seed (npuq.train.head_finetune stage 1: FP32 fine-tune on the head's own loss), saved as a float
checkpoint, and scored with a FRESH simulate_ptq under npu-default and npu-asym with the same 100
random calibration frames (seed 0) as the baseline. A second row per head adds stage 2 (a fake-quant
fine-tune of the head's layers through the npu-default QuantSim) from the stage-1 checkpoint.
Checkpoints are cached under .npuq-cache/bench/heads/.
"""

from __future__ import annotations

import argparse
import dataclasses

from common import CACHE, publish
from reference import RUNS, input_size, reference_checkpoint, test_description

from npuq.analysis.head_compare import measure_head
from npuq.data.calib import random_calibration
from npuq.data.datasets import open_dataset
from npuq.models.checkpoint import load_checkpoint_dict, load_model
from npuq.quant.profile import load_profile
from npuq.train.head_finetune import HeadFinetuneConfig, config_dict, finetune_head, quantsim_stage

HEADS = ("sigmoid-disp", "int-frac", "coarse-residual", "log-depth")
PROFILES = ("npu-default", "npu-asym")
N_CALIB, SEED = 100, 0
MISASSIGNED = "integer misassigned (INT8 vs FP32)"


def head_checkpoint(name: str, cfg: HeadFinetuneConfig, reference: str, calib) -> str:
    """Stage 1 (cfg.qaf_steps == 0) from ``reference``, or stage 2 from the cached stage-1 checkpoint."""
    stage = "stage2" if cfg.qaf_steps else "stage1"
    path = CACHE / "heads" / f"{name}-{cfg.head}-{stage}.pt"
    if path.exists() and load_checkpoint_dict(path)["extra"].get("head_finetune") == config_dict(cfg):
        return str(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if cfg.qaf_steps:
        stage1 = head_checkpoint(name, dataclasses.replace(cfg, qaf_steps=0), reference, calib)
        quantsim_stage(stage1, cfg, calib, path, progress=True)
    else:
        finetune_head(reference, cfg, calib, path, force=True, progress=True)
    from npuq.io import save_torch

    ckpt = load_checkpoint_dict(path)
    ckpt["extra"]["head_finetune"] = config_dict(cfg)
    save_torch(path, ckpt)
    return str(path)


def run_dataset(name: str, steps: int, qaf_steps: int) -> list[dict]:
    run = RUNS[name]
    reference, _ = reference_checkpoint(name)
    tcfg = run["train"]
    pool = open_dataset(tcfg.data, size=input_size(name), frames=slice(*tcfg.frames) if tcfg.frames else None)
    calib = random_calibration(pool, N_CALIB, SEED)
    test_set = open_dataset(run["test"], size=input_size(name), depth_at="native", frames=run["test_frames"])
    test = [test_set[i] for i in range(len(test_set))]
    profiles = {p: load_profile(p) for p in PROFILES}
    reference_model = load_model(reference).eval()
    rows = [{"dataset": name, "model": "reference (no fine-tune)",
             **measure_head(reference_model, profiles, calib, test, run["metric"])}]
    for head in HEADS:
        for stages, q in (("stage 1", 0), ("stages 1+2", qaf_steps)):
            cfg = HeadFinetuneConfig(head=head, data=tcfg.data, frames=tcfg.frames, size=input_size(name),
                                     steps=steps, qaf_steps=q, seed=SEED)
            ckpt = head_checkpoint(name, cfg, reference, calib)
            row = measure_head(load_model(ckpt).eval(), profiles, calib, test, run["metric"])
            rows.append({"dataset": name, "model": f"{head} ({stages})", **row})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--qaf-steps", type=int, default=100)
    args = parser.parse_args()
    for name in [args.only] if args.only else list(RUNS):
        rows = run_dataset(name, args.steps, args.qaf_steps)
        for row in rows:
            row["x FP32 (npu-default)"] = row["int8 npu-default"] / row["fp32"]
            row.setdefault(MISASSIGNED, "n/a")
        columns = ["model", "fp32", "int8 npu-default", "int8 npu-asym", "x FP32 (npu-default)",
                   "output floor", MISASSIGNED]
        tcfg = RUNS[name]["train"]
        cfg = config_dict(HeadFinetuneConfig(head="*", data=tcfg.data, frames=tcfg.frames, steps=args.steps,
                                             qaf_steps=args.qaf_steps))
        publish(f"heads-{name}", f"Output heads on equal terms, {name} (abs_rel)", rows, columns,
                {"seed": SEED, "calibration": f"{N_CALIB} random frames of the training pool (seed {SEED})",
                 "test data": test_description(RUNS[name]), "fine-tune": cfg,
                 MISASSIGNED: "share of valid GT pixels whose whole metre the INT8 model reads differently "
                              "from FP32 (int-frac only, npu-default, first 16 test frames)"})


if __name__ == "__main__":
    main()
