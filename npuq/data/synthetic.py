"""Embedded synthetic RGB-D scenes: a small vectorised numpy ray caster with metric z-depth.

Every frame is a function of ``(seed, index)`` only: its random numbers come from
``np.random.default_rng([seed, index])``, so ``frame(i)`` never depends on which frames were made
before it. Scenes are built from axis-aligned planes (rooms, ground), yaw-rotated boxes (furniture,
buildings, cars, doors) and spheres, textured from a fixed library of periodic procedural patterns
(mip-mapped, so texture detail shrinks with distance like a real camera sees it) and lit by an
ambient + directional + point-light model with distance falloff, fog outdoors, vignetting, and sensor
noise. Depth is the distance along the optical axis; outside ``[min_depth, max_depth]`` (and sky) it is 0.

Metric depth from a single image is only learnable when scale cues are consistent, so the camera is
"a known rig with some play" (FOV_DEG, per-family height and pitch bands), doors, tables, cars and
ceilings have real-world sizes, and man-made patterns have physical sizes (PHYSICAL_FEATURE).
Exposure, colours, materials, layout and lighting vary freely.

Two modes. ``random``: every frame is a new world (room, layout, camera, light): diverse, for
calibration and robustness tests. ``sequence``: a few fixed worlds (one per family, built from the seed)
seen by one fixed camera model along a smooth trajectory, like a handheld or vehicle recording: the
user's regime (one deployment domain, one camera). Sequence frames are interleaved, frame ``i`` is time
step ``i // W`` of world ``i % W``, so index order is time order and ``SEQUENCE_PARTS`` splits every
trajectory into train, validation and test parts with a gap before the test part.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from npuq.errors import NpuqError
from npuq.progress import counter

FAMILIES = ("indoor_room", "corridor", "street", "tabletop")
MODES = ("random", "sequence")
INDEX_FILE = "index.json"
INDEX_FORMAT = "npuq-synth/1"
DEPTH_SCALE = 1000.0  # depth PNG units per metre (millimetres)

TEXTURE_SIZE = 128  # texels per tile side (a power of two: wrapping uses a bit mask)
MIP_LEVELS = 6
TEXTURES_PER_KIND = 6
TEXTURE_LIBRARY_SEED = 7_221_604  # fixed: every seed draws from the same pattern library
TEXTURE_KINDS = ("plain", "noise", "checker", "stripes", "bricks", "planks", "tiles", "windows")

PLANE, BOX, SPHERE = 0, 1, 2


@dataclass(frozen=True)
class SynthConfig:
    """What the generator renders: frame size (H, W), valid depth range (m), scene families, noise."""

    size: tuple[int, int] = (128, 160)
    min_depth: float = 0.3
    max_depth: float = 16.0
    families: tuple[str, ...] = FAMILIES
    noise: bool = True
    mode: str = "random"

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(v) for v in self.size))
        object.__setattr__(self, "families", tuple(self.families))
        if len(self.size) != 2 or min(self.size) < 1:
            raise NpuqError(f"synthetic config: size must be (H, W) with positive sides, got {self.size}")
        if not 0 < self.min_depth < self.max_depth:
            raise NpuqError(
                f"synthetic config: need 0 < min_depth < max_depth, got {self.min_depth}, {self.max_depth}"
            )
        unknown = [f for f in self.families if f not in FAMILIES]
        if unknown or not self.families:
            raise NpuqError(f"synthetic config: unknown or empty families {unknown}; choose from {FAMILIES}")
        if self.mode not in MODES:
            raise NpuqError(f"synthetic config: mode must be one of {MODES}, got {self.mode!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"size": list(self.size), "min_depth": self.min_depth, "max_depth": self.max_depth,
                "families": list(self.families), "noise": self.noise, "mode": self.mode}


@dataclass
class Frame:
    """One rendered frame: RGB uint8 HxWx3, depth float32 HxW metres (0 = invalid), metadata."""

    rgb: np.ndarray
    depth: np.ndarray
    meta: dict[str, str | float | int]


# --------------------------------------------------------------------------------------------------
# Texture library: periodic grayscale tiles in [0, 1] with a mip pyramid, coloured per material.


@dataclass(frozen=True)
class TextureBank:
    """All tiles of all mip levels in one flat array; ``offsets[level]`` is where a level starts."""

    flat: np.ndarray
    offsets: np.ndarray
    cells: np.ndarray  # pattern repeats per tile side: a tile spans ``cells`` features
    kinds: dict[str, list[int]]
    size: int


def _tile_coords(size: int) -> tuple[np.ndarray, np.ndarray]:
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    return np.meshgrid(coords, coords)  # u varies along columns, v along rows


def periodic_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise on a ``cells`` x ``cells`` lattice, smoothstep-interpolated, wrapping at the edges."""
    lattice = rng.random((cells, cells), dtype=np.float32)
    pos = np.arange(size, dtype=np.float32) * cells / size
    i0 = pos.astype(np.int64)
    frac = pos - i0
    frac = frac * frac * (3 - 2 * frac)
    i1 = (i0 + 1) % cells
    rows = lattice[i0] * (1 - frac)[:, None] + lattice[i1] * frac[:, None]
    return rows[:, i0] * (1 - frac)[None, :] + rows[:, i1] * frac[None, :]


def fractal_noise(rng: np.random.Generator, size: int, cells: int, octaves: int, gain: float) -> np.ndarray:
    total = np.zeros((size, size), np.float32)
    amp = 1.0
    for _ in range(octaves):
        total += amp * periodic_noise(rng, size, min(cells, size))
        cells *= 2
        amp *= gain
    return total


def _normalise(img: np.ndarray) -> np.ndarray:
    lo, hi = float(img.min()), float(img.max())
    return ((img - lo) / max(hi - lo, 1e-6)).astype(np.float32)


def _soft_square(x: np.ndarray, duty: float, edge: float) -> np.ndarray:
    """Periodic 0/1 wave of period 1 with soft edges (avoids pure aliasing at the finest mip level)."""
    phase = x % 1.0
    return np.clip(np.minimum(phase, duty - phase) / edge + 0.5, 0, 1) * (phase < duty + edge)


def _pattern(kind: str, rng: np.random.Generator, size: int) -> tuple[np.ndarray, int]:
    u, v = _tile_coords(size)
    grain = fractal_noise(rng, size, 16, 3, 0.5)
    if kind == "plain":
        return 0.85 + 0.15 * _normalise(fractal_noise(rng, size, 4, 4, 0.6)), 1
    if kind == "noise":
        cells = int(rng.choice([2, 4, 8, 16]))
        return fractal_noise(rng, size, cells, int(rng.integers(2, 5)), float(rng.uniform(0.4, 0.7))), cells
    if kind == "checker":
        cells = int(rng.choice([2, 4, 8]))
        check = (np.floor(u * cells) + np.floor(v * cells)) % 2
        return check + 0.15 * grain, cells
    if kind == "stripes":
        cells = int(rng.choice([2, 4, 8, 16]))
        axis = u if rng.random() < 0.5 else v
        return _soft_square(axis * cells, float(rng.uniform(0.2, 0.6)), 0.05) + 0.2 * grain, cells
    if kind == "bricks":
        rows = int(rng.choice([4, 8]))
        per_row = rows // 2
        row = np.floor(v * rows)
        shifted = u * per_row + 0.5 * (row % 2)
        brick_id = (row * per_row * 2 + np.floor(shifted)) % 97
        tone = (np.sin(brick_id * 12.9898) * 43758.5453) % 1.0
        mortar = (_soft_square(shifted, 0.93, 0.02) * _soft_square(v * rows, 0.88, 0.03))
        return mortar * (0.55 + 0.3 * tone + 0.15 * grain), per_row
    if kind == "planks":
        cells = int(rng.choice([4, 8]))
        plank = np.floor(v * cells)
        tone = (np.sin(plank * 78.233 + 1.7) * 43758.5453) % 1.0
        fine = fractal_noise(rng, size, 32, 2, 0.5)
        streaks = sum(np.roll(fine, 5 * k, axis=1) for k in range(8))  # grain stretched along u
        seam = _soft_square(v * cells, 0.94, 0.02)
        return seam * (0.5 + 0.3 * tone + 0.2 * _normalise(streaks)), cells
    if kind == "tiles":
        cells = int(rng.choice([2, 4, 8]))
        tile_id = (np.floor(u * cells) * 31 + np.floor(v * cells) * 17) % 89
        tone = (np.sin(tile_id * 4.1414) * 43758.5453) % 1.0
        grout = _soft_square(u * cells, 0.92, 0.02) * _soft_square(v * cells, 0.92, 0.02)
        return grout * (0.75 + 0.15 * tone + 0.1 * grain), cells
    cells = int(rng.choice([2, 4]))  # windows: dark panes in a lighter wall, like a facade
    panes = _soft_square(u * cells, float(rng.uniform(0.4, 0.7)), 0.03) * _soft_square(
        v * cells, float(rng.uniform(0.4, 0.7)), 0.03)
    return 1 - 0.75 * panes + 0.1 * grain, cells


def _mip_chain(tiles: np.ndarray, levels: int) -> list[np.ndarray]:
    chain = [tiles]
    for _ in range(levels - 1):
        t = chain[-1]
        chain.append(0.25 * (t[:, ::2, ::2] + t[:, 1::2, ::2] + t[:, ::2, 1::2] + t[:, 1::2, 1::2]))
    return chain


@lru_cache(maxsize=2)
def texture_bank(seed: int = TEXTURE_LIBRARY_SEED, size: int = TEXTURE_SIZE) -> TextureBank:
    """The procedural pattern library (built once per process, deterministic from ``seed``)."""
    rng = np.random.default_rng(seed)
    tiles, cells, kinds = [], [], {}
    for kind in TEXTURE_KINDS:
        kinds[kind] = []
        for _ in range(TEXTURES_PER_KIND):
            img, n = _pattern(kind, rng, size)
            kinds[kind].append(len(tiles))
            tiles.append(_normalise(img))
            cells.append(n)
    chain = _mip_chain(np.stack(tiles).astype(np.float32), MIP_LEVELS)
    offsets = np.cumsum([0] + [level.size for level in chain[:-1]]).astype(np.int64)
    flat = np.concatenate([level.ravel() for level in chain])
    return TextureBank(flat, offsets, np.asarray(cells, np.float32), kinds, size)


# --------------------------------------------------------------------------------------------------
# Scene description.


@dataclass
class Camera:
    """Pinhole camera at ``position`` (world: x right, y up, z forward), angles in radians."""

    position: np.ndarray
    yaw: float
    pitch: float
    roll: float
    fov_h: float

    def rotation(self) -> np.ndarray:
        """Camera-to-world rotation (camera axes: x right, y up, z forward)."""
        cy, sy = math.cos(self.yaw), math.sin(self.yaw)
        cp, sp = math.cos(self.pitch), math.sin(self.pitch)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
        pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
        roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
        return (yaw @ pitch @ roll).astype(np.float32)

    def focal(self, width: int) -> float:
        return 0.5 * width / math.tan(0.5 * self.fov_h)


@dataclass
class Lighting:
    """Exposure and light sources. Shade = ambient + sun + point light + headlight (with falloffs).

    ``gain`` is the exposure target: the frame's mean linear intensity before clipping and noise.
    """

    gain: float
    ambient: float
    sun_dir: np.ndarray
    sun: float
    point_pos: np.ndarray | None = None
    point: float = 0.0
    point_range: float = 3.0
    headlight: float = 0.0
    head_range: float = 4.0
    vignette: float = 0.0
    fog_dist: float | None = None
    sky_horizon: np.ndarray = field(default_factory=lambda: np.array([0.8, 0.85, 0.9], np.float32))
    sky_zenith: np.ndarray = field(default_factory=lambda: np.array([0.35, 0.5, 0.8], np.float32))


@dataclass
class Scene:
    """Everything a frame needs; primitives are rows of small arrays (see ``SceneBuilder``)."""

    family: str
    camera: Camera
    light: Lighting
    prims: dict[str, np.ndarray]
    materials: dict[str, np.ndarray]


def _lerp(bounds: tuple[float, float], fraction: float) -> float:
    return bounds[0] + (bounds[1] - bounds[0]) * fraction


class SceneBuilder:
    """Collects materials and primitives for one scene, drawing appearance from ``rng``."""

    def __init__(self, rng: np.random.Generator, bank: TextureBank) -> None:
        self.rng = rng
        self.bank = bank
        self.mats: list[tuple] = []
        self.prims: list[tuple] = []

    def material(self, kinds: tuple[str, ...], feature: tuple[float, float], contrast=(0.2, 0.8),
                 sat=(0.0, 0.6), val=(0.35, 0.95), emission: float = 0.0, physical: bool = True) -> int:
        """A coloured texture whose features are ``feature`` metres across (uniform in the range).

        With ``physical``, patterns of man-made things (bricks, planks, tiles, windows) get their
        real-world sizes instead: a scale cue a depth network can learn.
        """
        u = self.rng.random(13).tolist()  # one draw per material: scenes make dozens of them
        kind = kinds[int(u[0] * len(kinds))]
        candidates = self.bank.kinds[kind]
        tex = candidates[int(u[1] * len(candidates))]
        if physical and kind in PHYSICAL_FEATURE:
            feature = PHYSICAL_FEATURE[kind]
        scale = float(self.bank.cells[tex]) * _lerp(feature, u[2])
        base = colorsys.hsv_to_rgb(u[3], _lerp(sat, u[4]), _lerp(val, u[5]))
        # the pattern's second colour: often a darker/lighter shade of the same hue, else any colour
        other_hue = (u[3] + 0.1 * (u[7] - 0.5)) % 1.0 if u[6] < 0.5 else u[7]
        other = colorsys.hsv_to_rgb(other_hue, _lerp(sat, u[8]), _lerp((0.05, 1.0), u[9]))
        mix = _lerp(contrast, u[10])
        dark = tuple(b + (o - b) * mix for b, o in zip(base, other, strict=True))
        self.mats.append((tex, scale, dark, base, emission, (u[11] * scale, u[12] * scale)))
        return len(self.mats) - 1

    def plane(self, axis: int, position: float, normal_sign: float, mat: int) -> None:
        center = np.zeros(3, np.float32)
        center[axis] = position
        self.prims.append((PLANE, mat, center, np.ones(3), 0.0, 0.0, axis, normal_sign))

    def box(self, center, half, mat: int, yaw: float = 0.0) -> None:
        self.prims.append((BOX, mat, np.asarray(center, np.float32), np.asarray(half, np.float32),
                           float(yaw), 0.0, 0, 1.0))

    def sphere(self, center, radius: float, mat: int) -> None:
        self.prims.append((SPHERE, mat, np.asarray(center, np.float32), np.full(3, radius, np.float32),
                           0.0, float(radius), 0, 1.0))

    def room(self, lo, hi, mats: tuple[int, ...]) -> None:
        """Six inward-facing planes: mats for (x-, x+, floor, ceiling, z-, z+)."""
        for axis in range(3):
            self.plane(axis, lo[axis], 1.0, mats[2 * axis])
            self.plane(axis, hi[axis], -1.0, mats[2 * axis + 1])

    def build(self, family: str, camera: Camera, light: Lighting) -> Scene:
        kind, mat, center, half, yaw, radius, axis, sign = zip(*self.prims, strict=True)
        prims = {
            "kind": np.array(kind, np.int8),
            "center": np.stack(center).astype(np.float32), "half": np.stack(half).astype(np.float32),
            "cos": np.cos(yaw).astype(np.float32), "sin": np.sin(yaw).astype(np.float32),
            "radius": np.array(radius, np.float32), "axis": np.array(axis, np.int8),
            "sign": np.array(sign, np.float32), "mat": np.array(mat, np.intp),
        }
        for k, name in enumerate("xyz"):  # per-component copies: gathers over pixels stay contiguous
            prims[f"c{name}"] = np.ascontiguousarray(prims["center"][:, k])
            prims[f"h{name}"] = np.ascontiguousarray(prims["half"][:, k])
        tex, scale, dark, base, emission, offset = zip(*self.mats, strict=True)
        materials = {
            "tex": np.array(tex, np.int64), "scale": np.array(scale, np.float32),
            "dark": np.array(dark, np.float32), "base": np.array(base, np.float32),
            "emission": np.array(emission, np.float32),
            "offset_u": np.array([o[0] for o in offset], np.float32),
            "offset_v": np.array([o[1] for o in offset], np.float32),
        }
        return Scene(family, camera, light, prims, materials)


# --------------------------------------------------------------------------------------------------
# Scene families. Units are metres; y is up, the floor or ground is y = 0.

# Real-world size (m) of one pattern repeat: brick length, plank width, tile side, facade window bay.
PHYSICAL_FEATURE = {"bricks": (0.21, 0.25), "planks": (0.12, 0.2), "tiles": (0.3, 0.6), "checker": (0.3, 0.6),
                    "windows": (2.6, 3.4)}
# Camera priors. Depth from one image is only metric when the camera is roughly known (like a fixed
# rig: NYU's handheld Kinect, KITTI's roof camera), so heights, pitch and field of view vary in bands.
FOV_DEG = (64.0, 72.0)
WALL_KINDS = ("plain", "plain", "noise", "stripes", "bricks", "tiles")
FLOOR_KINDS = ("planks", "tiles", "checker", "noise", "plain")
OBJECT_KINDS = ("plain", "noise", "checker", "stripes", "planks", "tiles")


def _deg(rng: np.random.Generator, lo: float, hi: float) -> float:
    return math.radians(rng.uniform(lo, hi))


def _exposure(rng: np.random.Generator) -> float:
    """Target mean intensity: mostly well exposed, one frame in four dark."""
    if rng.random() < 0.25:
        return float(np.exp(rng.uniform(math.log(0.04), math.log(0.2))))
    return rng.uniform(0.2, 0.6)


def _indoor_light(rng: np.random.Generator, point_pos: np.ndarray) -> Lighting:
    sun = np.array([rng.uniform(-1, 1), rng.uniform(0.3, 1.2), rng.uniform(-1, 1)], np.float32)
    return Lighting(
        gain=_exposure(rng), ambient=rng.uniform(0.15, 0.45),
        sun_dir=sun / np.linalg.norm(sun), sun=rng.uniform(0.1, 0.5), point_pos=point_pos,
        point=rng.uniform(0.3, 1.0), point_range=rng.uniform(2.0, 5.0), headlight=rng.uniform(0.0, 0.4),
        head_range=rng.uniform(2.0, 6.0), vignette=rng.uniform(0.0, 0.4),
    )


def _clear_of(camera_xz: np.ndarray, center, half, yaw: float, margin: float) -> bool:
    """True when the camera is outside the box footprint grown by ``margin``."""
    dx, dz = camera_xz[0] - center[0], camera_xz[1] - center[2]
    c, s = math.cos(yaw), math.sin(yaw)
    lx, lz = c * dx - s * dz, s * dx + c * dz
    return abs(lx) > half[0] + margin or abs(lz) > half[2] + margin


# Furniture half-sizes (x: width, y: height, z: depth ranges in metres), standard-sized like real ones.
FURNITURE = {
    "cabinet": ((0.2, 0.6), (0.4, 1.0), (0.2, 0.3)),
    "sofa": ((0.8, 1.1), (0.2, 0.4), (0.4, 0.5)),
    "table": ((0.4, 0.9), (0.36, 0.39), (0.3, 0.5)),
    "crate": ((0.15, 0.35), (0.15, 0.35), (0.15, 0.35)),
}


def _furniture(b: SceneBuilder, width: float, depth: float, cam: np.ndarray, count: int) -> None:
    r = b.rng
    for _ in range(count):
        mat = b.material(OBJECT_KINDS, (0.05, 0.4), val=(0.2, 0.95))
        kind = tuple(FURNITURE)[int(r.integers(len(FURNITURE)))]
        half = np.array([r.uniform(*rng_range) for rng_range in FURNITURE[kind]])
        if r.random() < 0.6:  # against a side or back wall, aligned with it
            side = int(r.integers(3))
            yaw = (0.0, math.pi / 2, -math.pi / 2)[side]
            x = (r.uniform(-width / 2 + half[0], width / 2 - half[0]), -width / 2 + half[2],
                 width / 2 - half[2])[side]
            z = (depth - half[2], r.uniform(depth * 0.3, depth - half[0]),
                 r.uniform(depth * 0.3, depth - half[0]))[side]
        else:
            yaw = r.uniform(-math.pi, math.pi)
            x, z = r.uniform(-width / 2, width / 2), r.uniform(1.0, depth)
        center = (x, half[1], z)
        if not _clear_of(cam[[0, 2]], center, half, yaw, 0.4):
            continue
        if kind == "table":  # top plus legs
            top = center[1] * 2
            b.box((x, top, z), (half[0], 0.025, half[2]), mat, yaw)
            c, s = math.cos(yaw), math.sin(yaw)
            for lx, lz in ((1, 1), (1, -1), (-1, 1), (-1, -1)):
                ox, oz = lx * (half[0] - 0.05), lz * (half[2] - 0.05)
                b.box((x + c * ox + s * oz, top / 2, z - s * ox + c * oz), (0.03, top / 2, 0.03), mat, yaw)
        else:
            b.box(center, half, mat, yaw)
            if r.random() < 0.35:  # something on top
                rad = r.uniform(0.08, 0.25)
                b.sphere((x, 2 * half[1] + rad, z), rad, b.material(OBJECT_KINDS, (0.02, 0.1)))


def _wall_decor(b: SceneBuilder, width: float, depth: float, height: float, count: int) -> None:
    r = b.rng
    for _ in range(count):
        w, h = r.uniform(0.3, 1.4), r.uniform(0.3, 1.2)
        y = r.uniform(h / 2 + 0.6, max(h / 2 + 0.7, height - h / 2 - 0.2))
        emission = r.uniform(0.6, 1.0) if r.random() < 0.3 else 0.0  # a bright window
        mat = b.material(("plain", "noise", "stripes", "windows"), (0.05, 0.3), emission=emission,
                         physical=False)
        if r.random() < 0.5:
            b.box((r.uniform(-width / 2 + w, width / 2 - w), y, depth - 0.02), (w / 2, h / 2, 0.03), mat)
        else:
            x = -width / 2 + 0.02 if r.random() < 0.5 else width / 2 - 0.02
            b.box((x, y, r.uniform(depth * 0.3, depth - w)), (0.03, h / 2, w / 2), mat)


def _door(b: SceneBuilder, width: float, depth: float) -> None:
    """A standard door (0.9 x 2.05 m) in a side or the back wall: a strong cue to metric scale."""
    r = b.rng
    mat = b.material(("plain", "planks", "noise"), (0.05, 0.3), val=(0.15, 0.9), physical=False)
    if r.random() < 0.5:
        b.box((r.uniform(-width / 2 + 0.5, width / 2 - 0.5), 1.025, depth - 0.02), (0.45, 1.025, 0.04), mat)
    else:
        x = -width / 2 + 0.02 if r.random() < 0.5 else width / 2 - 0.02
        b.box((x, 1.025, r.uniform(min(1.5, depth - 0.5), depth - 0.5)), (0.04, 1.025, 0.45), mat)


def indoor_room(b: SceneBuilder) -> tuple[Camera, Lighting]:
    """A box room: textured floor, walls and ceiling, furniture, tables, wall pictures and windows."""
    r = b.rng
    width, depth, height = r.uniform(3.0, 7.0), r.uniform(3.5, 9.0), r.uniform(2.5, 2.9)
    floor = b.material(FLOOR_KINDS, (0.08, 0.6), val=(0.2, 0.8))
    ceiling = b.material(("plain", "tiles", "noise"), (0.2, 0.6), contrast=(0.05, 0.3), sat=(0, 0.2),
                         val=(0.6, 1.0))
    walls = [b.material(WALL_KINDS, (0.05, 0.5)) for _ in range(2)]
    pick = r.integers(0, 2, 4)
    b.room((-width / 2, 0.0, -0.5), (width / 2, height, depth),
           (walls[pick[0]], walls[pick[1]], floor, ceiling, walls[pick[2]], walls[pick[3]]))
    cam = np.array([r.uniform(-width / 4, width / 4), r.uniform(1.3, 1.55),
                    r.uniform(-0.3, min(1.2, depth * 0.25))], np.float32)
    _furniture(b, width, depth, cam, int(r.integers(3, 10)))
    _wall_decor(b, width, depth, height, int(r.integers(0, 4)))
    if r.random() < 0.7:
        _door(b, width, depth)
    camera = Camera(cam, _deg(r, -30, 30), _deg(r, -15, 5), _deg(r, -2, 2), _deg(r, *FOV_DEG))
    light_pos = np.array([r.uniform(-width / 2, width / 2), height - 0.1, r.uniform(0.5, depth)], np.float32)
    return camera, _indoor_light(r, light_pos)


def corridor(b: SceneBuilder) -> tuple[Camera, Lighting]:
    """A long narrow box with doors in the side walls, pillars and ceiling lights."""
    r = b.rng
    width, height, length = r.uniform(1.8, 3.2), r.uniform(2.4, 2.9), r.uniform(12.0, 45.0)
    floor = b.material(FLOOR_KINDS, (0.08, 0.5), val=(0.2, 0.8))
    wall = b.material(WALL_KINDS, (0.05, 0.5))
    ceiling = b.material(("plain", "tiles"), (0.2, 0.6), contrast=(0.05, 0.3), sat=(0, 0.2), val=(0.6, 1))
    end = b.material(WALL_KINDS + ("windows",), (0.1, 0.5))
    b.room((-width / 2, 0.0, -1.0), (width / 2, height, length), (wall, wall, floor, ceiling, wall, end))
    door = b.material(("plain", "planks", "noise"), (0.05, 0.3), val=(0.15, 0.9), physical=False)
    spacing = r.uniform(2.5, 6.0)
    for z in np.arange(r.uniform(1.0, 3.0), min(length, 24.0), spacing):
        side = -1 if r.random() < 0.5 else 1
        if r.random() < 0.8:
            b.box((side * width / 2, 1.025, z), (0.06, 1.025, 0.45), door)
    if r.random() < 0.5:
        pillar = b.material(("plain", "noise", "bricks"), (0.05, 0.3))
        half_w = r.uniform(0.1, 0.3)
        for z in np.arange(r.uniform(2.0, 4.0), min(length, 24.0), r.uniform(3.0, 7.0)):
            for side in (-1, 1):
                b.box((side * width / 2, height / 2, z), (half_w, height / 2, half_w), pillar)
    lamp = b.material(("plain",), (0.1, 0.2), contrast=(0, 0.1), sat=(0, 0.1), val=(0.9, 1.0), emission=1.0)
    for z in np.arange(r.uniform(1.0, 3.0), min(length, 20.0), r.uniform(2.5, 5.0)):
        b.box((0.0, height - 0.02, z), (r.uniform(0.15, 0.5), 0.03, 0.3), lamp)
    for _ in range(int(r.integers(0, 4))):
        half = np.array([r.uniform(0.15, 0.5), r.uniform(0.2, 0.6), r.uniform(0.2, 0.6)])
        side = -1 if r.random() < 0.5 else 1
        b.box((side * (width / 2 - half[0]), half[1], r.uniform(2.0, min(length, 18.0))), half,
              b.material(OBJECT_KINDS, (0.03, 0.2)))
    cam = np.array([r.uniform(-width / 4, width / 4), r.uniform(1.35, 1.6), r.uniform(-0.5, 0.5)], np.float32)
    camera = Camera(cam, _deg(r, -25, 25), _deg(r, -10, 5), _deg(r, -2, 2), _deg(r, *FOV_DEG))
    light_pos = np.array([0.0, height - 0.1, r.uniform(1.0, 6.0)], np.float32)
    light = _indoor_light(r, light_pos)
    light.headlight = max(light.headlight, 0.2)
    return camera, light


def _outdoor_light(rng: np.random.Generator) -> Lighting:
    elevation, azimuth = _deg(rng, 15, 75), _deg(rng, -180, 180)
    sun = np.array([math.cos(elevation) * math.sin(azimuth), math.sin(elevation),
                    math.cos(elevation) * math.cos(azimuth)], np.float32)
    overcast = rng.random()
    horizon = np.array(colorsys.hsv_to_rgb(rng.uniform(0.05, 0.6), rng.uniform(0, 0.3),
                                           rng.uniform(0.6, 1.0)), np.float32)
    zenith = np.array(colorsys.hsv_to_rgb(rng.uniform(0.55, 0.65), rng.uniform(0.1, 0.6) * (1 - overcast),
                                          rng.uniform(0.5, 0.95)), np.float32)
    return Lighting(
        gain=_exposure(rng),
        ambient=rng.uniform(0.3, 0.6), sun_dir=sun, sun=rng.uniform(0.2, 0.9) * (1 - 0.7 * overcast),
        vignette=rng.uniform(0.0, 0.3), fog_dist=rng.uniform(40.0, 250.0),
        sky_horizon=horizon, sky_zenith=zenith,
    )


def _car(b: SceneBuilder, x: float, z: float, yaw: float) -> None:
    r = b.rng
    body = b.material(("plain", "noise"), (0.1, 0.5), contrast=(0.05, 0.3), sat=(0, 0.9), val=(0.1, 1))
    half = (r.uniform(0.8, 1.0), r.uniform(0.35, 0.5), r.uniform(1.9, 2.4))
    b.box((x, 0.2 + half[1], z), half, body, yaw)
    glass = b.material(("plain",), (0.1, 0.3), contrast=(0, 0.2), sat=(0, 0.2), val=(0.05, 0.35))
    b.box((x, 0.2 + 2 * half[1] + 0.25, z), (half[0] * 0.9, 0.25, half[2] * 0.5), glass, yaw)


def _facades(b: SceneBuilder, x_edge: float, side: int, z_max: float) -> None:
    r = b.rng
    z = r.uniform(-8.0, 0.0)
    while z < z_max:
        length = r.uniform(6.0, 25.0)
        setback, depth, height = r.uniform(0.0, 3.0), r.uniform(6.0, 15.0), r.uniform(4.0, 30.0)
        if r.random() < 0.85:
            mat = b.material(("bricks", "windows", "windows", "noise", "plain", "tiles"), (0.2, 2.0))
            x = side * (x_edge + setback + depth / 2)
            b.box((x, height / 2, z + length / 2), (depth / 2, height / 2, length / 2), mat)
        z += length + r.uniform(0.0, 4.0)


def street(b: SceneBuilder) -> tuple[Camera, Lighting]:
    """A road between sidewalks and building facades with parked cars and poles, or an open car park."""
    r = b.rng
    ground = b.material(("noise", "noise", "tiles", "plain"), (0.05, 0.8), contrast=(0.1, 0.5),
                        sat=(0, 0.25), val=(0.15, 0.6))
    b.plane(1, 0.0, 1.0, ground)
    road = r.uniform(3.0, 8.0)
    parking = r.random() < 0.3
    if parking:
        for row_z in np.arange(r.uniform(4.0, 8.0), 45.0, r.uniform(6.0, 9.0)):
            for x in np.arange(-r.uniform(8.0, 14.0), 14.0, r.uniform(2.4, 3.2)):
                if r.random() < 0.45:
                    _car(b, x, row_z, r.uniform(-0.1, 0.1))
        if r.random() < 0.7:
            _facades(b, 0.0, 1, 0.0)  # a building block far behind the lot
            b.box((0.0, 6.0, r.uniform(50.0, 90.0)), (40.0, 6.0, 5.0),
                  b.material(("windows", "bricks"), (0.3, 2.0)))
    else:
        walk = r.uniform(1.5, 4.0)
        curb = b.material(("tiles", "noise", "plain"), (0.1, 0.6), sat=(0, 0.2), val=(0.3, 0.8))
        for side in (-1, 1):
            b.box((side * (road + walk / 2), 0.075, 60.0), (walk / 2, 0.075, 70.0), curb)
            _facades(b, road + walk, side, 80.0)
        if r.random() < 0.7:
            line = b.material(("plain",), (0.1, 0.3), contrast=(0, 0.1), sat=(0, 0.3), val=(0.8, 1.0))
            b.box((0.0, 0.005, 60.0), (0.08, 0.005, 70.0), line)
        for _ in range(int(r.integers(1, 7))):
            side = -1 if r.random() < 0.5 else 1
            _car(b, side * (road - r.uniform(1.0, 1.6)), r.uniform(3.0, 40.0), r.uniform(-0.1, 0.1))
        pole = b.material(("plain", "noise"), (0.05, 0.2), sat=(0, 0.2), val=(0.2, 0.7))
        for z in np.arange(r.uniform(3.0, 10.0), 50.0, r.uniform(8.0, 20.0)):
            side = -1 if r.random() < 0.5 else 1
            b.box((side * (road + 0.4), 3.0, z), (0.08, 3.0, 0.08), pole)
    cam = np.array([r.uniform(-road * 0.6, road * 0.6), r.uniform(1.55, 1.7), 0.0], np.float32)
    camera = Camera(cam, _deg(r, -20, 20), _deg(r, -6, 3), _deg(r, -2, 2), _deg(r, *FOV_DEG))
    return camera, _outdoor_light(r)


def tabletop(b: SceneBuilder) -> tuple[Camera, Lighting]:
    """A table close below the camera with small boxes and balls 0.3-1.5 m away, in a room."""
    r = b.rng
    top_y, near_z = r.uniform(0.72, 0.78), r.uniform(0.1, 0.3)
    half = np.array([r.uniform(0.4, 1.0), 0.025, r.uniform(0.35, 0.7)])
    table = b.material(("planks", "plain", "noise", "checker", "tiles"), (0.02, 0.15), val=(0.2, 0.95))
    b.box((r.uniform(-0.2, 0.2), top_y - half[1], near_z + half[2]), half, table)
    for lx in (-1, 1):
        for lz in (near_z + 0.05, near_z + 2 * half[2] - 0.05):
            b.box((lx * (half[0] - 0.05), (top_y - 0.05) / 2, lz), (0.03, (top_y - 0.05) / 2, 0.03), table)
    width, depth = r.uniform(3.0, 7.0), r.uniform(1.5, 5.0)
    wall = b.material(WALL_KINDS, (0.05, 0.4))
    floor = b.material(FLOOR_KINDS, (0.08, 0.5), val=(0.2, 0.8))
    ceiling = b.material(("plain",), (0.3, 0.6), contrast=(0, 0.2), sat=(0, 0.2), val=(0.6, 1.0))
    b.room((-width / 2, 0.0, -1.5), (width / 2, 2.6, near_z + 2 * half[2] + depth),
           (wall, wall, floor, ceiling, wall, wall))
    for _ in range(int(r.integers(3, 9))):
        mat = b.material(OBJECT_KINDS + ("stripes", "checker"), (0.005, 0.05), val=(0.1, 1.0), sat=(0, 0.9),
                         physical=False)
        x = r.uniform(-half[0] + 0.1, half[0] - 0.1)
        z = r.uniform(near_z + 0.1, near_z + 2 * half[2] - 0.05)
        if r.random() < 0.6:
            size = np.array([r.uniform(0.02, 0.15), r.uniform(0.02, 0.15), r.uniform(0.02, 0.15)])
            b.box((x, top_y + size[1], z), size, mat, r.uniform(-math.pi, math.pi))
        else:
            rad = r.uniform(0.02, 0.12)
            b.sphere((x, top_y + rad, z), rad, mat)
    cam = np.array([r.uniform(-0.2, 0.2), top_y + r.uniform(0.3, 0.45), near_z + r.uniform(-0.3, -0.05)],
                   np.float32)
    camera = Camera(cam, _deg(r, -20, 20), _deg(r, -45, -25), _deg(r, -2, 2), _deg(r, *FOV_DEG))
    light_pos = np.array([r.uniform(-1, 1), 2.5, r.uniform(0.0, 1.5)], np.float32)
    return camera, _indoor_light(r, light_pos)


FAMILY_BUILDERS = {"indoor_room": indoor_room, "corridor": corridor, "street": street, "tabletop": tabletop}


# --------------------------------------------------------------------------------------------------
# Ray casting. Camera rays have z = 1 in camera space, so the ray parameter t IS the z-depth.


@dataclass
class Rays:
    origin: np.ndarray  # (3,)
    d: tuple[np.ndarray, np.ndarray, np.ndarray]  # world direction components, each (H, W)
    rotation: np.ndarray  # camera-to-world
    focal: float


def camera_rays(camera: Camera, height: int, width: int) -> Rays:
    f = camera.focal(width)
    xs = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) / f
    ys = -(np.arange(height, dtype=np.float32) + 0.5 - height / 2) / f
    rot = camera.rotation()
    d = tuple(rot[k, 0] * xs[None, :] + rot[k, 1] * ys[:, None] + rot[k, 2] for k in range(3))
    return Rays(camera.position.astype(np.float32), d, rot, f)


def _screen_rects(prims: dict[str, np.ndarray], rays: Rays, height: int,
                  width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel rectangle [r0, r1, c0, c1) that can see each primitive's bounding box (full frame if unsure),
    and the nearest z of that box (a lower bound of the primitive's depth)."""
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float32)
    half = prims["half"]
    c, s = prims["cos"], prims["sin"]
    lx, ly, lz = (signs[None, :, k] * half[:, None, k] for k in range(3))
    world = np.stack([c[:, None] * lx + s[:, None] * lz, ly, -s[:, None] * lx + c[:, None] * lz], -1)
    cam = (world + prims["center"][:, None, :] - rays.origin) @ rays.rotation  # (N, 8, 3)
    z = cam[..., 2]
    safe_z = np.maximum(z, 1e-3)
    cols = rays.focal * cam[..., 0] / safe_z + width / 2 - 0.5
    rows = -rays.focal * cam[..., 1] / safe_z + height / 2 - 0.5
    rect = np.stack([np.floor(rows.min(1)), np.ceil(rows.max(1)) + 1,
                     np.floor(cols.min(1)), np.ceil(cols.max(1)) + 1], 1)
    rect = np.clip(rect, 0, [height, height, width, width]).astype(np.int64)
    straddles = (z < 1e-3).any(1)
    rect[straddles] = (0, height, 0, width)
    rect[(z < 1e-3).all(1)] = 0
    return rect, z.min(1)


def _cast_plane(t_best, prim_id, rays: Rays, pid: int, axis: int, position: float) -> None:
    d = rays.d[axis]
    t = (position - rays.origin[axis]) / d
    hit = (t > 1e-4) & (t < t_best)
    t_best[hit] = t[hit]
    prim_id[hit] = pid


def _cast_box(t_best, prim_id, rays: Rays, pid: int, prims, rect) -> None:
    r0, r1, c0, c1 = rect
    dx, dy, dz = (d[r0:r1, c0:c1] for d in rays.d)
    oc = rays.origin - prims["center"][pid]
    c, s = prims["cos"][pid], prims["sin"][pid]
    if s != 0.0:  # world -> box frame (inverse yaw)
        dx, dz = c * dx - s * dz, s * dx + c * dz
        oc = np.array([c * oc[0] - s * oc[2], oc[1], s * oc[0] + c * oc[2]], np.float32)
    t_near = t_far = None
    for o_k, d_k, h_k in zip(oc, (dx, dy, dz), prims["half"][pid], strict=True):
        inv = 1.0 / d_k
        t1, t2 = (-h_k - o_k) * inv, (h_k - o_k) * inv
        lo, hi = np.minimum(t1, t2), np.maximum(t1, t2)
        t_near = lo if t_near is None else np.maximum(t_near, lo)
        t_far = hi if t_far is None else np.minimum(t_far, hi)
    view = t_best[r0:r1, c0:c1]
    hit = (t_near <= t_far) & (t_near > 1e-4) & (t_near < view)
    view[hit] = t_near[hit]
    prim_id[r0:r1, c0:c1][hit] = pid


def _cast_sphere(t_best, prim_id, rays: Rays, pid: int, prims, rect) -> None:
    r0, r1, c0, c1 = rect
    dx, dy, dz = (d[r0:r1, c0:c1] for d in rays.d)
    ox, oy, oz = rays.origin - prims["center"][pid]
    a = dx * dx + dy * dy + dz * dz
    b = dx * ox + dy * oy + dz * oz
    disc = b * b - a * (ox * ox + oy * oy + oz * oz - prims["radius"][pid] ** 2)
    t = (-b - np.sqrt(np.maximum(disc, 0))) / a
    view = t_best[r0:r1, c0:c1]
    hit = (disc > 0) & (t > 1e-4) & (t < view)
    view[hit] = t[hit]
    prim_id[r0:r1, c0:c1][hit] = pid


def cast(scene: Scene, rays: Rays, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Nearest hit per pixel: (t = z-depth, inf for none; primitive id, -1 for none)."""
    t_best = np.full((height, width), np.inf, np.float32)
    prim_id = np.full((height, width), -1, np.int16)
    prims = scene.prims
    rects, z_near = _screen_rects(prims, rays, height, width)
    planes = np.flatnonzero(prims["kind"] == PLANE)
    solids = np.flatnonzero(prims["kind"] != PLANE)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for pid in planes:
            axis = int(prims["axis"][pid])
            _cast_plane(t_best, prim_id, rays, pid, axis, float(prims["center"][pid, axis]))
        # Near to far, so that a box hidden behind what is already drawn can be skipped cheaply.
        for pid in solids[np.argsort(z_near[solids], kind="stable")]:
            r0, r1, c0, c1 = rect = rects[pid]
            if r0 >= r1 or c0 >= c1 or z_near[pid] > t_best[r0:r1, c0:c1].max():
                continue
            caster = _cast_box if prims["kind"][pid] == BOX else _cast_sphere
            caster(t_best, prim_id, rays, pid, prims, rect)
    return t_best, prim_id


# --------------------------------------------------------------------------------------------------
# Shading.


def _axis_pick(axis: np.ndarray, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
    return np.where(axis == 0, x, np.where(axis == 1, y, z))


@dataclass
class Surface:
    """Hit pixels (flat indices ``idx``) with their depth, ray direction, point, normal, uv, material."""

    idx: np.ndarray
    t: np.ndarray
    d: tuple[np.ndarray, np.ndarray, np.ndarray]
    d_norm: np.ndarray
    point: tuple[np.ndarray, np.ndarray, np.ndarray]
    normal: tuple[np.ndarray, np.ndarray, np.ndarray]
    u: np.ndarray
    v: np.ndarray
    mat: np.ndarray


def surface(scene: Scene, rays: Rays, t: np.ndarray, pid: np.ndarray) -> Surface:
    """Normals and texture coordinates of every hit, from the primitive it hit (all vectorised)."""
    idx = np.flatnonzero(pid >= 0)
    p_id = pid.ravel()[idx].astype(np.intp)
    tt = t.ravel()[idx]
    d = tuple(c.ravel()[idx] for c in rays.d)
    point = tuple(o + tt * dk for o, dk in zip(rays.origin, d, strict=True))
    prims = scene.prims
    kind = prims["kind"][p_id]
    q = [pk - prims[name][p_id] for pk, name in zip(point, ("cx", "cy", "cz"), strict=True)]
    c, s = prims["cos"][p_id], prims["sin"][p_id]
    lx, ly, lz = c * q[0] - s * q[2], q[1], s * q[0] + c * q[2]
    rx, ry, rz = (np.abs(lk) / prims[name][p_id] for lk, name in zip((lx, ly, lz), ("hx", "hy", "hz"),
                                                                          strict=True))
    box_axis = np.where((rx >= ry) & (rx >= rz), 0, np.where(ry >= rz, 1, 2))
    plane = kind == PLANE
    axis = np.where(plane, prims["axis"][p_id], box_axis)
    sign = np.where(plane, prims["sign"][p_id], np.sign(_axis_pick(axis, lx, ly, lz))).astype(np.float32)
    nlx, nly, nlz = (np.where(axis == k, sign, np.float32(0)) for k in range(3))
    normal = [c * nlx + s * nlz, nly, -s * nlx + c * nlz]
    u = np.where(axis == 0, lz, lx)
    v = np.where(axis == 1, lz, ly)
    sphere = np.flatnonzero(kind == SPHERE)
    if sphere.size:
        rad = prims["radius"][p_id[sphere]]
        n_s = [qk[sphere] / rad for qk in q]
        for k in range(3):
            normal[k][sphere] = n_s[k]
        u[sphere] = np.arctan2(n_s[0], n_s[2]) * rad
        v[sphere] = np.arcsin(np.clip(n_s[1], -1, 1)) * rad
    d_norm = np.sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2])
    return Surface(idx, tt, d, d_norm, point, tuple(normal), u, v, prims["mat"][p_id])


def sample_texture(bank: TextureBank, tex: np.ndarray, u: np.ndarray, v: np.ndarray,
                   footprint: np.ndarray) -> np.ndarray:
    """Bilinear lookup at the mip level matching ``footprint`` (pixel size in base texels)."""
    level = np.clip(np.log2(np.maximum(footprint, 1.0)).astype(np.int64), 0, MIP_LEVELS - 1)
    side = bank.size >> level
    inv = np.float32(1.0) / (1 << level)
    x = u * inv - 0.5
    y = v * inv - 0.5
    x0 = np.floor(x)
    y0 = np.floor(y)
    fx, fy = x - x0, y - y0
    mask = side - 1
    xi0 = x0.astype(np.int64) & mask
    yi0 = y0.astype(np.int64) & mask
    xi1, yi1 = (xi0 + 1) & mask, (yi0 + 1) & mask
    base = bank.offsets[level] + tex * side * side
    row0, row1 = base + yi0 * side, base + yi1 * side
    flat = bank.flat
    top = flat[row0 + xi0] * (1 - fx) + flat[row0 + xi1] * fx
    bottom = flat[row1 + xi0] * (1 - fx) + flat[row1 + xi1] * fx
    return top * (1 - fy) + bottom * fy


def _dot(a: tuple[np.ndarray, ...], b) -> np.ndarray:
    return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]


def _texture_value(scene: Scene, surf: Surface, focal: float, bank: TextureBank) -> np.ndarray:
    """Pattern value in [0, 1] per hit, filtered to the pixel footprint on the surface."""
    mats = scene.materials
    m = surf.mat
    texels = bank.size / mats["scale"][m]
    cos = np.abs(_dot(surf.normal, surf.d)) / surf.d_norm
    footprint = surf.t * surf.d_norm / focal * texels / np.maximum(cos, 0.35)
    return sample_texture(bank, mats["tex"][m], (surf.u + mats["offset_u"][m]) * texels,
                          (surf.v + mats["offset_v"][m]) * texels, footprint)


def _shading(scene: Scene, surf: Surface) -> np.ndarray:
    light = scene.light
    n = surf.normal
    shade = light.ambient + light.sun * np.maximum(_dot(n, light.sun_dir), 0)
    if light.point_pos is not None and light.point > 0:
        to_light = [lp - pk for lp, pk in zip(light.point_pos, surf.point, strict=True)]
        dist2 = _dot(to_light, to_light) + 1e-6
        lambert = np.maximum(_dot(n, to_light), 0) / np.sqrt(dist2)
        shade = shade + light.point * lambert / (1 + dist2 / light.point_range**2)
    if light.headlight > 0:
        dist = surf.t * surf.d_norm
        facing = np.abs(_dot(n, surf.d)) / surf.d_norm
        shade = shade + light.headlight * facing / (1 + (dist / light.head_range) ** 2)
    emission = scene.materials["emission"][surf.mat]
    return np.maximum(shade, emission * 1.4)


def render_linear(scene: Scene, rays: Rays, t: np.ndarray, pid: np.ndarray, bank: TextureBank) -> np.ndarray:
    """Float RGB planes (3, H, W), exposed so that their mean is ``light.gain`` (before clipping/noise).

    Channel-major on purpose: numpy is several times faster on three (N,) arrays than on one (N, 3).
    """
    height, width = t.shape
    light = scene.light
    img = np.empty((3, height * width), np.float32)
    sky_idx = np.flatnonzero(pid.ravel() < 0)
    if sky_idx.size:
        dx, dy, dz = (c.ravel()[sky_idx] for c in rays.d)
        elevation = np.sqrt(np.clip(dy / np.sqrt(dx * dx + dy * dy + dz * dz), 0, 1))
        for ch in range(3):
            horizon = light.sky_horizon[ch]
            img[ch, sky_idx] = horizon + (light.sky_zenith[ch] - horizon) * elevation
    surf = surface(scene, rays, t, pid)
    pattern = _texture_value(scene, surf, rays.focal, bank)
    shade = _shading(scene, surf)
    lit_pattern = pattern * shade
    fog = None if light.fog_dist is None else 1 - np.exp(-surf.t * surf.d_norm / light.fog_dist)
    mats = scene.materials
    for ch in range(3):
        dark = mats["dark"][:, ch].copy()
        color = dark[surf.mat] * shade + (mats["base"][:, ch] - dark)[surf.mat] * lit_pattern
        if fog is not None:
            color += (0.9 * light.sky_horizon[ch] - color) * fog
        img[ch, surf.idx] = color
    if light.vignette > 0:
        ys = (np.arange(height, dtype=np.float32) - height / 2 + 0.5) / (height / 2)
        xs = (np.arange(width, dtype=np.float32) - width / 2 + 0.5) / (width / 2)
        img *= (1 - light.vignette * 0.5 * (ys[:, None] ** 2 + xs[None, :] ** 2)).ravel()
    img *= light.gain / max(float(img.mean()), 1e-3)
    return img.reshape(3, height, width)


def approx_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Standard-normal-like float32 noise: a sum of three uniform bytes (Irwin-Hall), 5x cheaper."""
    count = int(np.prod(shape))
    raw = np.frombuffer(rng.bytes(3 * count), np.int8).reshape(3, count)
    total = raw[0].astype(np.float32)
    total += raw[1]
    total += raw[2]
    # each byte is uniform on -128..127: mean -0.5, variance (256^2 - 1) / 12
    return ((total + 1.5) * np.float32(1 / math.sqrt(3 * (256**2 - 1) / 12))).reshape(shape)


def _sensor(planes: np.ndarray, rng: np.random.Generator, noise: bool) -> np.ndarray:
    """(3, H, W) float planes -> uint8 HxWx3: Gaussian read noise + signal-dependent shot noise."""
    img = np.clip(planes, 0, 1)
    if noise:
        read, shot = rng.uniform(0.002, 0.01), rng.uniform(0.0002, 0.002)
        sigma = np.sqrt(read * read + shot * img)
        img += sigma * approx_normal(rng, img.shape)
        np.clip(img, 0, 1, out=img)
    img *= 255
    img += 0.5
    return np.ascontiguousarray(img.astype(np.uint8).transpose(1, 2, 0))


def _depth_map(t: np.ndarray, config: SynthConfig, rng: np.random.Generator) -> np.ndarray:
    depth = np.where(np.isfinite(t), t, 0).astype(np.float32)
    if config.noise:
        depth *= 1 + np.float32(rng.uniform(0.0005, 0.002)) * approx_normal(rng, t.shape)
    depth[(depth < config.min_depth) | (depth > config.max_depth)] = 0
    return depth


def frame_meta(rgb: np.ndarray, depth: np.ndarray, family: str, seed: int, index: int) -> dict[str, Any]:
    """The per-frame statistics stored next to each frame."""
    luma = (0.299 / 255) * rgb[..., 0] + (0.587 / 255) * rgb[..., 1] + (0.114 / 255) * rgb[..., 2]
    valid = depth[depth > 0]
    stats = (float(valid.min()), float(valid.max()), float(np.median(valid))) if valid.size else (0, 0, 0)
    return {
        "family": family, "brightness": round(float(luma.mean()), 5), "contrast": round(float(luma.std()), 5),
        "depth_min": round(stats[0], 4), "depth_max": round(stats[1], 4), "depth_median": round(stats[2], 4),
        "valid_fraction": round(float(valid.size / depth.size), 5), "seed": int(seed), "index": int(index),
    }


class SceneGenerator:
    """Deterministic procedural RGB-D frames: ``frame(index)`` depends only on ``(seed, index)``."""

    def __init__(self, config: SynthConfig | None = None, seed: int = 0) -> None:
        self.config = config or SynthConfig()
        if int(seed) < 0:
            raise NpuqError(f"synthetic generator: seed must be >= 0, got {seed}")
        self.seed = int(seed)
        self.bank = texture_bank()

    def _rng(self, index: int) -> np.random.Generator:
        if int(index) < 0:
            raise NpuqError(f"synthetic generator: frame index must be >= 0, got {index}")
        return np.random.default_rng([self.seed, int(index)])

    def scene(self, index: int, rng: np.random.Generator | None = None) -> Scene:
        """The scene description of frame ``index`` (geometry, materials, camera, lights)."""
        rng = rng or self._rng(index)
        families = self.config.families
        family = families[int(rng.integers(len(families)))]
        builder = SceneBuilder(rng, self.bank)
        camera, light = FAMILY_BUILDERS[family](builder)
        return builder.build(family, camera, light)

    def frame(self, index: int) -> Frame:
        rng = self._rng(index)
        scene = self.scene(index, rng)
        height, width = self.config.size
        rays = camera_rays(scene.camera, height, width)
        t, pid = cast(scene, rays, height, width)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            rgb = _sensor(render_linear(scene, rays, t, pid, self.bank), rng, self.config.noise)
        depth = _depth_map(t, self.config, rng)
        return Frame(rgb, depth, frame_meta(rgb, depth, scene.family, self.seed, index))


# --------------------------------------------------------------------------------------------------
# Sequences: fixed worlds, one camera model, smooth trajectories.

SEQUENCE_FOV_DEG = 66.0  # one camera model per dataset
WORLD_STREAM = 3  # world w of seed s draws from default_rng([s, w, WORLD_STREAM]): never a frame's stream
# Fractions of each trajectory: a gap before the test part keeps adjacent poses out of it.
SEQUENCE_PARTS = {"train": (0.0, 0.75), "val": (0.75, 0.8), "test": (0.85, 1.0), "all": (0.0, 1.0)}


@dataclass(frozen=True)
class Motion:
    """How a family's camera moves over a whole trajectory: metres forward (+z), sway amplitudes."""

    travel: float
    sway: float  # lateral, metres
    bob: float  # vertical, metres
    yaw_deg: float
    pitch_deg: float


MOTION = {
    "indoor_room": Motion(1.2, 0.3, 0.05, 25.0, 6.0),  # handheld, walking into the room
    "corridor": Motion(1.5, 0.15, 0.04, 10.0, 4.0),
    "street": Motion(15.0, 0.4, 0.03, 6.0, 2.0),  # vehicle
    "tabletop": Motion(0.15, 0.1, 0.03, 15.0, 5.0),
}
SWAY_FREQUENCIES = np.array([0.6, 1.3, 2.1])  # cycles per trajectory: smooth, not periodic over it
# The path goes out and comes back (1.25 cycles): the test part revisits places the train part saw,
# from other poses, as a camera moving about one room or driving one route does.
TRAVEL_CYCLES = 1.25
SWAY_WEIGHTS = np.array([1.0, 0.5, 0.25]) / 1.75
CLEARANCE = 0.15  # metres between the camera and any box, sphere or wall along the trajectory


@dataclass(frozen=True)
class Trajectory:
    """A smooth camera path through one world: ``camera(u)`` for u in [0, 1]."""

    base: Camera
    motion: Motion
    phases: np.ndarray  # (5, len(SWAY_FREQUENCIES)): lateral, vertical, forward wobble, yaw, pitch
    scale: float = 1.0  # shrinks translation when the full motion would hit the scene

    def _sway(self, u: float) -> np.ndarray:
        return np.sin(2 * math.pi * SWAY_FREQUENCIES * u + self.phases) @ SWAY_WEIGHTS

    def camera(self, u: float) -> Camera:
        m, sway = self.motion, self._sway(u)
        along = 0.5 * (1.0 - math.cos(2 * math.pi * TRAVEL_CYCLES * u))
        offset = self.scale * np.array([m.sway * sway[0], m.bob * sway[1],
                                        m.travel * (along + 0.05 * sway[2])], np.float32)
        return Camera(self.base.position + offset, self.base.yaw + math.radians(m.yaw_deg) * sway[3],
                      self.base.pitch + math.radians(m.pitch_deg) * sway[4], self.base.roll, self.base.fov_h)


def _collides(scene: Scene, position: np.ndarray) -> bool:
    """True when ``position`` is within CLEARANCE of a box or sphere, or outside a room wall."""
    p = scene.prims
    d = position[None, :] - p["center"]
    lx = p["cos"] * d[:, 0] - p["sin"] * d[:, 2]
    lz = p["sin"] * d[:, 0] + p["cos"] * d[:, 2]
    local = np.stack([lx, d[:, 1], lz], axis=1)
    inside_box = (np.abs(local) < p["half"] + CLEARANCE).all(axis=1) & (p["kind"] == BOX)
    inside_sphere = (np.linalg.norm(d, axis=1) < p["radius"] + CLEARANCE) & (p["kind"] == SPHERE)
    axis = p["axis"].astype(np.intp)
    signed = (position[axis] - p["center"][np.arange(len(axis)), axis]) * p["sign"]
    behind_wall = (signed < CLEARANCE) & (p["kind"] == PLANE)
    return bool((inside_box | inside_sphere | behind_wall).any())


class SequenceGenerator(SceneGenerator):
    """``n`` interleaved frames of ``len(families)`` fixed worlds: frame i is step i // W of world i % W."""

    def __init__(self, config: SynthConfig | None = None, seed: int = 0, n: int = 1000) -> None:
        super().__init__(config or SynthConfig(mode="sequence"), seed)
        if int(n) < 1:
            raise NpuqError(f"synthetic sequence: number of frames must be positive, got {n}")
        self.n = int(n)
        self.n_worlds = len(self.config.families)
        self.steps = -(-self.n // self.n_worlds)
        self._worlds = [self._world(w) for w in range(self.n_worlds)]

    def _world(self, w: int) -> tuple[Scene, Trajectory]:
        rng = np.random.default_rng([self.seed, w, WORLD_STREAM])
        family = self.config.families[w]
        builder = SceneBuilder(rng, self.bank)
        camera, light = FAMILY_BUILDERS[family](builder)
        camera = dataclasses.replace(camera, fov_h=math.radians(SEQUENCE_FOV_DEG))
        world = builder.build(family, camera, light)
        phases = rng.uniform(0, 2 * math.pi, (5, len(SWAY_FREQUENCIES)))
        trajectory = Trajectory(camera, MOTION[family], phases)
        return world, self._clear(world, trajectory)

    def _clear(self, world: Scene, trajectory: Trajectory) -> Trajectory:
        """The trajectory with its translation halved until no pose comes near the scene (or none)."""
        for scale in (1.0, 0.5, 0.25, 0.125):
            candidate = dataclasses.replace(trajectory, scale=scale)
            poses = (candidate.camera(u).position for u in np.linspace(0, 1, 64))
            if not any(_collides(world, pos) for pos in poses):
                return candidate
        return dataclasses.replace(trajectory, scale=0.0)

    def time_step(self, index: int) -> tuple[int, float]:
        """(world, trajectory position u in [0, 1]) of frame ``index``."""
        if not 0 <= int(index) < self.n:
            raise NpuqError(f"synthetic sequence: frame index {index} outside 0..{self.n - 1}")
        step = int(index) // self.n_worlds
        return int(index) % self.n_worlds, step / max(1, self.steps - 1)

    def scene(self, index: int, rng: np.random.Generator | None = None) -> Scene:
        world, u = self.time_step(index)
        scene, trajectory = self._worlds[world]
        return dataclasses.replace(scene, camera=trajectory.camera(u))


def sequence_part(n: int, part: str, n_worlds: int = len(FAMILIES)) -> range:
    """Frame indices of ``part`` (see SEQUENCE_PARTS) in an ``n``-frame sequence set: whole time steps."""
    if part not in SEQUENCE_PARTS:
        raise NpuqError(f"synthetic sequence: part must be one of {tuple(SEQUENCE_PARTS)}, got {part!r}")
    steps = -(-n // n_worlds)
    lo, hi = (round(f * steps) for f in SEQUENCE_PARTS[part])
    return range(lo * n_worlds, min(n, hi * n_worlds))


def make_generator(config: SynthConfig, seed: int, n: int) -> SceneGenerator:
    """The generator of ``config.mode``: random worlds per frame, or fixed worlds along trajectories."""
    if config.mode == "sequence":
        return SequenceGenerator(config, seed, n)
    return SceneGenerator(config, seed)


# --------------------------------------------------------------------------------------------------
# Folder datasets.


def frame_name(index: int) -> str:
    return f"{index:06d}"


def depth_to_png_array(depth: np.ndarray) -> np.ndarray:
    """Metres -> uint16 millimetres (0 stays 0 = invalid)."""
    return np.clip(np.round(depth * DEPTH_SCALE), 0, 65535).astype(np.uint16)


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(array).save(path, format="PNG", compress_level=1)


def write_synthetic_dataset(out_dir: str | Path, n: int, seed: int, size: tuple[int, int],
                            force: bool = False, progress: bool = True, mode: str = "random") -> Path:
    """Render ``n`` frames to ``out_dir``: rgb/NNNNNN.png, depth/NNNNNN.png (uint16 mm), index.json.

    The folder appears as a whole when every frame is written (an interrupted run leaves nothing).
    """
    from npuq.io import atomic_folder, check_output_folder

    out_dir = check_output_folder(out_dir, force, INDEX_FILE)
    if n < 1:
        raise NpuqError(f"{out_dir}: number of frames must be positive, got {n}")
    config = SynthConfig(size=tuple(size), mode=mode)
    generator = make_generator(config, seed, n)
    with atomic_folder(out_dir, force, INDEX_FILE) as tmp:
        _render_frames(generator, config, seed, n, tmp, progress, out_dir.name)
    return out_dir


def _render_frames(generator, config: SynthConfig, seed: int, n: int, out_dir: Path, progress: bool,
                   label: str) -> None:
    from npuq.io import write_json

    (out_dir / "rgb").mkdir()
    (out_dir / "depth").mkdir()
    frames = []
    with counter(progress, n, f"rendering {label}") as advance:
        for i in range(n):
            frame = generator.frame(i)
            name = frame_name(i)
            _save_png(out_dir / "rgb" / f"{name}.png", frame.rgb)
            _save_png(out_dir / "depth" / f"{name}.png", depth_to_png_array(frame.depth))
            files = {"rgb": f"rgb/{name}.png", "depth": f"depth/{name}.png"}
            frames.append({"name": name, **files, **frame.meta})
            advance()
    index = {"format": INDEX_FORMAT, "seed": int(seed), "size": list(config.size),
             "config": config.to_dict(), "depth_scale": DEPTH_SCALE, "frames": frames}
    if config.mode == "sequence":
        index["parts"] = {part: [r.start, r.stop] for part in SEQUENCE_PARTS
                          if (r := sequence_part(n, part, len(config.families)))}
    write_json(out_dir / INDEX_FILE, index)
