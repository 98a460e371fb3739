"""`npuq demo`: the main job on the embedded default, end to end, with nothing to download.

Synthetic data -> FP32 reference model (trained, or reused from the cache) -> FP32 metrics ->
Baseline: the vendor toolchain simulated with npu-default on random calibration frames -> diagnosis ->
Phase 1: a diverse calibration set, then weight normalization -> Phase 2: the Phase 1 model fine-tuned
into every output head on equal terms, the best one chosen on validation frames -> the roadmap table.

Every INT8 figure comes from a fresh ``simulate_ptq`` of a float checkpoint, scored on the same held-out
test frames. The head is chosen on separate validation frames, so the test frames pick nothing.
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
    n_val: int = 100  # Phase 2 picks its head on these (a third synthetic seed)
    n_diverse: int = 300  # Phase 1 calibration set
    weight_norm_steps: int = 200
    head_steps: int = 200  # Phase 2, per head: FP32 fine-tune steps
    # ... then fake-quant fine-tune steps of the head; off: on the 7-Scenes reference it cost FP32 more
    # than it gained INT8 (bench/heads.py, "stages 1+2" rows)
    head_qaf_steps: int = 0
    heads: tuple[str, ...] = ("sigmoid-disp", "int-frac", "coarse-residual", "log-depth")
    profile: str = "npu-default"
    seed: int = 0
    force: bool = False

    @classmethod
    def quick(cls, **changes: Any) -> DemoConfig:
        small = cls(size=(64, 96), n_train=400, n_test=64, steps=250, n_calib=32, n_val=32, n_diverse=64,
                    weight_norm_steps=40, head_steps=40)
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


@dataclass
class _Run:
    """What every stage of the demo shares."""

    cfg: DemoConfig
    console: Console
    train_dir: Path
    test_dir: Path
    val_dir: Path
    metric_cfg: Any

    def int8(self, ckpt: Path, calib_rgb, data: Path | None = None) -> float:
        """INT8-sim abs_rel of a float checkpoint after a fresh simulate_ptq on ``calib_rgb``."""
        from npuq.analysis.metrics import evaluate
        from npuq.data.datasets import open_dataset
        from npuq.pipeline import depth_predictor, load_float_model
        from npuq.quant import simulate_ptq
        from npuq.quant.profile import load_profile

        model, size = load_float_model(ckpt, self.cfg.size)
        sim = simulate_ptq(model, load_profile(self.cfg.profile), calib_rgb, progress=True)
        dataset = open_dataset(str(data or self.test_dir), size=size, depth_at="native")
        return evaluate(depth_predictor(sim, model.head), dataset, self.metric_cfg, progress=True)["abs_rel"]

    def fp32(self, ckpt: Path) -> float:
        from npuq.pipeline import evaluate_model

        return evaluate_model(ckpt, str(self.test_dir), self.metric_cfg, size=self.cfg.size)["abs_rel"]


def _baseline(run: _Run, ckpt: Path) -> tuple[dict[str, Any], Path, Path]:
    from npuq.pipeline import analyze, evaluate_model, run_ptq

    cfg = run.cfg
    quant_dir = cfg.out / "quant" / cfg.profile
    run.console.print(f"baseline: simulating the vendor toolchain ({cfg.profile}, {cfg.n_calib} random "
                      "calibration frames)")
    run_ptq(ckpt, cfg.profile, str(run.train_dir), n_calib=cfg.n_calib, seed=cfg.seed, out=quant_dir,
            size=cfg.size, force=True)
    int8 = evaluate_model(ckpt, str(run.test_dir), run.metric_cfg, quant_dir=quant_dir, size=cfg.size)
    run.console.print("diagnosis: per-layer SQNR, error budget, output representability")
    report_dir = cfg.out / "analysis"
    analysis = analyze(ckpt, str(run.test_dir), report_dir, run.metric_cfg, quant_dir=quant_dir,
                       size=cfg.size, force=True)
    return {"int8": int8, "output_floor_abs_rel": analysis.get("floors")}, quant_dir, report_dir


def _phase1(run: _Run, ckpt: Path) -> dict[str, Any]:
    """A diverse calibration set alone, then with the weight-normalized model."""
    from npuq.data.calib import select_calibration, stack_rgb, write_selection
    from npuq.data.datasets import open_dataset
    from npuq.models.checkpoint import load_model
    from npuq.train.weight_norm import WeightNormConfig, finetune_weight_norm

    cfg = run.cfg
    run.console.print(f"phase 1: selecting {cfg.n_diverse} diverse calibration frames (k-center greedy)")
    pool = open_dataset(str(run.train_dir), size=cfg.size)
    selection = select_calibration(pool, cfg.n_diverse, "diverse", cfg.seed, model=load_model(ckpt).eval(),
                                   progress=True)
    write_selection(cfg.out / "phase1" / "calib-diverse.txt", selection, force=True)
    calib_rgb = stack_rgb(pool, selection.indices)
    diverse = run.int8(ckpt, calib_rgb)
    run.console.print(f"phase 1: weight normalization ({cfg.weight_norm_steps} steps)")
    wn_ckpt = cfg.out / "phase1" / "weight-norm.pt"
    wn_cfg = WeightNormConfig(steps=cfg.weight_norm_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                              size=cfg.size)
    finetune_weight_norm(ckpt, str(run.train_dir), wn_cfg, wn_ckpt, progress=True, force=True)
    return {"calib_list": str(cfg.out / "phase1" / "calib-diverse.txt"), "calib_rgb": calib_rgb,
            "int8_diverse": diverse, "checkpoint": wn_ckpt, "fp32": run.fp32(wn_ckpt),
            "int8": run.int8(wn_ckpt, calib_rgb)}


def _phase2(run: _Run, phase1: dict[str, Any]) -> dict[str, Any]:
    """Every head fine-tuned from the Phase 1 model on equal terms; the best on validation frames wins."""
    from npuq.train.head_finetune import HeadFinetuneConfig, finetune_head

    cfg = run.cfg
    candidates = {}
    for head in cfg.heads:
        run.console.print(f"phase 2: fine-tuning into head {head} ({cfg.head_steps} FP32 + "
                          f"{cfg.head_qaf_steps} fake-quant steps)")
        hcfg = HeadFinetuneConfig(head=head, data=str(run.train_dir), size=cfg.size, steps=cfg.head_steps,
                                  batch_size=cfg.batch_size, qaf_steps=cfg.head_qaf_steps,
                                  profile=cfg.profile, seed=cfg.seed)
        ckpt = finetune_head(phase1["checkpoint"], hcfg, phase1["calib_rgb"],
                             cfg.out / "phase2" / f"{head}.pt", force=True, progress=True)
        val_int8 = run.int8(ckpt, phase1["calib_rgb"], run.val_dir)
        candidates[head] = {"checkpoint": str(ckpt), "val_int8": val_int8}
    best = min(candidates, key=lambda h: candidates[h]["val_int8"])
    ckpt = Path(candidates[best]["checkpoint"])
    return {"heads": candidates, "best": best, "checkpoint": str(ckpt), "fp32": run.fp32(ckpt),
            "int8": run.int8(ckpt, phase1["calib_rgb"])}


def roadmap_rows(fp32: float, baseline: float, phases: list[tuple[str, float]]) -> list[dict[str, Any]]:
    """The user's roadmap table: Phase | abs_rel (measured) | change vs baseline."""
    rows = [{"Phase": "FP32 reference", "abs_rel (measured)": fp32, "change vs baseline": ""},
            {"Phase": "Baseline", "abs_rel (measured)": baseline, "change vs baseline": "+0.0%"}]
    rows += [{"Phase": name, "abs_rel (measured)": value,
              "change vs baseline": f"{100 * (value / baseline - 1):+.1f}%"} for name, value in phases]
    return rows


def run_demo(cfg: DemoConfig) -> dict[str, Any]:
    from npuq.analysis.metrics import MetricConfig
    from npuq.report.tables import markdown_table, print_table

    console = Console(stderr=True)
    _prepare_out(cfg)
    _mark(cfg, "running")
    run = _Run(cfg, console, _dataset(cfg, "train", cfg.n_train, cfg.seed, console),
               _dataset(cfg, "test", cfg.n_test, cfg.seed + 1, console),
               _dataset(cfg, "val", cfg.n_val, cfg.seed + 2, console),
               MetricConfig(min_depth=0.1, max_depth=20.0))
    ckpt = _reference_model(cfg, run.train_dir, console)
    console.print("eval: FP32")
    fp32 = run.fp32(ckpt)
    baseline, quant_dir, report_dir = _baseline(run, ckpt)
    phase1 = _phase1(run, ckpt)
    phase2 = _phase2(run, phase1)
    rows = roadmap_rows(fp32, baseline["int8"]["abs_rel"], [
        (f"Phase 1a: {cfg.n_diverse} diverse calibration frames", phase1["int8_diverse"]),
        ("Phase 1: + weight normalization", phase1["int8"]),
        (f"Phase 2: Phase 1 + best head ({phase2['best']})", phase2["int8"]),
    ])
    columns = ["Phase", "abs_rel (measured)", "change vs baseline"]
    print_table(rows, columns, title=f"npuq demo: INT8-sim ({cfg.profile}) abs_rel on {cfg.n_test} held-out "
                "synthetic frames")
    phase1 = {k: (str(v) if isinstance(v, Path) else v) for k, v in phase1.items() if k != "calib_rgb"}
    summary = {
        "data": {"train": str(run.train_dir), "test": str(run.test_dir), "val": str(run.val_dir)},
        "checkpoint": str(ckpt), "quant": str(quant_dir), "report": str(report_dir / "report.md"),
        "fp32": fp32, "baseline": baseline, "phase1": phase1, "phase2": phase2,
        "int8_over_fp32": baseline["int8"]["abs_rel"] / fp32, "table": rows,
    }
    write_text(cfg.out / "summary.md", markdown_table(rows, columns) + "\n")
    write_json(cfg.out / "summary.json", summary)
    _mark(cfg, "done")
    for label, path in (("data", cfg.out / "data"), ("checkpoint", ckpt), ("INT8 scales", quant_dir),
                        ("report", report_dir / "report.md"), ("phase 1", cfg.out / "phase1"),
                        ("phase 2", cfg.out / "phase2"), ("summary", cfg.out / "summary.json")):
        console.print(f"{label:>12}: {path}")
    return summary
