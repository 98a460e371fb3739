"""Test-wide settings: tiny models run fastest (and without oversubscription) on one thread."""

import matplotlib
import torch

matplotlib.use("Agg")
torch.set_num_threads(1)
