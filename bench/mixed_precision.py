"""Mixed precision Pareto: INT8 abs_rel against the share of the network kept in FP16.

    python bench/mixed_precision.py --only 7scenes

On the 7-Scenes reference hand-off of bench/robustness.py (npu-default, its 100 calibration frames):
``npuq.analysis.mixed_precision.select_fp16_layers`` ranks every layer on 32 validation frames
(720-799) and adds them greedily until INT8 is within 1.0x FP32; eight points of that curve, and the
first within 1.05x (the smallest greedy FP16 set within 5% of FP32), are then each a fresh simulated
PTQ with those layers requested in FP16, scored on test frames 800-999 under npu-default.
The plot shows test INT8 / reference FP32 against the FP16 share of MACs and of stored activation
elements.
"""

from __future__ import annotations

import argparse
import dataclasses

from common import CACHE, RESULTS, publish
from reference import input_size, reference_checkpoint
from robustness import DATA, DEFAULT

from npuq.analysis.mixed_precision import fp16_pattern, select_fp16_layers
from npuq.measure import float_metrics, measure
from npuq.models.checkpoint import load_model
from npuq.quant import simulate_ptq
from npuq.remedies import Context
from npuq.roadmap.runner import start_handoff

VAL_FRAMES = 32
MAX_POINTS = 8
ANSWER = 1.05  # "the smallest FP16 set within 5% of FP32": the first greedy point there on validation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(DATA), default="7scenes")
    args = parser.parse_args()
    spec, size = DATA[args.only], input_size(args.only)
    ckpt, _ = reference_checkpoint(args.only)
    ctx = Context(spec["train"], spec["val"], CACHE / "robustness", spec["metric"], seed=0, progress=True)
    start = start_handoff(ckpt, dataclasses.replace(ctx, train=spec["calib_pool"]), DEFAULT, 100,
                          CACHE / "robustness")
    model = load_model(start.checkpoint).eval()
    reference_fp32 = float_metrics(model, spec["test"].open(size, "native"), spec["metric"])["abs_rel"]
    sim = simulate_ptq(model, DEFAULT, start.calib.rgb(size), progress=True)
    val = spec["val"].open(size, "native")
    step = max(1, len(val) // VAL_FRAMES)
    items = [val[i] for i in range(0, len(val), step)][:VAL_FRAMES]
    result = select_fp16_layers(model, sim, items, spec["metric"], target=1.0, progress=True)
    picks = {round(i * (len(result.curve) - 1) / (MAX_POINTS - 1)) for i in range(MAX_POINTS)}
    within = next((i for i, p in enumerate(result.curve) if p.abs_rel <= ANSWER * result.fp32), None)
    picks = sorted(picks | ({within} if within is not None else set()))
    rows = []
    for point in (result.curve[i] for i in picks):
        profile = DEFAULT.replace(fp16_layers=tuple(fp16_pattern(n) for n in point.units))
        score = measure(dataclasses.replace(start, profile=profile), spec["test"], spec["metric"],
                        reference_fp32)
        rows.append({"FP16 layers": len(point.units), "last added": point.units[-1] if point.units else "",
                     "MAC share": point.mac_share, "activation share": point.act_share,
                     "val INT8 / val FP32": point.abs_rel / result.fp32, "test INT8": score.int8["abs_rel"],
                     "test INT8 / ref FP32": score.int8["abs_rel"] / reference_fp32})
        print(f"{len(point.units)} FP16 layers: test INT8 {score.int8['abs_rel']:.4f}", flush=True)
    answer = result.curve[within] if within is not None else None
    top = sorted(result.sensitivity, key=lambda r: -r["buys"])[:10]
    context = {"reference": ckpt, "reference_fp32": reference_fp32, "profile": "npu-default",
               "calibration": f"100 random frames of {spec['calib_pool']}, seed 0",
               "selection": f"{len(items)} frames of {spec['val']}", "test": str(spec["test"]),
               f"smallest greedy FP16 set within {ANSWER}x val FP32":
                   list(answer.units) if answer else f"none within {ANSWER}x",
               "greedy order": [list(p.units)[-1] for p in result.curve[1:]],
               "top sensitivities (val abs_rel bought in FP16 alone)":
                   {r["unit"]: round(r["buys"], 4) for r in top}}
    publish(f"mixed-precision-{args.only}", f"Mixed precision Pareto ({args.only}, npu-default)", rows,
            list(rows[0]), context)
    _plot(rows, RESULTS / f"mixed-precision-{args.only}.png")


def _plot(rows: list[dict], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key, marker in (("MAC share", "o-"), ("activation share", "s--")):
        ax.plot([100 * r[key] for r in rows], [r["test INT8 / ref FP32"] for r in rows], marker, label=key)
    ax.axhline(1.05, color="grey", lw=0.8, ls=":", label="1.05x FP32")
    ax.set_xlabel("share kept in FP16 (%)")
    ax.set_ylabel("test INT8 / reference FP32")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
