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
import subprocess
import sys
import time

from common import CACHE, RESULTS, SEVEN_SCENES
from reference import RUNS, reference_checkpoint

from npuq.io import write_json
from npuq.report.tables import machine_info

DATA = {"7scenes": {"data": str(SEVEN_SCENES), "frames": "0:800", "test": str(SEVEN_SCENES),
                    "test_frames": "800:1000", "max_depth": "10"}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--plan", default="path-c")
    parser.add_argument("--only", choices=sorted(DATA), default="7scenes")
    args = parser.parse_args()
    ckpt, _ = reference_checkpoint(args.only)
    spec = DATA[args.only]
    out = CACHE / "roadmap" / f"{args.plan}-{args.only}"
    command = [sys.executable, "-m", "npuq.cli", "roadmap", args.plan, "--model", ckpt,
               "--data", spec["data"], "--frames", spec["frames"], "--test", spec["test"],
               "--test-frames", spec["test_frames"],
               "--max-depth", spec["max_depth"], "--out", str(out), "--lang", "ko", "--force"]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    seconds = time.perf_counter() - started
    target = RESULTS / f"roadmap-{args.plan}-{args.only}"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("report.md", "report.ko.md", "roadmap.png", "roadmap.json"):
        shutil.copyfile(out / name, target / name)
    result = json.loads((out / "roadmap.json").read_text())
    write_json(target / "run.json", {"command": " ".join(["npuq", *command[3:]]), "wall_seconds": seconds,
                                     "machine": machine_info(), "reference": ckpt,
                                     "reference_train": RUNS[args.only]["train"].to_dict(),
                                     "final_lineage": result["final"]["lineage"]})
    print(f"report: {target / 'report.md'} ({seconds / 60:.1f} min)")


if __name__ == "__main__":
    main()
