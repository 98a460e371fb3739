"""`npuq analyze`: the diagnosis report (markdown + PNG plots + JSON).

Sections: (a) per-layer SQNR in network order, (b) the error budget per quantizer group, (c) output
representability of the head, (d) representability of every registered head at the profile's bit
width (resolution, GT floor, int-frac integer misassignment). The findings are generated from the
numbers: each sentence states a figure computed here, and its wording (rises/falls, largest, ...)
follows the sign of that figure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from npuq.errors import NpuqError
from npuq.io import atomic_folder, atomic_write, check_output_folder, write_json, write_text

REPORT_MD = "report.md"
ANALYSIS_JSON = "analysis.json"
SQNR_PNG = "sqnr_per_layer.png"
BUDGET_PNG = "error_budget.png"
REPR_PNG = "representability.png"
HEADS_PNG = "representability_per_head.png"
REPORT_FILES = (REPORT_MD, ANALYSIS_JSON, SQNR_PNG, BUDGET_PNG, REPR_PNG, HEADS_PNG)
# the user's claim: the sigmoid head rounds depth to +-28 mm, an integer + fraction split to +-2 mm
CLAIM_BEFORE_MM, CLAIM_AFTER_MM = 28.0, 2.0
FORMAT = "npuq-analysis/1"
SECTION_COLOURS = {"input": "tab:gray", "encoder": "tab:blue", "decoder": "tab:orange", "head": "tab:red"}


# ----------------------------------------------------------------------------------------- numbers


def sqnr_trend(rows: Sequence[dict[str, Any]], key: str = "sqnr_db") -> dict[str, Any] | None:
    """Least-squares slope (dB per quantizer) of SQNR against network position, over finite values."""
    pts = [(i, r[key]) for i, r in enumerate(rows) if r.get(key) is not None and math.isfinite(r[key])]
    if len(pts) < 2:
        return None
    x, y = np.array(pts, dtype=np.float64).T
    slope, intercept = np.polyfit(x, y, 1)
    return {"slope_db_per_quantizer": float(slope), "intercept_db": float(intercept), "n": len(pts),
            "first_db": float(y[0]), "last_db": float(y[-1]), "min_db": float(y.min()),
            "min_at": rows[int(x[int(np.argmin(y))])]["name"]}


def group_means(rows: Sequence[dict[str, Any]], by: str = "section",
                key: str = "sqnr_db") -> dict[str, float]:
    """Mean finite SQNR per ``by`` (section: encoder/decoder/head, or stage), in order of appearance."""
    out: dict[str, list[float]] = {}
    for r in rows:
        value = r.get(key)
        if value is not None and math.isfinite(value) and r.get(by) is not None:
            out.setdefault(r[by], []).append(value)
    return {k: float(np.mean(v)) for k, v in out.items()}


def reference_abs_rel(budget_rows: Sequence[dict[str, Any]]) -> tuple[float | None, float | None]:
    ref = {r["group"]: r["abs_rel"] for r in budget_rows if r.get("partition") == "reference"}
    return ref.get("fp32"), ref.get("int8")


def group_rows(budget_rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in budget_rows if r.get("partition") != "reference"]


# ---------------------------------------------------------------------------------------- findings


def _delta(value: float) -> str:
    """A signed abs_rel difference: 4 decimals, or 3 significant digits when smaller than 0.001."""
    return f"{value:+.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:+.2e}"


def _db(value: float) -> str:
    return f"{value:.1f} dB"


def sqnr_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    acc = sqnr_trend(rows, "sqnr_db")
    if acc is None:
        return []
    direction = "falls" if acc["slope_db_per_quantizer"] < 0 else "rises"
    total = acc["slope_db_per_quantizer"] * (acc["n"] - 1)
    out = [
        f"Accumulated SQNR {direction} with depth at {acc['slope_db_per_quantizer']:+.3f} dB per quantizer "
        f"(least squares over {acc['n']} quantizers in network order, {total:+.1f} dB end to end): "
        f"{_db(acc['first_db'])} at the first quantizer, {_db(acc['last_db'])} at the last.",
        f"The lowest accumulated SQNR is {_db(acc['min_db'])}, at `{acc['min_at']}`.",
    ]
    for key, label in (("section", "section"), ("stage", "stage")):
        means = group_means(rows, key)
        if len(means) > 1:
            out.append(f"Mean accumulated SQNR per {label}: "
                       + ", ".join(f"{name} {_db(v)}" for name, v in means.items()) + ".")
    iso = sqnr_trend(rows, "sqnr_db_isolated")
    if iso is not None:
        gap = [r["sqnr_db_isolated"] - r["sqnr_db"] for r in rows
               if _finite(r.get("sqnr_db_isolated")) and _finite(r.get("sqnr_db"))]
        out.append(
            f"The local SQNR (each quantizer's own error on float inputs) has slope "
            f"{iso['slope_db_per_quantizer']:+.3f} dB per quantizer and minimum {_db(iso['min_db'])} at "
            f"`{iso['min_at']}`; the local minus accumulated gap, i.e. error inherited from earlier layers, "
            f"is {_db(gap[0])} at the first quantizer and {_db(gap[-1])} at the last."
            if gap else
            f"The local SQNR has slope {iso['slope_db_per_quantizer']:+.3f} dB per quantizer."
        )
    return out


def _finite(value: Any) -> bool:
    return value is not None and math.isfinite(value)


def budget_findings(budget_rows: Sequence[dict[str, Any]]) -> list[str]:
    fp32, int8 = reference_abs_rel(budget_rows)
    groups = group_rows(budget_rows)
    if fp32 is None or int8 is None or not groups:
        return []
    gap = int8 - fp32
    out = [f"FP32 abs_rel is {fp32:.4f} and simulated INT8 abs_rel is {int8:.4f} "
           f"({int8 / fp32:.2f}x, a gap of {_delta(gap)})." if fp32 > 0 else
           f"FP32 abs_rel is {fp32:.4f} and simulated INT8 abs_rel is {int8:.4f}."]
    for partition in dict.fromkeys(g["partition"] for g in groups):
        rows = [g for g in groups if g["partition"] == partition]
        out += [_worst_cost(partition, max(rows, key=lambda g: g["cost"]), gap),
                _best_recovery(partition, max(rows, key=lambda g: g["recovery"]), gap)]
        if len(rows) > 1:
            total = sum(g["cost"] for g in rows)
            out.append(f"By {partition}: the single-group costs sum to {_delta(total)} "
                       f"against the whole INT8 gap of {_delta(gap)}.")
    return out


def _share(part: float, gap: float, what: str) -> str:
    return f", {100 * part / gap:.0f}% of {what})." if gap > 0 else ")."


def _worst_cost(partition: str, worst: dict[str, Any], gap: float) -> str:
    if worst["cost"] <= 0:
        return (f"By {partition}: no group raises abs_rel above FP32 when quantized alone (largest change "
                f"{_delta(worst['cost'])}, `{worst['group']}`).")
    return (f"By {partition}: quantizing only `{worst['group']}` costs the most, abs_rel "
            f"{worst['abs_rel_only_enabled']:.4f} ({_delta(worst['cost'])} over FP32"
            + _share(worst["cost"], gap, "the INT8 gap"))


def _best_recovery(partition: str, best: dict[str, Any], gap: float) -> str:
    if best["recovery"] <= 0:
        return (f"By {partition}: keeping any one group in float does not lower abs_rel below INT8 (best "
                f"change {_delta(-best['recovery'])}, `{best['group']}`).")
    return (f"By {partition}: keeping only `{best['group']}` in float recovers the most, abs_rel "
            f"{best['abs_rel_only_disabled']:.4f} ({_delta(best['recovery'])[1:]} below INT8"
            + _share(best["recovery"], gap, "the gap"))


def representability_findings(rep: dict[str, Any] | None, int8: float | None) -> list[str]:
    if not rep:
        return []
    out = []
    for sc in rep["scenarios"]:
        floor = sc["floor"]["abs_rel"]
        grids = ", ".join(f"scale {g['scale']:.6g}, range [{g['lo']:.4g}, {g['hi']:.4g}]"
                          for g in sc["grids"] if g is not None)
        where = (f"{sc['n_representable']} representable depths from {sc['nearest_m']:.3g} m to "
                 f"{sc['farthest_m']:.3g} m; " if "n_representable" in sc else "")
        share = f", {100 * floor / int8:.0f}% of the INT8 abs_rel {int8:.4f}" if int8 else ""
        out.append(f"Output grid `{sc['label']}` ({grids}): {where}quantizing the ground truth through the "
                   f"head alone gives an abs_rel floor of {floor:.4f} on this test set{share}.")
        steps = [f"{p['step_m']:.3g} m at {p['depth_m']:.3g} m ({100 * p['rel_step']:.1f}%)"
                 for p in sc["step_at"] if _finite(p["step_m"])]
        if steps:
            out.append(f"Output grid `{sc['label']}`: depth step " + ", ".join(steps) + ".")
    return out


def output_vs_floor(rep: dict[str, Any] | None, budget_rows: Sequence[dict[str, Any]]) -> list[str]:
    """Compare the trained network's output-only cost with the ground-truth floor of each grid."""
    output = [g for g in group_rows(budget_rows) if g["group"] == "output"]
    if not rep or not output:
        return []
    floors = ", ".join(f"{sc['floor']['abs_rel']:.4f} (`{sc['label']}`)" for sc in rep["scenarios"])
    row = output[0]
    return [f"In the network, quantizing only the output gives abs_rel {row['abs_rel_only_enabled']:.4f} "
            f"({_delta(row['cost'])} over FP32); the ground-truth floors of the output grids are {floors}."]


def format_length(mm: float) -> str:
    """A length given in mm, written in mm below a metre and in metres above (3 significant digits)."""
    return f"{mm:.3g} mm" if abs(mm) < 1000 else f"{mm / 1000:.3g} m"


def _row(rows: Sequence[dict[str, Any]], head: str) -> dict[str, Any] | None:
    return next((r for r in rows if r["head"] == head), None)


def _grid_kind(row: dict[str, Any]) -> str:
    return f"{row['bits']}-bit {'signed' if row['symmetric'] else 'unsigned'}"


def floor_ranking(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Heads ordered by their full-range GT floor, with the GT share each clamps and the model's calibrated
    floor."""
    if not rows:
        return []
    ranked = sorted(rows, key=lambda r: r["scenarios"][0]["floor"]["abs_rel"])
    figures = [f"`{r['head']}` {r['scenarios'][0]['floor']['abs_rel']:.4f}" for r in ranked]
    out = (f"At the profile's {_grid_kind(rows[0])} output grid over each output's full range, the GT "
           f"abs_rel floor is lowest for {figures[0]}"
           + (f", then {', '.join(figures[1:-1])}" if len(figures) > 2 else "")
           + (f", highest for {figures[-1]}." if len(figures) > 1 else "."))
    clamped = [f"`{r['head']}` {100 * r['scenarios'][0]['gt_outside_range_share']:.1f}% beyond "
               f"{r['max_depth']:g} m" for r in rows if r["scenarios"][0]["gt_outside_range_share"] > 0]
    if clamped:
        out += " Part of a floor is GT outside the head's range, clamped: " + ", ".join(clamped) + "."
    for r in rows:
        for sc in r["scenarios"][1:]:
            out += f" The model's own `{r['head']}` on its {sc['label']} grid: {sc['floor']['abs_rel']:.4f}."
    return [out]


def _probe_errors(sc: dict[str, Any]) -> dict[float, float]:
    return {p["depth_m"]: p["max_error_mm"] for p in sc["probes"] if _finite(p["max_error_mm"])}


def _within_claim_up_to(sc: dict[str, Any], limit_mm: float) -> float | None:
    """The largest depth up to which every point of the step curve keeps its max error within ``limit_mm``.

    Points without a step (NaN: the range's end, where no level lies beyond) are passed over.
    """
    reach = None
    for depth, step in zip(sc["step_curve"]["depth_m"], sc["step_curve"]["step_m"], strict=True):
        if not _finite(step):
            continue
        if 500.0 * step > limit_mm:
            break
        reach = depth
    return reach


def _split_claim(split: dict[str, Any], errors: dict[float, float]) -> str:
    """The int-frac half of the claim: its fraction step against the claimed +-2 mm."""
    sc = split["scenarios"][0]
    worst = max(errors.values())
    if worst <= 1.05 * CLAIM_AFTER_MM:
        verdict = f"consistent with the claimed ±{CLAIM_AFTER_MM:g} mm"
    else:
        verdict = f"not the claimed ±{CLAIM_AFTER_MM:g} mm"
        if sc["grids"][1].get("signed"):
            verdict += " (a signed grid spends half its levels on negative fractions)"
    whole = sc.get("whole_metres") or {}
    depths = ", ".join(f"{d:g}" for d in errors)
    return (f"`int-frac` at {_grid_kind(split)}: the fraction output's step is {format_length(2 * worst)}, "
            f"a max rounding error of ±{format_length(worst)} at {depths} m, {verdict}; "
            f"the integer output reads {whole.get('exact', '?')} of {whole.get('whole_metres', '?')} whole "
            f"metres exactly (largest gap {whole.get('max_gap_m', math.nan):g} m).")


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 100 else f"{ratio:.3g}x"


def _sigmoid_claim(sigmoid: dict[str, Any], errors: dict[float, float]) -> str | None:
    """The sigmoid half: its error at the int-frac probe depths and where it leaves +-28 mm."""
    base = sigmoid["scenarios"][0]
    base_errors = _probe_errors(base)
    shared = [d for d in errors if d in base_errors]
    if not shared:
        return None
    reach = _within_claim_up_to(base, CLAIM_BEFORE_MM)
    if reach is None:
        reach_text = f"it exceeds ±{CLAIM_BEFORE_MM:g} mm from its nearest depth on"
    else:
        reach_text = f"it stays within ±{CLAIM_BEFORE_MM:g} mm only up to about {reach:.3g} m"
    ratios = [base_errors[d] / errors[d] for d in shared]
    return ("`sigmoid-disp` on the same grid: max rounding error "
            + ", ".join(f"±{format_length(base_errors[d])} at {d:g} m" for d in shared)
            + f" ({_times(min(ratios))} to {_times(max(ratios))} the `int-frac` error); {reach_text}.")


def claim_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The user's +-28 mm -> +-2 mm claim, read off the full-range grids of `int-frac` and `sigmoid-disp`."""
    split, sigmoid = _row(rows, "int-frac"), _row(rows, "sigmoid-disp")
    errors = _probe_errors(split["scenarios"][0]) if split else {}
    if not errors:
        return []
    out = [_split_claim(split, errors)]
    base = _sigmoid_claim(sigmoid, errors) if sigmoid else None
    return out + ([base] if base else [])


def misassignment_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """The measured integer misassignment of an `int-frac` model (nothing when none was measured)."""
    out = []
    for r in rows:
        m = r.get("misassignment")
        if not m:
            continue
        error = (f"mean error {m['misassigned_mean_error_m']:.3g} m on them" if m["misassigned"]
                 else "none misassigned")
        out.append(f"`{r['head']}` (the model's head), simulated INT8 against FP32: "
                   f"{100 * m['misassigned_share']:.2f}% of {m['n_pixels']} valid pixels read a different "
                   f"whole metre ({error}); {100 * m['wrong_integer_share']:.2f}% differ from floor(GT) "
                   f"after INT8, against {100 * m['float_wrong_integer_share']:.2f}% in FP32.")
    return out


def nearest_findings(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Heads whose float targets waste the grid: the nearest representable depth has a much lower floor."""
    out = []
    for r in rows:
        sc = r["scenarios"][0]
        near, floor = sc.get("floor_nearest"), sc["floor"]["abs_rel"]
        if near and near["abs_rel"] < 0.5 * floor:
            out.append(f"`{r['head']}`: floor {floor:.4f} with its float targets but {near['abs_rel']:.4f} "
                       "at the nearest representable depth, reachable only by outputs trained through the "
                       "quantizer (e.g. `npuq.train.qaf_head`).")
    return out


def per_head_findings(rows: Sequence[dict[str, Any]] | None) -> list[str]:
    rows = list(rows or [])
    return floor_ranking(rows) + claim_findings(rows) + misassignment_findings(rows) + nearest_findings(rows)


def all_findings(sqnr_rows, budget_rows, representability, per_head=None) -> dict[str, list[str]]:
    budget_rows = budget_rows or []
    _, int8 = reference_abs_rel(budget_rows)
    return {"sqnr": sqnr_findings(sqnr_rows or []), "budget": budget_findings(budget_rows),
            "representability": representability_findings(representability, int8)
            + output_vs_floor(representability, budget_rows),
            "per_head": per_head_findings(per_head)}


# ------------------------------------------------------------------------------------------ plots


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def save_png(fig, path: Path) -> None:
    """Write the figure to ``path`` atomically (temp file + rename) and close it."""
    plt = _figure()
    try:
        atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110, bbox_inches="tight"))
    finally:
        plt.close(fig)


def _plot_values(rows, key: str) -> np.ndarray:
    return np.array([r[key] if _finite(r.get(key)) else np.nan for r in rows], dtype=np.float64)


def plot_sqnr(rows: Sequence[dict[str, Any]], path: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(11, 4.5))
    x = np.arange(len(rows))
    acc = _plot_values(rows, "sqnr_db")
    ax.plot(x, acc, color="0.7", lw=0.8, zorder=1)
    sections = [r.get("section", "other") for r in rows]
    for section in dict.fromkeys(sections):
        idx = [i for i, s in enumerate(sections) if s == section]
        ax.scatter(x[idx], acc[idx], s=18, zorder=2, label=f"{section} (accumulated)",
                   color=SECTION_COLOURS.get(section))
    if any(_finite(r.get("sqnr_db_isolated")) for r in rows):
        ax.plot(x, _plot_values(rows, "sqnr_db_isolated"), "k--", lw=0.9, label="local (own error only)")
    trend = sqnr_trend(rows)
    if trend is not None:
        ax.plot(x, trend["intercept_db"] + trend["slope_db_per_quantizer"] * x, ":", color="tab:purple",
                label=f"fit {trend['slope_db_per_quantizer']:+.3f} dB/quantizer")
    ax.set_xlabel("quantizer, network order")
    ax.set_ylabel("SQNR vs FP32 (dB)")
    ax.set_title("Per-layer SQNR of the simulated INT8 model")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    save_png(fig, path)


def _zoomed_limits(values: Sequence[float]) -> tuple[float, float]:
    """x-limits that show differences between close abs_rel values (from 0 when the spread is wide)."""
    lo, hi = min(values), max(values)
    pad = 0.15 * (hi - lo) + 1e-6 * max(abs(hi), 1e-6)
    start = 0.0 if lo - pad < 0.5 * lo else lo - pad
    return start, hi + pad


def plot_budget(budget_rows: Sequence[dict[str, Any]], path: Path) -> None:
    plt = _figure()
    rows = group_rows(budget_rows)
    fp32, int8 = reference_abs_rel(budget_rows)
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.5))
    y = np.arange(len(rows))
    on = [r["abs_rel_only_enabled"] for r in rows]
    off = [r["abs_rel_only_disabled"] for r in rows]
    ax.barh(y - 0.2, on, 0.4, label="only this group quantized")
    ax.barh(y + 0.2, off, 0.4, label="only this group float")
    for value, colour, label in ((fp32, "g", "FP32"), (int8, "r", "INT8")):
        if value is not None:
            ax.axvline(value, color=colour, ls="--", lw=1, label=f"{label} {value:.4f}")
    refs = [v for v in (fp32, int8) if v is not None]
    ax.set_xlim(*_zoomed_limits([*on, *off, *refs]))
    ax.set_yticks(y, [f"{r['group']} ({r['partition']})" for r in rows])
    ax.invert_yaxis()
    ax.set_xlabel("abs_rel")
    ax.set_title("Error budget")
    ax.grid(axis="x", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_png(fig, path)


def plot_representability(rep: dict[str, Any], path: Path) -> None:
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    hist = rep.get("gt_histogram")
    if hist and sum(hist["counts"]):
        edges = np.array(hist["edges_m"])
        twin = ax.twinx()
        twin.bar(edges[:-1], np.array(hist["counts"]) / sum(hist["counts"]), width=np.diff(edges),
                 align="edge", color="0.85", label="GT depth (share of valid pixels)")
        twin.set_ylabel("share of GT pixels")
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
    for sc in rep["scenarios"]:
        curve = sc["step_curve"]
        ax.plot(curve["depth_m"], _plot_values([{"v": v} for v in curve["step_m"]], "v"),
                label=f"step, {sc['label']} grid")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("depth (m)")
    ax.set_ylabel("depth step between representable values (m)")
    ax.set_title(f"Output representability: {rep['head']} head")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, loc="upper left")
    save_png(fig, path)


def plot_per_head(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Max rounding error (half a step) against depth for every head, log-log, with the claim's two levels."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, row in enumerate(rows):
        colour = f"C{i}"
        for sc, style in zip(row["scenarios"], ("-", "--"), strict=False):
            curve = sc["step_curve"]
            half_mm = 500.0 * _plot_values([{"v": v} for v in curve["step_m"]], "v")
            ax.plot(curve["depth_m"], half_mm, style, color=colour,
                    label=f"{row['head']}{' (model)' if row['model_head'] else ''}, {sc['label']}")
    for level, text in ((CLAIM_BEFORE_MM, "claimed before"), (CLAIM_AFTER_MM, "claimed after")):
        ax.axhline(level, color="0.4", ls=":", lw=1)
        ax.annotate(f"±{level:g} mm {text}", (0.01, level), xycoords=("axes fraction", "data"),
                    fontsize=7, va="bottom", color="0.3")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("depth (m)")
    ax.set_ylabel("max rounding error, half a step (mm)")
    kind = _grid_kind(rows[0]) if rows else ""
    ax.set_title(f"Resolution of every head at {kind} INT output grids")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_png(fig, path)


# --------------------------------------------------------------------------------------- markdown


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]], digits: int = 4) -> str:
    """Markdown table; ``columns`` are (key, header) pairs."""
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(_fmt(r.get(k), digits) for k, _ in columns) + " |" for r in rows]
    return "\n".join(lines)


def _bullets(lines: Sequence[str]) -> str:
    return "\n".join(f"- {line}" for line in lines) if lines else "- (nothing computed)"


def _sqnr_section(rows, findings: list[str], plotted: bool) -> list[str]:
    out = ["## (a) Per-layer SQNR against FP32", ""]
    if not rows:
        return [*out, "Not computed.", ""]
    out += ["SQNR = 10 log10(sum ref² / sum (q - ref)²) at each activation quantizer's output. "
            "*Accumulated*: everything quantized as configured, compared with the same tensor in the "
            "all-float run. *Local*: the quantizer's own rounding/clipping of the float tensor only.", ""]
    if plotted:
        out += [f"![SQNR per layer]({SQNR_PNG})", ""]
    out += [_bullets(findings), "", "<details><summary>All quantizers</summary>", "",
            table(rows, [("index", "#"), ("name", "quantizer"), ("layer", "layer"), ("op", "op"),
                         ("kind", "kind"), ("stage", "stage"), ("sqnr_db", "SQNR acc. (dB)"),
                         ("sqnr_db_isolated", "SQNR local (dB)")], digits=2),
            "", "</details>", ""]
    return out


def _budget_section(rows, findings: list[str], plotted: bool) -> list[str]:
    out = ["## (b) Error budget", ""]
    if not rows:
        return [*out, "Not computed.", ""]
    out += ["abs_rel with only one group of quantizers enabled (the rest float), and with only that group "
            "disabled (the rest quantized). *cost* = only-enabled minus FP32; *recovery* = INT8 minus "
            "only-disabled.", ""]
    if plotted:
        out += [f"![Error budget]({BUDGET_PNG})", ""]
    refs = [r for r in rows if r.get("partition") == "reference"]
    out += [_bullets(findings), "", table(refs, [("group", "run"), ("description", "quantizers"),
                                                  ("abs_rel", "abs_rel")]), "",
            table(group_rows(rows), [("group", "group"), ("partition", "partition"), ("n_act", "act q"),
                                     ("n_weight", "weight q"), ("abs_rel_only_enabled", "only enabled"),
                                     ("cost", "cost"), ("abs_rel_only_disabled", "only disabled"),
                                     ("recovery", "recovery")]), ""]
    return out


def _repr_section(rep, findings: list[str], plotted: bool) -> list[str]:
    out = ["## (c) Output representability", ""]
    if not rep:
        return [*out, "Not computed.", ""]
    out += [f"Head `{rep['head']}` (depth {rep['min_depth']:g}–{rep['max_depth']:g} m). The *floor* is the "
            "abs_rel of decode(Q(encode(GT))) against GT: what the output quantizer alone costs a perfect "
            "network. The *step* is the gap between the two representable depths around a depth.", ""]
    if plotted:
        out += [f"![Representability]({REPR_PNG})", ""]
    rows = []
    for sc in rep["scenarios"]:
        row = {"label": sc["label"], "floor": sc["floor"]["abs_rel"], "a1": sc["floor"]["a1"],
               "n": sc.get("n_representable"), "near": sc.get("nearest_m"), "far": sc.get("farthest_m")}
        row.update({f"step@{p['depth_m']:g}": p["step_m"] for p in sc["step_at"]})
        rows.append(row)
    probes = [f"step@{p['depth_m']:g}" for p in rep["scenarios"][0]["step_at"]] if rep["scenarios"] else []
    columns = [("label", "output grid"), ("floor", "abs_rel floor"), ("a1", "a1 floor"),
               ("n", "representable depths"), ("near", "nearest (m)"), ("far", "farthest (m)")]
    columns += [(p, f"{p.replace('step@', 'step at ')} m (m)") for p in probes]
    out += [_bullets(findings), "", table(rows, columns), ""]
    return out


def _grid_text(grids: Sequence[dict[str, Any]]) -> str:
    parts = []
    for g in grids:
        if g.get("float"):
            parts.append(f"`{g['output']}` float")
        else:
            kind = f"{'s' if g['signed'] else 'u'}{g['bits']}"
            parts.append(f"`{g['output']}` {kind} step {g['scale']:.4g} [{g['lo']:.3g}, {g['hi']:.3g}]")
    return "; ".join(parts)


def misassignment_text(row: dict[str, Any]) -> str:
    """The int misassignment cell: measured shares with the mean error, else why there is none."""
    m = row.get("misassignment")
    if not m:
        return "–" if row["misassignment_note"] == "no integer output" else row["misassignment_note"]
    vs_fp32 = f"{100 * m['misassigned_share']:.2f}%"
    if m["misassigned"]:
        vs_fp32 += f" ({m['misassigned_mean_error_m']:.3g} m)"
    vs_gt = f"{100 * m['wrong_integer_share']:.2f}%"
    if m["wrong_integer"]:
        vs_gt += f" ({m['wrong_integer_mean_error_m']:.3g} m)"
    return f"INT8 sim vs FP32 {vs_fp32}; vs floor(GT) {vs_gt}"


def _table_line(row: dict[str, Any], sc: dict[str, Any], first: bool) -> dict[str, Any]:
    whole = sc.get("whole_metres")
    grids = _grid_text(sc["grids"])
    if whole:
        grids += f"; whole metres exact {whole['exact']}/{whole['whole_metres']}"
    line = {"head": f"`{row['head']}`" + (" (model)" if row["model_head"] else ""), "grid": sc["label"],
            "outputs": ", ".join(row["outputs"]), "grids": grids, "floor": sc["floor"]["abs_rel"],
            "nearest": sc["floor_nearest"]["abs_rel"] if sc.get("floor_nearest") else None,
            "outside": f"{100 * sc['gt_outside_range_share']:.1f}%",
            "mis": misassignment_text(row) if first else "″"}
    for p in sc["probes"]:
        step = p["step_m"]
        cell = f"{format_length(1000 * step)} (±{format_length(500 * step)})" if _finite(step) else "clipped"
        line[f"p{p['depth_m']:g}"] = cell
    return line


def per_head_table_rows(rows: Sequence[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[float]]:
    """One markdown line per (head, grid scenario), and the probe depths used as columns."""
    probes = sorted({p["depth_m"] for r in rows for sc in r["scenarios"] for p in sc["probes"]})
    lines = [_table_line(r, sc, i == 0) for r in rows for i, sc in enumerate(r["scenarios"])]
    return lines, probes


def _per_head_section(rows, findings: list[str], plotted: bool) -> list[str]:
    out = ["## (d) Representability per head", ""]
    if not rows:
        return [*out, "Not computed.", ""]
    out += [f"Every registered head at the profile's {_grid_kind(rows[0])} activation grid, each output "
            "on its own per-tensor scale over its full range (as the NPU stores dual outputs); the model's "
            "own head also on its calibrated grid. *Step*: the gap between the two representable depths "
            "around a depth, with the max rounding error (half a step) in brackets; – outside the head's "
            "range. *GT floor*: abs_rel of decode(Q(encode(GT))) against GT on this test set; *nearest*: "
            "GT snapped to the nearest representable depth (outputs trained through the quantizer). "
            "*GT beyond range*: valid GT the head clamps. *Int misassignment*: share of valid pixels whose "
            "whole metre changes, with the mean error of those pixels.", ""]
    if plotted:
        out += [f"![Representability per head]({HEADS_PNG})", ""]
    lines, probes = per_head_table_rows(rows)
    columns = [("head", "head"), ("grid", "grid"), ("outputs", "outputs"), ("grids", "grid(s)")]
    columns += [(f"p{d:g}", f"step at {d:g} m") for d in probes]
    columns += [("floor", "GT abs_rel floor"), ("nearest", "floor, nearest"), ("outside", "GT beyond range"),
                ("mis", "int misassignment")]
    return [*out, _bullets(findings), "", table(lines, columns), ""]


def render_markdown(meta: dict[str, Any], sqnr_rows, budget_rows, rep, findings: dict[str, list[str]],
                    plotted: dict[str, bool], per_head: Sequence[dict[str, Any]] | None = None) -> str:
    lines = ["# npuq analysis report", ""]
    lines += [f"- **{k}**: {v}" for k, v in meta.items() if not isinstance(v, dict | list)]
    lines += [""]
    lines += _sqnr_section(sqnr_rows, findings["sqnr"], plotted["sqnr"])
    lines += _budget_section(budget_rows, findings["budget"], plotted["budget"])
    lines += _repr_section(rep, findings["representability"], plotted["representability"])
    lines += _per_head_section(per_head, findings.get("per_head", []), plotted.get("per_head", False))
    lines += [f"Machine-readable figures: [{ANALYSIS_JSON}]({ANALYSIS_JSON}).", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------- writing


def json_ready(obj: Any) -> Any:
    """Plain JSON types; non-finite floats become null (an infinite SQNR means an exact tensor)."""
    if isinstance(obj, dict):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if hasattr(obj, "tolist") and not isinstance(obj, str | bytes):
        return json_ready(obj.tolist())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    return str(obj)


def check_report_writable(out_dir: str | Path, force: bool) -> Path:
    """Refuse before any work when a report is already in ``out_dir`` and ``force`` is off."""
    return check_output_folder(out_dir, force, ANALYSIS_JSON)


def write_analysis_report(out_dir: str | Path, sqnr_rows: Sequence[dict[str, Any]] | None,
                          budget_rows: Sequence[dict[str, Any]] | None,
                          representability: dict[str, Any] | None,
                          meta: dict[str, Any], force: bool = False, *,
                          per_head: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Write ``report.md``, ``analysis.json`` and the PNG plots into ``out_dir``.

    Any of the sections may be None/empty (it is then reported as not computed); ``per_head`` are the
    ``compare_heads`` rows. Refuses to overwrite an existing report without ``force``. Returns
    ``{"out_dir", "files", "findings"}``.
    """
    out_dir = check_report_writable(out_dir, force)
    sqnr_rows, budget_rows = list(sqnr_rows or []), list(budget_rows or [])
    per_head = list(per_head or [])
    findings = all_findings(sqnr_rows, budget_rows, representability, per_head)
    plots: list[tuple[str, bool, Callable[[Path], None]]] = [
        (SQNR_PNG, bool(sqnr_rows), lambda p: plot_sqnr(sqnr_rows, p)),
        (BUDGET_PNG, bool(group_rows(budget_rows)), lambda p: plot_budget(budget_rows, p)),
        (REPR_PNG, bool(representability), lambda p: plot_representability(representability, p)),
        (HEADS_PNG, bool(per_head), lambda p: plot_per_head(per_head, p)),
    ]
    keys = {SQNR_PNG: "sqnr", BUDGET_PNG: "budget", REPR_PNG: "representability", HEADS_PNG: "per_head"}
    doc = {"format": FORMAT, "meta": meta, "findings": findings, "sqnr": sqnr_rows, "budget": budget_rows,
           "representability": representability, "representability_per_head": per_head}
    plotted = {keys[name]: wanted for name, wanted, _ in plots}
    md = render_markdown(meta, sqnr_rows, budget_rows, representability, findings, plotted, per_head)
    with atomic_folder(out_dir, force, ANALYSIS_JSON) as tmp:
        for name, wanted, plot in plots:
            if wanted:
                plot(tmp / name)
        write_text(tmp / REPORT_MD, md)
        write_json(tmp / ANALYSIS_JSON, json_ready(doc))
    files = [out_dir / name for name, wanted, _ in plots if wanted] + [out_dir / ANALYSIS_JSON,
                                                                        out_dir / REPORT_MD]
    return {"out_dir": str(out_dir), "files": [str(f) for f in files], "findings": findings}


# ------------------------------------------------------------------------------------------ driver


def sqnr_frames_of(dataset, n: int) -> Any:
    """``n`` frames spread evenly over the dataset (deterministic), stacked as one RGB tensor."""
    import torch

    if len(dataset) == 0:
        raise NpuqError(f"{getattr(dataset, 'root', 'dataset')}: no frames to analyse")
    picks = sorted(set(np.linspace(0, len(dataset) - 1, min(n, len(dataset))).round().astype(int).tolist()))
    rgbs = [dataset[i]["rgb"] for i in picks]
    if len({tuple(r.shape) for r in rgbs}) != 1:
        root = getattr(dataset, "root", "dataset")
        raise NpuqError(f"{root}: RGB frames differ in size; give an input size")
    return torch.stack(rgbs)


def run_analysis(model, sim, dataset, metric_cfg, out_dir: str | Path, progress: bool = False, *,
                 profile=None, sqnr_frames: int = 8, batch_size: int = 8,
                 partitions: Sequence[str] = ("kind", "stage"), meta: dict[str, Any] | None = None,
                 force: bool = False) -> dict[str, Any]:
    """Compute the diagnoses of ``sim`` (the QuantSim of the float ``model``) and write the report.

    ``dataset``: a DepthDataset whose RGB is at the model's input size (GT may be native). The SQNR
    uses ``sqnr_frames`` frames spread over it; the budget and the GT floor use all of it.
    ``partitions``: which error-budget groupings to run ("kind": weights / activations / output,
    "stage": encoder and decoder stages); each group costs two evaluations of the dataset.
    ``profile``: the QuantProfile (for the full-range output grids of every head); default
    ``sim.profile``. The result's ``representability_per_head`` holds the per-head rows.
    Refuses an existing report in ``out_dir`` without ``force`` before doing any work.
    """
    from npuq.analysis.budget import budget_groups, error_budget
    from npuq.analysis.representability import analyze_representability, default_scenarios
    from npuq.analysis.sensitivity import layer_sqnr
    from npuq.models.heads import depth_predictor

    out_dir = check_report_writable(out_dir, force)
    unknown = sorted(set(partitions) - {"kind", "stage"})
    if unknown:
        raise NpuqError(f"error budget: unknown partition(s) {unknown}; choose from kind, stage")
    model.eval()
    sim.eval()
    module_names = [name for name, _ in model.named_modules()]
    sqnr_rows = layer_sqnr(sim, sqnr_frames_of(dataset, sqnr_frames), module_names=module_names,
                           progress=progress)
    groups = [g for g in budget_groups(sim, module_names) if g.partition in partitions]
    budget_rows = error_budget(sim, depth_predictor(sim, model.head), dataset, metric_cfg, groups=groups,
                               batch_size=batch_size, progress=progress)
    act_cfg = getattr(profile or getattr(sim, "profile", None), "activations", None)
    scenarios = default_scenarios(model.head, sim, act_cfg)
    rep = analyze_representability(model.head, scenarios, dataset, metric_cfg)
    per_head = per_head_rows(model, sim, dataset, metric_cfg, act_cfg, batch_size)
    full_meta = {"head": model.head.name, "frames": len(dataset),
                 "sqnr_frames": min(sqnr_frames, len(dataset)),
                 "activation_quantizers": len(sim.quantizers),
                 "weight_quantizers": len(sim.weight_quantizers),
                 "metric": vars(metric_cfg).copy(), **(meta or {})}
    result = write_analysis_report(out_dir, sqnr_rows, budget_rows, rep, full_meta, force=force,
                                   per_head=per_head)
    fp32, int8 = reference_abs_rel(budget_rows)
    trend = sqnr_trend(sqnr_rows)
    result.update(fp32_abs_rel=fp32, int8_abs_rel=int8,
                  floors={sc["label"]: sc["floor"]["abs_rel"] for sc in rep["scenarios"]},
                  sqnr_slope_db_per_quantizer=trend["slope_db_per_quantizer"] if trend else None,
                  representability_per_head=json_ready(compact_rows(per_head)))
    return result


def compact_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The per-head rows without their plotting curves (for the command's printed result)."""
    return [{**r, "scenarios": [{k: v for k, v in sc.items() if k != "step_curve"} for sc in r["scenarios"]]}
            for r in rows]


def per_head_rows(model, sim, dataset, metric_cfg, act_cfg, batch_size: int = 8) -> list[dict[str, Any]]:
    """``compare_heads`` over the model's depth range; an ``int-frac`` model also gets its measured
    integer misassignment (INT8 sim against FP32 on ``dataset``)."""
    from npuq.analysis.representability import compare_heads, int_frac_model_misassignment

    head = model.head
    misassignment = (int_frac_model_misassignment(model, sim, dataset, metric_cfg, batch_size)
                     if hasattr(head, "integer_level") else None)
    config = getattr(model, "config", None)
    depth_range = (config.min_depth, config.max_depth) if config is not None else None
    return compare_heads(act_cfg, dataset, metric_cfg, model_head=head, sim=sim, misassignment=misassignment,
                         depth_range=depth_range)
