"""Shared test data location and tiny on-disk datasets built in tmp_path."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# The fixtures live beside the repository (../shared/data); they are never copied into it.
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"{SHARED_DATA}: shared test data missing (expected ../shared/data)"
    return SHARED_DATA


@pytest.fixture
def seven_scenes_dir(tmp_path):
    """Write a 7-Scenes-layout folder: ``make(depths_mm)`` -> folder, one frame per uint16 array."""

    def make(depths: list[np.ndarray], color_ext: str = ".png") -> Path:
        folder = tmp_path / "seq"
        folder.mkdir(exist_ok=True)
        rng = np.random.default_rng(0)
        for i, depth in enumerate(depths):
            rgb = rng.integers(0, 256, (*depth.shape, 3), dtype=np.uint8)
            Image.fromarray(rgb).save(folder / f"frame-{i:06d}.color{color_ext}")
            Image.fromarray(depth.astype(np.uint16)).save(folder / f"frame-{i:06d}.depth.png")
        return folder

    return make
