"""Assemble bench/README.md from bench/results/*.md, so every figure there is one the code printed.

    python bench/make_readme.py
"""

from __future__ import annotations

from common import REPO, RESULTS, write_text

INTRO = """# Benchmarks

Every table below is written by the benchmark scripts into `bench/results/` (JSON + markdown) and
copied here by `python bench/make_readme.py`. Each table lists the exact command, the data, the seed
and the machine. `make bench` runs all of them (`python bench/run_all.py`); each script can also be
run alone from the `bench/` folder. Timings come from this project's 2-core CPU machine and depend on
what else it was running; the accuracy figures do not.
"""

ANALYSIS = """## Diagnosis reports (`npuq analyze`)

`python bench/baseline_ptq.py --only NAME --parts analyze` simulates npu-default with the baseline's 100
random calibration frames of the training pool (seed 0) and runs `npuq analyze --quant` on 200 test
frames (synthetic: `synth:n=200,seed=1,size=128x160`; 7-Scenes: frames 800-999). For synthetic data
that is the same as `npuq analyze --model .npuq-cache/bench/reference-synthetic.pt --profile npu-default
--calib synth:n=20000,seed=0,size=128x160 --n-calib 100 --data synth:n=200,seed=1,size=128x160 --out DIR`.
Reports, with plots and JSON:
"""


# robustness rows that fine-tune: a fresh PTQ on validation frames along the way (bench/robustness.py)
CHAIN_CURVES = ("centre-logit+range-anchor+qaf-anchor", "centre-logit+range-anchor+distill-output",
                "centre-logit+range-anchor+qaf-rotate", "centre-logit+range-anchor+qaf-rotate-400",
                "centre-logit+qaf-rotate",
                "centre-logit+range-anchor+distill-rotate")
FINE_TUNE_CURVES = [
    *((row, "7scenes") for row in ("qaf", "distill", "centre-logit+qaf", "centre-logit+qaf-anchor",
                                   "centre-logit+distill", "centre-logit+distill-output", *CHAIN_CURVES)),
    *((row, "synthetic") for row in ("centre-logit+qaf", "centre-logit+range-anchor+qaf",
                                     "centre-logit+distill-output", *CHAIN_CURVES)),
]
SEED_TABLES = [("recommended", "7scenes", "The recommended chain over three seeds, 7-Scenes"),
               ("recommended", "synthetic", "The recommended chain over three seeds, synthetic"),
               ("recommended-ft", "7scenes", "recommended-ft over three seeds, 7-Scenes"),
               ("recommended-ft", "synthetic", "recommended-ft over three seeds, synthetic")]
# Training is deterministic per machine type, not across them: results on the other type's references
# are published with `--tag epyc` beside the untagged ones (AVX-512/AMX Xeon: 0.0889 / 0.0722).
MACHINE_TYPES = [("", ""), ("epyc", " (AMD EPYC machine type: references 0.0894 / 0.0597)")]
SECTIONS = [
    ("Synthetic data generator", "synth", "python bench/bench_synth.py"),
    ("FP32 reference model: synthetic", "reference-synthetic", "python bench/reference.py --only synthetic"),
    ("FP32 reference model: 7-Scenes", "reference-7scenes", "python bench/reference.py --only 7scenes"),
    ("Training curve of the synthetic reference (sequences, 64x96)", "curve-synthetic",
     "python bench/reference.py --only synthetic --retrain"),
    ("Baseline PTQ: synthetic", "baseline-synthetic", "python bench/baseline_ptq.py --only synthetic"),
    ("Baseline PTQ: 7-Scenes", "baseline-7scenes", "python bench/baseline_ptq.py --only 7scenes"),
    ("Calibrators against ONNX Runtime's quantize_static: 7-Scenes", "ort-calibrators-7scenes",
     "python bench/ort_agreement.py --only 7scenes"),
    ("Decoder thresholds against ONNX Runtime: 7-Scenes", "ort-calibrators-decoder-7scenes",
     "python bench/ort_agreement.py --only 7scenes"),
    ("Calibrators against ONNX Runtime's quantize_static: synthetic", "ort-calibrators-synthetic",
     "python bench/ort_agreement.py --only synthetic"),
    ("Decoder thresholds against ONNX Runtime: synthetic", "ort-calibrators-decoder-synthetic",
     "python bench/ort_agreement.py --only synthetic"),
    ("ONNX Runtime check of the QDQ export", "ort-agreement",
     "python bench/baseline_ptq.py --only synthetic --parts ort"),
    ("Cost of the simulation", "ptq-cost", "python bench/baseline_ptq.py --only synthetic --parts cost"),
    ("What-if matrix: 7-Scenes", "what-if-7scenes",
     "python bench/baseline_ptq.py --only 7scenes --parts matrix"),
    ("What-if matrix: synthetic", "what-if-synthetic",
     "python bench/baseline_ptq.py --only synthetic --parts matrix"),
    ("Bias correction semantics: 7-Scenes", "bias-correction-7scenes",
     "python bench/baseline_ptq.py --only 7scenes --parts bias"),
    ("Bias correction semantics: synthetic", "bias-correction-synthetic",
     "python bench/baseline_ptq.py --only synthetic --parts bias"),
    ("Phase 1: calibration sweep, 7-Scenes", "calib-sweep-7scenes",
     "python bench/calib_sweep.py --only 7scenes"),
    ("Phase 1: clipping thresholds, 7-Scenes", "calib-thresholds-7scenes",
     "python bench/calib_sweep.py --only 7scenes"),
    ("Phase 1: calibration sweep, synthetic", "calib-sweep-synthetic",
     "python bench/calib_sweep.py --only synthetic"),
    ("Phase 1: clipping thresholds, synthetic", "calib-thresholds-synthetic",
     "python bench/calib_sweep.py --only synthetic"),
    ("Phase 1: weight normalization, 7-Scenes", "weight-norm-7scenes",
     "python bench/weight_norm.py --only 7scenes"),
    ("Phase 1: weight normalization, synthetic", "weight-norm-synthetic",
     "python bench/weight_norm.py --only synthetic"),
    ("Phase 1: per-layer weight SQNR, 7-Scenes", "weight-norm-layers-7scenes",
     "python bench/weight_norm.py --only 7scenes"),
    ("Phase 1: per-layer weight SQNR, synthetic", "weight-norm-layers-synthetic",
     "python bench/weight_norm.py --only synthetic"),
    ("Phase 2: output heads, 7-Scenes", "heads-7scenes", "python bench/heads.py --only 7scenes"),
    ("Phase 2: output heads, synthetic", "heads-synthetic", "python bench/heads.py --only synthetic"),
    ("Robustness matrix: remedies under every calibrator, 7-Scenes", "robustness-7scenes",
     "python bench/robustness.py --only 7scenes"),
    ("Robustness matrix: remedies under every calibrator, synthetic", "robustness-synthetic",
     "python bench/robustness.py --only synthetic"),
    *((f"{title}{suffix}", f"roadmap-{plan}-{data}{f'-{tag}' if tag else ''}-seeds",
       f"python bench/roadmap.py --plan {plan} --only {data} --seeds 0,1,2{f' --tag {tag}' if tag else ''}")
      for plan, data, title in SEED_TABLES for tag, suffix in MACHINE_TYPES),
    ("Centred logit + QAF (no extra MACs) over three seeds, 7-Scenes",
     "roadmap-recommended-qaf-7scenes-seeds",
     "python bench/roadmap.py --plan recommended-qaf --only 7scenes --seeds 0,1,2"),
    ("Centred logit + output distillation (no extra MACs, no labels) over three seeds, 7-Scenes",
     "roadmap-recommended-kd-7scenes-seeds",
     "python bench/roadmap.py --plan recommended-kd --only 7scenes --seeds 0,1,2"),
    *((f"Fine-tune curve: {row}, {data}", f"curve-{row}-{data}",
       f"python bench/robustness.py --only {data} --rows {row}") for row, data in FINE_TUNE_CURVES),
    ("Mixed precision: FP16 share against INT8 abs_rel, 7-Scenes", "mixed-precision-7scenes",
     "python bench/mixed_precision.py --only 7scenes"),
    ("Probe kit: identifying ONNX Runtime's quantize_static", "probe-onnxruntime",
     "python bench/probe_onnxruntime.py"),
]
# `npuq roadmap` runs of shipped plans (bench/roadmap.py): the report as the user gets it, and its plot.
ROADMAPS = [("recommended", "7scenes"), ("recommended-ft", "7scenes"), ("recommended-qaf", "7scenes"),
            ("recommended-kd", "7scenes"), ("recommended", "synthetic"), ("path-c", "7scenes"),
            ("path-a", "7scenes"), ("path-b", "7scenes")]
PLOTS = {name: f"{name}.png" for name in ("calib-sweep-7scenes", "calib-sweep-synthetic",
                                          "mixed-precision-7scenes")}
# Written before the calibrator variants existed: their `kl` is npuq's earlier search, which is neither
# TensorRT's nor ONNX Runtime's (group edges rounded down, an empty last bin smoothed with 1e-4 instead of
# excluded, candidates from the first non-empty bin + 128, zeros dropped).
NO_CALIBRATION = ("synth", "reference-", "curve-", "roadmap-", "mixed-precision-")
LEGACY_KL = ("- calibrator: `kl` here is npuq's search before the calibrator variants (not `kl/tensorrt`): "
             "rerun pending\n")


# Measured on the earlier synthetic default (random worlds, 128x160, FP32 0.35): rerun pending.
OLD_SYNTHETIC = ("weight-norm-synthetic",
                 "weight-norm-layers-synthetic", "ort-agreement", "ptq-cost")
OLD_SYNTHETIC_NOTE = ("- data: the earlier synthetic default (random worlds, 128x160, reference FP32 0.35), "
                      "not the sequences: rerun pending\n")


def main() -> None:
    notes = REPO / "bench" / "notes"
    parts = [INTRO, *((notes / f"{name}.md").read_text() for name in ("calibrators", "demo", "remedies"))]
    for title, name, command in SECTIONS:
        result = RESULTS / f"{name}.md"
        body = result.read_text() if result.exists() else "_not run yet_\n"
        if result.exists() and "calibrator" not in body and not name.startswith(NO_CALIBRATION):
            body += LEGACY_KL
        if result.exists() and name in OLD_SYNTHETIC:
            body += OLD_SYNTHETIC_NOTE
        if name in PLOTS and (RESULTS / PLOTS[name]).exists():
            body += f"\n![{title}](results/{PLOTS[name]})\n"
        parts.append(f"## {title}\n\n`{command}`\n\n{body}")
    for plan, data in ROADMAPS:
        folder = RESULTS / f"roadmap-{plan}-{data}"
        if not (folder / "report.md").exists():
            continue
        report = (folder / "report.md").read_text().split("\n", 1)[1]  # its own title is ours
        command = f"python bench/roadmap.py --plan {plan} --only {data}"
        links = (f"![{plan} {data}](results/{folder.name}/roadmap.png)\n\nKorean report: "
                 f"[report.ko.md](results/{folder.name}/report.ko.md); the command and machine: "
                 f"[run.json](results/{folder.name}/run.json).\n")
        parts.append(f"## Roadmap `{plan}` on {data} (`npuq roadmap`)\n\n`{command}`\n{report}\n{links}")
    reports = [f"- [{name}](results/analysis-{name}/report.md)\n" for name in ("7scenes", "synthetic")
               if (RESULTS / f"analysis-{name}" / "report.md").exists()]
    if reports:
        parts.append(ANALYSIS + "".join(reports))
    write_text(REPO / "bench" / "README.md", "\n".join(parts))


if __name__ == "__main__":
    main()
