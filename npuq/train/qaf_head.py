"""A short fake-quant fine-tune of a float depth model through its simulated INT8 model (QuantSim).

``finetune_through_quantsim`` builds the QuantSim the toolchain would make (``simulate_ptq``), trains
float weights THROUGH it (fake quantization with straight-through gradients, the scales frozen at their
calibrated values), writes those weights back into the float model and saves a float checkpoint. That
checkpoint is what would go to the vendor toolchain: every INT8 figure must come from running
``simulate_ptq`` afresh on it (new calibration, new bias correction), never from the sim trained here.

Which weights train (choice (a) of the issue). The QuantSim holds its own copy of the weights after BN
folding and cross-layer equalization, so a folded or equalized conv has no one-to-one float counterpart
(undoing CLE would need its per-channel scales, which the sim does not keep). Only parameters that the
graph transforms left untouched are trained: those whose name exists in the float model with a
bit-identical value when the sim is built (``mappable_parameters``). For DepthResNet that is the whole
Monodepth2 decoder and the head (no BatchNorm there, and CLE never crosses ELU / sigmoid / tanh); the
ResNet encoder (every conv BN-folded) stays frozen. Copying those parameters back by name
(``write_back``) makes the float model compute exactly what the sim computes with its quantizers
disabled (up to the BN-folding rounding in the frozen encoder). The entries that make up range anchors
(``npuq.models.anchors.anchor_entries``) get no gradient, so the rewrite stays exact.

Training. The sim is an eval-mode trace returning only scale 0, so the loss is the head's own loss
(``npuq.train.head_losses.head_loss``) on scale 0 at the input resolution. Adam at a constant ``lr``;
batch ``s`` holds the frames ``npuq.train.loop.batch_indices(seed, s, batch_size, n)`` (no augmentation),
so a run is a pure function of its arguments.

Frozen scales. Fake quantization passes no gradient to values outside the grid, so an output that has
to move beyond its calibrated range (a barely trained model, a large ``lr``) stops learning at the
edge. ``recalibrate_every=k`` recomputes every weight and activation scale (and the empirical bias
correction) on the calibration images before every k-th step, as the fresh PTQ of the result would.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from npuq.device import resolve_device
from npuq.errors import NpuqError
from npuq.io import check_writable
from npuq.models.anchors import anchor_blocks, anchor_entries
from npuq.quant.profile import QuantProfile, load_profile, recalibration_variant
from npuq.quant.sim import QuantSim, calibration_batches, recalibrate, simulate_ptq
from npuq.train import objectives
from npuq.train.loop import FitConfig, Hooks, Objective, fit, new_state

SIM_PREFIX = "graph_module."  # QuantSim parameter names are the float model's under this prefix
DEFAULT_BATCH = 4


def mappable_parameters(sim: QuantSim, model: nn.Module, prefixes: Sequence[str] | None = None) -> list[str]:
    """Names (the float model's) of the sim parameters that are the model's own, untransformed.

    A sim parameter qualifies when the float model has a parameter of the same name and an identical
    value. Call it on a freshly built sim (before any training). ``prefixes`` (e.g. ``("head.",)``)
    restricts the choice further.
    """
    model_params = dict(model.named_parameters())
    names = []
    for sim_name, param in sim.named_parameters():
        name = sim_name.removeprefix(SIM_PREFIX)
        own = model_params.get(name)
        if not sim_name.startswith(SIM_PREFIX) or own is None or own.shape != param.shape:
            continue
        if prefixes is not None and not name.startswith(tuple(prefixes)):
            continue
        if torch.equal(own.detach(), param.detach().to(own.device)):
            names.append(name)
    return names


def _sim_parameters(sim: QuantSim, names: Sequence[str]) -> list[nn.Parameter]:
    params = dict(sim.named_parameters())
    missing = [n for n in names if SIM_PREFIX + n not in params]
    if missing:
        raise NpuqError(f"quantsim: no parameter {missing[0]!r} (not built from this model?)")
    return [params[SIM_PREFIX + n] for n in names]


@torch.no_grad()
def write_back(sim: QuantSim, model: nn.Module, names: Sequence[str]) -> None:
    """Copy the sim's parameters ``names`` into the float model's parameters of the same names."""
    model_params = dict(model.named_parameters())
    for name, param in zip(names, _sim_parameters(sim, names), strict=True):
        if name not in model_params:
            raise NpuqError(f"model: no parameter {name!r} to write back into")
        model_params[name].copy_(param.to(model_params[name].device))


@contextmanager
def _only_trainable(sim: QuantSim, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """``requires_grad`` on ``params`` only (frozen layers then reuse their cached quantized weights)."""
    saved = [(p, p.requires_grad) for p in sim.parameters()]
    chosen = {id(p) for p in params}
    try:
        for p, _ in saved:
            p.requires_grad_(id(p) in chosen)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


@contextmanager
def _frozen_entries(sim: QuantSim, names: Sequence[str], masks: dict[str, Tensor]) -> Iterator[None]:
    handles = [param.register_hook(lambda grad, keep=masks[name].to(param.device): grad.masked_fill(keep, 0))
               for name, param in zip(names, _sim_parameters(sim, names), strict=True) if name in masks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def train_through_sim(sim: QuantSim, head: nn.Module, dataset: Any, names: Sequence[str], steps: int,
                      lr: float, seed: int, batch_size: int = DEFAULT_BATCH, progress: bool = False,
                      calib_batches: Sequence[Tensor] | None = None,
                      recalibrate_every: int | None = None,
                      objective: Objective | None = None,
                      every_step: Callable[[int], None] | None = None,
                      frozen: dict[str, Tensor] | None = None,
                      rotation: Sequence[QuantProfile] = ()) -> list[float]:
    """Train the sim's parameters ``names`` for ``steps`` Adam steps on ``objective`` (default: ``head_loss``
    of the simulated INT8 outputs, scale 0). Returns the loss of every step. ``head`` supplies
    encode/decode only.

    ``recalibrate_every=k`` (needs ``calib_batches``) runs ``recalibrate`` before steps k, 2k, ...;
    with a ``rotation`` of profiles (the sim's own first), the r-th re-calibration is that of
    ``rotation[r % len(rotation)]``, so the weights do not fit one calibrator's thresholds.
    ``every_step(step)`` runs before every step (after the re-calibration). ``frozen``: boolean masks
    (by float-model name) of entries that get no gradient and so never move (range anchors).
    """
    params = _sim_parameters(sim, names)
    if not params:
        raise NpuqError("quantsim fine-tune: no parameter to train")
    if recalibrate_every is not None and (recalibrate_every <= 0 or not calib_batches):
        raise NpuqError("quantsim fine-tune: recalibrate_every must be positive and needs calibration images")
    device = params[0].device
    cfg = FitConfig(steps=steps, lr=lr, batch_size=batch_size, seed=seed, augment=False, optimizer="adam",
                    schedule="constant", label="quantsim fine-tune")

    _check_rotation(sim.profile, rotation)
    own = sim.profile

    def before_step(step: int) -> None:
        if recalibrate_every and step and step % recalibrate_every == 0:
            if rotation:
                sim.profile = rotation[(step // recalibrate_every) % len(rotation)]
            recalibrate(sim, [b.to(device) for b in calib_batches])
        if every_step is not None:
            every_step(step)

    # the trace is the eval-mode model; train() would only touch unfolded BN statistics
    hooks = Hooks(before_step=before_step, train_mode=nn.Module.eval)
    try:
        with _only_trainable(sim, params), _frozen_entries(sim, names, frozen or {}), torch.enable_grad():
            state = fit(sim, dataset, objective or objectives.head(head), cfg, new_state(params, cfg),
                        hooks, progress, device)
    finally:
        sim.profile = own
    return state.losses


def _check_rotation(profile: QuantProfile, rotation: Sequence[QuantProfile]) -> None:
    """Only what re-calibration computes may differ: the quantizers' grids and FP16 layers are built in."""
    if rotation and rotation[0] != profile:
        raise NpuqError("quantsim fine-tune: a calibrator rotation starts with the sim's own profile")
    for other in rotation:
        grids = [(p.activations.bits, p.activations.symmetric, p.weights, p.fp16_layers, p.cle, p.fold_bn,
                  p.fuse_clip, p.quantize_outputs) for p in (profile, other)]
        if grids[0] != grids[1]:
            raise NpuqError(f"quantsim fine-tune: profile {other.name!r} in the calibrator rotation changes "
                            "the grids or FP16 layers, not only how ranges are calibrated")


def _open_data(data: Any, size: tuple[int, int]) -> Any:
    if isinstance(data, str | Path):
        from npuq.data.datasets import open_dataset

        data = open_dataset(str(data), size=size, depth_at="input")
    if len(data) == 0:
        raise NpuqError(f"{data}: dataset has no frames")
    rgb_size = tuple(data[0]["rgb"].shape[-2:])
    depth_size = tuple(data[0]["depth"].shape[-2:])
    if rgb_size != size or depth_size != size:
        raise NpuqError(f"{getattr(data, 'root', 'data')}: frames are RGB {rgb_size} / depth {depth_size}, "
                        f"the calibration images {size}; open it with size={size} and depth_at='input'")
    return data


def _as_profile(profile: QuantProfile | str | Path) -> QuantProfile:
    return profile if isinstance(profile, QuantProfile) else load_profile(profile)


def finetune_through_quantsim(model: nn.Module, profile: QuantProfile | str | Path, calib_rgb: Any,
                              data: Any, steps: int, lr: float, seed: int, out: str | Path,
                              batch_size: int = DEFAULT_BATCH, prefixes: Sequence[str] | None = None,
                              recalibrate_every: int | None = None, force: bool = False,
                              progress: bool = False, device: str = "cpu",
                              objective_for: Callable[[QuantSim], Objective] | None = None,
                              kind: str = "quantsim-finetune", curve_every: int | None = None,
                              on_curve: Callable[[int, nn.Module], None] | None = None,
                              rotate_with: Sequence[str] = ()) -> Path:
    """Fake-quant fine-tune of ``model`` (a DepthResNet, changed in place) and save it as a float checkpoint.

    ``profile``: a QuantProfile or a profile name / path. ``calib_rgb``: calibration images for
    ``simulate_ptq`` (a Tensor [N,3,H,W] or batches); their size is the training size. ``data``: a
    dataset (items with "rgb" [3,H,W] and "depth" [1,H,W]) or a path / ``synth:`` spec opened at that
    size. ``prefixes`` restricts the trained parameters (default: every mappable one; see the module
    docstring). ``recalibrate_every``: see the module docstring (default: scales frozen). The
    checkpoint's ``extra["train"]["config"]["size"]`` is the training size, as ``npuq train`` writes it;
    ``extra["qaf"]`` lists the trained parameters and the losses. ``objective_for(sim)`` replaces the
    default head loss (distillation hooks into the sim it is given). ``on_curve(step, model)`` sees the
    float model with the weights of steps 0, ``curve_every``, 2x, ... and of the last step (to measure a
    fresh PTQ of each; it must not change the model). ``rotate_with``: names of other calibrations of the
    same grids (``npuq.quant.profile.recalibration_variant``) that re-calibration cycles through after
    ``profile``'s own (``train_through_sim``'s rotation).
    """
    if steps <= 0 or lr <= 0 or batch_size <= 0:
        raise NpuqError(f"quantsim fine-tune: steps, lr and batch_size must be positive "
                        f"(got {steps}, {lr}, {batch_size})")
    out = check_writable(out, force)
    quant_profile = _as_profile(profile)
    others = [recalibration_variant(quant_profile, name) for name in rotate_with]
    rotation = [quant_profile, *others] if others else []
    dev = resolve_device(device)
    model = model.to(dev)
    batches = [b.to(dev) for b in calibration_batches(calib_rgb)]
    sim = simulate_ptq(model, quant_profile, batches, progress=progress)
    size = (int(sim.input_shapes[0][-2]), int(sim.input_shapes[0][-1]))
    dataset = _open_data(data, size)
    names = mappable_parameters(sim, model, prefixes)
    frozen = anchor_entries(model) if anchor_blocks(model) else {}
    if not names:
        raise NpuqError("quantsim fine-tune: every parameter was changed by BN folding / CLE (or excluded "
                        f"by prefixes {list(prefixes or [])}); nothing can be mapped back to the float model")
    def snapshot(step: int) -> None:
        if on_curve is not None and curve_every and step % curve_every == 0:
            write_back(sim, model, names)
            on_curve(step, model.eval())

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        objective = objective_for(sim) if objective_for is not None else None
        losses = train_through_sim(sim, model.head, dataset, names, steps, lr, seed, batch_size, progress,
                                   batches, recalibrate_every, objective, snapshot, frozen,
                                   rotation)
    write_back(sim, model, names)
    if on_curve is not None and curve_every:
        on_curve(steps, model.eval())
    model.eval().cpu()
    from npuq.models.checkpoint import save_checkpoint

    config = {"kind": kind, "size": list(size), "steps": steps, "lr": lr, "seed": seed,
              "batch_size": batch_size, "profile": quant_profile.name, "recalibrate_every": recalibrate_every,
              "rotate_with": list(rotate_with),
              "data": str(data) if isinstance(data, str | Path) else type(data).__name__,
              "head": getattr(getattr(model, "config", None), "head", None)}
    extra = {"train": {"step": steps, "finished": True, "loss": losses[-1], "config": config},
             "qaf": {"trained_parameters": list(names), "losses": losses}}
    return save_checkpoint(out, model, extra=extra, force=force)
