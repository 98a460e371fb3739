"""Empirical bias correction, as the vendor toolchain does it.

Quantizing a layer's weights (and its input) shifts the mean of its output: E[W_q x_q] != E[W x].
For every INT8 conv / linear layer the toolchain measures, on the calibration data, the expected output
shift per output channel

    shift_c = E[ layer_q(Q(x)) - layer_fp(x) ]_c

where x is the layer's *float* input (captured from a float pass of the whole network), Q is the
layer's input quantizer as calibrated and layer_q uses the quantized weights (and the float bias, which
cancels). The shift is then subtracted from the float bias, which the toolchain quantizes afterwards.

It is per-layer on float inputs: all layers are measured in one float pass over the calibration data,
so a correction does not see the errors of the layers before it (no sequential re-measurement). These
are Brevitas's semantics (``bias_correction_mode``: each layer's float output against its output with
input, weight and bias quantization on, on the float upstream outputs, all layers from one pass).

``bias_correction: empirical-sequential`` is AIMET's (``aimet_torch.bias_correction.correct_bias``,
empirical): layer by layer in network order, the float model's mean output against the mean output of
the quantized model with every activation (output) quantizer off, so it corrects the weight
quantization error accumulated up to the layer, with the earlier layers' corrections in place, and
never the activation clipping. Both compare pre-activation outputs and subtract E[quant] - E[float]
per output channel (mean over batch and space) from the bias.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping

import torch
from torch import nn


def channel_axis(layer: nn.Module) -> int:
    """The output-channel axis of the layer's output (-1 for Linear, 1 for convolutions)."""
    return -1 if isinstance(layer, nn.Linear) else 1


def per_channel_sum(t: torch.Tensor, axis: int) -> torch.Tensor:
    """Sum over every axis except ``axis`` (float64)."""
    return t.double().movedim(axis, 0).reshape(t.shape[axis], -1).sum(1)


def measure_output_shift(
    run_float: Callable[[torch.Tensor], object],
    layers: Mapping[str, nn.Module],
    quantized_output: Callable[[nn.Module, torch.Tensor], torch.Tensor],
    batches: Iterable[torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Per layer, the mean over the batches of ``quantized_output(layer, x) - layer(x)`` per output channel.

    ``run_float(batch)`` must run the network in float (all quantizers off); a forward hook on each
    layer sees its float input x and float output and evaluates ``quantized_output`` on the same x.
    """
    return _channel_means(run_float, layers, batches,
                          lambda layer, x, output: quantized_output(layer, x) - output)


def output_means(run: Callable[[torch.Tensor], object], layers: Mapping[str, nn.Module],
                 batches: Iterable[torch.Tensor], stop_after: bool = False) -> dict[str, torch.Tensor]:
    """Per layer, the mean output per channel over the batches of ``run(batch)`` (float64).
    ``stop_after`` (one layer only): abandon each forward once the layer has run."""
    if stop_after and len(layers) != 1:
        raise ValueError("stop_after needs exactly one layer")
    return _channel_means(run, layers, batches, lambda layer, x, output: output, stop_after)


class _StopForward(Exception):
    pass


@torch.no_grad()
def _channel_means(run: Callable[[torch.Tensor], object], layers: Mapping[str, nn.Module],
                   batches: Iterable[torch.Tensor], value: Callable, stop_after: bool = False
                   ) -> dict[str, torch.Tensor]:
    """Per layer, the per-channel mean of ``value(layer, input, output)`` over the forwards of the batches."""
    sums = dict.fromkeys(layers)
    counts = dict.fromkeys(layers, 0)

    def hook_for(name: str):
        def hook(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            axis = channel_axis(layer)
            total = per_channel_sum(value(layer, inputs[0], output), axis)
            sums[name] = total if sums[name] is None else sums[name] + total
            counts[name] += output.numel() // output.shape[axis]
            if stop_after:
                raise _StopForward

        return hook

    handles = [layer.register_forward_hook(hook_for(name)) for name, layer in layers.items()]
    try:
        for batch in batches:
            with contextlib.suppress(_StopForward):
                run(batch)
    finally:
        for handle in handles:
            handle.remove()
    return {name: sums[name] / counts[name] for name in layers if sums[name] is not None}
