"""Atomic output writing: temp file (or folder) beside the target, then rename. Never overwrite without force.

Temporary names carry the writer's pid (``.NAME.PID.XXXX.tmp`` / ``.partial``): a later write to the same
target removes the ones whose process is gone, so even a SIGKILL leaves nothing behind for long."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from npuq.errors import NpuqError


def file_sha256(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_writable(path: str | Path, force: bool) -> Path:
    """Refuse to clobber an existing user file unless ``force`` is set."""
    path = Path(path)
    if path.is_dir():
        raise NpuqError(f"{path}: is a folder; give a file path")
    _check_parents(path)
    if path.exists() and not force:
        raise NpuqError(f"{path}: already exists; pass --force to overwrite")
    return path


def _check_parents(path: Path) -> None:
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NpuqError(f"{path}: {parent} is a file, not a folder")
            return


def umask_mode(folder: bool = False) -> int:
    """The mode a plain ``open(path, "w")`` (or ``mkdir``) would give under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temps(target: Path) -> None:
    """Remove temporaries of ``target`` left by writers that no longer run (killed mid-write)."""
    if not target.parent.is_dir():
        return
    for leftover in target.parent.glob(f".{target.name}.*"):
        parts = leftover.name[len(target.name) + 2:].split(".")
        if len(parts) < 3 or not parts[0].isdigit() or parts[-1] not in ("tmp", "partial", "old"):
            continue
        if int(parts[0]) == os.getpid() or _pid_alive(int(parts[0])):
            continue
        if parts[-1] == "old" and not target.exists():  # killed between the two renames of a swap
            os.replace(leftover, target)
        elif leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def check_output_folder(folder: str | Path, force: bool, marker: str) -> Path:
    """Refuse, before any work, a multi-file output folder that cannot be written as a whole.

    ``marker`` is the file every such output holds: an existing folder is replaced only with ``force``
    and only when it holds ``marker`` (an earlier output of the same kind), never a folder of other
    files."""
    folder = Path(folder)
    remove_stale_temps(folder)
    if folder.exists() and not folder.is_dir():
        raise NpuqError(f"{folder}: exists and is not a folder")
    _check_parents(folder)
    if folder.is_dir() and any(folder.iterdir()):
        if not force:
            raise NpuqError(f"{folder}: already exists; pass --force to overwrite")
        if not (folder / marker).exists():
            raise NpuqError(f"{folder}: holds files npuq did not write (no {marker}); choose a new folder")
    return folder


@contextmanager
def atomic_folder(folder: str | Path, force: bool, marker: str) -> Iterator[Path]:
    """Yield a temporary folder beside ``folder``; when the block succeeds it replaces ``folder`` as a
    whole (readers see the old output or the new one, never a mix), when it fails it is removed."""
    folder = check_output_folder(folder, force, marker)
    folder.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{folder.name}.{os.getpid()}."
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".partial", dir=folder.parent))
    try:
        yield tmp
        if not (tmp / marker).exists():
            raise RuntimeError(f"atomic_folder: the output of {folder} lacks its marker {marker}")
        os.chmod(tmp, umask_mode(folder=True))
        if folder.exists():
            old = tmp.with_name(tmp.name.removesuffix(".partial") + ".old")
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write(path: str | Path, write: Callable[[Path], None], force: bool = True) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` so readers never see half a file.

    The file gets the umask's mode (``mkstemp`` alone would make it 0600: colleagues could not read
    a hand-off folder)."""
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str, force: bool = True) -> Path:
    return atomic_write(path, lambda p: p.write_text(text), force)


def write_bytes(path: str | Path, data: bytes, force: bool = True) -> Path:
    return atomic_write(path, lambda p: p.write_bytes(data), force)


def write_json(path: str | Path, obj: Any, force: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n", force)


def write_npy(path: str | Path, array: Any, force: bool = True) -> Path:
    import numpy as np

    def save(tmp: Path) -> None:
        with open(tmp, "wb") as fh:  # a file object: np.save would append ".npy" to the temp name
            np.save(fh, np.asarray(array), allow_pickle=False)

    return atomic_write(path, save, force)


def save_torch(path: str | Path, obj: Any, force: bool = True) -> Path:
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p), force)


def load_yaml(text: str, source: str) -> Any:
    """Parse YAML safely; duplicate keys and syntax errors are one NpuqError line with the line number."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        pass

    def mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = loader.construct_object(key_node)
            if key in seen:
                raise NpuqError(f"{source}: line {key_node.start_mark.line + 1}: duplicate key {key!r}")
            seen.add(key)
        return loader.construct_mapping(node)

    UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, mapping)
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise NpuqError(f"{source}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
