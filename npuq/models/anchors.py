"""Range anchors: an exact float rewrite that adds constant channels to a decoder block's output.

Block ``b``'s conv gets ``k`` more output channels with zero weights and bias ``value``, so that after
its ELU (identity above 0) they hold ``value`` at every pixel. Every conv that reads the block's output
(the next block, the head's conv at that scale) gets ``k`` more input columns holding a small weight
``epsilon``; their constant contribution ``value * sum(epsilon)`` is subtracted from that conv's bias.
Reflection padding and nearest upsampling keep a constant channel constant up to the borders, so the
float outputs are unchanged (up to float rounding).

What it is for: a stored tensor whose maximum is raised to ``value`` by a real share of its values.
A TensorRT-style KL search never keeps fewer than 128 of its 2048 bins, so once the tensor's maximum
is above 16 the ELU saturation spike at |x| = 1 lies inside the smallest candidate range and cannot
become the threshold. What could defeat it in a real toolchain: a pass that folds constant channels
into the next bias (constant propagation, dead-channel pruning of zero-weight producers), and CLE on
a ReLU decoder (a zero-weight channel has no range to equalize). With ELU, CLE does not act across
the activation at all.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from npuq.models.depth_resnet import DepthResNet


def consumer_convs(model: DepthResNet, block: int) -> list[str]:
    """Names of the conv weights that read decoder block ``block``'s output channels."""
    probe = _widened(model, block, 1)
    old = model.state_dict()
    return [name for name, tensor in probe.state_dict().items()
            if name.endswith("weight") and tensor.dim() == 4 and tensor.shape[1] != old[name].shape[1]]


def _widened(model: DepthResNet, block: int, k: int) -> DepthResNet:
    extra = list(model.config.decoder_extra_channels or (0,) * 10)
    extra[block] += k
    return DepthResNet(dataclasses.replace(model.config, decoder_extra_channels=tuple(extra)))


@torch.no_grad()
def add_range_anchors(model: DepthResNet, block: int, k: int, value: float,
                      epsilon: float | None = None) -> DepthResNet:
    """A new model: ``model`` with ``k`` anchor channels of ``value`` on decoder block ``block``.

    ``epsilon``: the weight of an anchor column in each consumer conv; None: one step of a symmetric
    8-bit per-tensor min/max grid of that conv's weights (exactly representable there).
    """
    if not 0 <= block < len(model.decoder.decoder) or k < 1 or value <= 0:
        raise ValueError("range anchors need a decoder block index, k >= 1 and a positive value")
    ceiling = model.decoder.decoder[block].ceiling
    if 0 < ceiling < value:
        raise ValueError(f"range anchors: block {block} is bounded at {ceiling:g}, "
                         f"so an anchor of {value:g} would not stay constant")
    new = _widened(model, block, k)
    at = model.decoder.block_channels[block]
    old_state = model.state_dict()
    state = {}
    consumers = set(consumer_convs(model, block))
    producer = f"decoder.decoder.{block}.conv.conv"
    for name, target in new.state_dict().items():
        source = old_state[name]
        if name == f"{producer}.weight":
            state[name] = torch.cat([source, source.new_zeros(k, *source.shape[1:])])
        elif name == f"{producer}.bias":
            state[name] = torch.cat([source, source.new_full((k,), float(value))])
        elif name in consumers:
            eps = float(source.abs().max()) / 127 if epsilon is None else float(epsilon)
            columns = source.new_full((source.shape[0], k, *source.shape[2:]), eps)
            state[name] = torch.cat([source[:, :at], columns, source[:, at:]], 1)
            bias = name[: -len("weight")] + "bias"
            state[bias] = old_state[bias] - value * columns.double().sum((1, 2, 3)).to(source.dtype)
        elif name not in state:
            state[name] = source
        if state[name].shape != target.shape:
            raise RuntimeError(f"range anchors: {name} has shape {tuple(state[name].shape)}, "
                               f"expected {tuple(target.shape)}")
    new.load_state_dict(state)
    return new.train(model.training)


def anchor_entries(model: DepthResNet) -> dict[str, torch.Tensor]:
    """Boolean masks of the parameter entries that make up the anchors, by parameter name: the
    producer's anchor rows and biases, and every consumer's anchor columns. A fine-tune must keep them
    fixed: Adam moves every entry with a non-zero gradient by about its learning rate per step, and a
    few thousandths on 32 columns reading values of 20-100 undo the bias subtraction."""
    params = dict(model.named_parameters())
    masks: dict[str, torch.Tensor] = {}
    for block, k in anchor_blocks(model).items():
        own = model.decoder.block_channels[block] - k
        producer = f"decoder.decoder.{block}.conv.conv"
        for name in (f"{producer}.weight", f"{producer}.bias"):
            masks.setdefault(name, torch.zeros_like(params[name], dtype=torch.bool))[own:own + k] = True
        for name in consumer_convs(model, block):
            masks.setdefault(name, torch.zeros_like(params[name], dtype=torch.bool))[:, own:own + k] = True
    return masks


def anchor_blocks(model: nn.Module) -> dict[int, int]:
    """Blocks that carry anchors and how many (from the model's config)."""
    extra = getattr(model.config, "decoder_extra_channels", ()) or ()
    return {b: k for b, k in enumerate(extra) if k}
