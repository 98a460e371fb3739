"""The hand-off, remedy configs and the registry: every remedy is ``Handoff -> Handoff``.

A ``Handoff`` is what the vendor toolchain receives: a float checkpoint, a calibration set (pool + frame
names) and the profile, with what we request of it (``fp16_layers``). A remedy is a config dataclass
(``RemedyConfig``) plus a handler registered with ``register_remedy``. ``apply_remedy`` runs one: the
handler writes its checkpoint into ``ctx.work_dir``; ``apply_remedy`` checks that the input was left
untouched and appends ``{remedy, config, source digest}`` to the output checkpoint's lineage.

The ``Context`` carries the training and validation data and no test split: a remedy cannot peek.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

import torch

from npuq.analysis.metrics import MetricConfig
from npuq.errors import NpuqError
from npuq.io import file_sha256
from npuq.quant.profile import QuantProfile, profile_from_dict

MODEL_FILE = "model.pt"


# ------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class DataRef:
    """A dataset (folder, listing file or ``synth:`` spec) and optionally a (start, stop) frame range."""

    path: str
    frames: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.frames is not None:
            object.__setattr__(self, "frames", (int(self.frames[0]), int(self.frames[1])))

    def open(self, size: tuple[int, int], depth_at: str = "input"):
        from npuq.data.datasets import open_dataset

        frames = slice(*self.frames) if self.frames else None
        return open_dataset(self.path, size=size, depth_at=depth_at, frames=frames)

    def __str__(self) -> str:
        return self.path + (f" frames {self.frames[0]}:{self.frames[1]}" if self.frames else "")

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "frames": list(self.frames) if self.frames else None}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DataRef:
        return cls(str(data["path"]), tuple(data["frames"]) if data.get("frames") else None)


@dataclass(frozen=True)
class CalibSet:
    """The calibration frames handed over: frame names of a pool."""

    pool: DataRef
    frames: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "frames", tuple(self.frames))
        if not self.frames:
            raise NpuqError(f"{self.pool}: a calibration set needs at least one frame")

    def rgb(self, size: tuple[int, int], frames: int = 0) -> torch.Tensor:
        """The frames as the toolchain sees them: RGB [N,3,H,W] in [0, 1] at ``size``; ``frames`` > 0:
        that many of them, evenly spaced (a quick look, not what the toolchain calibrates on)."""
        pool = self.pool.open(size)
        by_name = {name: i for i, name in enumerate(pool.names)}
        missing = [n for n in self.frames if n not in by_name]
        if missing:
            raise NpuqError(f"{self.pool}: calibration frame {missing[0]!r} is not in the pool")
        names = self.frames
        if 0 < frames < len(names):
            names = [names[i] for i in torch.linspace(0, len(names) - 1, frames).round().long().tolist()]
        return torch.stack([pool[by_name[n]]["rgb"] for n in names])

    def to_dict(self) -> dict[str, Any]:
        return {"pool": self.pool.to_dict(), "frames": list(self.frames)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CalibSet:
        return cls(DataRef.from_dict(data["pool"]), tuple(data["frames"]))


def json_digest(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


@dataclass(frozen=True)
class Handoff:
    """Float checkpoint + calibration set + profile (the toolchain model and what we request of it).

    ``notes`` records what a remedy found (e.g. which alternative ``best`` chose); it is not part of
    what is handed over, so it is not in ``digest``."""

    checkpoint: Path
    calib: CalibSet
    profile: QuantProfile
    notes: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def digest(self) -> str:
        return json_digest({"checkpoint": file_sha256(self.checkpoint), "calib": self.calib.to_dict(),
                            "profile": self.profile.to_dict()})

    def lineage(self) -> list[dict[str, Any]]:
        from npuq.models.checkpoint import load_checkpoint_dict

        return list(load_checkpoint_dict(self.checkpoint)["extra"].get("lineage", []))

    def to_dict(self) -> dict[str, Any]:
        return {"checkpoint": str(self.checkpoint), "calib": self.calib.to_dict(),
                "profile": self.profile.to_dict(), "notes": dict(self.notes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Handoff:
        return cls(Path(data["checkpoint"]), CalibSet.from_dict(data["calib"]),
                   profile_from_dict(data["profile"], source="handoff"), data.get("notes") or {})


@dataclass(frozen=True)
class Context:
    """What a remedy may use: training and validation data, a work folder, the seed, the metric."""

    train: DataRef
    val: DataRef
    work_dir: Path
    metric: MetricConfig = field(default_factory=MetricConfig)
    seed: int = 0
    progress: bool = False
    device: str = "cpu"

    def within(self, name: str) -> Context:
        """The same context with a sub-folder of the work folder (for remedies that run remedies)."""
        return dataclasses.replace(self, work_dir=self.work_dir / name)


@torch.no_grad()
def module_outputs(model: torch.nn.Module, modules: Mapping[Any, torch.nn.Module], rgb: torch.Tensor,
                   batch: int = 8) -> dict[Any, torch.Tensor]:
    """What each of ``modules`` (inside ``model``) outputs on ``rgb``, concatenated over frames."""
    seen: dict[Any, list[torch.Tensor]] = {key: [] for key in modules}
    hooks = [module.register_forward_hook(lambda _m, _i, out, key=key: seen[key].append(out.detach().clone()))
             for key, module in modules.items()]
    try:
        for start in range(0, len(rgb), batch):
            model(rgb[start:start + batch])
    finally:
        for hook in hooks:
            hook.remove()
    return {key: torch.cat(parts) for key, parts in seen.items()}


@torch.no_grad()
def quantizer_inputs(sim: Any, rgb: torch.Tensor, visit: Callable[[str, torch.Tensor], None],
                     quantized: bool = False, batch: int = 16) -> None:
    """Run ``rgb`` through the QuantSim ``sim``; ``visit(name, x)`` sees every quantizer's input batch
    [B, ...]: in float, or with ``quantized`` as the toolchain computes it (every quantizer on)."""
    hooks = [q.register_forward_hook(lambda mod, inputs, _out, n=name: visit(n, inputs[0]))
             for name, q in sim.quantizers.items()]
    try:
        with contextlib.nullcontext() if quantized else sim.quant_disabled():
            for start in range(0, len(rgb), batch):
                sim(rgb[start:start + batch])
    finally:
        for hook in hooks:
            hook.remove()


def input_size(handoff: Handoff) -> tuple[int, int]:
    from npuq.pipeline import training_size

    return training_size(handoff.checkpoint)


# ---------------------------------------------------------------------------------------- configs


@dataclass(frozen=True)
class RemedyConfig:
    """Base of every remedy's config: a dataclass that round-trips through a dict (a YAML plan step)."""

    name: ClassVar[str] = ""

    @classmethod
    def smoke(cls) -> Self:
        """Tiny settings for the conformance test (seconds on a tiny model)."""
        return cls()

    def to_dict(self) -> dict[str, Any]:
        return _plain(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, where: str = "") -> Self:
        data = dict(data or {})
        where = where or f"remedy {cls.name!r}"
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            allowed = ", ".join(known) or "none"
            raise NpuqError(f"{where}: unknown config key {unknown[0]!r} (allowed: {allowed})")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        try:
            return cls(**values)
        except NpuqError as exc:
            raise NpuqError(f"{where}: {exc}") from None
        except (TypeError, ValueError) as exc:
            raise NpuqError(f"{where}: bad config ({exc})") from None


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------- registry

Handler = Callable[[Handoff, Any, Context], Handoff]


@dataclass(frozen=True)
class Remedy:
    config: type[RemedyConfig]
    handler: Handler
    summary: str


REMEDIES: dict[str, Remedy] = {}


def register_remedy(config: type[RemedyConfig]) -> Callable[[Handler], Handler]:
    """Decorator: register ``handler`` as the remedy ``config.name``."""

    def decorate(handler: Handler) -> Handler:
        if not config.name or config.name in REMEDIES:
            raise ValueError(f"remedy name {config.name!r} is empty or already registered")
        summary = (handler.__doc__ or "").strip().splitlines()[0] if handler.__doc__ else ""
        REMEDIES[config.name] = Remedy(config, handler, summary)
        return handler

    return decorate


def get_remedy(name: str, where: str = "") -> Remedy:
    if name in REMEDIES:
        return REMEDIES[name]
    prefix = f"{where}: " if where else ""
    raise NpuqError(f"{prefix}unknown remedy {name!r}; built: {', '.join(sorted(REMEDIES))}")


def remedy_config(name: str, data: Mapping[str, Any] | None = None, where: str = "") -> RemedyConfig:
    """The config of remedy ``name`` from a plan's dict (validated)."""
    remedy = get_remedy(name, where)
    return remedy.config.from_dict(data, where or f"remedy {name!r}")


def apply_remedy(handoff: Handoff, config: RemedyConfig, ctx: Context) -> Handoff:
    """Run one remedy: a new Handoff whose checkpoint (in ``ctx.work_dir``) has one more lineage entry."""
    remedy = get_remedy(config.name)
    source = file_sha256(handoff.checkpoint)
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    result = remedy.handler(handoff, config, ctx)
    if file_sha256(handoff.checkpoint) != source:
        raise NpuqError(f"remedy {config.name!r} modified its input {handoff.checkpoint}")
    target = ctx.work_dir / MODEL_FILE
    entry = {"remedy": config.name, "config": config.to_dict(), "source": source}
    if result.notes:
        entry["notes"] = _plain(dict(result.notes))
    _write_with_lineage(result.checkpoint, target, entry)
    return dataclasses.replace(result, checkpoint=target)


def _write_with_lineage(checkpoint: Path, target: Path, entry: dict[str, Any]) -> None:
    from npuq.io import save_torch
    from npuq.models.checkpoint import load_checkpoint_dict

    saved = load_checkpoint_dict(checkpoint)
    saved["extra"]["lineage"] = [*saved["extra"].get("lineage", []), entry]
    save_torch(target, saved)
    if checkpoint.resolve() != target.resolve() and checkpoint.parent.resolve() == target.parent.resolve():
        checkpoint.unlink()  # the handler's own file in the work folder: the lineage copy replaces it
