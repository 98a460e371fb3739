"""A shipped roadmap plan on a benchmark reference: `npuq roadmap` as a user runs it, report kept.

    python bench/roadmap.py --plan path-c --only 7scenes

Runs the plan through the CLI (so the benchmark measures exactly what a user gets), with its work
folder and caches under .npuq-cache/bench/roadmap/, then copies report.md, report.ko.md, roadmap.png
and roadmap.json to bench/results/roadmap-<plan>-<dataset>/ and records the command and machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import time

from common import CACHE, RESULTS, SEVEN_SCENES, publish
from reference import RUNS, reference_checkpoint

from npuq.io import write_json
from npuq.report.tables import machine_info

SYNTH = RUNS["synthetic"]["test"].removesuffix(",part=test")
DATA = {"7scenes": {"data": str(SEVEN_SCENES), "frames": "0:800", "test": str(SEVEN_SCENES),
                    "test_frames": "800:1000", "max_depth": "10"},
        "synthetic": {"data": f"{SYNTH},part=train", "val": f"{SYNTH},part=val",
                      "test": f"{SYNTH},part=test", "max_depth": "20"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", default="path-c")
    parser.add_argument("--only", choices=sorted(DATA), default="7scenes")
    parser.add_argument("--seeds", default="0", help="comma-separated: the report is the first seed's; "
                        "with more, a table of every seed's final step (mean +- std)")
    parser.add_argument("--tag", default="", help="suffix of the result names: keeps the results of a "
                        "reference retrained on another machine type beside the committed ones")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    target = RESULTS / f"roadmap-{args.plan}-{args.only}{_suffix(args.tag)}"
    finals = [_run(args.plan, args.only, seed, target if i == 0 else None) for i, seed in enumerate(seeds)]
    if len(seeds) > 1:
        _publish_seeds(args, seeds, finals)


def _run(plan: str, only: str, seed: int, target) -> dict:
    """One `npuq roadmap` run; its report copied to ``target`` when given. The final row."""
    ckpt, _ = reference_checkpoint(only)
    spec = DATA[only]
    out = CACHE / "roadmap" / (f"{plan}-{only}" + (f"-seed{seed}" if seed else ""))
    command = [sys.executable, "-m", "npuq.cli", "roadmap", plan, "--model", ckpt,
               "--data", spec["data"], "--test", spec["test"], "--seed", str(seed),
               "--max-depth", spec["max_depth"], "--out", str(out), "--lang", "ko", "--force"]
    for option in ("frames", "val", "test_frames"):
        if option in spec:
            command += [f"--{option.replace('_', '-')}", spec[option]]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    result = json.loads((out / "roadmap.json").read_text())
    if target is not None:
        target.mkdir(parents=True, exist_ok=True)
        for name in ("report.md", "report.ko.md", "roadmap.png", "roadmap.json"):
            shutil.copyfile(out / name, target / name)
        write_json(target / "run.json", {"command": " ".join(["npuq", *command[3:]]),
                                         "wall_seconds": seconds, "machine": machine_info(),
                                         "reference": ckpt, "reference_train": RUNS[only]["train"].to_dict(),
                                         "final_lineage": result["final"]["lineage"]})
        print(f"report: {target / 'report.md'} ({seconds / 60:.1f} min)")
    final = result["rows"][-1]
    return {"seed": seed, "fp32": final["fp32"], "int8": final["int8"],
            "int8_over_reference": final["int8_over_reference"],
            "baseline_int8": result["baseline"]["int8"]["abs_rel"],
            "remedies_s": sum(row["seconds"] or 0.0 for row in result["rows"]), "wall_s": seconds}


def _suffix(tag: str) -> str:
    return f"-{tag}" if tag else ""


def _publish_seeds(args, seeds: list[int], finals: list[dict]) -> None:
    summary = {"seed": "mean +- std"}
    for key in ("fp32", "int8", "int8_over_reference", "baseline_int8"):
        values = [f[key] for f in finals]
        summary[key] = f"{statistics.mean(values):.4f} +- {statistics.stdev(values):.4f}"
    columns = ["seed", "fp32", "int8", "int8_over_reference", "baseline_int8", "remedies_s", "wall_s"]
    reference_fp32 = finals[0]["int8"] / finals[0]["int8_over_reference"]
    context = {"seeds": seeds, "plan": args.plan, "reference": reference_checkpoint(args.only)[0],
               "reference_fp32": round(reference_fp32, 4),
               "remedies_s": "the steps' wall times (a cached step's from the run that computed it)",
               "wall_s": "this command's wall time (a cached step costs only its scoring)"}
    publish(f"roadmap-{args.plan}-{args.only}{_suffix(args.tag)}-seeds",
            f"Roadmap `{args.plan}` on {args.only}: final step per seed (seed = the Baseline's random "
            f"calibration draw and every remedy's seed)",
            [*finals, summary], columns, context)


if __name__ == "__main__":
    main()
