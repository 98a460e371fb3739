"""Atomic outputs: files and folders appear whole or not at all, respect the umask, and what a killed
writer left behind is cleared by the next write to the same target."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from npuq.errors import NpuqError
from npuq.io import atomic_folder, check_output_folder, write_text


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_files_and_folders_get_the_umask_mode(tmp_path):
    old = os.umask(0o027)
    try:
        write_text(tmp_path / "f.txt", "x")
        with atomic_folder(tmp_path / "out", force=False, marker="done.json") as tmp:
            write_text(tmp / "done.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.txt").stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "out" / "done.json").stat().st_mode) == 0o640


def test_a_failed_folder_write_leaves_the_old_output_and_no_temporaries(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, force=False, marker="done.json") as tmp:
        write_text(tmp / "a.txt", "old")
        write_text(tmp / "done.json", "{}")
    with pytest.raises(RuntimeError, match="midway"), atomic_folder(out, True, "done.json") as tmp:
        write_text(tmp / "a.txt", "new")
        raise RuntimeError("midway")
    assert (out / "a.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_forced_folder_write_replaces_the_whole_folder(tmp_path):
    out = tmp_path / "out"
    with atomic_folder(out, force=False, marker="done.json") as tmp:
        write_text(tmp / "stale.txt", "from the first run")
        write_text(tmp / "done.json", "{}")
    with pytest.raises(NpuqError, match="already exists; pass --force"):
        check_output_folder(out, force=False, marker="done.json")
    with atomic_folder(out, force=True, marker="done.json") as tmp:
        write_text(tmp / "done.json", "{}")
    assert sorted(p.name for p in out.iterdir()) == ["done.json"]


def test_folders_npuq_did_not_write_are_never_replaced(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(NpuqError, match="did not write"):
        check_output_folder(tmp_path / "mine", force=True, marker="done.json")
    (tmp_path / "empty").mkdir()
    assert check_output_folder(tmp_path / "empty", force=False, marker="done.json") == tmp_path / "empty"


def test_leftovers_of_dead_writers_are_removed_and_live_ones_kept(tmp_path):
    pid = dead_pid()
    (tmp_path / f".model.onnx.{pid}.abcd.tmp").write_bytes(b"half")
    (tmp_path / f".q.{pid}.efgh.partial").mkdir()
    live = f".q.{os.getppid()}.ijkl.partial"  # a live process's: maybe being written right now
    (tmp_path / live).mkdir()
    write_text(tmp_path / "model.onnx", "whole")
    with atomic_folder(tmp_path / "q", force=False, marker="done.json") as tmp:
        write_text(tmp / "done.json", "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == [live, "model.onnx", "q"]


def test_a_swap_killed_between_its_renames_is_undone(tmp_path):
    pid = dead_pid()
    old = tmp_path / f".q.{pid}.abcd.old"
    old.mkdir()
    (old / "done.json").write_text("{}")
    with atomic_folder(tmp_path / "other", force=False, marker="done.json") as tmp:
        write_text(tmp / "done.json", "{}")
    assert old.exists()  # only a write to the same target restores it
    with pytest.raises(NpuqError, match="already exists"):
        check_output_folder(tmp_path / "q", force=False, marker="done.json")
    assert (tmp_path / "q" / "done.json").is_file() and not old.exists()
