"""Test-wide settings: tiny models run fastest (and without oversubscription) on one thread."""

import matplotlib
import pytest
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An untrained DepthResNet-18 saved as an npuq checkpoint with a 64x64 training size (seed 0)."""
    from npuq.models.checkpoint import save_checkpoint
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet

    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = DepthResNet(DepthNetConfig(depth=18))
    path = tmp_path_factory.mktemp("tiny") / "float.pt"
    save_checkpoint(path, model, extra={"train": {"config": {"size": [64, 64]}}})
    return path
