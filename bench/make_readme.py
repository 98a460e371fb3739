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


SECTIONS = [
    ("Synthetic data generator", "synth", "python bench/bench_synth.py"),
    ("FP32 reference model: synthetic", "reference-synthetic", "python bench/reference.py --only synthetic"),
    ("FP32 reference model: 7-Scenes", "reference-7scenes", "python bench/reference.py --only 7scenes"),
    ("Baseline PTQ: synthetic", "baseline-synthetic", "python bench/baseline_ptq.py --only synthetic"),
    ("Baseline PTQ: 7-Scenes", "baseline-7scenes", "python bench/baseline_ptq.py --only 7scenes"),
    ("ONNX Runtime check", "ort-agreement", "python bench/baseline_ptq.py --only synthetic --parts ort"),
    ("Cost of the simulation", "ptq-cost", "python bench/baseline_ptq.py --only synthetic --parts cost"),
    ("What-if matrix", "what-if-synthetic", "python bench/baseline_ptq.py --only synthetic --parts matrix"),
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
]
PLOTS = {name: f"{name}.png" for name in ("calib-sweep-7scenes", "calib-sweep-synthetic")}


def main() -> None:
    parts = [INTRO]
    for title, name, command in SECTIONS:
        result = RESULTS / f"{name}.md"
        body = result.read_text() if result.exists() else "_not run yet_\n"
        if name in PLOTS and (RESULTS / PLOTS[name]).exists():
            body += f"\n![{title}](results/{PLOTS[name]})\n"
        parts.append(f"## {title}\n\n`{command}`\n\n{body}")
    reports = [f"- [{name}](results/analysis-{name}/report.md)\n" for name in ("7scenes", "synthetic")
               if (RESULTS / f"analysis-{name}" / "report.md").exists()]
    if reports:
        parts.append(ANALYSIS + "".join(reports))
    write_text(REPO / "bench" / "README.md", "\n".join(parts))


if __name__ == "__main__":
    main()
