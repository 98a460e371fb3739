"""Saving and loading depth-network checkpoints.

Three layouts load into a ``DepthResNet``:

- npuq's own file: ``{"format": "npuq-depth/1", "config": asdict(DepthNetConfig), "state_dict": ...,
  "extra": {...}}``.
- A PackNet-SfM ``.ckpt``: ``{"state_dict": {"model.depth_net.encoder.encoder.<torchvision name>": ...,
  "model.depth_net.decoder.decoder.N....": ...}, "config": <yacs CfgNode>, ...}``.
- A Monodepth2 folder with ``encoder.pth`` (``encoder.<torchvision name>`` plus ``height``, ``width``,
  ``use_stereo``) and ``depth.pth`` (``decoder.N....``).

Files are read with ``torch.load(weights_only=True)``, so loading never runs code from the file. The
only extra global allowed is ``yacs.config.CfgNode`` (PackNet-SfM's pickled config), which is rebuilt
as a plain ``OrderedDict`` without needing yacs. Anything else that needs real unpickling is refused
unless the caller passes ``allow_pickle=True`` for a file they trust.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
import types
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from npuq.errors import NpuqError
from npuq.io import check_writable, save_torch
from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
from npuq.models.resnet import infer_resnet_depth

FORMAT = "npuq-depth/1"
PACKNET_PREFIX = "model.depth_net."
MONODEPTH2_EXTRAS = ("height", "width", "use_stereo")
NUM_UPCONVS = 10  # decoder.N with N >= 10 are the per-scale output convs (the head)
PREVIEW_KEYS = 5


# ---------------------------------------------------------------------------------------------------------
# Safe reading


class YacsCfgNodeStandIn:
    """Unpickles ``yacs.config.CfgNode`` as a plain ``OrderedDict`` (yacs need not be installed).

    A CfgNode is a dict subclass pickled as NEWOBJ + SETITEMS (its keys) + BUILD (its private flags).
    torch's weights-only unpickler only fills plain dict/OrderedDict objects, so ``__new__`` hands back
    an OrderedDict; the flags land harmlessly in that OrderedDict's ``__dict__``.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> OrderedDict:  # type: ignore[misc]
        return OrderedDict()


SAFE_GLOBALS = [(YacsCfgNodeStandIn, "yacs.config.CfgNode")]


class _TrustingUnpickler(pickle.Unpickler):
    """Full unpickling (only with ``allow_pickle``), still mapping yacs CfgNode to the stand-in."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("yacs.config", "CfgNode"):
            return YacsCfgNodeStandIn
        return super().find_class(module, name)


_TRUSTING_PICKLE = types.SimpleNamespace(
    __name__="npuq_trusting_pickle",
    Unpickler=_TrustingUnpickler,
    load=lambda f, **kw: _TrustingUnpickler(f, **kw).load(),
)

_BLOCKED_GLOBAL = re.compile(r"GLOBAL (\S+) (?:was not an allowed global|whose module)")
_REFUSED_CONSTRUCT = re.compile(r"(Can only (?:create new object|build|SETITEMS?|append)[^\n]*"
                                r"|Trying to call reduce[^\n]*)")


def read_torch_file(path: str | Path, allow_pickle: bool = False) -> Any:
    """``torch.load`` to CPU that turns every failure into one NpuqError naming ``path``."""
    path = Path(path)
    if not path.is_file():
        raise NpuqError(f"{path}: {'not a file' if path.exists() else 'no such file'}")
    try:
        if allow_pickle:
            return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TRUSTING_PICKLE)
        with torch.serialization.safe_globals(SAFE_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; all are the user's input problem
        raise _load_error(path, exc) from None


def _load_error(path: Path, exc: Exception) -> NpuqError:
    message = str(exc)
    blocked = _BLOCKED_GLOBAL.search(message)
    refused = _REFUSED_CONSTRUCT.search(message)
    if blocked or refused:
        if blocked:
            what = f"the global {blocked.group(1)}"
        else:
            what = f"a pickle construct ({refused.group(1)[:100]})"
        return NpuqError(
            f"{path}: safe loading refused {what}; loading it means executing the file's pickle. "
            "Only if you trust the file, pass allow_pickle=True (CLI: --allow-pickle)")
    if isinstance(exc, ModuleNotFoundError):
        return NpuqError(f"{path}: unpickling needs the module {exc.name!r}, which is not installed")
    if "Weights only load failed" in message:
        return NpuqError(
            f"{path}: cannot read safely: corrupt or not a torch file, or pickle data that weights-only "
            f"loading does not support ({_short_reason(exc)}); only if you trust the file, "
            "allow_pickle=True (CLI: --allow-pickle) reads it with full unpickling")
    return NpuqError(f"{path}: cannot read as a PyTorch checkpoint (corrupt, truncated or not a torch file): "
                     f"{_short_reason(exc)}")


def _short_reason(exc: Exception) -> str:
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].split("Check the documentation", 1)[0]
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = lines[0].split(". ", 1)[0].rstrip(".") if lines else ""
    if len(first) > 120:
        first = first[:117] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


# ---------------------------------------------------------------------------------------------------------
# npuq format


def save_checkpoint(path: str | Path, model: DepthResNet, extra: dict | None = None,
                    force: bool = False) -> Path:
    """Write an npuq checkpoint atomically; refuses to overwrite unless ``force``.

    ``extra`` may hold only dicts, lists, tuples, str, int, float, bool, None and tensors, so the file
    stays loadable with weights-only unpickling.
    """
    path = Path(path)
    if not isinstance(model, DepthResNet):
        raise NpuqError(f"{path}: can only save a DepthResNet, got {type(model).__name__}")
    extra = {} if extra is None else extra
    _check_plain(extra, f"{path}: extra", "extra")
    check_writable(path, force)
    state_dict = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    config = dataclasses.asdict(model.config)
    for key in ("decoder_extra_channels", "decoder_ceilings"):
        if not config[key]:  # a plain Monodepth2 decoder: the file reads as before
            del config[key]
        else:
            config[key] = list(config[key])
    ckpt = {"format": FORMAT, "config": config, "state_dict": state_dict, "extra": extra}
    return save_torch(path, ckpt, force=force)


_PLAIN_SCALARS = (str, int, float, bool, type(None), torch.Tensor)


def _check_plain(obj: Any, where: str, trail: str) -> None:
    if isinstance(obj, dict):
        for key, value in obj.items():
            if not isinstance(key, str | int):
                raise NpuqError(f"{where}: key {key!r} at {trail} must be str or int")
            _check_plain(value, where, f"{trail}[{key!r}]")
    elif isinstance(obj, list | tuple):
        for i, value in enumerate(obj):
            _check_plain(value, where, f"{trail}[{i}]")
    elif not isinstance(obj, _PLAIN_SCALARS):
        raise NpuqError(f"{where}: {trail} is a {type(obj).__name__}; only dict/list/tuple/str/int/float/"
                        "bool/None/Tensor can be saved")


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """The raw npuq checkpoint dict (validated); NpuqError for anything else, foreign formats included."""
    path = Path(path)
    if path.is_dir():
        raise NpuqError(f"{path}: is a folder, not an npuq checkpoint file")
    return _validate_npuq(read_torch_file(path), path)


def _validate_npuq(obj: Any, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict) or "format" not in obj:
        raise NpuqError(f"{path}: not an npuq checkpoint (no 'format' entry)")
    if obj["format"] != FORMAT:
        raise NpuqError(f"{path}: unsupported checkpoint format {obj['format']!r} (expected {FORMAT!r})")
    for key, kind in (("config", dict), ("state_dict", dict), ("extra", dict)):
        if not isinstance(obj.get(key), kind):
            raise NpuqError(f"{path}: npuq checkpoint entry {key!r} is missing or not a {kind.__name__}")
    _config_from(obj["config"], path)
    _check_tensors(obj["state_dict"], path)
    return obj


def _config_from(data: dict[str, Any], path: Path) -> DepthNetConfig:
    try:
        return DepthNetConfig.from_dict(dict(data))
    except (NpuqError, TypeError, ValueError) as exc:
        raise NpuqError(f"{path}: bad model config: {exc}") from None


def _check_tensors(state_dict: Mapping[str, Any], path: Path) -> None:
    bad = [k for k, v in state_dict.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise NpuqError(f"{path}: state_dict entries that are not tensors: {_preview(bad)}")


# ---------------------------------------------------------------------------------------------------------
# Foreign layouts -> npuq names


def _head_key(key: str, decoder_prefix: str) -> str:
    """``<decoder_prefix>N.rest`` -> ``decoder.decoder.N.rest`` (N < 10) or ``head.convs.{N-10}.rest``."""
    index, _, rest = key[len(decoder_prefix):].partition(".")
    if not index.isdigit():
        return "decoder.decoder." + key[len(decoder_prefix):]
    n = int(index)
    return f"decoder.decoder.{n}.{rest}" if n < NUM_UPCONVS else f"head.convs.{n - NUM_UPCONVS}.{rest}"


def packnet_state_dict(sd: Mapping[str, Any]) -> dict[str, Any]:
    """PackNet-SfM ``state_dict`` -> DepthResNet names (pose net and the ResNet ``fc`` are dropped)."""
    out: dict[str, Any] = {}
    for key, value in sd.items():
        if not key.startswith(PACKNET_PREFIX):
            continue
        key = key[len(PACKNET_PREFIX):]
        if key.startswith("encoder.encoder.fc."):
            continue
        out[_head_key(key, "decoder.decoder.") if key.startswith("decoder.decoder.") else key] = value
    return out


def monodepth2_state_dict(encoder_sd: Mapping[str, Any], depth_sd: Mapping[str, Any]) -> dict[str, Any]:
    """Monodepth2 ``encoder.pth`` + ``depth.pth`` -> DepthResNet names (``fc`` and extras dropped)."""
    out: dict[str, Any] = {}
    for key, value in encoder_sd.items():
        if key in MONODEPTH2_EXTRAS or key.startswith("encoder.fc."):
            continue
        out["encoder." + key] = value
    for key, value in depth_sd.items():
        out[_head_key(key, "decoder.") if key.startswith("decoder.") else key] = value
    return out


def infer_config(state_dict: Mapping[str, Any], source: Path | str, depth: int | None = None,
                 min_depth: float = 0.1, max_depth: float = 100.0) -> DepthNetConfig:
    """A sigmoid-disp config for a state dict in npuq names: ResNet depth and number of scales."""
    found = infer_resnet_depth(list(state_dict), prefix="encoder.encoder.")
    if found is None and depth is None:
        raise NpuqError(f"{source}: no ResNet encoder weights found "
                        "(e.g. encoder.encoder.layer1.0.conv1.weight)")
    scales = sum(1 for s in range(4) if f"head.convs.{s}.conv.weight" in state_dict)
    if scales == 0:
        raise NpuqError(f"{source}: no disparity output convs found (decoder.10 ...)")
    return DepthNetConfig(depth=depth or found, head="sigmoid-disp", min_depth=min_depth, max_depth=max_depth,
                          num_scales=scales)


def _cfg_get(cfg: Any, dotted: str) -> Any:
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _packnet_depth(cfg: Any, path: Path) -> int | None:
    """ResNet depth from PackNet-SfM's ``model.depth_net.version`` ("18pt", "50", ...), if present."""
    name = _cfg_get(cfg, "model.depth_net.name")
    if isinstance(name, str) and name and name != "DepthResNet":
        raise NpuqError(f"{path}: PackNet-SfM depth network {name!r} is not supported (only DepthResNet)")
    version = _cfg_get(cfg, "model.depth_net.version")
    match = re.match(r"(\d+)", version) if isinstance(version, str) else None
    if match is None:
        return None
    depth = int(match.group(1))
    if depth not in (18, 34, 50):
        raise NpuqError(f"{path}: PackNet-SfM depth_net version {version!r} is not ResNet-18/34/50")
    return depth


# ---------------------------------------------------------------------------------------------------------
# Loading models


def load_model(path: str | Path, allow_pickle: bool = False) -> DepthResNet:
    """Build a DepthResNet from an npuq checkpoint, a PackNet-SfM ``.ckpt`` or a Monodepth2 folder.

    Weights load strictly; a mismatch raises one NpuqError listing missing and unexpected keys. The model
    comes back in training mode like any new module: call ``.eval()`` for inference.
    """
    path = Path(path)
    if path.is_dir():
        return load_monodepth2(path / "encoder.pth", path / "depth.pth", allow_pickle)
    if not path.exists():
        raise NpuqError(f"{path}: no such file or folder")
    obj = read_torch_file(path, allow_pickle)
    if isinstance(obj, Mapping) and "format" in obj:
        ckpt = _validate_npuq(dict(obj), path)
        return _build(_config_from(ckpt["config"], path), ckpt["state_dict"], path)
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        return _load_packnet(obj, path)
    if isinstance(obj, Mapping) and any(isinstance(k, str) and k.startswith(p) for k in obj
                                        for p in ("encoder.", "decoder.")):
        return _load_monodepth2_half(path, allow_pickle)
    raise NpuqError(f"{path}: unrecognised checkpoint (expected an npuq checkpoint, a PackNet-SfM .ckpt "
                    "or a Monodepth2 folder with encoder.pth and depth.pth)")


def load_monodepth2(encoder_path: str | Path, depth_path: str | Path,
                    allow_pickle: bool = False) -> DepthResNet:
    """Build a DepthResNet from Monodepth2's ``encoder.pth`` and ``depth.pth``."""
    encoder_path, depth_path = Path(encoder_path), Path(depth_path)
    for p in (encoder_path, depth_path):
        if not p.is_file():
            raise NpuqError(f"{p}: no such file (a Monodepth2 model needs encoder.pth and depth.pth)")
    encoder_sd = _as_state_dict(read_torch_file(encoder_path, allow_pickle), encoder_path)
    depth_sd = _as_state_dict(read_torch_file(depth_path, allow_pickle), depth_path)
    state_dict = monodepth2_state_dict(encoder_sd, depth_sd)
    source = f"{encoder_path.parent} (Monodepth2 encoder.pth + depth.pth)"
    _check_tensors(state_dict, Path(source))
    return _build(infer_config(state_dict, source), state_dict, source)


def _load_monodepth2_half(path: Path, allow_pickle: bool) -> DepthResNet:
    encoder_path, depth_path = path.parent / "encoder.pth", path.parent / "depth.pth"
    if path.name in ("encoder.pth", "depth.pth") and encoder_path.is_file() and depth_path.is_file():
        return load_monodepth2(encoder_path, depth_path, allow_pickle)
    raise NpuqError(f"{path}: looks like half of a Monodepth2 model; pass the folder holding both "
                    "encoder.pth and depth.pth")


def _as_state_dict(obj: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(obj, Mapping):
        raise NpuqError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


def _load_packnet(obj: Mapping[str, Any], path: Path) -> DepthResNet:
    raw = obj["state_dict"]
    if not any(isinstance(k, str) and k.startswith(PACKNET_PREFIX) for k in raw):
        raise NpuqError(f"{path}: state_dict has no '{PACKNET_PREFIX}*' keys; "
                        "not a PackNet-SfM depth checkpoint")
    state_dict = packnet_state_dict(raw)
    _check_tensors(state_dict, path)
    # PackNet-SfM's DepthResNet hard-codes min_depth=0.1, max_depth=100; the config's
    # model.params.min_depth/max_depth are evaluation clamps, not the disparity scaling.
    config = infer_config(state_dict, path, depth=_packnet_depth(obj.get("config"), path))
    return _build(config, state_dict, path)


def _build(config: DepthNetConfig, state_dict: Mapping[str, Any], source: Path | str) -> DepthResNet:
    model = DepthResNet(config)
    load_state_dict_strict(model, state_dict, source)
    return model


def load_state_dict_strict(model: torch.nn.Module, state_dict: Mapping[str, Any], source: Path | str) -> None:
    """``load_state_dict(strict=True)`` with one readable NpuqError for missing/unexpected/misshapen keys."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshapen = [f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                 if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)]
    problems = _problem(missing, "missing") + _problem(unexpected, "unexpected")
    problems += _problem(misshapen, "with wrong shape (file vs model)")
    if problems:
        what = describe(model.config) if isinstance(model, DepthResNet) else type(model).__name__
        raise NpuqError(f"{source}: weights do not match {what} (npuq key names): {'; '.join(problems)}")
    try:
        model.load_state_dict(dict(state_dict), strict=True)
    except (RuntimeError, TypeError) as exc:
        raise NpuqError(f"{source}: cannot load weights: {_short_reason(exc)}") from None


def describe(config: DepthNetConfig) -> str:
    return f"DepthResNet-{config.depth} ({config.head}, {config.num_scales} scales)"


def _problem(keys: list[str], label: str) -> list[str]:
    return [f"{len(keys)} {label}: {_preview(keys)}"] if keys else []


def _preview(keys: list[str], limit: int = PREVIEW_KEYS) -> str:
    shown = ", ".join(str(k) for k in keys[:limit])
    return shown + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


__all__: list[str] = [
    "FORMAT",
    "SAFE_GLOBALS",
    "YacsCfgNodeStandIn",
    "describe",
    "infer_config",
    "load_checkpoint_dict",
    "load_model",
    "load_monodepth2",
    "load_state_dict_strict",
    "monodepth2_state_dict",
    "packnet_state_dict",
    "read_torch_file",
    "save_checkpoint",
]
