"""Reference FP32 benchmark: train DepthResNet-18 and report FP32 metrics and training time.

    python bench/reference.py [--only synthetic|7scenes] [--retrain]

Synthetic: the embedded sequences (four fixed worlds along smooth trajectories, seed 0), 64x96 input;
train on the first 75% of every trajectory, test on the last 15% (after a 5% gap and 5% validation).
7-Scenes: train on redkitchen frames 000000-000799, test on 000800-000999 (split by frame index).
Checkpoints are cached under .npuq-cache/bench/ and reused unless --retrain.
"""

from __future__ import annotations

import argparse
import dataclasses

from common import CACHE, SEVEN_SCENES, Timer, publish

from npuq.analysis.metrics import MetricConfig
from npuq.pipeline import evaluate_model
from npuq.train.fp32 import TrainConfig, train

SIZE = (128, 160)  # 7-Scenes input
SYNTH_SIZE = (64, 96)  # the synthetic sequences' recipe (bench/README: training curve)
# 4000 frames of four fixed worlds: train = first 75% of each trajectory (3000), test = last 15% (600)
SYNTH_SEQUENCES = "synth:mode=sequence,n=4000,seed=0,size=64x96"
CURVE_STRIDE = 3  # every 3rd test frame: all four worlds and the whole test stretch of each
RUNS = {
    "synthetic": {
        "train": TrainConfig(data=f"{SYNTH_SEQUENCES},part=train", steps=5000, size=SYNTH_SIZE, seed=0,
                             init_depth=3.0, out=str(CACHE / "reference-synthetic-seq.pt"), save_every=250),
        "test": f"{SYNTH_SEQUENCES},part=test",
        "curve_every": 500,
        "test_frames": None,
        "metric": MetricConfig(min_depth=0.1, max_depth=20.0),
    },
    "7scenes": {
        "train": TrainConfig(data=str(SEVEN_SCENES), frames=(0, 800), steps=2000, size=SIZE, seed=0,
                             out=str(CACHE / "reference-7scenes.pt"), save_every=500),
        "test": str(SEVEN_SCENES),
        "test_frames": slice(800, 1000),
        "metric": MetricConfig(min_depth=0.1, max_depth=10.0),
    },
}


def input_size(name: str) -> tuple[int, int]:
    """The input size the reference of ``name`` is trained and quantized at."""
    return RUNS[name]["train"].size


def test_description(run: dict) -> str:
    """The test data of a run, with its frame range when it has one."""
    frames = run["test_frames"]
    return run["test"] + (f" frames {frames.start}:{frames.stop}" if frames else "")


def reference_checkpoint(name: str, retrain: bool = False) -> tuple[str, float | None]:
    """The cached reference checkpoint of ``name``, training it first if needed; (path, train seconds)."""
    cfg = RUNS[name]["train"]
    from pathlib import Path

    from npuq.models.checkpoint import load_checkpoint_dict

    path = Path(cfg.out)
    if path.exists() and not retrain:
        extra = load_checkpoint_dict(path)["extra"]
        if extra["train"].get("finished"):
            return str(path), extra.get("bench_train_seconds")
        cfg = dataclasses.replace(cfg, resume=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    curve_every = RUNS[name].get("curve_every")
    if not curve_every:
        with Timer() as t:
            train(dataclasses.replace(cfg, force=True), progress=True)
        _record_seconds(path, t.seconds)
        return str(path), t.seconds
    return str(path), _train_with_curve(name, cfg, curve_every)


def _train_with_curve(name: str, cfg, every: int) -> float:
    """Train in segments of ``every`` steps (pause, score, resume: the same run as one piece) and record
    abs_rel against steps on every CURVE_STRIDE-th test frame; returns the training seconds alone."""
    from npuq.models.checkpoint import load_checkpoint_dict

    run, seconds, curve = RUNS[name], 0.0, []
    frames = slice(None, None, CURVE_STRIDE)
    stop = load_checkpoint_dict(cfg.out)["extra"]["train"]["step"] if cfg.resume else 0
    while stop < cfg.steps:
        stop = min(cfg.steps, stop + every)
        with Timer() as t:
            train(dataclasses.replace(cfg, force=True, stop_at_step=stop), progress=True)
        seconds += t.seconds
        cfg = dataclasses.replace(cfg, resume=True)
        m = evaluate_model(cfg.out, run["test"], run["metric"], frames=frames, size=input_size(name))
        curve.append({"step": stop, "train seconds": round(seconds), "abs_rel": m["abs_rel"]})
        print(f"{name}: step {stop}, {seconds:.0f} s, abs_rel {m['abs_rel']:.4f}", flush=True)
    _record_seconds(cfg.out, seconds, curve)
    title = f"Training curve of the {name} reference (abs_rel on every {CURVE_STRIDE}rd test frame)"
    publish(f"curve-{name}", title, curve, list(curve[0]), {"train": cfg.to_dict(), "test": run["test"]})
    return seconds


def _record_seconds(path, seconds: float, curve: list | None = None) -> None:
    from npuq.io import save_torch
    from npuq.models.checkpoint import load_checkpoint_dict

    ckpt = load_checkpoint_dict(path)
    ckpt["extra"]["bench_train_seconds"] = seconds
    if curve is not None:
        ckpt["extra"]["bench_curve"] = curve
    save_torch(path, ckpt)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--retrain", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, run in RUNS.items():
        if args.only and name != args.only:
            continue
        ckpt, seconds = reference_checkpoint(name, args.retrain)
        m = evaluate_model(ckpt, run["test"], run["metric"], frames=run["test_frames"], size=input_size(name))
        cfg = run["train"]
        train_frames = f" frames {cfg.frames[0]}:{cfg.frames[1]}" if cfg.frames else ""
        test_frames = run["test_frames"]
        test_frames = f" frames {test_frames.start}:{test_frames.stop}" if test_frames else ""
        rows.append({"dataset": name, "train data": cfg.data + train_frames,
                     "test data": run["test"] + test_frames,
                     "input": f"{cfg.size[0]}x{cfg.size[1]}",
                     "steps x batch": f"{cfg.steps}x{cfg.batch_size}",
                     "train minutes": round(seconds / 60, 1) if seconds else "cached",
                     **{k: m[k] for k in ("abs_rel", "sq_rel", "rmse", "rmse_log", "a1", "a2", "a3")},
                     "test frames": m["n_images"]})
    publish(f"reference{'-' + args.only if args.only else ''}", "FP32 reference DepthResNet-18",
            rows, list(rows[0]), {"seed": 0, "loss": RUNS["synthetic"]["train"].loss,
                                  "lr": RUNS["synthetic"]["train"].lr})


if __name__ == "__main__":
    main()
