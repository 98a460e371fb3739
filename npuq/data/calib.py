"""Calibration sets: which frames the toolchain sees when it picks its clipping ranges.

``select_calibration(pool, n, strategy, seed, model=None)`` picks ``n`` frames of a pool:

- ``random``: uniform without replacement (the same frames as ``random_indices`` with that seed, so
  the pipeline's default calibration and a written random selection agree).
- ``stratified``: balances the known metadata. Strata are (scene family, brightness tercile); the
  terciles are quantiles of the pool's brightness. Pools without a ``family`` entry in their metadata
  (7-Scenes, NYU, KITTI) use the brightness terciles alone. Each stratum's members are shuffled by the
  seed, the strata are visited round-robin in a seeded order and each visit takes the next member.
- ``diverse``: k-center greedy on a per-frame descriptor (below). The first centre is the frame closest
  to the pool's mean descriptor (a typical frame, so no centre is spent on an outlier first and the
  result does not depend on the seed); each further centre is the frame farthest from all chosen ones.
  Ties go to the lowest index.

Descriptor of a frame (``pool_stats``), in blocks:

- ``photometric``: mean, standard deviation, 5th and 95th percentile of the luma (Rec. 601) of the RGB
  the network sees (brightness, contrast and the tails of the exposure);
- ``depth``: the fraction of valid pixels in each of ``DEPTH_BINS`` log-spaced bins over
  ``DEPTH_RANGE`` metres, from the ground truth when the frame has valid depth, else from the FP32
  prediction ``model.predict_depth`` (zeros when neither is available);
- ``features`` (only with a model): the global average of each of the five encoder stage outputs
  (``model.encoder(rgb)``) concatenated (1024 values for ResNet-18/34, 3904 for ResNet-50).

Standardisation: the photometric columns are in different units, so each is z-scored first; the
histogram and feature columns share their block's unit and keep their relative scale (z-scoring every
feature channel would blow up near-constant channels into noise). Then every block is centred and
divided by the square root of its total variance, so each block adds 1 on average to the squared
distance of a frame from the pool mean: the blocks weigh equally whatever their number of columns.

The k-center radius of a pick is the largest distance from any pool frame to its nearest picked frame
in this descriptor space: the smaller it is, the better every kind of pool frame is represented.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from npuq.errors import NpuqError
from npuq.io import write_text
from npuq.models.modes import eval_mode
from npuq.progress import counter

STRATEGIES = ("random", "stratified", "diverse")
BRIGHTNESS_BINS = 3
DEPTH_BINS = 20
DEPTH_RANGE = (0.1, 100.0)  # metres; depths outside land in the end bins
LUMA = (0.299, 0.587, 0.114)
FEATURE_BATCH = 16


def random_indices(pool_size: int, n: int, seed: int) -> list[int]:
    """``n`` distinct frame indices drawn uniformly from the pool, reproducibly from ``seed``."""
    if pool_size == 0:
        raise NpuqError("calibration pool is empty")
    if n <= 0:
        raise NpuqError(f"calibration size must be positive, got {n}")
    if n > pool_size:
        raise NpuqError(f"calibration size {n} exceeds the pool's {pool_size} frames (--n-calib)")
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(pool_size, size=n, replace=False).tolist())


def stack_rgb(dataset, indices: list[int]) -> torch.Tensor:
    """The RGB inputs of the chosen frames as one [N,3,H,W] float tensor."""
    return torch.stack([dataset[i]["rgb"] for i in indices])


def random_calibration(dataset, n: int, seed: int) -> torch.Tensor:
    return stack_rgb(dataset, random_indices(len(dataset), n, seed))


# --------------------------------------------------------------------------------------------------
# Per-frame statistics and descriptors.


@dataclass
class PoolStats:
    """Per-frame statistics of a whole pool (row ``i`` is ``pool[i]``) and the standardised descriptor.

    ``blocks`` maps block name -> (first column, end column) of ``descriptors``; ``depth_source[i]`` is
    ``"gt"``, ``"pred"`` or ``"none"``; ``families[i]`` is the metadata family or None.
    """

    names: list[str]
    brightness: np.ndarray  # [N] mean luma in [0, 1]
    contrast: np.ndarray  # [N] luma standard deviation
    photometric: np.ndarray  # [N, 4] luma mean, std, p5, p95
    depth_hist: np.ndarray  # [N, DEPTH_BINS] fraction of valid pixels per bin (rows sum to 1 or 0)
    depth_edges: np.ndarray  # [DEPTH_BINS + 1] metres
    depth_source: list[str]
    families: list[str | None]
    features: np.ndarray | None  # [N, F] pooled encoder features, None without a model
    descriptors: np.ndarray = field(init=False)  # [N, D]
    blocks: dict[str, tuple[int, int]] = field(init=False)

    def __post_init__(self) -> None:
        raw = {"photometric": zscore(self.photometric), "depth": self.depth_hist}
        if self.features is not None:
            raw["features"] = self.features
        self.descriptors, self.blocks = combine_blocks(raw)

    def __len__(self) -> int:
        return len(self.names)


def zscore(x: np.ndarray) -> np.ndarray:
    """Columns to zero mean and unit variance (constant columns become 0)."""
    x = np.asarray(x, dtype=np.float64)
    std = x.std(axis=0)
    return (x - x.mean(axis=0)) / np.where(std > 0, std, 1.0)


def combine_blocks(blocks: dict[str, np.ndarray]) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Centre each block, scale it to total variance 1 and concatenate (equal weight per block)."""
    parts, spans, start = [], {}, 0
    for name, block in blocks.items():
        block = np.asarray(block, dtype=np.float64)
        centred = block - block.mean(axis=0)
        total_std = float(np.sqrt(centred.var(axis=0).sum()))
        parts.append(centred / total_std if total_std > 0 else centred)
        spans[name] = (start, start + block.shape[1])
        start += block.shape[1]
    return np.concatenate(parts, axis=1), spans


def depth_bin_edges() -> np.ndarray:
    return np.geomspace(DEPTH_RANGE[0], DEPTH_RANGE[1], DEPTH_BINS + 1)


def depth_histogram(depth: np.ndarray, edges: np.ndarray) -> np.ndarray | None:
    """Fraction of valid (> 0, finite) pixels per bin; None when no pixel is valid."""
    valid = depth[np.isfinite(depth) & (depth > 0)]
    if valid.size == 0:
        return None
    clipped = np.clip(valid, edges[0], edges[-1])
    counts, _ = np.histogram(clipped, bins=edges)
    return counts / valid.size


def luma_stats(rgb: torch.Tensor) -> np.ndarray:
    """[B,3,H,W] RGB in [0,1] -> [B,4]: luma mean, std, 5th and 95th percentile."""
    weights = torch.tensor(LUMA, dtype=rgb.dtype).view(1, 3, 1, 1)
    luma = (rgb * weights).sum(dim=1).flatten(1).double()
    q = torch.quantile(luma, torch.tensor([0.05, 0.95], dtype=luma.dtype), dim=1).T
    return torch.cat([luma.mean(1, keepdim=True), luma.std(1, unbiased=False, keepdim=True), q], 1).numpy()


def _batches(pool, batch: int) -> Iterator[list[dict]]:
    for start in range(0, len(pool), batch):
        yield [pool[i] for i in range(start, min(start + batch, len(pool)))]


def _check_model_input(pool, model: torch.nn.Module) -> None:
    if len(pool) == 0:
        return
    h, w = pool[0]["rgb"].shape[-2:]
    if h % 32 or w % 32:
        raise NpuqError(f"{pool.root}: frames are {h}x{w}; the model needs multiples of 32 "
                        "(open the pool at the model's input size)")


def pool_stats(pool, model: torch.nn.Module | None = None, progress: bool = False) -> PoolStats:
    """Brightness, contrast, depth histogram and (with a model) pooled encoder features of every frame."""
    if len(pool) == 0:
        raise NpuqError(f"{getattr(pool, 'root', 'pool')}: calibration pool is empty")
    if model is not None:
        _check_model_input(pool, model)
    edges = depth_bin_edges()
    photometric, hists, sources, features = [], [], [], []
    with counter(progress, len(pool), "describing calibration pool") as advance, torch.no_grad(), \
            eval_mode(model):
        for items in _batches(pool, FEATURE_BATCH):
            rgb = torch.stack([item["rgb"] for item in items])
            photometric.append(luma_stats(rgb))
            if model is not None:
                features.append(pooled_features(model, rgb))
            batch_hists, batch_sources = _depth_hists(items, rgb, model, edges)
            hists += batch_hists
            sources += batch_sources
            advance(len(items))
    photo = np.concatenate(photometric)
    return PoolStats(
        names=list(pool.names), brightness=photo[:, 0], contrast=photo[:, 1], photometric=photo,
        depth_hist=np.stack(hists), depth_edges=edges, depth_source=sources, families=_families(pool),
        features=np.concatenate(features) if features else None,
    )


def _families(pool) -> list[str | None]:
    meta = getattr(pool, "meta", None) or [{}] * len(pool)
    return [m.get("family") if isinstance(m.get("family"), str) else None for m in meta]


def _model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def pooled_features(model: torch.nn.Module, rgb: torch.Tensor) -> np.ndarray:
    """Global average of each encoder stage output (``model.encoder(rgb)``), concatenated: [B, F]."""
    stages = model.encoder(rgb.to(_model_device(model)))
    return torch.cat([f.float().mean(dim=(2, 3)) for f in stages], dim=1).cpu().double().numpy()


def _depth_hists(items: list[dict], rgb: torch.Tensor, model: torch.nn.Module | None,
                 edges: np.ndarray) -> tuple[list[np.ndarray], list[str]]:
    hists: list[np.ndarray | None] = [depth_histogram(item["depth"].numpy(), edges) for item in items]
    sources = ["gt" if h is not None else "none" for h in hists]
    missing = [k for k, h in enumerate(hists) if h is None]
    if missing and model is not None:
        pred = model.predict_depth(rgb[missing].to(_model_device(model))).cpu().numpy()
        for k, depth in zip(missing, pred, strict=True):
            hists[k] = depth_histogram(depth, edges)
            sources[k] = "pred" if hists[k] is not None else "none"
    zeros = np.zeros(len(edges) - 1)
    return [h if h is not None else zeros for h in hists], sources


# --------------------------------------------------------------------------------------------------
# Selection strategies.


@dataclass
class Selection:
    """A calibration pick: ``indices`` into the pool (in pick order) and their frame ``names``.

    ``stats`` holds the whole pool's statistics and descriptors (``descriptors`` is
    ``stats.descriptors``); ``radius`` is the k-center radius of the pick in that space; ``strata``
    names each pool frame's stratum (stratified only).
    """

    indices: list[int]
    names: list[str]
    strategy: str
    seed: int
    stats: PoolStats
    radius: float
    strata: list[str] | None = None

    @property
    def descriptors(self) -> np.ndarray:
        return self.stats.descriptors

    @property
    def pool_size(self) -> int:
        return len(self.stats)

    @property
    def n(self) -> int:
        return len(self.indices)


def select_calibration(pool, n: int, strategy: str, seed: int, model: torch.nn.Module | None = None,
                       progress: bool = False, stats: PoolStats | None = None) -> Selection:
    """Pick ``n`` calibration frames of ``pool`` (a DepthDataset) by ``strategy``; see the module doc.

    ``n`` larger than the pool is an error (silently taking fewer frames would hide it). ``model`` (the
    FP32 DepthResNet) adds encoder features to the descriptor and predicted depth for frames without
    ground truth. ``stats`` reuses the statistics of an earlier call on the same pool (e.g. for a
    random baseline).
    """
    if strategy not in STRATEGIES:
        raise NpuqError(f"calibration strategy {strategy!r}: unknown; choose from {', '.join(STRATEGIES)}")
    if n <= 0:
        raise NpuqError(f"calibration size must be positive, got {n}")
    if len(pool) == 0:
        raise NpuqError(f"{getattr(pool, 'root', 'pool')}: calibration pool is empty")
    if n > len(pool):
        raise NpuqError(f"{getattr(pool, 'root', 'pool')}: calibration size {n} exceeds the pool's "
                        f"{len(pool)} frames")
    if stats is None:
        stats = pool_stats(pool, model, progress)
    elif len(stats) != len(pool):
        raise NpuqError(f"{pool.root}: precomputed statistics cover {len(stats)} frames, "
                        f"the pool has {len(pool)}")
    strata = None
    if strategy == "random":
        indices = random_indices(len(pool), n, seed)
    elif strategy == "stratified":
        strata = stratum_labels(stats)
        indices = stratified_indices(strata, n, seed)
    else:
        indices, _ = kcenter_greedy(stats.descriptors, n)
    return Selection(indices=indices, names=[stats.names[i] for i in indices], strategy=strategy, seed=seed,
                     stats=stats, radius=kcenter_radius(stats.descriptors, indices), strata=strata)


def brightness_bins(brightness: np.ndarray, bins: int = BRIGHTNESS_BINS) -> np.ndarray:
    """Bin of each frame by quantiles of the pool's brightness (0 = darkest)."""
    inner = np.quantile(brightness, np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(inner, brightness, side="right")


def stratum_labels(stats: PoolStats) -> list[str]:
    """``family/brightness-k`` per frame, or ``brightness-k`` when the pool has no family metadata."""
    bins = brightness_bins(stats.brightness)
    has_family = any(f is not None for f in stats.families)
    if not has_family:
        return [f"brightness-{b}" for b in bins]
    return [f"{f or 'unknown'}/brightness-{b}" for f, b in zip(stats.families, bins, strict=True)]


def stratified_indices(labels: list[str], n: int, seed: int) -> list[int]:
    """Round-robin over the strata (seeded order), a seeded shuffle inside each."""
    rng = np.random.default_rng(seed)
    keys = sorted(set(labels))
    members = {key: [i for i, lab in enumerate(labels) if lab == key] for key in keys}
    queues = {key: [members[key][j] for j in rng.permutation(len(members[key]))] for key in keys}
    order = [keys[j] for j in rng.permutation(len(keys))]
    n = min(n, len(labels))
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for key in order:
            if depth < len(queues[key]) and len(picked) < n:
                picked.append(queues[key][depth])
        depth += 1
    return picked


def kcenter_greedy(descriptors: np.ndarray, n: int) -> tuple[list[int], np.ndarray]:
    """Farthest-first traversal from the frame nearest the mean: (picked indices, distance of every
    frame to its nearest pick)."""
    x = np.asarray(descriptors, dtype=np.float64)
    n = min(n, len(x))
    first = int(np.argmin(np.linalg.norm(x - x.mean(axis=0), axis=1)))
    picked = [first]
    nearest = np.linalg.norm(x - x[first], axis=1)
    chosen = np.zeros(len(x), dtype=bool)
    chosen[first] = True
    while len(picked) < n:
        candidate = np.where(chosen, -1.0, nearest)
        nxt = int(np.argmax(candidate))
        picked.append(nxt)
        chosen[nxt] = True
        nearest = np.minimum(nearest, np.linalg.norm(x - x[nxt], axis=1))
    return picked, nearest


def nearest_pick_distance(descriptors: np.ndarray, indices: list[int]) -> np.ndarray:
    """Distance of every pool frame to its nearest picked frame."""
    x = np.asarray(descriptors, dtype=np.float64)
    if not indices:
        raise NpuqError("calibration pick is empty")
    nearest = np.full(len(x), np.inf)
    for i in indices:
        nearest = np.minimum(nearest, np.linalg.norm(x - x[i], axis=1))
    return nearest


def kcenter_radius(descriptors: np.ndarray, indices: list[int]) -> float:
    """Largest distance from any pool frame to its nearest picked frame."""
    return float(nearest_pick_distance(descriptors, indices).max())


# --------------------------------------------------------------------------------------------------
# Selection files: one frame name per line (what ``npuq.pipeline.load_calibration`` reads).


def write_selection(path: str | Path, selection: Selection, force: bool = False) -> Path:
    """Write the picked frame names, one per line, atomically; refuses to overwrite without ``force``."""
    bad = [name for name in selection.names if not name.strip() or re.search(r"[\r\n]", name)]
    if bad:
        raise NpuqError(f"{path}: frame name {bad[0]!r} cannot be written one per line")
    return write_text(path, "".join(f"{name}\n" for name in selection.names), force=force)


def read_selection(path: str | Path, pool) -> list[int]:
    """Pool indices of the frames listed in a selection file (in file order)."""
    path = Path(path)
    try:
        names = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    except FileNotFoundError:
        raise NpuqError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NpuqError(f"{path}: unreadable calibration list ({exc})") from None
    if not names:
        raise NpuqError(f"{path}: lists no frames")
    by_name = {name: i for i, name in enumerate(pool.names)}
    missing = [name for name in names if name not in by_name]
    if missing:
        raise NpuqError(f"{path}: {len(missing)} frames not in {pool.root} (first: {missing[0]})")
    return [by_name[name] for name in names]
