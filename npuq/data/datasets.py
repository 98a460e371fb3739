"""RGB-D datasets: one torch Dataset over per-format frame readers.

Formats (detected by ``open_dataset``):

- ``npuq-synth``: a folder written by ``write_synthetic_dataset`` (``index.json``, depth PNG in mm).
- ``synth``: ``synth:n=200,seed=1,size=128x160`` renders frames in memory, lazily per item;
  ``synth:mode=sequence,n=2000,seed=0,part=train`` takes one part of a sequence set (fixed worlds along
  smooth trajectories, see ``npuq.data.synthetic``).
- ``nyu-csv``: DenseDepth ``nyu2_test`` layout, csv rows ``rgb_path,depth_path`` (optional header);
  depth uint16 millimetres. Listed paths are resolved against the csv's folder, then by dropping
  leading folders, then by unique file name below it.
- ``annotations-json``: Metric3D demo layout (KITTI / NYU): ``rgb/``, ``depth/`` and
  ``test_annotations.json`` with ``{"files": [{"rgb", "depth", "depth_scale", "cam_in"}]}``;
  depth = value / depth_scale metres (256 for KITTI, 1000 for NYU).
- ``7scenes``: ``frame-XXXXXX.color.jpg|png`` + ``frame-XXXXXX.depth.png`` (uint16 mm, 0 and 65535 invalid).

Frame order is the listing order for csv / json / index.json formats and file-name order for 7-Scenes;
``frames=slice(a, b)`` selects by that order (never randomly). Depth 0 means invalid; a frame without any
valid depth is not an error here (metrics skip it).
"""

from __future__ import annotations

import csv
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from npuq.errors import NpuqError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".tif", ".tiff")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOR_TYPES = {0: "grayscale", 2: "RGB", 3: "palette", 4: "grayscale+alpha", 6: "RGBA"}
DEPTH_AT = ("input", "native")
SEVEN_SCENES_INVALID = 65535  # Kinect "no reading" in the original 7-Scenes release


# --------------------------------------------------------------------------------------------------
# File readers.


def read_rgb(path: Path) -> np.ndarray:
    """An image file as uint8 HxWx3 RGB (grey/alpha/palette converted)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return np.array(img.convert("RGB"), dtype=np.uint8)
    except FileNotFoundError as exc:
        raise NpuqError(f"{path}: no such file") from exc
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise NpuqError(f"{path}: unreadable image ({_first_line(exc)})") from exc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def png_header(path: Path) -> tuple[int, int]:
    """(bit depth, colour type) from a PNG's IHDR chunk; NpuqError when the file is not a PNG."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(33)
    except OSError as exc:
        raise NpuqError(f"{path}: cannot read ({_first_line(exc)})") from exc
    if len(head) < 33 or head[:8] != PNG_SIGNATURE or head[12:16] != b"IHDR":
        raise NpuqError(f"{path}: unreadable image (not a valid PNG file)")
    bits, color_type = struct.unpack(">BB", head[24:26])
    return bits, color_type


def _read_depth_png(path: Path) -> np.ndarray:
    from PIL import Image

    bits, color_type = png_header(path)
    if bits != 16 or color_type != 0:
        kind = PNG_COLOR_TYPES.get(color_type, f"colour type {color_type}")
        raise NpuqError(f"{path}: depth PNG is {bits}-bit {kind}; expected 16-bit grayscale (uint16)")
    try:
        with Image.open(path) as img:
            img.load()
            raw = np.asarray(img)
    except Exception as exc:
        raise NpuqError(f"{path}: unreadable image ({_first_line(exc)})") from exc
    return raw.astype(np.uint16)


def _read_depth_tiff(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.load()
            return np.asarray(img)
    except Exception as exc:
        raise NpuqError(f"{path}: unreadable image ({_first_line(exc)})") from exc


def _read_depth_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as exc:
        raise NpuqError(f"{path}: unreadable .npy depth ({_first_line(exc)})") from exc


def read_depth(path: Path, depth_scale: float, invalid_value: int | None = None) -> np.ndarray:
    """A depth file as float32 HxW metres, 0 = invalid.

    16-bit PNG (required dtype uint16) and integer TIFF/.npy are divided by ``depth_scale`` (units per
    metre); float TIFF/.npy are taken as metres. Raises NpuqError naming the file for NaN/Inf, negative
    values, wrong shapes or dtypes.
    """
    suffix = path.suffix.lower()
    if suffix == ".png":
        raw = _read_depth_png(path)
    elif suffix in (".tif", ".tiff"):
        raw = _read_depth_tiff(path)
    elif suffix == ".npy":
        raw = _read_depth_npy(path)
    else:
        raise NpuqError(
            f"{path}: unsupported depth file type {suffix!r}; expected .png (uint16), .tiff or .npy")
    if raw.ndim == 3 and raw.shape[2] == 1:
        raw = raw[..., 0]
    if raw.ndim != 2:
        raise NpuqError(f"{path}: depth must be a single-channel HxW image, got shape {raw.shape}")
    if raw.dtype.kind in "ui":
        depth = raw.astype(np.float32)
        if invalid_value is not None:
            depth[raw == invalid_value] = 0
        depth /= np.float32(depth_scale)
    elif raw.dtype.kind == "f":
        depth = raw.astype(np.float32)
    else:
        raise NpuqError(f"{path}: depth has dtype {raw.dtype}; expected uint16 or float")
    check_depth_values(depth, path)
    return depth


def check_depth_values(depth: np.ndarray, path: Path | str) -> None:
    if not np.isfinite(depth).all():
        raise NpuqError(f"{path}: depth has NaN or Inf values")
    if (depth < 0).any():
        raise NpuqError(f"{path}: depth has negative values")


# --------------------------------------------------------------------------------------------------
# Frame sources: one per format, each knows its frames' names, files and metadata.


@dataclass(frozen=True)
class FramePair:
    """One frame on disk: RGB file, depth file and the depth file's units per metre."""

    name: str
    rgb: Path
    depth: Path
    depth_scale: float
    meta: dict[str, Any] = field(default_factory=dict)


class FrameSource:
    """Frames of one dataset in their canonical order. Subclasses implement ``load``."""

    format: str = ""
    root: Path | str = ""

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def meta(self, index: int) -> dict[str, Any]:
        return {}

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        """(RGB uint8 HxWx3, depth float32 metres, the file to blame for a bad value)."""
        raise NotImplementedError


class FileFrames(FrameSource):
    """Frames listed as (RGB file, depth file) pairs."""

    def __init__(self, fmt: str, root: Path, pairs: list[FramePair], invalid_value: int | None = None):
        self.format, self.root, self.pairs, self.invalid_value = fmt, root, pairs, invalid_value

    def __len__(self) -> int:
        return len(self.pairs)

    def name(self, index: int) -> str:
        return self.pairs[index].name

    def meta(self, index: int) -> dict[str, Any]:
        return self.pairs[index].meta

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        pair = self.pairs[index]
        depth = read_depth(pair.depth, pair.depth_scale, self.invalid_value)
        return read_rgb(pair.rgb), depth, str(pair.depth)


class SynthFrames(FrameSource):
    """In-memory synthetic frames, rendered on demand (deterministic in seed and index)."""

    format = "synth"

    def __init__(self, spec: str, generator, frames: range) -> None:
        self.root, self.generator, self.frames = spec, generator, frames
        self._meta: dict[int, dict[str, Any]] = {}

    def __len__(self) -> int:
        return len(self.frames)

    def name(self, index: int) -> str:
        return f"{self.frames[index]:06d}"

    def meta(self, index: int) -> dict[str, Any]:
        if index not in self._meta:
            self.load(index)
        return self._meta[index]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, str]:
        frame = self.generator.frame(self.frames[index])
        self._meta[index] = frame.meta
        return frame.rgb, frame.depth, f"{self.root}#{self.frames[index]}"


# --------------------------------------------------------------------------------------------------
# The dataset.


class DepthDataset(Dataset):
    """RGB-D frames as ``{"rgb": [3,H,W] in [0,1], "depth": [1,h,w] metres (0 invalid), "name", "index"}``.

    ``index`` is the item's position in this dataset. ``size=(H, W)`` resizes RGB (bilinear, antialiased);
    with ``depth_at="input"`` depth follows to the RGB size (nearest), with ``"native"`` it keeps the
    ground-truth resolution (for evaluation).
    """

    def __init__(self, source: FrameSource, indices: list[int] | None = None,
                 size: tuple[int, int] | None = None, depth_at: str = "input") -> None:
        self.source = source
        self.indices = list(range(len(source))) if indices is None else list(indices)
        self.size = _check_size(size)
        if depth_at not in DEPTH_AT:
            raise NpuqError(f"depth_at must be one of {DEPTH_AT}, got {depth_at!r}")
        self.depth_at = depth_at

    @property
    def root(self) -> Path | str:
        return self.source.root

    @property
    def format(self) -> str:
        return self.source.format

    @property
    def meta(self) -> list[dict[str, Any]]:
        """Per-frame metadata (for in-memory synthetic sets this renders every frame once)."""
        return [self.source.meta(j) for j in self.indices]

    @property
    def names(self) -> list[str]:
        return [self.source.name(j) for j in self.indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} frames")
        index %= len(self)
        source_index = self.indices[index]
        rgb, depth, blame = self.source.load(source_index)
        check_depth_values(depth, blame)
        if min(rgb.shape[:2]) < MIN_FRAME_SIDE or min(depth.shape[:2]) < MIN_FRAME_SIDE:
            raise NpuqError(f"{blame}: frame is {rgb.shape[1]}x{rgb.shape[0]} (depth {depth.shape[1]}x"
                            f"{depth.shape[0]}) pixels; npuq needs at least {MIN_FRAME_SIDE} on each side")
        rgb_t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255)
        if self.size is not None and tuple(rgb_t.shape[1:]) != self.size:
            rgb_t = F.interpolate(rgb_t[None], size=self.size, mode="bilinear", align_corners=False,
                                  antialias=True)[0].clamp_(0, 1)
        if not torch.isfinite(rgb_t).all():
            raise NpuqError(f"{blame}: RGB has NaN or Inf values")
        depth_t = torch.from_numpy(np.ascontiguousarray(depth, dtype=np.float32))[None]
        if self.depth_at == "input" and tuple(depth_t.shape[1:]) != tuple(rgb_t.shape[1:]):
            depth_t = F.interpolate(depth_t[None], size=tuple(rgb_t.shape[1:]), mode="nearest-exact")[0]
        return {"rgb": rgb_t, "depth": depth_t, "name": self.source.name(source_index), "index": index}


def check_has_depth(dataset: DepthDataset, label: str, probes: int = 16) -> None:
    """Refuse a training set whose frames carry no valid depth (all zero): it would train on nothing.
    Looks at ``probes`` frames spread over the set, so a few empty frames among good ones pass."""
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(probes, len(dataset))).round().astype(int))
    if not any(bool((dataset[int(i)]["depth"] > 0).any()) for i in picks):
        raise NpuqError(f"{label}: no valid depth (all zero) in any of {len(picks)} frames spread over the "
                        "set; check the depth files and their scale")


def _check_size(size) -> tuple[int, int] | None:
    if size is None:
        return None
    try:
        h, w = (int(v) for v in size)
    except (TypeError, ValueError):
        raise NpuqError(f"size must be (H, W), got {size!r}") from None
    if h < 1 or w < 1:
        raise NpuqError(f"size must be positive, got {size!r}")
    return h, w


# --------------------------------------------------------------------------------------------------
# Format detection and per-format listing.


MIN_FRAME_SIDE = 4  # pixels; a smaller frame is not a camera image (e.g. a 1x1 placeholder)


def open_dataset(path: str | Path, size: tuple[int, int] | None = None, depth_at: str = "input",
                 frames: slice | None = None) -> DepthDataset:
    """Open an RGB-D dataset folder / listing file (format detected), or a ``synth:`` spec."""
    if isinstance(path, str) and path.startswith("synth:"):
        source: FrameSource = synth_source(path, size)
    else:
        source = file_source(Path(path).expanduser())
    if frames is not None and not isinstance(frames, slice):
        raise NpuqError(f"{source.root}: frames must be a slice, got {frames!r}")
    indices = list(range(len(source)))[frames or slice(None)]
    if not indices:
        chosen = f"frames {frames.start}:{frames.stop}" if frames else "the listing"
        raise NpuqError(f"{source.root}: {chosen} selects none of {len(source)} frames")
    return DepthDataset(source, indices, size=size, depth_at=depth_at)


def file_source(path: Path) -> FileFrames:
    if not path.exists():
        raise NpuqError(f"{path}: no such file or folder")
    if path.is_file():
        return _source_from_file(path)
    if (path / "index.json").is_file():
        return npuq_synth_frames(path / "index.json")
    annotations = _annotation_files(path)
    if annotations:
        return annotation_frames(annotations[0])
    csvs = sorted(path.glob("*.csv"))
    if len(csvs) > 1:
        raise NpuqError(f"{path}: several csv listings ({', '.join(c.name for c in csvs)}); pass one of them")
    if csvs:
        return nyu_csv_frames(csvs[0])
    if next(path.glob("frame-*.depth.png"), None) is not None:
        return seven_scenes_frames(path)
    raise NpuqError(
        f"{path}: no recognisable RGB-D frames (expected index.json, a NYU csv, test_annotations.json, "
        "or frame-*.color.jpg + frame-*.depth.png)"
    )


def _source_from_file(path: Path) -> FileFrames:
    if path.name == "index.json":
        return npuq_synth_frames(path)
    if path.suffix.lower() == ".csv":
        return nyu_csv_frames(path)
    if path.suffix.lower() == ".json":
        return annotation_frames(path)
    raise NpuqError(f"{path}: not a dataset listing (expected a folder, index.json, a .csv or a .json)")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NpuqError(f"{path}: unreadable JSON ({_first_line(exc)})") from exc


def _annotation_files(folder: Path) -> list[Path]:
    """JSON files in ``folder`` that look like Metric3D annotations (a ``files`` list)."""
    found = []
    for candidate in sorted(folder.glob("*.json"), key=lambda p: (p.name != "test_annotations.json", p.name)):
        try:
            data = json.loads(candidate.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue
        if isinstance(data, dict) and isinstance(data.get("files"), list):
            found.append(candidate)
    return found


class PathResolver:
    """Finds files named in a listing: as given, relative to the listing's folder, with leading
    folders dropped, then by unique file name anywhere below the folder."""

    def __init__(self, listing: Path) -> None:
        self.listing = listing
        self.base = listing.parent
        self._by_name: dict[str, list[Path]] | None = None

    def __call__(self, entry: str) -> Path:
        text = entry.strip().replace("\\", "/")
        if not text:
            raise NpuqError(f"{self.listing}: empty file path in listing")
        as_given = Path(text).expanduser()
        if as_given.is_absolute() and as_given.is_file():
            return as_given
        parts = [p for p in PurePosixPath(text).parts if p not in ("/", ".")]
        for start in range(len(parts)):
            candidate = self.base.joinpath(*parts[start:])
            if candidate.is_file():
                return candidate
        matches = self._index().get(parts[-1] if parts else text, [])
        if len(matches) == 1:
            return matches[0]
        problem = "matches several files" if matches else "not found"
        raise NpuqError(f"{self.listing}: listed file {entry!r} {problem} under {self.base}")

    def _index(self) -> dict[str, list[Path]]:
        if self._by_name is None:
            self._by_name = {}
            for p in self.base.rglob("*"):
                if p.is_file():
                    self._by_name.setdefault(p.name, []).append(p)
        return self._by_name


def _looks_like_image(field_text: str) -> bool:
    return field_text.strip().lower().endswith(IMAGE_SUFFIXES + (".npy",))


def nyu_csv_frames(listing: Path) -> FileFrames:
    """DenseDepth-style csv: ``rgb_path,depth_path`` per row (header optional), depth uint16 mm."""
    try:
        with open(listing, newline="") as fh:
            rows = [(n, r) for n, r in enumerate(csv.reader(fh), 1) if r and any(f.strip() for f in r)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise NpuqError(f"{listing}: unreadable csv ({_first_line(exc)})") from exc
    if rows and not any(_looks_like_image(f) for f in rows[0][1]):
        rows = rows[1:]  # header such as "image_path,depth_path"
    resolve = PathResolver(listing)
    pairs = []
    for line, row in rows:
        if len(row) < 2:
            raise NpuqError(f"{listing}:{line}: expected 'rgb_path,depth_path', got {','.join(row)!r}")
        rgb, depth = resolve(row[0]), resolve(row[1])
        pairs.append(FramePair(rgb.stem, rgb, depth, 1000.0, {"rgb": str(rgb), "depth": str(depth)}))
    if not pairs:
        raise NpuqError(f"{listing}: lists no frames")
    return FileFrames("nyu-csv", listing.parent, pairs)


def annotation_frames(listing: Path) -> FileFrames:
    """Metric3D-style ``{"files": [{"rgb", "depth", "depth_scale", "cam_in"}]}`` (KITTI, NYU demos)."""
    data = _load_json(listing)
    files = data.get("files") if isinstance(data, dict) else None
    if not isinstance(files, list):
        raise NpuqError(f"{listing}: expected an object with a 'files' list")
    resolve = PathResolver(listing)
    pairs = []
    for i, entry in enumerate(files):
        if not isinstance(entry, dict) or not entry.get("rgb") or not entry.get("depth"):
            raise NpuqError(f"{listing}: files[{i}] needs 'rgb' and 'depth' paths")
        scale = entry.get("depth_scale")
        if not isinstance(scale, int | float) or scale <= 0:
            raise NpuqError(f"{listing}: files[{i}] needs a positive 'depth_scale' (units per metre)")
        rgb, depth = resolve(str(entry["rgb"])), resolve(str(entry["depth"]))
        meta = {k: v for k, v in entry.items() if k not in ("rgb", "depth")}
        pairs.append(FramePair(rgb.stem, rgb, depth, float(scale), meta))
    if not pairs:
        raise NpuqError(f"{listing}: lists no frames")
    return FileFrames("annotations-json", listing.parent, pairs)


def npuq_synth_frames(index_path: Path) -> FileFrames:
    """A folder written by ``write_synthetic_dataset``; every listed file must exist."""
    from npuq.data.synthetic import DEPTH_SCALE, INDEX_FORMAT

    data = _load_json(index_path)
    if not isinstance(data, dict) or data.get("format") != INDEX_FORMAT:
        raise NpuqError(f"{index_path}: not an npuq synthetic index (format {INDEX_FORMAT!r} expected)")
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise NpuqError(f"{index_path}: lists no frames")
    root = index_path.parent
    scale = float(data.get("depth_scale", DEPTH_SCALE))
    pairs, missing = [], []
    for i, entry in enumerate(frames):
        keys = ("name", "rgb", "depth")
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in keys):
            raise NpuqError(f"{index_path}: frames[{i}] needs 'name', 'rgb' and 'depth'")
        rgb, depth = root / entry["rgb"], root / entry["depth"]
        missing += [str(p.relative_to(root)) for p in (rgb, depth) if not p.is_file()]
        meta = {k: v for k, v in entry.items() if k not in ("rgb", "depth")}
        pairs.append(FramePair(entry["name"], rgb, depth, scale, meta))
    if missing:
        raise NpuqError(f"{index_path}: {len(missing)} listed files missing (first: {missing[0]})")
    return FileFrames("npuq-synth", root, pairs)


SEVEN_SCENES_DEPTH = re.compile(r"^(frame-.+)\.depth\.png$")


def seven_scenes_frames(folder: Path) -> FileFrames:
    """7-Scenes sequence folder: ``frame-*.color.jpg|png`` + ``frame-*.depth.png`` (mm), sorted by name."""
    pairs = []
    for depth in sorted(folder.glob("frame-*.depth.png")):
        stem = SEVEN_SCENES_DEPTH.match(depth.name).group(1)
        color = next((folder / f"{stem}.color{ext}" for ext in (".jpg", ".png", ".jpeg")
                      if (folder / f"{stem}.color{ext}").is_file()), None)
        if color is None:
            raise NpuqError(f"{folder / (stem + '.color.jpg')}: missing colour image for {depth.name}")
        pairs.append(FramePair(stem, color, depth, 1000.0))
    paired = {pair.rgb.name for pair in pairs}
    unpaired = sorted(p.name for p in folder.glob("frame-*.color.*") if p.name not in paired)
    if unpaired:
        raise NpuqError(f"{folder / unpaired[0]}: no depth map for this colour image ({len(unpaired)} colour "
                        f"images without frame-*.depth.png); every frame needs both")
    return FileFrames("7scenes", folder, pairs, invalid_value=SEVEN_SCENES_INVALID)


# --------------------------------------------------------------------------------------------------
# synth: specs.

SYNTH_KEYS = ("n", "seed", "size", "families", "noise", "mode", "part")


def parse_synth_spec(spec: str) -> dict[str, Any]:
    """``synth:n=200,seed=1,size=128x160[,families=street+corridor][,noise=0][,mode=sequence,part=test]``."""
    body = spec[len("synth:"):].strip()
    settings: dict[str, Any] = {"n": 200, "seed": 0}
    for item in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in SYNTH_KEYS:
            keys = ", ".join(SYNTH_KEYS)
            raise NpuqError(f"{spec}: bad item {item!r}; expected key=value with keys {keys}")
        try:
            settings[key] = _synth_value(key, value)
        except ValueError:
            raise NpuqError(f"{spec}: bad value for {key}: {value!r}") from None
    if settings["n"] < 1 or settings["seed"] < 0:
        raise NpuqError(f"{spec}: need n >= 1 and seed >= 0")
    if "part" in settings and settings.get("mode") != "sequence":
        raise NpuqError(f"{spec}: part= needs mode=sequence")
    return settings


def _synth_value(key: str, value: str) -> Any:
    if key in ("n", "seed"):
        return int(value)
    if key in ("mode", "part"):
        return value
    if key == "size":
        h, w = (int(v) for v in value.lower().split("x"))
        return h, w
    if key == "families":
        return tuple(v for v in value.split("+") if v)
    if value.lower() not in ("0", "1", "true", "false"):
        raise ValueError(value)
    return value.lower() in ("1", "true")


def synth_source(spec: str, size: tuple[int, int] | None) -> SynthFrames:
    """In-memory synthetic frames; without ``size=`` in the spec they render at ``size`` directly."""
    from npuq.data.synthetic import SynthConfig, make_generator, sequence_part

    settings = parse_synth_spec(spec)
    config_args = {k: settings[k] for k in ("families", "noise", "mode") if k in settings}
    render_size = settings.get("size") or _check_size(size)
    if render_size is not None:
        config_args["size"] = render_size
    try:
        config = SynthConfig(**config_args)
        generator = make_generator(config, settings["seed"], settings["n"])
        frames = range(settings["n"])
        if config.mode == "sequence":
            frames = sequence_part(settings["n"], settings.get("part", "all"), len(config.families))
    except NpuqError as exc:
        raise NpuqError(f"{spec}: {exc}") from None
    if not frames:
        raise NpuqError(f"{spec}: part {settings.get('part')!r} holds no frames; raise n")
    return SynthFrames(spec, generator, frames)
