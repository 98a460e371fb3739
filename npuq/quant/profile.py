"""NPU profiles: a YAML file that says how the vendor toolchain quantizes, validated into dataclasses.

Every unknown about the NPU (asymmetric activations? FP16 layers?) is a field here, so that each
becomes a measured what-if instead of an assumption.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from npuq.errors import NpuqError
from npuq.io import load_yaml

PROFILE_DIR = Path(__file__).resolve().parents[1] / "profiles"  # package data: shipped with the wheel

ACT_RANGE_METHODS = ("minmax", "percentile", "mse", "kl")
WEIGHT_RANGE_METHODS = ("minmax", "mse")
GRANULARITIES = ("per_tensor", "per_channel")
BIAS_CORRECTION = ("off", "empirical", "empirical-sequential")
# Each histogram method as a named calibrator of a real toolchain (see observers.py for the algorithms).
KL_VARIANTS = ("tensorrt", "onnxruntime")
MSE_VARIANTS = ("npuq", "modelopt")
PERCENTILE_VARIANTS = ("npuq", "onnxruntime")
DEFAULT_HIST_BINS = 2048
ORT_ENTROPY_BINS = 128
ACTIVATION_ONLY_FIELDS = ("percentile", "kl_variant", "mse_variant", "percentile_variant", "hist_bins",
                          "kl_quantized_bins")


@dataclass(frozen=True)
class TensorQuantConfig:
    """How one kind of tensor (weights or activations) is put on the integer grid.

    symmetric=True: signed grid [-2^(b-1), 2^(b-1)-1] with zero-point 0.
    symmetric=False: unsigned grid [0, 2^b-1] with a zero-point.
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "per_tensor"
    range: str = "minmax"
    percentile: float = 99.99
    kl_variant: str = "tensorrt"
    mse_variant: str = "npuq"
    percentile_variant: str = "npuq"
    hist_bins: int | None = None  # None: 2048, or 128 for kl_variant onnxruntime (each library's default)
    kl_quantized_bins: int = 128  # kl_variant onnxruntime only (its num_quantized_bins)

    @property
    def variant(self) -> str | None:
        """The variant of the range method in use (None for minmax)."""
        return {"kl": self.kl_variant, "mse": self.mse_variant,
                "percentile": self.percentile_variant}.get(self.range)

    @property
    def histogram_bins(self) -> int:
        if self.hist_bins is not None:
            return self.hist_bins
        ort_entropy = (self.range, self.kl_variant) == ("kl", "onnxruntime")
        return ORT_ENTROPY_BINS if ort_entropy else DEFAULT_HIST_BINS

    @property
    def calibrator(self) -> str:
        """The calibrator by name, as tables print it: ``kl/tensorrt``, ``percentile 99.99/npuq``."""
        if self.range == "minmax":
            return "minmax"
        method = f"percentile {self.percentile:g}" if self.range == "percentile" else self.range
        bins = f" ({self.hist_bins} bins)" if self.hist_bins is not None else ""
        return f"{method}/{self.variant}{bins}"


@dataclass(frozen=True)
class QuantProfile:
    name: str = "custom"
    description: str = ""
    weights: TensorQuantConfig = field(default_factory=TensorQuantConfig)
    activations: TensorQuantConfig = field(default_factory=lambda: TensorQuantConfig(range="kl"))
    bias_correction: str = "empirical"
    cle: bool = True
    fold_bn: bool = True
    # a constant clamp (Clip, ReLU6) after a conv / bn / add / activation runs inside it: only the
    # clipped tensor is stored and quantized (False: the unclipped tensor too, on its own range)
    fuse_clip: bool = True
    fp16_layers: tuple[str, ...] = ()
    # True/False for every model output, or one flag per output in output order.
    quantize_outputs: bool | tuple[bool, ...] = True

    def replace(self, **changes: Any) -> QuantProfile:
        """A copy with top-level fields changed; ``weights``/``activations`` accept dicts of changes."""
        for key in ("weights", "activations"):
            if isinstance(changes.get(key), dict):
                changes[key] = dataclasses.replace(getattr(self, key), **changes[key])
        return dataclasses.replace(self, **changes)

    def output_quantized(self, index: int) -> bool:
        if isinstance(self.quantize_outputs, bool):
            return self.quantize_outputs
        if index >= len(self.quantize_outputs):
            raise NpuqError(
                f"profile {self.name}: quantize_outputs has {len(self.quantize_outputs)} flags "
                f"but the model has output #{index}"
            )
        return self.quantize_outputs[index]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        for key in ACTIVATION_ONLY_FIELDS:  # weights take minmax or npuq's own mse: nothing to choose
            data["weights"].pop(key)
        data["fp16_layers"] = list(self.fp16_layers)
        if not isinstance(self.quantize_outputs, bool):
            data["quantize_outputs"] = list(self.quantize_outputs)
        return data

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_keys(data: dict, allowed: set[str], where: str, source: str) -> None:
    unknown = sorted((k for k in data if k not in allowed), key=str)
    if unknown:
        raise NpuqError(
            f"{source}: unknown key{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(repr(f'{where}{k}') for k in unknown)} (allowed: {', '.join(sorted(allowed))})"
        )


def _expect(cond: bool, source: str, key: str, msg: str) -> None:
    if not cond:
        raise NpuqError(f"{source}: {key} {msg}")


def _tensor_config(data: Any, role: str, source: str, base: TensorQuantConfig) -> TensorQuantConfig:
    """Validate a weights/activations mapping; keys it leaves out keep their value in ``base``."""
    _expect(isinstance(data, dict), source, role, "must be a mapping")
    allowed = {f.name for f in dataclasses.fields(TensorQuantConfig)}
    _check_keys(data, allowed, f"{role}.", source)
    cfg = dataclasses.replace(base, **data)
    _expect(_is_int(cfg.bits) and 2 <= cfg.bits <= 16,
            source, f"{role}.bits", f"must be an integer in 2..16, got {cfg.bits!r}")
    _expect(isinstance(cfg.symmetric, bool), source, f"{role}.symmetric",
            f"must be true or false, got {cfg.symmetric!r}")
    methods = WEIGHT_RANGE_METHODS if role == "weights" else ACT_RANGE_METHODS
    _expect(cfg.range in methods, source, f"{role}.range",
            f"must be one of {', '.join(methods)}, got {cfg.range!r}")
    grans = GRANULARITIES if role == "weights" else ("per_tensor",)
    _expect(cfg.granularity in grans, source, f"{role}.granularity",
            f"must be one of {', '.join(grans)}, got {cfg.granularity!r}")
    _expect(isinstance(cfg.percentile, int | float) and 50.0 < cfg.percentile <= 100.0, source,
            f"{role}.percentile", f"must be a number in (50, 100], got {cfg.percentile!r}")
    for key, variants in (("kl_variant", KL_VARIANTS), ("mse_variant", MSE_VARIANTS),
                          ("percentile_variant", PERCENTILE_VARIANTS)):
        _expect(getattr(cfg, key) in variants, source, f"{role}.{key}",
                f"must be one of {', '.join(variants)}, got {getattr(cfg, key)!r}")
    _expect(cfg.hist_bins is None or (_is_int(cfg.hist_bins) and 8 <= cfg.hist_bins <= 65536), source,
            f"{role}.hist_bins", f"must be an integer in 8..65536 or null, got {cfg.hist_bins!r}")
    _expect(_is_int(cfg.kl_quantized_bins) and cfg.kl_quantized_bins >= 2, source,
            f"{role}.kl_quantized_bins", f"must be an integer >= 2, got {cfg.kl_quantized_bins!r}")
    ort_entropy = (cfg.range, cfg.kl_variant) == ("kl", "onnxruntime")
    _expect(not ort_entropy or cfg.kl_quantized_bins // 2 <= cfg.histogram_bins // 2, source,
            f"{role}.kl_quantized_bins", f"must not exceed the histogram bins ({cfg.histogram_bins})")
    _expect(not (cfg.range == "mse" and cfg.mse_variant == "modelopt" and not cfg.symmetric), source,
            f"{role}.mse_variant", "modelopt searches a symmetric grid only (use npuq with symmetric: false)")
    return dataclasses.replace(cfg, percentile=float(cfg.percentile))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def profile_from_dict(data: Any, source: str = "<profile>") -> QuantProfile:
    """Validate a parsed YAML mapping into a QuantProfile; every problem is one line naming the key."""
    _expect(isinstance(data, dict), source, "the file", "must hold a mapping of profile keys")
    allowed = {f.name for f in dataclasses.fields(QuantProfile)}
    _check_keys(data, allowed, "", source)
    defaults = QuantProfile()
    values: dict[str, Any] = dict(data)
    values["weights"] = _tensor_config(data.get("weights", {}), "weights", source, defaults.weights)
    values["activations"] = _tensor_config(
        data.get("activations", {}), "activations", source, defaults.activations
    )
    for key in ("cle", "fold_bn", "fuse_clip"):
        if key in values:
            _expect(isinstance(values[key], bool), source, key, f"must be true or false, got {values[key]!r}")
    bc = values.get("bias_correction", defaults.bias_correction)
    if bc is False:
        bc = "off"
    _expect(bc in BIAS_CORRECTION, source, "bias_correction",
            f"must be one of {', '.join(BIAS_CORRECTION)}, got {bc!r}")
    values["bias_correction"] = bc
    fp16 = values.get("fp16_layers", []) or []
    _expect(isinstance(fp16, list) and all(isinstance(p, str) for p in fp16), source, "fp16_layers",
            "must be a list of layer-name patterns")
    values["fp16_layers"] = tuple(fp16)
    qo = values.get("quantize_outputs", True)
    ok = isinstance(qo, bool) or (isinstance(qo, list) and qo and all(isinstance(v, bool) for v in qo))
    _expect(ok, source, "quantize_outputs", "must be true, false, or a list of true/false per output")
    values["quantize_outputs"] = qo if isinstance(qo, bool) else tuple(qo)
    for key in ("name", "description"):
        if key in values:
            _expect(isinstance(values[key], str), source, key, "must be a string")
    return QuantProfile(**values)


def resolve_profile_path(name_or_path: str | Path) -> Path:
    """A path to a YAML file, or the name of a shipped profile (``npu-default``).

    A YAML file given by path wins; a bare name is a shipped profile even when a folder of that name
    sits in the working directory."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    shipped = PROFILE_DIR / f"{name_or_path}.yaml"
    if path.suffix not in (".yaml", ".yml") and len(path.parts) == 1 and shipped.is_file():
        return shipped
    if path.is_dir():
        raise NpuqError(f"{path}: is a folder, not a profile YAML")
    names = ", ".join(sorted(p.stem for p in PROFILE_DIR.glob("*.yaml")))
    raise NpuqError(f"{name_or_path}: no such profile file (shipped profiles: {names})")


def load_profile(name_or_path: str | Path) -> QuantProfile:
    path = resolve_profile_path(name_or_path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise NpuqError(f"{path}: cannot read profile ({exc})") from None
    profile = profile_from_dict(load_yaml(text, str(path)), source=str(path))
    if profile.name == "custom":
        profile = profile.replace(name=path.stem)
    return profile


# The activation calibrators a black-box toolchain may run, as changes to a profile's activations.
CALIBRATOR_VARIANTS: dict[str, dict[str, Any]] = {
    "kl/tensorrt": {"range": "kl", "kl_variant": "tensorrt", "hist_bins": None},
    "kl/onnxruntime": {"range": "kl", "kl_variant": "onnxruntime", "hist_bins": None},
    "mse": {"range": "mse", "mse_variant": "npuq"},
    "percentile 99.99": {"range": "percentile", "percentile": 99.99, "percentile_variant": "npuq"},
    "minmax": {"range": "minmax"},
}


def calibrator_variants(profile: QuantProfile, asymmetric: bool = True) -> dict[str, QuantProfile]:
    """``profile`` under each calibrator of ``CALIBRATOR_VARIANTS``, plus (``asymmetric``) its own
    calibrator on an unsigned grid with a zero-point (``asym``)."""
    variants = {name: profile.replace(activations=changes) for name, changes in CALIBRATOR_VARIANTS.items()}
    if asymmetric:
        variants["asym"] = profile.replace(activations={"symmetric": False})
    return variants


# what a fine-tune can re-calibrate with besides the profile's own (same grids: no "asym")
RECALIBRATION_VARIANTS = (*CALIBRATOR_VARIANTS, "no-bias-correction")


def recalibration_variant(profile: QuantProfile, name: str) -> QuantProfile:
    """``profile`` calibrated another way on the same grids: a ``CALIBRATOR_VARIANTS`` name, or
    "no-bias-correction" (its own calibrator, bias correction off)."""
    if name == "no-bias-correction":
        return profile.replace(bias_correction="off")
    if name not in CALIBRATOR_VARIANTS:
        raise NpuqError(f"unknown calibrator {name!r}: one of {', '.join(RECALIBRATION_VARIANTS)}")
    return profile.replace(activations=CALIBRATOR_VARIANTS[name])


# what a search robust to the unknown calibrator checks: the profile's own, then every variant
CALIBRATOR_CHOICES = ("profile", *CALIBRATOR_VARIANTS, "asym")


def activation_calibrators(profile: QuantProfile, names: tuple[str, ...]) -> dict[str, TensorQuantConfig]:
    """The activation config of each of ``names`` (``CALIBRATOR_CHOICES``): "profile" is ``profile``'s
    own, the others its ``calibrator_variants``."""
    variants = calibrator_variants(profile)
    return {name: (profile if name == "profile" else variants[name]).activations for name in names}
