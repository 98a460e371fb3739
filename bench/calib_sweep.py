"""Calibration sweep: does the size or the diversity of the calibration set change INT8 abs_rel?

    python bench/calib_sweep.py [--only synthetic|7scenes]

For each reference model (bench/reference.py): simulate the toolchain (npu-default) with calibration
sets of {50, 100, 200, 500} frames picked by random, stratified and diverse selection from the same
pool, 3 seeds each, and score INT8 abs_rel on the held-out test frames. Also records each activation
quantizer's clipping threshold (KL under npu-default) to show how much it moves with size and seed.

Pools: synthetic = frames 0-1999 of the training set; 7-Scenes = the training frames 0-799.
``diverse`` (k-center greedy) does not depend on the seed: it is run once per size (std 0 by construction).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
from common import RESULTS, publish
from reference import RUNS, input_size, reference_checkpoint, test_description

from npuq.analysis.metrics import evaluate, progress_bar
from npuq.data.calib import pool_stats, select_calibration, stack_rgb
from npuq.data.datasets import open_dataset
from npuq.io import write_json
from npuq.measure import fresh_ptq_metrics
from npuq.pipeline import depth_predictor, load_float_model
from npuq.quant.profile import load_profile
from npuq.report.tables import command_line, machine_info

SIZES = (50, 100, 200, 500)
STRATEGIES = ("random", "stratified", "diverse")
SEEDS = (0, 1, 2)
PROFILE = "npu-default"
POOLS = {"synthetic": slice(0, 2000), "7scenes": slice(0, 800)}
TEST_FRAMES = 200


def sweep_runs() -> list[tuple[str, int, int]]:
    return [(strategy, n, seed) for strategy in STRATEGIES for n in SIZES
            for seed in (SEEDS if strategy != "diverse" else SEEDS[:1])]


def thresholds(sim) -> dict[str, float]:
    """Each activation quantizer's chosen clipping range width (range_hi - range_lo)."""
    return {q.name: float(q.range_hi - q.range_lo) for q in sim.quantizers.values()
            if q.range_hi is not None and q.mode == "int"}


def run_dataset(name: str) -> dict:
    run = RUNS[name]
    ckpt, _ = reference_checkpoint(name)
    model, _ = load_float_model(ckpt, input_size(name))
    pool = open_dataset(run["train"].data, size=input_size(name), frames=POOLS[name])
    test_set = open_dataset(run["test"], size=input_size(name), depth_at="native", frames=run["test_frames"])
    test = [test_set[i] for i in range(min(TEST_FRAMES, len(test_set)))]
    fp32 = evaluate(depth_predictor(model, model.head), test, run["metric"])["abs_rel"]
    stats = pool_stats(pool, model, progress=True)
    profile = load_profile(PROFILE)
    records = []
    runs = sweep_runs()
    with progress_bar(True, len(runs), f"calibration sweep ({name})") as advance:
        for strategy, n, seed in runs:
            selection = select_calibration(pool, n, strategy, seed, model=model, stats=stats)
            calib = stack_rgb(pool, selection.indices)
            result = fresh_ptq_metrics(model, profile, calib, test, run["metric"])
            m, sim = result.metrics, result.sim
            records.append({"strategy": strategy, "n": n, "seed": seed, "abs_rel": m["abs_rel"],
                            "radius": selection.radius, "ptq_seconds": result.ptq_seconds,
                            "thresholds": thresholds(sim)})
            advance(1)
            print(f"{name} {strategy} n={n} seed={seed}: abs_rel {m['abs_rel']:.4f} "
                  f"({result.ptq_seconds:.1f} s)",
                  flush=True)
    pool_name = f"{run['train'].data} frames {POOLS[name].start}:{POOLS[name].stop}"
    return {"dataset": name, "command": command_line(), "machine": machine_info(), "checkpoint": ckpt,
            "fp32": fp32, "pool": pool_name, "test": test_description(run), "test_frames": len(test),
            "records": records}


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def abs_rel_rows(result: dict) -> list[dict]:
    rows = []
    for strategy in STRATEGIES:
        row = {"dataset": result["dataset"], "strategy": strategy}
        for n in SIZES:
            values = [r["abs_rel"] for r in result["records"] if r["strategy"] == strategy and r["n"] == n]
            mean, std = mean_std(values)
            row[f"n={n}"] = f"{mean:.4f} ± {std:.4f}"
        rows.append(row)
    return rows


def findings(result: dict) -> list[str]:
    """What the sweep shows, in numbers: best and worst cell, the seed range, diverse's range."""
    fp32, records = result["fp32"], result["records"]
    cells = {(st, n): [r["abs_rel"] for r in records if r["strategy"] == st and r["n"] == n]
             for st in STRATEGIES for n in SIZES}
    means = {key: statistics.fmean(v) for key, v in cells.items()}
    best, worst = min(means, key=means.get), max(means, key=means.get)
    random_all = [r["abs_rel"] for r in records if r["strategy"] == "random"]
    diverse = [means[("diverse", n)] for n in SIZES]
    return [
        f"best mean: {best[0]} n={best[1]}: {means[best]:.4f} ({means[best] / fp32:.2f}x FP32 {fp32:.4f}); "
        f"worst mean: {worst[0]} n={worst[1]}: {means[worst]:.4f}",
        f"random picks over all sizes and seeds: {min(random_all):.4f} to {max(random_all):.4f}",
        f"diverse over all sizes: {min(diverse):.4f} to {max(diverse):.4f}",
        decisive_threshold(records),
    ]


def decisive_threshold(records: list[dict]) -> str:
    """The quantizer whose clipping width tracks abs_rel most closely over all runs (Pearson r)."""
    y = np.array([r["abs_rel"] for r in records])
    best_r, best_q = 0.0, None
    for q in records[0]["thresholds"]:
        x = np.array([r["thresholds"][q] for r in records])
        if x.std() > 0 and y.std() > 0:
            r = float(np.corrcoef(x, y)[0, 1])
            best_r, best_q = (r, q) if abs(r) > abs(best_r) else (best_r, best_q)
    if best_q is None:
        return "no clipping width varies with abs_rel"
    x = np.array([r["thresholds"][best_q] for r in records])
    narrow = x < (x.min() + x.max()) / 2
    parts = [f"{label}: {int(mask.sum())} runs, width {x[mask].min():.3g}-{x[mask].max():.3g}, mean abs_rel "
             f"{y[mask].mean():.4f}" for label, mask in (("narrow", narrow), ("wide", ~narrow)) if mask.any()]
    return f"clipping width that tracks abs_rel most: {best_q} (r = {best_r:+.2f}); " + "; ".join(parts)


def threshold_spread(result: dict) -> list[dict]:
    """Per quantizer, over random and stratified runs: the relative spread (std / mean) of the clipping
    width across seeds at each size (averaged over sizes), and how the mean width moves from 50 to 500."""
    records = [r for r in result["records"] if r["strategy"] != "diverse"]
    names = list(records[0]["thresholds"])
    rows = []
    for q in names:
        seed_cv, by_size = [], {}
        for strategy in ("random", "stratified"):
            for n in SIZES:
                widths = [r["thresholds"][q] for r in records if r["strategy"] == strategy and r["n"] == n]
                mean, std = mean_std(widths)
                seed_cv.append(std / mean if mean > 0 else 0.0)
                by_size.setdefault(n, []).extend(widths)
        small, large = statistics.fmean(by_size[SIZES[0]]), statistics.fmean(by_size[SIZES[-1]])
        rows.append({"dataset": result["dataset"], "quantizer": q,
                     "seed spread (std/mean)": statistics.fmean(seed_cv),
                     f"width n={SIZES[0]}": small, f"width n={SIZES[-1]}": large,
                     f"change {SIZES[0]}->{SIZES[-1]}": (large - small) / small if small > 0 else 0.0})
    return rows


def plot(results: list[dict], spreads: list[list[dict]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(6 * len(results), 8), squeeze=False)
    for col, (result, spread) in enumerate(zip(results, spreads, strict=True)):
        ax = axes[0, col]
        for strategy in STRATEGIES:
            stats = [mean_std([r["abs_rel"] for r in result["records"]
                               if r["strategy"] == strategy and r["n"] == n]) for n in SIZES]
            ax.errorbar(SIZES, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3,
                        label=strategy)
        ax.axhline(result["fp32"], color="k", linestyle="--", label="FP32")
        ax.set(xscale="log", xlabel="calibration frames", ylabel="INT8-sim abs_rel",
               title=f"{result['dataset']}: {PROFILE}")
        ax.set_xticks(SIZES, [str(n) for n in SIZES])
        ax.minorticks_off()
        ax.legend()
        ax = axes[1, col]
        x = np.arange(len(spread))
        ax.bar(x, [100 * r["seed spread (std/mean)"] for r in spread], label="seed spread (std/mean)")
        ax.plot(x, [100 * r[f"change {SIZES[0]}->{SIZES[-1]}"] for r in spread], "r.",
                label=f"change of mean width {SIZES[0]}->{SIZES[-1]}")
        ax.set(xlabel="activation quantizer (network order)", ylabel="%",
               title=f"{result['dataset']}: clipping threshold movement")
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--replot", action="store_true", help="tables and plot from the saved records")
    args = parser.parse_args()
    names = [args.only] if args.only else list(RUNS)
    suffix = f"-{args.only}" if args.only else ""
    records = RESULTS / f"calib-sweep-records{suffix}.json"
    if args.replot:
        results = json.loads(records.read_text())["results"]
    else:
        results = [run_dataset(name) for name in names]
    spreads = [threshold_spread(r) for r in results]
    plot_path = RESULTS / f"calib-sweep{suffix}.png"
    plot(results, spreads, plot_path)
    # records saved before the command was stored in them came from the plain run of the same dataset
    command = results[0].get("command", f"python calib_sweep.py{' --only ' + args.only if args.only else ''}")
    context = {"command": command, "machine": results[0].get("machine"), "profile": PROFILE,
               "seeds": list(SEEDS), "sizes": list(SIZES),
               "pools": {r["dataset"]: r["pool"] for r in results},
               "test": {r["dataset"]: f"{test_description(RUNS[r['dataset']])} (first {r['test_frames']})"
                        for r in results},
               "fp32 abs_rel": {r["dataset"]: r["fp32"] for r in results},
               "plot": plot_path.name,
               "note": "diverse (k-center greedy) is seed-independent: one run per size",
               "findings": [line for r in results for line in findings(r)]}
    rows = [row for r in results for row in abs_rel_rows(r)]
    publish(f"calib-sweep{suffix}",
            "INT8-sim abs_rel by calibration size and strategy (mean ± std over seeds)", rows,
            list(rows[0]), context)
    summary = []
    for spread in spreads:
        ordered = sorted(spread, key=lambda r: -r["seed spread (std/mean)"])
        summary += ordered[:8]
    publish(f"calib-thresholds{suffix}",
            "Clipping thresholds (KL): the 8 quantizers that move most with the seed", summary,
            list(summary[0]), {**context, "all quantizers": "calib-sweep records in JSON"})
    if not args.replot:
        write_json(records, {"results": results, "spreads": spreads})


if __name__ == "__main__":
    main()
