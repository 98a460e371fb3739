"""Run every benchmark in order; each prints its table with the command, data, seed and machine.

    python bench/run_all.py          (what `make bench` runs)

Results land in bench/results/*.json and *.md; bench/README.md quotes them.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
STEPS = [
    ["bench_synth.py"],
    ["reference.py"],
    ["baseline_ptq.py"],
    ["calib_sweep.py"],
    ["weight_norm.py"],
    ["heads.py"],
    ["robustness.py"],
    ["mixed_precision.py"],
    ["probe_onnxruntime.py"],
    ["make_readme.py"],
]


def main() -> None:
    for step in STEPS:
        print(f"\n=== python bench/{' '.join(step)}", flush=True)
        subprocess.run([sys.executable, str(HERE / step[0]), *step[1:]], check=True, cwd=HERE)


if __name__ == "__main__":
    main()
