"""A non-editable install carries the shipped profiles and plans: built as a wheel, run from elsewhere."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel of this checkout, unpacked into its own site folder (offline: no build isolation)."""
    tmp = tmp_path_factory.mktemp("wheel")
    source = tmp / "source"  # setuptools builds in <source>/build: never inside the checkout
    shutil.copytree(REPO / "npuq", source / "npuq", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp / "dist"), str(source)], check=True, capture_output=True)
    wheel = next((tmp / "dist").glob("npuq-*.whl"))
    site = tmp / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(site)
    return wheel, site


def _npuq(site: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    code = "import sys; from npuq.cli import main; sys.argv = ['npuq', *sys.argv[1:]]; main()"
    env = {**os.environ, "PYTHONPATH": str(site)}
    return subprocess.run([sys.executable, "-c", code, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_the_wheel_ships_profiles_and_plans(installed):
    wheel, _ = installed
    names = zipfile.ZipFile(wheel).namelist()
    assert "npuq/profiles/npu-default.yaml" in names and "npuq/plans/path-b.yaml" in names


def test_profile_show_works_from_another_folder(installed, tmp_path):
    _, site = installed
    (tmp_path / "npu-default").mkdir()  # a folder named like the profile must not shadow it
    done = _npuq(site, tmp_path, "profile", "show", "npu-default")
    assert done.returncode == 0, done.stderr
    assert "# activation calibrator: kl/tensorrt" in done.stdout
    where = subprocess.run([sys.executable, "-c", "import npuq; print(npuq.__file__)"], cwd=tmp_path,
                           env={**os.environ, "PYTHONPATH": str(site)}, capture_output=True, text=True)
    assert where.stdout.strip().startswith(str(site))


def test_shipped_plans_load_from_the_installed_package(installed, tmp_path):
    _, site = installed
    code = "from npuq.roadmap.plan import load_plan; print(len(load_plan('path-c').steps))"
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0 and done.stdout.strip() == "3", done.stderr
