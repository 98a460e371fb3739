"""npuq: simulate a black-box NPU's INT8 PTQ of a depth network, diagnose it, and measure remedies."""

from __future__ import annotations

import functools
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from npuq.errors import Interrupted, NpuqError


def fail(message: str, code: int) -> None:
    typer.echo(f"error: {message}", err=True)
    sys.exit(code)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt  # SIGTERM unwinds like Ctrl-C: temporaries removed, training checkpointed


class OneLineErrors(TyperGroup):
    """Every failure ends in one ``error:`` line on stderr: a bad or missing flag and a bad input exit
    2, an interrupt (Ctrl-C, SIGTERM) 130. Never a traceback or a usage panel."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        in_main_thread = threading.current_thread() is threading.main_thread()  # signals: main thread only
        previous = signal.signal(signal.SIGTERM, _interrupt) if in_main_thread else None
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NpuqError as exc:
            fail(str(exc), exc.exit_code)
        except (KeyboardInterrupt, typer.Abort):
            fail("interrupted", 130)
        except TyperException as exc:  # typer's (vendored click's) usage errors: bad or missing flags
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `npuq` or `npuq calib`: the help
                typer.echo(exc.format_message(), err=True)
                sys.exit(2)
            ctx = getattr(exc, "ctx", None)
            where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            fail(exc.format_message().rstrip(".") + where, getattr(exc, "exit_code", 2))
        finally:
            if in_main_thread:
                signal.signal(signal.SIGTERM, previous)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(cls=OneLineErrors, no_args_is_help=True, add_completion=False,
                  pretty_exceptions_enable=False, rich_markup_mode=None, help=__doc__)
data_app = typer.Typer(no_args_is_help=True, help="Datasets: generate the embedded synthetic RGB-D set.")
profile_app = typer.Typer(no_args_is_help=True, help="NPU profiles: validate and show.")
calib_app = typer.Typer(no_args_is_help=True, help="Calibration sets: select frames for the toolchain.")
probe_app = typer.Typer(no_args_is_help=True, help="Identify the vendor toolchain: export the probe kit, fit "
                                                   "a profile to the device's outputs.")
app.add_typer(data_app, name="data")
app.add_typer(calib_app, name="calib")
app.add_typer(profile_app, name="profile")
app.add_typer(probe_app, name="probe")


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
    """Turn an NpuqError (and Ctrl-C / SIGTERM) into one line on stderr and its exit status, never a
    traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            try:
                return fn(*args, **kwargs)
            except KeyboardInterrupt:  # typer would turn it into a silent exit 130
                raise Interrupted("interrupted") from None
        except NpuqError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(exc.exit_code) from None

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
PickleOpt = Annotated[bool, typer.Option("--allow-pickle", help="Trust the checkpoint's pickled objects.")]
CalibListOpt = Annotated[Path | None, typer.Option(help="File listing the calibration frames (npuq calib "
                                                        "select), instead of a random pick.")]
CalibFramesOpt = Annotated[str | None, typer.Option(
    "--frames", help="Frame range START:STOP of --calib (keep calibration off the test frames).")]


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
    calib: Annotated[str, typer.Option(help="Pool of candidate frames: dataset folder or synth: spec.")],
    n: Annotated[int, typer.Option(help="Frames to select.")],
    out: Annotated[Path, typer.Option(help="Selected frame list (one name per line).")],
    frames: CalibFramesOpt = None,
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
    from npuq.io import check_writable
    from npuq.pipeline import load_float_model
    from npuq.report.calib_report import check_report_writable, write_calib_report

    check_positive("--n", n)
    check_writable(out, force)
    if report:
        check_report_writable(report, force)
    net, size = load_float_model(model) if model else (None, None)
    dataset = open_dataset(calib, size=size, frames=parse_frames(frames))
    selection = select_calibration(dataset, n, strategy, seed, model=net, progress=not as_json)
    result: dict[str, Any] = {"out": str(out), "strategy": strategy, "n": len(selection.indices),
                              "k_center_radius": selection.radius}
    if report:
        baseline = select_calibration(dataset, n, "random", seed, stats=selection.stats)
        result["report"] = write_calib_report(report, dataset, selection, baseline, force=force)
    write_selection(out, selection, force=force)  # last: a failed report leaves no half of the output
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
    save_every: Annotated[int, typer.Option(help="Save a resumable checkpoint every N steps (and always "
                                                 "on Ctrl-C / SIGTERM).")] = 500,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Supervised FP32 training (L1 on inverse depth / SILog / BerHu over 4 scales)."""
    from npuq.train.fp32 import TrainConfig
    from npuq.train.fp32 import train as run_training

    check_positive("--steps", steps)
    check_positive("--batch-size", batch_size)
    check_positive("--lr", lr)
    check_positive("--save-every", save_every)
    default_loss = "l1_inv+silog" if head == "sigmoid-disp" else "head"
    cfg = TrainConfig(
        data=data, frames=_frame_range(frames), depth=depth, head=head, size=parse_size(size), steps=steps,
        batch_size=batch_size, lr=lr, loss=loss or default_loss, seed=seed, init=str(init) if init else None,
        out=str(out), resume=resume, force=force, save_every=save_every,
    )
    try:
        path = run_training(cfg, progress=not as_json)
    except KeyboardInterrupt:
        kept = f"progress saved in {out}; add --resume to continue" if out.is_file() else "nothing saved"
        raise Interrupted(f"training interrupted; {kept}") from None
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
    allow_pickle: PickleOpt = False,
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
    calib: Annotated[str, typer.Option(help="Calibration pool: dataset folder or synth: spec.")],
    profile: Annotated[str, typer.Option(help="Profile YAML or shipped name.")] = "npu-default",
    frames: CalibFramesOpt = None,
    n_calib: Annotated[int, typer.Option(help="Calibration images.")] = 100,
    calib_list: CalibListOpt = None,
    seed: Annotated[int, typer.Option(help="Seed of the random calibration pick.")] = 0,
    out: Annotated[Path, typer.Option(help="Output folder for the QuantSim.")] = Path("quant"),
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training size).")] = None,
    allow_pickle: PickleOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Simulate the vendor toolchain: calibrate, clip, correct bias, equalize; save scales + profile."""
    from npuq.pipeline import run_ptq

    check_positive("--n-calib", n_calib)
    summary = run_ptq(
        model, profile, calib, n_calib=n_calib, seed=seed, out=out, calib_list=calib_list,
        frames=parse_frames(frames),
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
    allow_pickle: PickleOpt = False,
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
    calib_list: CalibListOpt = None,
    calib: Annotated[str | None, typer.Option(help="Hand-off: the calibration pool.")] = None,
    frames: CalibFramesOpt = None,
    n_calib: Annotated[int, typer.Option(help="Hand-off: random frames when no --calib-list.")] = 100,
    onnx_qdq: Annotated[bool, typer.Option("--onnx-qdq", help="Export the QuantSim as ONNX QDQ.")] = False,
    quant: Annotated[Path | None, typer.Option(help="QuantSim folder (for --onnx-qdq).")] = None,
    check_data: Annotated[str | None, typer.Option(help="Frames to cross-check ONNX Runtime on.")] = None,
    n_check: Annotated[int, typer.Option(help="Frames used by the cross-check.")] = 8,
    min_agreement: Annotated[float, typer.Option(help="QDQ: refuse the export when fewer output elements "
                                                      "than this share agree with the simulator.")] = 0.99,
    size: Annotated[str | None, typer.Option(help="Input size HxW (default: the training size).")] = None,
    allow_pickle: PickleOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """ONNX export, cross-checked in ONNX Runtime (QDQ: integer kernels vs the simulator)."""
    from npuq.pipeline import export_onnx

    if float_onnx == onnx_qdq:
        raise NpuqError("choose exactly one of --float-onnx and --onnx-qdq")
    check_positive("--n-check", n_check)
    if not 0.0 <= min_agreement <= 1.0:
        raise NpuqError(f"--min-agreement must lie in [0, 1], got {min_agreement}")
    if float_onnx and (calib or calib_list):
        from npuq.export.handoff import export_handoff

        if not calib:
            raise NpuqError("--calib-list lists frame names: give the pool they come from with --calib")
        check_positive("--n-calib", n_calib)
        result = export_handoff(model, calib, calib_list, out, n_calib=n_calib, frames=parse_frames(frames),
                                size=parse_size(size) if size else None, force=force,
                                allow_pickle=allow_pickle, progress=not as_json)
        emit(result, as_json, f"hand-off written to {out}")
        return
    result = export_onnx(
        model, out, quant_dir=quant, qdq=onnx_qdq, check_data=check_data, n_check=n_check,
        size=parse_size(size) if size else None, allow_pickle=allow_pickle, force=force,
        min_agreement=min_agreement,
    )
    emit(result, as_json, f"exported {out}")


@app.command("weight-norm")
@user_errors
def weight_norm(
    model: Annotated[Path, typer.Option(help="FP32 checkpoint to fine-tune.")],
    data: Annotated[str, typer.Option(help="Training data: dataset folder or synth: spec.")],
    out: Annotated[Path, typer.Option(help="Float checkpoint to write (what the toolchain gets).")],
    frames: Annotated[str | None, typer.Option(help="Frame range START:STOP of --data.")] = None,
    strength: Annotated[float, typer.Option(help="Weight of the range-imbalance penalty.")] = 0.05,
    steps: Annotated[int, typer.Option(help="Fine-tune steps.")] = 300,
    lr: Annotated[float, typer.Option(help="Learning rate.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    allow_pickle: PickleOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Short fine-tune that balances per-channel weight ranges so per-tensor scales lose less."""
    from npuq.models.checkpoint import load_checkpoint_dict
    from npuq.train.weight_norm import WeightNormConfig, finetune_weight_norm

    check_positive("--steps", steps)
    check_positive("--lr", lr)
    if not strength >= 0:
        raise NpuqError(f"--strength must be zero or positive, got {strength}")
    cfg = WeightNormConfig(strength=strength, steps=steps, lr=lr, seed=seed, frames=_frame_range(frames))
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
    plan: Annotated[str, typer.Argument(help="Shipped plan name (path-a, path-b, path-c, recommended, "
                                             "recommended-ft, recommended-qaf, recommended-kd, demo, "
                                             "demo-quick) or a plan YAML.")],
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


@probe_app.command("export")
@user_errors
def probe_export(
    out: Annotated[Path, typer.Option(help="Kit folder to write (probes, calibration, inputs, README).")],
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the probe kit: tiny float ONNX models to compile with the vendor toolchain."""
    from npuq.probe import export_kit

    manifest = export_kit(out, force=force)
    if as_json:
        typer.echo(json.dumps(manifest, indent=2))
        return
    typer.echo(f"wrote {len(manifest['probes'])} probes to {out}; next: follow {out / 'README.md'}")


@probe_app.command("fit")
@user_errors
def probe_fit(
    outputs: Annotated[Path, typer.Option(help="The device's outputs (layout in the kit's README).")],
    kit: Annotated[Path | None, typer.Option(help="Kit folder (npuq probe export): fit a profile.")] = None,
    model: Annotated[Path | None, typer.Option(help="With --handoff: confirm profiles on your net.")] = None,
    handoff: Annotated[Path | None, typer.Option(help="Hand-off the device outputs come from.")] = None,
    profile: Annotated[list[str] | None, typer.Option(help="With --handoff: a profile to compare (repeat; "
                                                           "default: the shipped ones).")] = None,
    out: Annotated[Path | None, typer.Option(help="Write the fitted profile YAML here.")] = None,
    allow_pickle: PickleOpt = False,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Fit a profile to the device's outputs on the kit (every field with its evidence and confidence),
    or, with --model and --handoff, say how well each profile reproduces the device on your network."""
    if (kit is None) == (handoff is None) or (handoff is None) != (model is None):
        raise NpuqError("give --kit (fit a profile), or --model and --handoff (confirm on your network)")
    if handoff is not None:
        _probe_confirm(model, handoff, outputs, profile, allow_pickle, as_json)
        return
    from npuq.io import check_writable, write_text
    from npuq.probe import fit_kit

    if out is not None:
        check_writable(out, force)
    result = fit_kit(kit, outputs)
    if out is not None and result.fits:
        write_text(out, result.profile.to_yaml(), force=force)
    if as_json:
        written = str(out) if out and result.fits else None
        typer.echo(json.dumps({**result.to_dict(), "out": written}, indent=2))
    else:
        from npuq.report.tables import print_table

        rows = [{"field": f.field, "value": f.value, "confidence": f.confidence, "evidence": f.evidence}
                for f in result.fields]
        print_table(rows, ["field", "value", "confidence", "evidence"], title="npuq probe fit")
        agreement = ", ".join(f"{k} {100 * v:.1f}%" for k, v in result.agreement.items())
        typer.echo(f"the fitted profile reproduces the device within one output step: {agreement}")
        if out is not None and result.fits:
            typer.echo(f"profile written to {out}")
    if not result.fits:
        missing = ", ".join(f.field for f in result.fields if f.confidence == "none")
        raise NpuqError(f"{outputs}: no modelled setting fits {missing} (nearest candidates and residuals "
                        "above); no profile written")


def _probe_confirm(model: Path, handoff: Path, outputs: Path, profiles: list[str] | None, allow_pickle: bool,
                   as_json: bool) -> None:
    from npuq.probe.confirm import confirm_on_network

    result = confirm_on_network(model, handoff, outputs, profiles, allow_pickle=allow_pickle)
    if as_json:
        typer.echo(json.dumps(result, indent=2))
        return
    from npuq.report.tables import print_table

    print_table(result["profiles"], ["profile", "calibrator", "within_one_step", "mean_gap_steps", "abs_rel"],
                title=f"device outputs on {result['frames']} hand-off frames against each profile "
                      f"(device abs_rel {result['device_abs_rel']})")


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
    app()


if __name__ == "__main__":
    main()
