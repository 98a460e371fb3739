"""Synthetic generator throughput: frames/s of SceneGenerator.frame (single process), per scene family,
and of write_synthetic_dataset (rendering + PNG encoding).

    python bench/bench_synth.py [--n 500] [--seed 0] [--size 128x160] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from common import Timer, publish

from npuq.data.synthetic import FAMILIES, SynthConfig, make_generator, texture_bank, write_synthetic_dataset


def render_rate(config: SynthConfig, seed: int, n: int, repeats: int) -> dict[str, float]:
    """Median and worst wall-clock frames/s over ``repeats`` passes of frames 0..n-1, and the median
    rate by this process's CPU time (what an unloaded machine would give; the machine is shared).
    Sequence mode builds its worlds once, outside the timing (as a dataset does)."""
    generator = make_generator(config, seed, n)
    rates, cpu_rates = [], []
    for _ in range(repeats):
        cpu_start = time.process_time()
        with Timer() as timer:
            for index in range(n):
                generator.frame(index)
        rates.append(n / timer.seconds)
        cpu_rates.append(n / max(time.process_time() - cpu_start, 1e-9))
    return {"frames_per_s": statistics.median(rates), "worst_pass": min(rates),
            "cpu_time_frames_per_s": statistics.median(cpu_rates)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", default="128x160")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    size = tuple(int(v) for v in args.size.lower().split("x"))

    texture_bank()  # built once per process; not part of the per-frame cost
    make_generator(SynthConfig(size=size), args.seed, 1).frame(0)
    rows = []
    rates = render_rate(SynthConfig(size=size), args.seed, args.n, args.repeats)
    rows.append({"what": "frame() all families", "size": args.size, "seed": args.seed, "n": args.n, **rates})
    rates = render_rate(SynthConfig(size=size, mode="sequence"), args.seed, args.n, args.repeats)
    rows.append({"what": "frame() sequence mode (4 worlds)", "size": args.size, "seed": args.seed,
                 "n": args.n, **rates})
    for family in FAMILIES:
        n = max(args.n // 4, 1)
        rates = render_rate(SynthConfig(size=size, families=(family,)), args.seed, n, args.repeats)
        rows.append({"what": f"frame() {family}", "size": args.size, "seed": args.seed, "n": n, **rates})
    n_write = max(args.n // 2, 1)
    cpu_start = time.process_time()
    with tempfile.TemporaryDirectory() as tmp, Timer() as timer:
        write_synthetic_dataset(Path(tmp) / "set", n_write, args.seed, size, progress=False)
    rate = n_write / timer.seconds
    rows.append({"what": "write_synthetic_dataset", "size": args.size, "seed": args.seed, "n": n_write,
                 "frames_per_s": rate, "worst_pass": rate,
                 "cpu_time_frames_per_s": n_write / max(time.process_time() - cpu_start, 1e-9)})
    publish("synth", "Synthetic RGB-D generator throughput (single process)", rows,
            ["what", "size", "seed", "n", "frames_per_s", "worst_pass", "cpu_time_frames_per_s"],
            {"repeats": args.repeats, "load_average": list(os.getloadavg()),
             "note": "frames/s = frames / wall seconds (median and worst of the passes); "
                     "cpu_time_frames_per_s = frames / this process's CPU seconds"})


if __name__ == "__main__":
    main()
