"""`npuq demo`: the main job on the embedded default, end to end, with nothing to download.

Synthetic sequences (fixed worlds, one camera, smooth trajectories; rendered in memory) -> the FP32
reference (trained, or reused from ``OUT/cache``) -> the shipped ``demo`` plan through the roadmap
runner: Baseline (the vendor toolchain simulated with ``npu-default`` on random calibration frames),
Phase 1, Phase 2 (the head chosen on validation frames) and Path C, each judged by a fresh simulated
PTQ on test frames no step saw. Prints what each phase bought and where the report and plot are.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npuq.errors import NpuqError
from npuq.io import write_json
from npuq.progress import stderr_console

MARKER = "demo.json"


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("runs/demo")
    # The recipe (bench/README, training curve): 64x96 learns the sequences fastest per CPU second.
    size: tuple[int, int] = (64, 96)
    n_frames: int = 2000  # the whole sequence set: train, validation and test parts by time step
    seed: int = 0
    steps: int = 900
    batch_size: int = 8
    lr: float = 1e-3
    init_depth: float | None = 3.0  # output bias at a typical scene depth (npuq.train.fp32.TrainConfig)
    plan: str = "demo"
    profile: str | None = None  # default: the plan's
    device: str = "cpu"
    force: bool = False

    @classmethod
    def quick(cls, **changes: Any) -> DemoConfig:
        small = cls(n_frames=640, steps=250, plan="demo-quick")
        return dataclasses.replace(small, **changes)

    def spec(self, part: str) -> str:
        h, w = self.size
        return f"synth:mode=sequence,n={self.n_frames},seed={self.seed},size={h}x{w},part={part}"


def _prepare_out(cfg: DemoConfig) -> None:
    out = cfg.out
    if out.exists() and not out.is_dir():
        raise NpuqError(f"{out}: exists and is not a folder (--out)")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists() and not cfg.force:
        raise NpuqError(f"{out}: exists and was not written by npuq demo; pass --force or choose --out")
    out.mkdir(parents=True, exist_ok=True)


def _mark(cfg: DemoConfig, status: str) -> None:
    config = {**dataclasses.asdict(cfg), "out": str(cfg.out)}
    write_json(cfg.out / MARKER, {"config": config, "status": status})


def reference_model(cfg: DemoConfig, console) -> Path:
    """Train the FP32 reference, or reuse (resume) the cached checkpoint of exactly this training run."""
    from npuq.remedies.base import json_digest
    from npuq.train.fp32 import TrainConfig, train

    tcfg = TrainConfig(data=cfg.spec("train"), steps=cfg.steps, size=cfg.size, batch_size=cfg.batch_size,
                       lr=cfg.lr, seed=cfg.seed, init_depth=cfg.init_depth, max_depth=100.0, out="",
                       save_every=max(50, cfg.steps // 5), device=cfg.device)
    digest = json_digest(tcfg.to_dict())[:12]
    ckpt = cfg.out / "cache" / f"reference-{digest}.pt"
    tcfg = dataclasses.replace(tcfg, out=str(ckpt))
    if ckpt.exists():
        from npuq.models.checkpoint import load_checkpoint_dict

        if load_checkpoint_dict(ckpt)["extra"].get("train", {}).get("finished"):
            console.print(f"model: reusing cached reference {ckpt}", markup=False)
            return ckpt
        console.print(f"model: resuming interrupted training {ckpt}", markup=False)
        return train(dataclasses.replace(tcfg, resume=True), progress=True)
    console.print(f"model: training DepthResNet-18 for {cfg.steps} steps at {cfg.size[0]}x{cfg.size[1]} "
                  f"-> {ckpt}", markup=False)
    ckpt.parent.mkdir(parents=True, exist_ok=True)
    start = time.monotonic()
    path = train(tcfg, progress=True)
    console.print(f"model: trained in {time.monotonic() - start:.0f} s", markup=False)
    return path


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    from npuq.analysis.metrics import MetricConfig
    from npuq.quant.profile import load_profile
    from npuq.remedies.base import Context, DataRef
    from npuq.roadmap.plan import load_plan
    from npuq.roadmap.runner import run_roadmap, start_handoff

    console = stderr_console()
    plan = load_plan(cfg.plan)
    _prepare_out(cfg)
    _mark(cfg, "running")
    ckpt = reference_model(cfg, console)
    test = DataRef(cfg.spec("test"))
    ctx = Context(DataRef(cfg.spec("train")), DataRef(cfg.spec("val")), cfg.out / "roadmap",
                  MetricConfig(min_depth=0.1, max_depth=20.0), cfg.seed, True, cfg.device)
    profile = load_profile(cfg.profile or plan.profile)
    start = start_handoff(ckpt, ctx, profile, plan.calib_size, ctx.work_dir)
    result = run_roadmap(plan, start, ctx, test, ctx.work_dir, force=True, lang="ko")
    _mark(cfg, "done")
    _print_summary(result, ckpt, console)
    return result


def _print_summary(result: dict[str, Any], ckpt: Path, console) -> None:
    from npuq.report.roadmap import COLUMNS, table_rows
    from npuq.report.tables import print_table

    title = f"npuq demo: {result['profile']} ({result['calibrator']}), abs_rel on {result['data']['test']}"
    print_table(table_rows(result), COLUMNS, console=console, title=title)
    for row in result["rows"][2:]:
        console.print(f"{row['step']}: INT8 {row['int8']:.4f}, {100 * row['change_vs_baseline']:+.1f}% vs "
                      f"Baseline ({row['int8_over_reference']:.2f}x the reference FP32)", markup=False)
    for name, path in (("reference", ckpt), *result["outputs"].items()):
        console.print(f"{name:>10}: {path}", markup=False)
