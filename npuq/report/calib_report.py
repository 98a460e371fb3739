"""How well a calibration pick covers its pool, compared with a random pick of the same size.

``write_calib_report(out_dir, pool, selection, random_baseline)`` writes ``calib_report.md``,
``calib_report.json`` and three plots:

- ``calib_brightness.png``: brightness histograms of the pool, the pick and the random pick;
- ``calib_depth.png``: mean depth histogram (fraction of valid pixels per log-depth bin) of each;
- ``calib_features.png``: the pool's descriptors on their first two principal components, picks marked.

Both picks are measured in the selection's descriptor space (``selection.stats``), so their k-center
radii compare like for like. Coverage numbers:

- k-center radius: largest distance from a pool frame to its nearest picked frame (lower is better);
- mean nearest distance: the same distance averaged over the pool;
- brightness bins: the pool's brightness range cut into ``BRIGHTNESS_REPORT_BINS`` equal bins; how
  many of the bins that hold pool frames also hold a picked frame;
- total variation (TV) distance ``0.5 * sum |p - q|`` between the pool's and the pick's brightness
  histograms and mean depth histograms (0 = same distribution, 1 = disjoint);
- depth mass covered: the share of the pool's mean depth histogram in bins where the pick has any mass.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from npuq.data.calib import Selection, kcenter_radius, nearest_pick_distance
from npuq.errors import NpuqError
from npuq.io import atomic_folder, check_output_folder, write_json, write_text
from npuq.report.analyze import save_png

FORMAT = "npuq-calib-report/1"
REPORT_MD = "calib_report.md"
REPORT_JSON = "calib_report.json"
BRIGHTNESS_PNG = "calib_brightness.png"
DEPTH_PNG = "calib_depth.png"
FEATURES_PNG = "calib_features.png"
REPORT_FILES = (REPORT_MD, REPORT_JSON, BRIGHTNESS_PNG, DEPTH_PNG, FEATURES_PNG)
BRIGHTNESS_REPORT_BINS = 10


# ------------------------------------------------------------------------------------------ numbers


def tv_distance(p: np.ndarray, q: np.ndarray) -> float:
    """Total variation distance of two histograms (each normalised to sum 1)."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(0.5 * np.abs(p / p.sum() - q / q.sum()).sum())


def brightness_edges(brightness: np.ndarray) -> np.ndarray:
    lo, hi = float(brightness.min()), float(brightness.max())
    if hi <= lo:
        hi = lo + 1e-6
    return np.linspace(lo, hi, BRIGHTNESS_REPORT_BINS + 1)


def mean_depth_hist(selection: Selection, indices: list[int] | None = None) -> np.ndarray:
    """Mean depth histogram over the frames that have one (ground truth or prediction)."""
    stats = selection.stats
    rows = range(len(stats)) if indices is None else indices
    rows = [i for i in rows if stats.depth_source[i] != "none"]
    if not rows:
        return np.zeros(stats.depth_hist.shape[1])
    return stats.depth_hist[rows].mean(axis=0)


def pick_metrics(selection: Selection, indices: list[int]) -> dict[str, Any]:
    """Coverage of the pool by ``indices``, in the space and statistics of ``selection``."""
    stats = selection.stats
    edges = brightness_edges(stats.brightness)
    pool_counts, _ = np.histogram(stats.brightness, bins=edges)
    pick_counts, _ = np.histogram(stats.brightness[indices], bins=edges)
    occupied = pool_counts > 0
    pool_depth, pick_depth = mean_depth_hist(selection), mean_depth_hist(selection, indices)
    families = [stats.families[i] for i in indices if stats.families[i] is not None]
    return {
        "n": len(indices),
        "kcenter_radius": kcenter_radius(stats.descriptors, indices),
        "mean_nearest_distance": float(nearest_pick_distance(stats.descriptors, indices).mean()),
        "brightness_bins_covered": int((pick_counts[occupied] > 0).sum()),
        "brightness_bins_in_pool": int(occupied.sum()),
        "brightness_min": float(stats.brightness[indices].min()),
        "brightness_max": float(stats.brightness[indices].max()),
        "brightness_tv": tv_distance(pool_counts, pick_counts),
        "depth_tv": tv_distance(pool_depth, pick_depth),
        "depth_mass_covered": float(pool_depth[pick_depth > 0].sum() / pool_depth.sum())
        if pool_depth.sum() > 0 else float("nan"),
        "families": dict(sorted(Counter(families).items())),
    }


def pca_2d(descriptors: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """Projection on the first two principal components and the variance share of each."""
    x = np.asarray(descriptors, dtype=np.float64)
    x = x - x.mean(axis=0)
    _, singular, vt = np.linalg.svd(x, full_matrices=False)
    total = float((singular**2).sum())
    k = min(2, vt.shape[0])
    coords = x @ vt[:k].T
    if k < 2:
        coords = np.concatenate([coords, np.zeros((len(x), 2 - k))], axis=1)
    shares = [float(s**2 / total) if total > 0 else 0.0 for s in singular[:2]]
    return coords, shares + [0.0] * (2 - len(shares))


# ------------------------------------------------------------------------------------------ plots


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def plot_brightness(selection: Selection, baseline: Selection, path: Path) -> None:
    plt = _figure()
    b = selection.stats.brightness
    edges = brightness_edges(b)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(b, bins=edges, density=True, color="0.8", label=f"pool ({len(b)})")
    ax.hist(b[selection.indices], bins=edges, density=True, histtype="step", lw=2, color="C0",
            label=f"{selection.strategy} ({selection.n})")
    ax.hist(b[baseline.indices], bins=edges, density=True, histtype="step", lw=1.5, ls="--", color="C3",
            label=f"{baseline.strategy} ({baseline.n})")
    ax.set_xlabel("brightness (mean luma)")
    ax.set_ylabel("density")
    ax.legend()
    save_png(fig, path)


def plot_depth(selection: Selection, baseline: Selection, path: Path) -> None:
    plt = _figure()
    edges = selection.stats.depth_edges
    fig, ax = plt.subplots(figsize=(7, 4))
    for label, hist, style in (
        ("pool", mean_depth_hist(selection), dict(color="0.5", lw=3)),
        (selection.strategy, mean_depth_hist(selection, selection.indices), dict(color="C0", lw=2)),
        (baseline.strategy, mean_depth_hist(selection, baseline.indices), dict(color="C3", lw=1.5, ls="--")),
    ):
        ax.stairs(hist, edges, label=label, **style)
    ax.set_xscale("log")
    ax.set_xlabel("depth (m)")
    ax.set_ylabel("mean fraction of valid pixels")
    ax.legend()
    save_png(fig, path)


def plot_features(selection: Selection, baseline: Selection, coords: np.ndarray, shares: list[float],
                  path: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    ax.scatter(coords[:, 0], coords[:, 1], s=10, color="0.75", label=f"pool ({len(coords)})")
    pick = coords[baseline.indices]
    ax.scatter(pick[:, 0], pick[:, 1], s=30, marker="x", color="C3", label=f"{baseline.strategy}")
    pick = coords[selection.indices]
    ax.scatter(pick[:, 0], pick[:, 1], s=36, facecolors="none", edgecolors="C0", lw=1.5,
               label=f"{selection.strategy}")
    ax.set_xlabel(f"PC1 ({100 * shares[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC2 ({100 * shares[1]:.1f}% of variance)")
    ax.legend()
    save_png(fig, path)


# ------------------------------------------------------------------------------------------ markdown


def _f(value: float, digits: int = 3) -> str:
    return "n/a" if value != value else f"{value:.{digits}f}"


def _relative(a: float, b: float) -> str:
    if not b or a != a or b != b:
        return "n/a"
    change = 100.0 * (a - b) / b
    return f"{abs(change):.1f}% {'smaller' if change < 0 else 'larger'}"


def comparison_table(sel: dict[str, Any], base: dict[str, Any], names: tuple[str, str]) -> str:
    rows = [
        ("frames", str(sel["n"]), str(base["n"])),
        ("k-center radius (lower = better)", _f(sel["kcenter_radius"]), _f(base["kcenter_radius"])),
        ("mean distance to nearest pick", _f(sel["mean_nearest_distance"]),
         _f(base["mean_nearest_distance"])),
        ("brightness bins covered", f"{sel['brightness_bins_covered']}/{sel['brightness_bins_in_pool']}",
         f"{base['brightness_bins_covered']}/{base['brightness_bins_in_pool']}"),
        ("brightness range", f"{_f(sel['brightness_min'])}-{_f(sel['brightness_max'])}",
         f"{_f(base['brightness_min'])}-{_f(base['brightness_max'])}"),
        ("brightness TV distance to pool", _f(sel["brightness_tv"]), _f(base["brightness_tv"])),
        ("depth TV distance to pool", _f(sel["depth_tv"]), _f(base["depth_tv"])),
        ("pool depth mass covered", _f(sel["depth_mass_covered"]), _f(base["depth_mass_covered"])),
        ("scene families", str(len(sel["families"])), str(len(base["families"]))),
    ]
    lines = [f"| metric | {names[0]} | {names[1]} |", "|---|---:|---:|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def render_markdown(doc: dict[str, Any]) -> str:
    sel, base, pool = doc["selection"]["metrics"], doc["baseline"]["metrics"], doc["pool"]
    s_name, b_name = doc["selection"]["strategy"], doc["baseline"]["strategy"]
    blocks = ", ".join(f"{k} ({v} columns)" for k, v in pool["descriptor_blocks"].items())
    src = pool["depth_source"]
    lines = [
        f"# Calibration set: {s_name} pick of {sel['n']} of {pool['n']} frames",
        "",
        f"Pool `{pool['root']}` has {pool['n']} frames; the {s_name} pick (seed {doc['selection']['seed']}) "
        f"is compared with a {b_name} pick of {base['n']} frames (seed {doc['baseline']['seed']}).",
        f"The descriptor has {pool['descriptor_dim']} columns in blocks {blocks}, "
        "each block weighted equally.",
        f"Depth histograms come from ground truth for {src.get('gt', 0)} frames, from the FP32 prediction "
        f"for {src.get('pred', 0)} and are missing for {src.get('none', 0)}.",
        "",
        "## Comparison",
        "",
        comparison_table(sel, base, (s_name, b_name)),
        "",
        "## Descriptor space",
        "",
        f"- The k-center radius of the {s_name} pick is {_f(sel['kcenter_radius'])} against "
        f"{_f(base['kcenter_radius'])} for the {b_name} pick "
        f"({_relative(sel['kcenter_radius'], base['kcenter_radius'])}).",
        f"- A pool frame lies on average {_f(sel['mean_nearest_distance'])} from its nearest {s_name} frame "
        f"and {_f(base['mean_nearest_distance'])} from its nearest {b_name} frame.",
        f"- The first two principal components hold {100 * doc['pca_variance'][0]:.1f}% and "
        f"{100 * doc['pca_variance'][1]:.1f}% of the descriptor variance ({FEATURES_PNG}).",
        "",
        "## Brightness",
        "",
        f"- The {s_name} pick occupies {sel['brightness_bins_covered']} of the "
        f"{sel['brightness_bins_in_pool']} brightness bins that hold pool frames, the {b_name} pick "
        f"{base['brightness_bins_covered']} ({BRIGHTNESS_PNG}).",
        f"- Pool brightness spans {_f(pool['brightness_min'])}-{_f(pool['brightness_max'])}; the {s_name} "
        f"pick spans {_f(sel['brightness_min'])}-{_f(sel['brightness_max'])} and the {b_name} pick "
        f"{_f(base['brightness_min'])}-{_f(base['brightness_max'])}.",
        f"- The TV distance between the pool's and the pick's brightness histograms is "
        f"{_f(sel['brightness_tv'])} for {s_name} and {_f(base['brightness_tv'])} for {b_name}.",
        "",
        "## Depth",
        "",
        f"- The TV distance between the pool's and the pick's mean depth histograms is {_f(sel['depth_tv'])} "
        f"for {s_name} and {_f(base['depth_tv'])} for {b_name} ({DEPTH_PNG}).",
        f"- The {s_name} pick has depth in bins holding {_f(100 * sel['depth_mass_covered'], 1)}% of the "
        f"pool's depth mass, the {b_name} pick {_f(100 * base['depth_mass_covered'], 1)}%.",
    ]
    if pool["families"]:
        lines += ["", "## Scene families", "",
                  f"- The {s_name} pick contains {len(sel['families'])} of the {len(pool['families'])} pool "
                  f"families, the {b_name} pick {len(base['families'])}.", "",
                  f"| family | pool | {s_name} | {b_name} |", "|---|---:|---:|---:|"]
        lines += [f"| {fam} | {count} | {sel['families'].get(fam, 0)} | {base['families'].get(fam, 0)} |"
                  for fam, count in pool["families"].items()]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------ driver


def _check_inputs(pool, selection: Selection, baseline: Selection) -> None:
    root = getattr(pool, "root", "pool")
    if selection.pool_size != len(pool) or baseline.pool_size != len(pool):
        raise NpuqError(f"{root}: the selections cover {selection.pool_size} and {baseline.pool_size} "
                        f"frames, the pool has {len(pool)}")
    if selection.stats.names != list(pool.names):
        raise NpuqError(f"{root}: the selection was made on a different pool (frame names differ)")
    if baseline.n != selection.n:
        raise NpuqError(f"{root}: the random baseline has {baseline.n} frames, the selection {selection.n}; "
                        "compare picks of the same size")


def check_report_writable(out_dir: str | Path, force: bool) -> Path:
    """Refuse before any work when a report is already in ``out_dir`` and ``force`` is off."""
    return check_output_folder(out_dir, force, REPORT_JSON)


def write_calib_report(out_dir: str | Path, pool, selection: Selection, random_baseline: Selection,
                       force: bool = False) -> dict[str, Any]:
    """Write the coverage report of ``selection`` against ``random_baseline`` (same size, same pool).

    Returns the report document (also written as ``calib_report.json``) with ``out_dir`` and ``files``.
    """
    _check_inputs(pool, selection, random_baseline)
    out_dir = check_report_writable(out_dir, force)
    stats = selection.stats
    coords, shares = pca_2d(stats.descriptors)
    pool_families = [f for f in stats.families if f is not None]
    doc: dict[str, Any] = {
        "format": FORMAT,
        "pool": {
            "root": str(getattr(pool, "root", "")), "n": len(stats),
            "descriptor_dim": int(stats.descriptors.shape[1]),
            "descriptor_blocks": {k: b - a for k, (a, b) in stats.blocks.items()},
            "depth_source": dict(Counter(stats.depth_source)),
            "brightness_min": float(stats.brightness.min()), "brightness_max": float(stats.brightness.max()),
            "families": dict(sorted(Counter(pool_families).items())),
        },
        "selection": {"strategy": selection.strategy, "seed": selection.seed, "names": selection.names,
                      "metrics": pick_metrics(selection, selection.indices)},
        "baseline": {"strategy": random_baseline.strategy, "seed": random_baseline.seed,
                     "names": random_baseline.names,
                     "metrics": pick_metrics(selection, random_baseline.indices)},
        "pca_variance": shares,
    }
    with atomic_folder(out_dir, force, REPORT_JSON) as tmp:
        plot_brightness(selection, random_baseline, tmp / BRIGHTNESS_PNG)
        plot_depth(selection, random_baseline, tmp / DEPTH_PNG)
        plot_features(selection, random_baseline, coords, shares, tmp / FEATURES_PNG)
        write_text(tmp / REPORT_MD, render_markdown(doc))
        write_json(tmp / REPORT_JSON, _json_ready(doc))
    return {**doc, "out_dir": str(out_dir), "files": [str(out_dir / name) for name in REPORT_FILES]}


def _json_ready(obj: Any) -> Any:
    """NaN -> None so the JSON is standard."""
    if isinstance(obj, dict):
        return {k: _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, float) and obj != obj:
        return None
    return obj
