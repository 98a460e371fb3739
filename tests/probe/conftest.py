from __future__ import annotations

import pytest

from npuq.probe import export_kit


@pytest.fixture(scope="session")
def kit(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe-kit") / "kit"
    export_kit(root)
    return root
