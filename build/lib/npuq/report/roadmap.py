"""Rendering of a roadmap run: the markdown report (English or Korean) and the bar chart.

Numbers, file names and step labels are the same in both languages; only the prose and the column
headers are translated (the user's plan is written in Korean and the report is what they share).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from npuq.io import atomic_write
from npuq.report.tables import markdown_table

COLUMNS = ("step", "remedy", "fp32", "int8", "int8_over_reference", "change_vs_baseline",
           "user_expects_vs_baseline", "seconds")
HEADERS = {
    "en": {"step": "Step", "remedy": "Remedy", "fp32": "FP32 abs_rel (hand-off)", "int8": "INT8 abs_rel",
           "int8_over_reference": "INT8 / reference FP32", "change_vs_baseline": "change vs Baseline",
           "user_expects_vs_baseline": "user's plan expects", "seconds": "wall time (s)"},
    "ko": {"step": "단계", "remedy": "기법", "fp32": "FP32 abs_rel (전달 모델)", "int8": "INT8 abs_rel",
           "int8_over_reference": "INT8 / 기준 FP32", "change_vs_baseline": "Baseline 대비 변화",
           "user_expects_vs_baseline": "계획서 기대치", "seconds": "소요 시간 (초)"},
}
TEXT = {
    "en": {
        "title": "npuq roadmap: {title}",
        "intro": ("Every INT8 figure is a fresh simulated PTQ ({profile}, activation calibrator "
                  "{calibrator}) of the float model that would be handed to the vendor, with the calibration "
                  "set that would be handed over, scored on test frames no remedy saw ({test}). Training "
                  "data: {train}; validation (for choices): {val}; seed {seed}."),
        "target": ("Reference FP32 abs_rel {ref:.4f}. The user's need (0.05 at FP32 0.0304, i.e. 1.64x FP32) "
                   "corresponds to INT8 abs_rel {target:.4f} here."),
        "final": "Final hand-off: `{handoff}` (float ONNX + calibration tensors + requested profile).",
        "chosen": "Step '{step}' chose '{chosen}' on validation frames: {scores}.",
        "cached": "Wall times of cached steps are those of the run that computed them.",
    },
    "ko": {
        "title": "npuq 로드맵: {title}",
        "intro": ("모든 INT8 수치는 벤더에 전달될 float 모델과 보정(calibration) 세트를 "
                  "새로 시뮬레이션한 PTQ ({profile}, 활성화 보정기 {calibrator}) 결과이며, "
                  "어떤 기법도 보지 않은 테스트 프레임({test})으로 평가했습니다. "
                  "학습 데이터: {train}; 선택용 검증 데이터: {val}; 시드 {seed}."),
        "target": ("기준 FP32 abs_rel {ref:.4f}. 요구 조건(FP32 0.0304에서 0.05, 즉 FP32의 1.64배)은 "
                   "여기서 INT8 abs_rel {target:.4f}에 해당합니다."),
        "final": "최종 전달물: `{handoff}` (float ONNX + 보정 텐서 + 요청 프로파일).",
        "chosen": "단계 '{step}'는 검증 프레임에서 '{chosen}'을(를) 선택했습니다: {scores}.",
        "cached": "캐시된 단계의 소요 시간은 해당 단계를 처음 계산한 실행의 시간입니다.",
    },
}


def _percent(value: float | None) -> str:
    return "" if value is None else f"{100 * value:+.1f}%"


def _ratio(value: float | None) -> str:
    return "" if value is None else f"{value:.2f}x"


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for row in result["rows"]:
        rows.append({**row, "int8": "" if row["int8"] is None else row["int8"],
                     "int8_over_reference": _ratio(row["int8_over_reference"]),
                     "change_vs_baseline": _percent(row["change_vs_baseline"]),
                     "user_expects_vs_baseline": _percent(row["user_expects_vs_baseline"]),
                     "seconds": "" if row["seconds"] is None else f"{row['seconds']:.0f}"})
    return rows


def render_report(result: dict[str, Any], lang: str = "en") -> str:
    text, headers = TEXT[lang], HEADERS[lang]
    plan, data = result["plan"], result["data"]
    rows = [{headers[c]: r[c] for c in COLUMNS} for r in table_rows(result)]
    lines = [f"# {text['title'].format(title=plan['title'] or plan['name'])}", "",
             text["intro"].format(profile=result["profile"], calibrator=result["calibrator"],
                                  test=data["test"], train=data["train"], val=data["val"],
                                  seed=result["seed"]),
             "",
             text["target"].format(ref=result["reference_fp32"], target=result["target"]["equivalent"]), "",
             markdown_table(rows, [headers[c] for c in COLUMNS]), ""]
    for row in result["rows"]:
        notes = row.get("notes") or {}
        if "chosen" in notes:
            scores = ", ".join(f"{name} INT8 {v['int8']:.4f}" for name, v in notes["validation"].items())
            lines += [text["chosen"].format(step=row["step"], chosen=notes["chosen"], scores=scores), ""]
    lines += [text["final"].format(handoff=result["outputs"]["handoff"]), "", text["cached"], ""]
    return "\n".join(lines)


def render_plot(result: dict[str, Any], path: Path) -> Path:
    """Bar chart of INT8 abs_rel per step, with the reference FP32 and the user's target as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["int8"] is not None]
    labels = [r["step"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6.0, 1.4 * len(rows)), 4.2))
    ax.bar(range(len(rows)), [r["int8"] for r in rows], color="#4c72b0", label="INT8 abs_rel (simulated PTQ)")
    ax.plot(range(len(rows)), [r["fp32"] for r in rows], "o", color="#55a868",
            label="FP32 abs_rel of the hand-off")
    ax.axhline(result["reference_fp32"], color="#55a868", linestyle="--", label="reference FP32")
    ax.axhline(result["target"]["equivalent"], color="#c44e52", linestyle=":",
               label="user's target (0.05 at FP32 0.0304)")
    ax.set_xticks(range(len(rows)), [label if len(label) < 28 else label[:26] + "…" for label in labels],
                  rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(result["metric"])
    ax.set_title(f"{result['plan']['name']}: {result['profile']} ({result['calibrator']})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)
    return path
