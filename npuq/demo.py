"""`npuq demo`: the main job on the embedded default, end to end, with nothing to download.

Synthetic data -> FP32 reference model (trained, or reused from the cache) -> FP32 metrics ->
the vendor toolchain simulated with npu-default -> INT8 metrics -> diagnosis report -> summary.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from npuq.errors import NpuqError
from npuq.io import write_json, write_text

MARKER = "demo.json"
CACHE = Path(".npuq-cache") / "models"


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    size: tuple[int, int] = (128, 160)
    n_train: int = 2000
    n_test: int = 200
    steps: int = 1500
    batch_size: int = 8
    n_calib: int = 100
    profile: str = "npu-default"
    seed: int = 0
    force: bool = False

    @classmethod
    def quick(cls, **changes: Any) -> DemoConfig:
        small = cls(size=(64, 96), n_train=400, n_test=64, steps=250, n_calib=32)
        return dataclasses.replace(small, **changes)


def _prepare_out(cfg: DemoConfig) -> None:
    out = cfg.out
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not cfg.force:
        raise NpuqError(f"{out}: exists and was not written by npuq demo; pass --force or choose --out")
    out.mkdir(parents=True, exist_ok=True)


def _mark(cfg: DemoConfig, status: str) -> None:
    config = {**dataclasses.asdict(cfg), "out": str(cfg.out)}
    write_json(cfg.out / MARKER, {"config": config, "status": status})


def _dataset(cfg: DemoConfig, split: str, n: int, seed: int, console: Console) -> Path:
    """A synthetic folder dataset, regenerated only when its definition changed."""
    from npuq.data.synthetic import write_synthetic_dataset

    path = cfg.out / "data" / split
    index = path / "index.json"
    if index.exists():
        saved = json.loads(index.read_text())
        if saved.get("seed") == seed and len(saved.get("frames", [])) == n and \
                list(saved.get("size", [])) == list(cfg.size):
            console.print(f"data/{split}: reusing {n} frames in {path}")
            return path
    console.print(f"data/{split}: generating {n} synthetic frames (seed {seed}, {cfg.size[0]}x{cfg.size[1]})")
    return write_synthetic_dataset(path, n=n, seed=seed, size=cfg.size, force=True, progress=True)


def _reference_model(cfg: DemoConfig, train_dir: Path, console: Console) -> Path:
    """Train the FP32 reference, or reuse the cached checkpoint of exactly this training run."""
    from npuq.train.fp32 import TrainConfig, train

    tcfg = TrainConfig(data=str(train_dir), steps=cfg.steps, size=cfg.size, batch_size=cfg.batch_size,
                       seed=cfg.seed, out="")
    key = {**tcfg.to_dict(), "data": {"synthetic_seed": cfg.seed, "n": cfg.n_train}}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    ckpt = CACHE / f"reference-{digest}.pt"
    tcfg = dataclasses.replace(tcfg, out=str(ckpt))
    if ckpt.exists():
        from npuq.models.checkpoint import load_checkpoint_dict

        if load_checkpoint_dict(ckpt)["extra"].get("train", {}).get("finished"):
            console.print(f"model: reusing cached reference {ckpt}")
            return ckpt
        console.print(f"model: resuming interrupted training {ckpt}")
        return train(dataclasses.replace(tcfg, resume=True), progress=True)
    console.print(f"model: training DepthResNet-18 for {cfg.steps} steps -> {ckpt}")
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    return train(tcfg, progress=True)


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    from npuq.analysis.metrics import MetricConfig
    from npuq.pipeline import analyze, evaluate_model, run_ptq
    from npuq.report.tables import print_table

    console = Console(stderr=True)
    _prepare_out(cfg)
    _mark(cfg, "running")
    train_dir = _dataset(cfg, "train", cfg.n_train, cfg.seed, console)
    test_dir = _dataset(cfg, "test", cfg.n_test, cfg.seed + 1, console)
    ckpt = _reference_model(cfg, train_dir, console)
    metric_cfg = MetricConfig(min_depth=0.1, max_depth=20.0)

    console.print("eval: FP32")
    fp32 = evaluate_model(ckpt, str(test_dir), metric_cfg, size=cfg.size)
    quant_dir = cfg.out / "quant" / cfg.profile
    console.print(f"ptq: simulating the vendor toolchain ({cfg.profile}, {cfg.n_calib} random calib images)")
    run_ptq(ckpt, cfg.profile, str(train_dir), n_calib=cfg.n_calib, seed=cfg.seed, out=quant_dir,
            size=cfg.size, force=True)
    console.print("eval: INT8 (simulated)")
    int8 = evaluate_model(ckpt, str(test_dir), metric_cfg, quant_dir=quant_dir, size=cfg.size)
    console.print("analyze: per-layer SQNR, error budget, output representability")
    report_dir = cfg.out / "analysis"
    analysis = analyze(ckpt, str(test_dir), report_dir, metric_cfg, quant_dir=quant_dir, size=cfg.size,
                       force=True)

    rows = [
        {"Phase": "FP32 reference", "abs_rel (measured)": fp32["abs_rel"], "change vs baseline": ""},
        {"Phase": f"Baseline INT8 ({cfg.profile})", "abs_rel (measured)": int8["abs_rel"],
         "change vs baseline": "0.0%"},
    ]
    columns = ["Phase", "abs_rel (measured)", "change vs baseline"]
    print_table(rows, columns, title=f"npuq demo: abs_rel on {cfg.n_test} held-out synthetic frames")
    summary = {
        "data": {"train": str(train_dir), "test": str(test_dir)},
        "checkpoint": str(ckpt),
        "quant": str(quant_dir),
        "report": str(report_dir / "report.md"),
        "fp32": fp32,
        "int8": int8,
        "int8_over_fp32": int8["abs_rel"] / fp32["abs_rel"],
        "output_floor_abs_rel": analysis.get("floors"),
        "table": rows,
    }
    from npuq.report.tables import markdown_table

    write_text(cfg.out / "summary.md", markdown_table(rows, columns) + "\n")
    write_json(cfg.out / "summary.json", summary)
    _mark(cfg, "done")
    for label, path in (("data", cfg.out / "data"), ("checkpoint", ckpt), ("INT8 scales", quant_dir),
                        ("report", report_dir / "report.md"), ("summary", cfg.out / "summary.json")):
        console.print(f"{label:>12}: {path}")
    return summary
