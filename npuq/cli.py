"""npuq: simulate a black-box NPU's INT8 PTQ of a depth network, diagnose it, and measure remedies."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from npuq.errors import NpuqError

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate the embedded synthetic RGB-D set.")
profile_app = typer.Typer(no_args_is_help=True, help="NPU profiles: validate and show.")
calib_app = typer.Typer(no_args_is_help=True, help="Calibration sets: select frames for the toolchain.")
app.add_typer(data_app, name="data")
app.add_typer(calib_app, name="calib")
app.add_typer(profile_app, name="profile")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"npuq {version('npuq')}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                help="Print the version and exit.")] = False) -> None:
    """npuq: simulate a black-box NPU's INT8 PTQ of a depth network, diagnose it, and measure remedies."""


def user_errors(fn):
    """Turn an NpuqError into one line on stderr and exit status 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except NpuqError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


MIN_INPUT_SIDE = 64  # ResNet's deepest feature is 1/32 of the input: reflection padding needs 2 pixels


def parse_size(text: str, network: bool = True) -> tuple[int, int]:
    """``HxW``; a network input must be multiples of 32 and at least 64 on each side."""
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise NpuqError(f"--size {text!r}: expected HxW, e.g. 128x160") from None
    if h <= 0 or w <= 0:
        raise NpuqError(f"--size {text!r}: height and width must be positive")
    if network and (h % 32 or w % 32 or min(h, w) < MIN_INPUT_SIDE):
        raise NpuqError(f"--size {text!r}: height and width must be multiples of 32 and at least "
                        f"{MIN_INPUT_SIDE}")
    return h, w


def check_positive(flag: str, value: float) -> None:
    """One error line naming the flag for a count or rate that must be a positive number."""
    if not (value == value and value > 0 and value != float("inf")):
        raise NpuqError(f"{flag} must be a positive number, got {value}")


def parse_frames(text: str | None) -> slice | None:
    """``800:1000`` selects frames by index order (splits are by frame index, never random)."""
    if not text:
        return None
    try:
        start, stop = (int(v) if v else None for v in text.split(":"))
    except ValueError:
        raise NpuqError(f"--frames {text!r}: expected START:STOP, e.g. 800:1000") from None
    return slice(start, stop)


def _frame_range(text: str | None) -> tuple[int, int] | None:
    span = parse_frames(text)
    if span is None:
        return None
    if span.start is None or span.stop is None:
        raise NpuqError(f"--frames {text!r}: training needs both ends, e.g. 0:800")
    return span.start, span.stop


def emit(result: dict[str, Any], as_json: bool, title: str) -> None:
    """Print figures as JSON (machine-readable) or as a table."""
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from npuq.report.tables import print_table

    flat = {k: v for k, v in result.items() if not isinstance(v, dict | list)}
    print_table([{"metric": k, "value": v} for k, v in flat.items()], ["metric", "value"], title=title)


LOSS_HELP = ("l1_inv, silog, berhu, a + combination of them, or head: the head's own loss "
             "(default for heads other than sigmoid-disp).")
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")]


@data_app.command("synth")
@user_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder.")],
    n: Annotated[int, typer.Option(help="Number of frames.")] = 1000,
    seed: Annotated[int, typer.Option(help="Generator seed.")] = 0,
    size: Annotated[str, typer.Option(help="Frame size HxW.")] = "128x160",
    force: ForceOpt = False,
) -> None:
    """Write a synthetic RGB-D folder dataset: RGB PNG, 16-bit depth PNG (mm), index.json."""
    from npuq.data.synthetic import write_synthetic_dataset

    check_positive("--n", n)
    path = write_synthetic_dataset(out, n=n, seed=seed, size=parse_size(size, network=False), force=force,
                                   progress=True)
    typer.echo(f"wrote {n} frames to {path}")


@calib_app.command("select")
@user_errors
def calib_select(
    pool: Annotated[str, typer.Option(help="Pool of candidate frames: dataset folder or synth: spec.")],
    n: Annotated[int, typer.Option(help="Frames to select.")],
    out: Annotated[Path, typer.Option(help="Selected frame list (one name per line).")],
    strategy: Annotated[str, typer.Option(help="random, stratified or diverse.")] = "diverse",
    model: Annotated[Path | None, typer.Option(help="FP32 checkpoint (features, size).")] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    report: Annotated[Path | None, typer.Option(help="Folder for the diversity report.")] = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Choose a calibration set; the report compares its coverage with a random pick of the same size."""
    from npuq.data.calib import select_calibration, write_selection
    from npuq.data.datasets import open_dataset
    from npuq.pipeline import load_float_model
    from npuq.report.calib_report import write_calib_report

    net, size = load_float_model(model) if model else (None, None)
    dataset = open_dataset(pool, size=size)
    selection = select_calibration(dataset, n, strategy, seed, model=net, progress=not as_json)
    write_selection(out, selection, force=force)
    result: dict[str, Any] = {"out": str(out), "strategy": strategy, "n": len(selection.indices),
                              "k_center_radius": selection.radius}
    if report:
        baseline = select_calibration(dataset, n, "random", seed, stats=selection.stats)
        result["report"] = write_calib_report(report, dataset, selection, baseline, force=force)
    emit(result, as_json, f"calibration set written to {out}")


@app.command()
@user_errors
def train(
    data: Annotated[str, typer.Option(help="Dataset folder or synth:n=..,seed=..,size=HxW spec.")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write (resumable).")],
    frames: Annotated[str | None, typer.Option(help="Frame range START:STOP of the dataset.")] = None,
    depth: Annotated[int, typer.Option(help="ResNet depth: 18, 34 or 50.")] = 18,
    head: Annotated[str, typer.Option(help="Output head.")] = "sigmoid-disp",
    size: Annotated[str, typer.Option(help="Input size HxW.")] = "128x160",
    steps: Annotated[int, typer.Option(help="Optimizer steps.")] = 3000,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 8,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    loss: Annotated[str | None, typer.Option(help=LOSS_HELP)] = None,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    init: Annotated[Path | None, typer.Option(help="Checkpoint to fine-tune from.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run saved at --out.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Supervised FP32 training (L1 on inverse depth / SILog / BerHu over 4 scales)."""
    from npuq.train.fp32 import TrainConfig
    from npuq.train.fp32 import train as run_training

    check_positive("--steps", steps)
    check_positive("--batch-size", batch_size)
    check_positive("--lr", lr)
    default_loss = "l1_inv+silog" if head == "sigmoid-disp" else "head"
    cfg = TrainConfig(
        data=data, frames=_frame_range(frames), depth=depth, head=head, size=parse_size(size), steps=steps,
        batch_size=batch_size, lr=lr, loss=loss or default_loss, seed=seed, init=str(init) if init else None,
        out=str(out), resume=resume, force=force,
    )
    path = run_training(cfg, progress=not as_json)
    emit({"checkpoint": str(path), "steps": steps, "seed": seed}, as_json, "training done")


@app.command("eval")
@user_errors
def evaluate(
    model: Annotated[Path, typer.Option(help="Float checkpoint.")],
    data: Annotated[str, typer.Option(help="Dataset folder or synth: spec.")],
    quant: Annotated[Path | None, typer.Option(help="QuantSim folder (npuq ptq): evaluate INT8.")] = None,
    frames: Annotated[str | None, typer.Option(help="Frame range START:STOP.")] = None,
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training size).")] = None,
    min_depth: Annotated[float, typer.Option(help="Valid GT lower bound (m).")] = 0.1,
    max_depth: Annotated[float, typer.Option(help="Valid GT upper bound (m).")] = 20.0,
    crop: Annotated[str | None, typer.Option(help="Evaluation crop: garg.")] = None,
    median_scaling: Annotated[bool, typer.Option(help="Median-scale predictions.")] = False,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 8,
    allow_pickle: Annotated[bool, typer.Option(help="Trust the checkpoint's pickled objects.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Depth metrics (abs_rel, sq_rel, rmse, rmse_log, a1-a3) of the FP32 or simulated INT8 model."""
    from npuq.analysis.metrics import MetricConfig
    from npuq.pipeline import evaluate_model

    check_positive("--batch-size", batch_size)
    cfg = MetricConfig(min_depth=min_depth, max_depth=max_depth, crop=crop, median_scaling=median_scaling)
    result = evaluate_model(
        model, data, metric_cfg=cfg, quant_dir=quant, frames=parse_frames(frames),
        size=parse_size(size) if size else None, batch_size=batch_size, allow_pickle=allow_pickle,
        progress=not as_json,
    )
    emit(result, as_json, "INT8 (simulated)" if quant else "FP32")


@app.command()
@user_errors
def ptq(
    model: Annotated[Path, typer.Option(help="Float checkpoint (what the vendor toolchain gets).")],
    profile: Annotated[str, typer.Option(help="Profile YAML or shipped name.")] = "npu-default",
    calib: Annotated[str, typer.Option(help="Calibration pool: dataset folder or synth: spec.")] = "",
    n_calib: Annotated[int, typer.Option(help="Calibration images.")] = 100,
    calib_list: Annotated[Path | None, typer.Option(help="File listing the calibration frames.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the random calibration pick.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder for the QuantSim.")] = Path("quant"),
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training size).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Trust the checkpoint's pickled objects.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Simulate the vendor toolchain: calibrate, clip, correct bias, equalize; save scales + profile."""
    from npuq.pipeline import run_ptq

    if not calib:
        raise NpuqError("--calib: a calibration pool (dataset folder or synth: spec) is required")
    summary = run_ptq(
        model, profile, calib, n_calib=n_calib, seed=seed, out=out, calib_list=calib_list,
        size=parse_size(size) if size else None, allow_pickle=allow_pickle, force=force,
        progress=not as_json,
    )
    emit(summary, as_json, "PTQ simulation")


@app.command()
@user_errors
def analyze(
    model: Annotated[Path, typer.Option(help="Float checkpoint.")],
    data: Annotated[str, typer.Option(help="Test data: dataset folder or synth: spec.")],
    out: Annotated[Path, typer.Option(help="Report folder (report.md, analysis.json, PNG plots).")],
    quant: Annotated[Path | None, typer.Option(help="QuantSim folder from `npuq ptq`.")] = None,
    profile: Annotated[str | None, typer.Option(help="Profile, to simulate afresh.")] = None,
    calib: Annotated[str | None, typer.Option(help="Calibration pool, to simulate afresh.")] = None,
    n_calib: Annotated[int, typer.Option(help="Calibration images.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the random calibration pick.")] = 0,
    frames: Annotated[str | None, typer.Option(help="Frame range START:STOP of the test data.")] = None,
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training size).")] = None,
    min_depth: Annotated[float, typer.Option(help="Valid GT lower bound (m).")] = 0.1,
    max_depth: Annotated[float, typer.Option(help="Valid GT upper bound (m).")] = 20.0,
    allow_pickle: Annotated[bool, typer.Option(help="Trust the checkpoint's pickled objects.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Diagnose where abs_rel is lost: per-layer SQNR, error budget, output representability."""
    from npuq.analysis.metrics import MetricConfig
    from npuq.pipeline import analyze as run

    result = run(
        model, data, out, MetricConfig(min_depth=min_depth, max_depth=max_depth), quant_dir=quant,
        profile=profile, calib=calib, n_calib=n_calib, seed=seed, frames=parse_frames(frames),
        size=parse_size(size) if size else None, allow_pickle=allow_pickle, force=force,
        progress=not as_json,
    )
    emit(result, as_json, f"analysis written to {out}")
    if not as_json and result.get("representability_per_head"):
        print_per_head(result["representability_per_head"])


def print_per_head(rows: list[dict[str, Any]]) -> None:
    """The per-head representability rows as a short terminal table (the full one is in report.md)."""
    from npuq.report.analyze import format_length, misassignment_text
    from npuq.report.tables import print_table

    def error_span(probes: list[dict[str, Any]]) -> str:
        done = [p for p in probes if p["max_error_mm"] is not None]
        return " .. ".join(f"±{format_length(p['max_error_mm'])} at {p['depth_m']:g} m"
                           for p in (done[:1] + done[-1:] if len(done) > 1 else done))

    table = [{"head": r["head"], "grid": sc["label"], "GT abs_rel floor": sc["floor"]["abs_rel"],
              "max rounding error": error_span(sc["probes"]), "int misassignment": misassignment_text(r)}
             for r in rows for sc in r["scenarios"]]
    print_table(table, list(table[0]), title="Representability per head (details in report.md)")


@app.command()
@user_errors
def export(
    model: Annotated[Path, typer.Option(help="Float checkpoint.")],
    out: Annotated[Path, typer.Option(help="ONNX file to write.")],
    float_onnx: Annotated[bool, typer.Option("--float-onnx", help="Export the float model.")] = False,
    calib_set: Annotated[Path | None, typer.Option(help="Hand-off: frame list (calib select).")] = None,
    calib: Annotated[str | None, typer.Option(help="Hand-off: the calibration pool.")] = None,
    n_calib: Annotated[int, typer.Option(help="Hand-off: random frames when no --calib-set.")] = 100,
    onnx_qdq: Annotated[bool, typer.Option("--onnx-qdq", help="Export the QuantSim as ONNX QDQ.")] = False,
    quant: Annotated[Path | None, typer.Option(help="QuantSim folder (for --onnx-qdq).")] = None,
    check_data: Annotated[str | None, typer.Option(help="Frames to cross-check ONNX Runtime on.")] = None,
    n_check: Annotated[int, typer.Option(help="Frames used by the cross-check.")] = 8,
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training size).")] = None,
    allow_pickle: Annotated[bool, typer.Option(help="Trust the checkpoint's pickled objects.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """ONNX export, cross-checked in ONNX Runtime (QDQ: integer kernels vs the simulator)."""
    from npuq.pipeline import export_onnx

    if float_onnx == onnx_qdq:
        raise NpuqError("choose exactly one of --float-onnx and --onnx-qdq")
    if float_onnx and (calib or calib_set):
        from npuq.export.handoff import export_handoff

        if not calib:
            raise NpuqError("--calib-set lists frame names: give the pool they come from with --calib")
        result = export_handoff(model, calib, calib_set, out, n_calib=n_calib, size=parse_size(size) if size
                                else None, force=force, allow_pickle=allow_pickle, progress=not as_json)
        emit(result, as_json, f"hand-off written to {out}")
        return
    result = export_onnx(
        model, out, quant_dir=quant, qdq=onnx_qdq, check_data=check_data, n_check=n_check,
        size=parse_size(size) if size else None, allow_pickle=allow_pickle, force=force,
    )
    emit(result, as_json, f"exported {out}")


@app.command("weight-norm")
@user_errors
def weight_norm(
    model: Annotated[Path, typer.Option(help="FP32 checkpoint to fine-tune.")],
    data: Annotated[str, typer.Option(help="Training data: dataset folder or synth: spec.")],
    out: Annotated[Path, typer.Option(help="Float checkpoint to write (what the toolchain gets).")],
    strength: Annotated[float, typer.Option(help="Weight of the range-imbalance penalty.")] = 0.05,
    steps: Annotated[int, typer.Option(help="Fine-tune steps.")] = 300,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    allow_pickle: Annotated[bool, typer.Option(help="Trust the checkpoint's pickled objects.")] = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Short fine-tune that balances per-channel weight ranges so per-tensor scales lose less."""
    from npuq.models.checkpoint import load_checkpoint_dict
    from npuq.train.weight_norm import WeightNormConfig, finetune_weight_norm

    check_positive("--steps", steps)
    check_positive("--lr", lr)
    cfg = WeightNormConfig(strength=strength, steps=steps, lr=lr, seed=seed)
    path = finetune_weight_norm(model, data, cfg, out, progress=not as_json, force=force,
                                allow_pickle=allow_pickle)
    report = load_checkpoint_dict(path)["extra"]["weight_norm"]
    result: dict[str, Any] = {"checkpoint": str(path)}
    for when in ("before", "after"):
        for key in ("imbalance_db", "per_tensor_sqnr_db"):
            result[f"{key} mean {when}"] = report[when][key]["mean"]
    emit(result, as_json, "weight normalization")


@app.command()
@user_errors
def roadmap(
    plan: Annotated[str, typer.Argument(help="Shipped plan name (path-a, path-b, path-c, recommended, demo) "
                                             "or a plan YAML.")],
    data: Annotated[str, typer.Option(help="Training data (dataset folder or synth: spec).")],
    test: Annotated[str, typer.Option(help="Test data, scored only: no remedy or choice sees it.")],
    model: Annotated[Path | None, typer.Option(help="Float checkpoint to start from (else the plan's "
                                                    "'start').")] = None,
    frames: Annotated[str | None, typer.Option(help="Frame range START:STOP of --data.")] = None,
    val: Annotated[str | None, typer.Option(help="Validation data for choices (default: the last 10%% "
                                                 "of the training frames, held out of training).")] = None,
    val_frames: Annotated[str | None, typer.Option(help="Frame range START:STOP of --val.")] = None,
    test_frames: Annotated[str | None, typer.Option(help="Frame range START:STOP of --test.")] = None,
    profile: Annotated[str | None, typer.Option(help="Profile YAML or shipped name (default: the "
                                                     "plan's).")] = None,
    n_calib: Annotated[int | None, typer.Option(help="Baseline calibration frames (default: the "
                                                     "plan's).")] = None,
    min_depth: Annotated[float, typer.Option(help="Valid GT lower bound (m).")] = 0.1,
    max_depth: Annotated[float, typer.Option(help="Valid GT upper bound (m).")] = 20.0,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder (finished steps are cached there).")] = Path(
        "runs/roadmap"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    lang: Annotated[str, typer.Option(help="en, or ko: also write report.ko.md.")] = "en",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Run a roadmap plan: every step a remedy, every step judged by a fresh simulated PTQ."""
    from npuq.roadmap.cli_support import roadmap_inputs
    from npuq.roadmap.runner import run_roadmap

    if lang not in ("en", "ko"):
        raise NpuqError(f"--lang must be en or ko, got {lang!r}")
    loaded, start, ctx, test_ref = roadmap_inputs(
        plan, data=data, test=test, model=model, frames=_frame_range(frames), val=val,
        val_frames=_frame_range(val_frames), test_frames=_frame_range(test_frames), profile=profile,
        n_calib=n_calib, min_depth=min_depth, max_depth=max_depth, seed=seed, out=out, device=device,
        progress=not as_json)
    result = run_roadmap(loaded, start, ctx, test_ref, out, force=force, lang=lang)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from npuq.report.roadmap import COLUMNS, table_rows
    from npuq.report.tables import print_table

    print_table(table_rows(result), COLUMNS, title=f"npuq roadmap {loaded.name}: {result['profile']} "
                f"({result['calibrator']}), abs_rel on {test_ref}")
    for name, path in result["outputs"].items():
        typer.echo(f"{name:>10}: {path}")


@profile_app.command("show")
@user_errors
def profile_show(profile: Annotated[str, typer.Argument(help="Profile YAML or shipped name.")]) -> None:
    """Validate a profile and print it with all defaults filled in."""
    from npuq.quant.profile import load_profile

    loaded = load_profile(profile)
    typer.echo(f"# activation calibrator: {loaded.activations.calibrator}")
    typer.echo(loaded.to_yaml(), nl=False)


@app.command()
@user_errors
def demo(
    quick: Annotated[bool, typer.Option("--quick", help="Smaller data, input and budgets (~2 min).")] = False,
    out: Annotated[Path, typer.Option(help="Output folder (its cache/ holds the trained reference).")] = Path(
        "runs/demo"),
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "cpu",
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """The main job on the embedded default: synthetic sequences, FP32 reference, the demo roadmap."""
    from npuq.demo import DemoConfig, run_demo
    from npuq.device import resolve_device

    resolve_device(device)
    make = DemoConfig.quick if quick else DemoConfig
    summary = run_demo(make(out=out, force=force, device=device))
    if as_json:
        typer.echo(json.dumps(summary, indent=2))


def main() -> None:
    try:
        app()
    except NpuqError as exc:  # raised outside a command body (e.g. while parsing)
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
