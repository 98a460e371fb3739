"""Fit a profile to a toolchain's outputs on the probe kit: every field with its evidence and confidence.

Fields are fitted in dependency order, each from the probes built to reveal it, with the fields before it
fixed at their fitted values:

1. the activation grid and bit width, read off the ``grid`` ramp (step and both saturation levels);
2. whether outputs are quantized: the ``outputs`` probe's distinct values against the grid's levels;
3. the activation range method: every candidate calibrator simulated on the four ``range-*`` probes, its
   predicted saturation levels against the device's;
4. weight granularity, weight range method and bias correction, 5. CLE, 6. whether a Clip is fused into
   the conv before it, 7. FP16: each candidate setting
   simulated on its probe, its outputs against the device's in output steps.

A field whose best candidate still misses the device is reported as fitting no modelled setting, with the
nearest candidates and their residuals, never guessed silently.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from npuq.probe.kit import load_calibration, load_device_outputs, load_inputs, load_manifest
from npuq.probe.probes import FP16_LAYER, PROBES_BY_NAME, RANGE_PROBES
from npuq.quant.profile import QuantProfile

PERCENTILES = (99.9, 99.99, 99.999)
RANGE_TOLERANCE = 0.002  # saturation levels' miss relative to the range: half a step of an 8-bit grid
STEP_TOLERANCE = 0.1  # mean output error, in output steps, of a fitting simulation
GRID_TOLERANCE = 0.02  # steps off the candidate grid (float rounding of the outputs)
CLEAR_MARGIN = 4.0
NEAREST_MARGIN = 10.0  # outside the tolerance, the nearest candidate is still named when this much nearer


@dataclass
class FieldFit:
    field: str
    value: Any
    confidence: str  # high, low, undetermined (candidates indistinguishable), none (no setting fits)
    evidence: str
    residuals: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class FitResult:
    profile: QuantProfile
    fields: list[FieldFit]
    agreement: dict[str, float]  # probe -> share of output elements within one step of the device

    @property
    def fits(self) -> bool:
        return all(f.confidence != "none" for f in self.fields)

    def to_dict(self) -> dict[str, Any]:
        return {"fits": self.fits, "profile": self.profile.to_dict(),
                "fields": [f.to_dict() for f in self.fields], "agreement": self.agreement}


# ------------------------------------------------------------------------------------------ simulation


class Kit:
    """A kit folder with its calibration sets and inputs loaded, and the probes rebuilt."""

    def __init__(self, kit_dir: str | Path):
        self.root = Path(kit_dir)
        self.manifest = load_manifest(self.root)
        self.entries = {e["name"]: e for e in self.manifest["probes"]}
        self.calibration = {name: torch.from_numpy(load_calibration(self.root, e))
                            for name, e in self.entries.items()}
        self.inputs = {name: load_inputs(self.root, e) for name, e in self.entries.items()}

    def simulate(self, name: str, profile: QuantProfile) -> dict[str, dict[str, np.ndarray]]:
        """The probe's outputs under ``profile``: ``{input: {output: array}}``."""
        from npuq.quant import simulate_ptq

        model = PROBES_BY_NAME[name].build().eval()
        with warnings.catch_warnings():  # the FP16 layer exists in the fp16 probe only
            warnings.filterwarnings("ignore", message=".*fp16_layers pattern.*matches no layer")
            sim = simulate_ptq(model, profile, self.calibration[name])
        result = {}
        with torch.no_grad():
            for input_name, array in self.inputs[name].items():
                outputs = sim(torch.from_numpy(array))
                outputs = outputs if isinstance(outputs, tuple) else (outputs,)
                names = self.entries[name]["outputs"]
                result[input_name] = {o: t.double().numpy() for o, t in zip(names, outputs, strict=True)}
        return result

    def output_shapes(self, name: str) -> dict[str, tuple[int, ...]]:
        array = next(iter(self.inputs[name].values()))
        with torch.no_grad():
            outputs = PROBES_BY_NAME[name].build().eval()(torch.from_numpy(array))
        outputs = outputs if isinstance(outputs, tuple) else (outputs,)
        return {o: tuple(t.shape) for o, t in zip(self.entries[name]["outputs"], outputs, strict=True)}


def write_simulated_outputs(kit_dir: str | Path, profile: QuantProfile, out_dir: str | Path,
                            force: bool = False) -> Path:
    """Play the device: write the outputs ``profile`` would give on every probe, in the layout the user
    fills (used by the tests as a black box, and to see what a fit of a known toolchain looks like)."""
    from npuq.io import atomic_folder, write_json, write_npy

    kit = Kit(kit_dir)
    with atomic_folder(out_dir, force, "device.json") as tmp:
        for name in kit.entries:
            for input_name, outputs in kit.simulate(name, profile).items():
                for output, array in outputs.items():
                    write_npy(tmp / name / f"{input_name}.{output}.npy", array.astype(np.float32))
        write_json(tmp / "device.json", {"simulated_profile": profile.to_dict()})
    return Path(out_dir)


# ------------------------------------------------------------------------------------------ fitting


def fit_kit(kit_dir: str | Path, outputs_dir: str | Path) -> FitResult:
    """Fit every profile field the kit reveals to the device's outputs in ``outputs_dir``."""
    kit = Kit(kit_dir)
    device = {name: load_device_outputs(outputs_dir, entry, kit.output_shapes(name))
              for name, entry in kit.entries.items()}
    fits: list[FieldFit] = []
    grid_fit, grid = fit_grid(device["grid"]["ramp"]["signed"])
    fits.append(grid_fit)
    activations = dataclasses.replace(QuantProfile().activations, range="minmax", **grid)
    profile = QuantProfile(name="fitted", bias_correction="off", cle=False, activations=activations)
    outputs_fit = fit_outputs_quantized(device["outputs"]["random0"]["y"], grid["bits"])
    fits.append(outputs_fit)
    profile = profile.replace(quantize_outputs=outputs_fit.value)
    range_fit, activations = fit_range(kit, device, profile)
    fits.append(range_fit)
    profile = profile.replace(activations=activations)
    stages = (weight_candidates, weight_range_candidates, cle_candidates, clip_candidates, fp16_candidates)
    for stage in stages:
        stage_fit, profile = fit_by_simulation(kit, device, profile, *stage(profile))
        fits.append(stage_fit)
    agreement = {name: within_one_step(kit.simulate(name, profile), device[name]) for name in kit.entries}
    return FitResult(profile.replace(description=describe(fits)), fits, agreement)


def fit_grid(values: np.ndarray) -> tuple[FieldFit, dict[str, Any]]:
    """Signed symmetric or zero-point grid and its bit width, from outputs of a ramp past both ends."""
    v = np.unique(values.round(9))
    lo, hi = float(v[0]), float(v[-1])
    residuals = {}
    for symmetric in (True, False):
        for bits in range(2, 17):
            levels = 2**bits - 1
            step = hi / (2 ** (bits - 1) - 1) if symmetric else (hi - lo) / levels
            if step <= 0:
                continue
            k = (v - (0.0 if symmetric else lo)) / step
            off_grid = float(np.abs(k - k.round()).max())
            ends = min(abs(lo / step + 2 ** (bits - 1)), abs(lo / step + 2 ** (bits - 1) - 1)) if symmetric \
                else abs(lo / step - round(lo / step))  # the zero-point must be an integer
            residuals[f"{'signed symmetric' if symmetric else 'zero-point'} {bits}-bit"] = off_grid + ends
    fitting = [k for k in residuals if residuals[k] <= GRID_TOLERANCE]
    # A coarse grid lies inside finer ones (8-bit zero-point levels are 16-bit ones; a signed symmetric
    # grid is a zero-point grid with zero-point 2^(b-1)): the device's is the smallest that fits, and at
    # equal width the symmetric one, whose negative end mirrors +3 although the calibration stops at -1.
    best = min(fitting or residuals, key=lambda k: (int(k.split()[-1].removesuffix("-bit")) if fitting else 0,
                                                    not k.startswith("signed"), residuals[k]))
    symmetric, bits = best.startswith("signed"), int(best.split()[-1].removesuffix("-bit"))
    confidence = "none" if not fitting else "high" if len(v) > 2 ** (bits - 1) else "low"
    step = hi / (2 ** (bits - 1) - 1) if symmetric else (hi - lo) / (2**bits - 1)
    evidence = (f"ramp outputs span [{lo:.4g}, {hi:.4g}] in {len(v)} levels of step {step:.4g}: "
                f"{best} (off-grid residual {residuals[best]:.3g} steps; next: "
                f"{_runner_up(residuals, best)})")
    return FieldFit("activations.grid", best, confidence, evidence, residuals), {"symmetric": symmetric,
                                                                                "bits": bits}


def fit_outputs_quantized(values: np.ndarray, bits: int) -> FieldFit:
    """A sum of two quantized channels has ~1000 distinct values in float, at most 2^bits on a grid."""
    distinct = len(np.unique(values.round(9)))
    quantized = distinct <= 2**bits
    evidence = (f"{distinct} distinct output values, a {bits}-bit grid holds {2**bits}: outputs are "
                f"{'quantized' if quantized else 'not quantized'}")
    clear = distinct <= 2**bits * 0.95 or distinct >= 2**bits * 1.5
    return FieldFit("quantize_outputs", quantized, "high" if clear else "low", evidence,
                    {"distinct_values": float(distinct), "grid_levels": float(2**bits)})


def range_candidates(symmetric: bool) -> dict[str, dict[str, Any]]:
    candidates: dict[str, dict[str, Any]] = {"minmax": {"range": "minmax"}}
    for variant in ("npuq", "onnxruntime"):
        for pct in PERCENTILES:
            candidates[f"percentile {pct:g}/{variant}"] = {"range": "percentile", "percentile": pct,
                                                            "percentile_variant": variant}
    candidates["mse/npuq"] = {"range": "mse", "mse_variant": "npuq"}
    if symmetric:
        candidates["mse/modelopt"] = {"range": "mse", "mse_variant": "modelopt"}
    candidates["kl/tensorrt"] = {"range": "kl", "kl_variant": "tensorrt"}
    candidates["kl/onnxruntime"] = {"range": "kl", "kl_variant": "onnxruntime"}
    candidates["kl/onnxruntime (2048 bins)"] = {"range": "kl", "kl_variant": "onnxruntime", "hist_bins": 2048}
    return candidates


def fit_range(kit: Kit, device, profile: QuantProfile):
    """The calibrator whose saturation levels on the range probes match the device's."""
    levels = {name: _saturation(device[name]["ramp"]["y"]) for name in RANGE_PROBES}
    residuals, predicted = {}, {}
    for label, change in range_candidates(profile.activations.symmetric).items():
        candidate = dataclasses.replace(profile.activations, **change)
        # bias correction moves a clipped range probe's output (its conv sees the clipping error): the
        # range is judged under the better of both, the weights probe decides bias correction itself
        options = []
        for bc in ("off", "empirical"):
            trial = profile.replace(activations=candidate, bias_correction=bc)
            sims = {name: _saturation(kit.simulate(name, trial)["ramp"]["y"]) for name in RANGE_PROBES}
            options.append((max(_relative_miss(levels[name], sims[name]) for name in RANGE_PROBES), sims))
        residuals[label], predicted[label] = min(options, key=lambda option: option[0])
    best = min(residuals, key=residuals.get)
    ties = [k for k in residuals if k != best and residuals[k] - residuals[best] < 1e-9]
    distinct = {k: v for k, v in residuals.items() if k not in ties}  # a tie is the same calibrator here
    confidence = _confidence(distinct, best, tolerance=RANGE_TOLERANCE)
    rivals = sorted(distinct, key=distinct.get)[1:4]
    lines = [f"{name}: saturates at {_span(levels[name])}; {best} predicts {_span(predicted[best][name])}, "
             + ", ".join(f"{r} {_span(predicted[r][name])}" for r in rivals) for name in RANGE_PROBES]
    if ties:  # e.g. ONNX Runtime's entropy with its 128 bins over the whole set: one window, min/max
        lines.append(f"{', '.join(ties)} give{'s' if len(ties) == 1 else ''} the same thresholds here")
    fit = FieldFit("activations.range", best, confidence, "; ".join(lines), residuals)
    change = range_candidates(profile.activations.symmetric)[best]
    return fit, dataclasses.replace(profile.activations, **change)


def weight_candidates(profile: QuantProfile):
    """Granularity and whether bias correction is on (per layer or sequential is the cle stage's)."""
    candidates = {}
    for granularity in ("per_tensor", "per_channel"):
        for bc in ("off", "empirical"):
            candidates[f"{granularity}, bias correction {bc}"] = profile.replace(
                weights={"granularity": granularity}, bias_correction=bc)
    return "weights", "weights.granularity, bias_correction", candidates


def weight_range_candidates(profile: QuantProfile):
    return "weight-range", "weights.range", {m: profile.replace(weights={"range": m})
                                             for m in ("minmax", "mse")}


def cle_candidates(profile: QuantProfile):
    """CLE on or off; with bias correction on, also per layer or sequential: the two-layer cle probe is
    where they differ (the one-layer weights probe cannot tell them apart)."""
    corrections = ("empirical", "empirical-sequential") if profile.bias_correction != "off" else ("off",)
    candidates = {}
    for cle in (True, False):
        for bc in corrections:
            label = ("on" if cle else "off") + (f", bias correction {bc}" if bc != "off" else "")
            candidates[label] = profile.replace(cle=cle, bias_correction=bc)
    return "cle", "cle" + (", bias_correction" if len(corrections) > 1 else ""), candidates


def clip_candidates(profile: QuantProfile):
    return "clip", "fuse_clip", {"fused": profile.replace(fuse_clip=True),
                                 "not fused": profile.replace(fuse_clip=False)}


def fp16_candidates(profile: QuantProfile):
    return "fp16", "fp16_layers", {"honoured": profile.replace(fp16_layers=(FP16_LAYER,)),
                                   "not honoured (INT8)": profile.replace(fp16_layers=())}


def fit_by_simulation(kit: Kit, device, profile: QuantProfile, probe: str, label: str,
                      candidates: dict[str, QuantProfile]) -> tuple[FieldFit, QuantProfile]:
    residuals = {name: output_residual(kit.simulate(probe, candidate), device[probe])
                 for name, candidate in candidates.items()}
    ranked = sorted(residuals, key=residuals.get)
    best = ranked[0]
    evidence = f"{probe} probe, mean output error in output steps: " + ", ".join(
        f"{k} {residuals[k]:.3g}" for k in ranked)
    confidence = _confidence(residuals, best, STEP_TOLERANCE)
    if confidence != "none" and residuals[ranked[1]] - residuals[best] < 1e-9:
        confidence = "undetermined"  # the candidates give this device the same outputs
        evidence += " (identical here: " + UNDETERMINED.get(label, "the probe cannot tell them apart") + ")"
    return FieldFit(label, best, confidence, evidence, residuals), candidates[best]


UNDETERMINED = {
    "weights.range": "per channel, an 8-bit MSE search keeps every weight min/max keeps",
    "fp16_layers": "the outputs are not quantized, so an FP16 layer's output looks like a float one",
    "cle, bias_correction": "per-layer and sequential bias correction give this probe the same outputs",
}


# ------------------------------------------------------------------------------------------ measures


def _saturation(values: np.ndarray) -> tuple[float, float]:
    return float(values.min()), float(values.max())


def _relative_miss(device: tuple[float, float], predicted: tuple[float, float]) -> float:
    scale = max(abs(device[0]), abs(device[1]), 1e-12)
    return max(abs(device[0] - predicted[0]), abs(device[1] - predicted[1])) / scale


def _span(levels: tuple[float, float]) -> str:
    return f"[{levels[0]:.4g}, {levels[1]:.4g}]"


def _step_of(values: np.ndarray) -> float:
    """The output grid's step: the smallest gap between distinct values (a fraction of the range if the
    values are not on a coarse grid)."""
    v = np.unique(values.round(9))
    gaps = np.diff(v)
    span = float(v[-1] - v[0]) if len(v) > 1 else 1.0
    return float(max(gaps.min() if len(gaps) else span, span / 2**16))


def output_residual(predicted, device) -> float:
    """Mean |predicted - device| in steps of the device's output grid, over every input and output."""
    errors = []
    for input_name, outputs in device.items():
        for output, values in outputs.items():
            errors.append(np.abs(predicted[input_name][output] - values).mean() / _step_of(values))
    return float(np.mean(errors))


def within_one_step(predicted, device) -> float:
    shares = []
    for input_name, outputs in device.items():
        for output, values in outputs.items():
            close = np.abs(predicted[input_name][output] - values) <= 1.001 * _step_of(values)
            shares.append(float(close.mean()))
    return float(np.mean(shares))


def _runner_up(residuals: dict[str, float], best: str) -> str:
    rest = sorted((k for k in residuals if k != best), key=residuals.get)
    return f"{rest[0]} {residuals[rest[0]]:.3g}" if rest else "none"


def _confidence(residuals: dict[str, float], best: str, tolerance: float) -> str:
    """high: within tolerance and the runner-up CLEAR_MARGIN times further; low: within tolerance but a
    close runner-up, or outside it yet NEAREST_MARGIN times nearer than any other; none otherwise."""
    rest = sorted(v for k, v in residuals.items() if k != best)
    second = rest[0] if rest else math.inf
    if residuals[best] <= tolerance:
        return "high" if second >= CLEAR_MARGIN * max(residuals[best], tolerance / CLEAR_MARGIN) else "low"
    return "low" if second >= NEAREST_MARGIN * residuals[best] else "none"


def describe(fits: list[FieldFit]) -> str:
    return "Fitted by npuq probe fit: " + "; ".join(f"{f.field} = {f.value} ({f.confidence})" for f in fits)
