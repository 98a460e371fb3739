"""Depth networks: ResNet encoder, Monodepth2 decoder, swappable heads, checkpoint loading."""

from npuq.models.checkpoint import load_checkpoint_dict, load_model, save_checkpoint
from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
from npuq.models.heads import HEADS, DepthHead, build_head

__all__ = [
    "HEADS",
    "DepthHead",
    "DepthNetConfig",
    "DepthResNet",
    "build_head",
    "load_checkpoint_dict",
    "load_model",
    "save_checkpoint",
]
