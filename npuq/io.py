"""Atomic output writing: temp file in the same folder, then rename. Never overwrite without force."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterable
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
    if path.exists() and not force:
        raise NpuqError(f"{path}: already exists; pass --force to overwrite")
    return path


def check_folder_writable(folder: str | Path, names: Iterable[str], force: bool) -> Path:
    """Refuse, before any work, to overwrite any of ``names`` inside ``folder`` without ``force``."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NpuqError(f"{folder}: exists and is not a folder")
    for name in names:
        check_writable(folder / name, force)
    return folder


def umask_mode() -> int:
    """The mode a plain ``open(path, "w")`` would give a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | Path, write: Callable[[Path], None], force: bool = True) -> Path:
    """Call ``write(tmp_path)`` and rename the result onto ``path`` so readers never see half a file.

    The file gets the umask's mode (``mkstemp`` alone would make it 0600: colleagues could not read
    a hand-off folder)."""
    path = check_writable(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
