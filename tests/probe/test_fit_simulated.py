"""Black box (a): npuq's own simulator with hidden profiles that cover every field the kit reveals;
``fit_kit`` must name each field of each one."""

from __future__ import annotations

import dataclasses

import pytest

from npuq.probe import fit_kit, write_simulated_outputs
from npuq.probe.fit import range_candidates
from npuq.probe.probes import FP16_LAYER
from npuq.quant.profile import QuantProfile

RANGES = ["minmax", "percentile 99.9/npuq", "percentile 99.999/onnxruntime", "mse/npuq", "mse/modelopt",
          "kl/tensorrt", "kl/onnxruntime (2048 bins)", "percentile 99.99/onnxruntime"]


def hidden(i: int) -> QuantProfile:
    """Profile i of the matrix: each field's values all appear, in different combinations."""
    symmetric = RANGES[i] == "mse/modelopt" or i % 2 == 0
    change = range_candidates(symmetric)[RANGES[i]]
    activations = dataclasses.replace(QuantProfile().activations, symmetric=symmetric,
                                      bits=6 if i == 3 else 8, **change)
    weights = dataclasses.replace(QuantProfile().weights, range=("minmax", "mse")[i % 3 == 1],
                                  granularity=("per_tensor", "per_channel")[i // 2 % 2])
    return QuantProfile(name=f"hidden-{i}", activations=activations, weights=weights,
                        bias_correction=("off", "empirical", "empirical-sequential")[i % 3], cle=i % 4 < 2,
                        fp16_layers=(FP16_LAYER,) if i in (1, 2, 5, 6) else (), quantize_outputs=i != 6,
                        fuse_clip=i % 3 != 1)


@pytest.mark.parametrize("i", range(len(RANGES)), ids=lambda i: f"{i}-{RANGES[i]}")
def test_every_field_of_a_hidden_profile_is_recovered(kit, tmp_path, i):
    truth = hidden(i)
    result = fit_kit(kit, write_simulated_outputs(kit, truth, tmp_path / "device"))
    fitted, fields = result.profile, {f.field: f for f in result.fields}
    assert (fitted.activations.symmetric, fitted.activations.bits) == (truth.activations.symmetric,
                                                                        truth.activations.bits)
    assert fitted.quantize_outputs == truth.quantize_outputs
    assert fitted.activations.calibrator == truth.activations.calibrator, fields["activations.range"].evidence
    assert fitted.weights.granularity == truth.weights.granularity
    assert fitted.weights.range == truth.weights.range
    cle = next(f for f in result.fields if f.field.startswith("cle"))
    if cle.confidence == "undetermined":  # e.g. with CLE on, per-layer and sequential correction agree here
        assert truth.bias_correction != "off"
        assert fitted.bias_correction in ("empirical", "empirical-sequential")
    else:
        assert fitted.bias_correction == truth.bias_correction
    assert fitted.cle == truth.cle
    assert fitted.fuse_clip == truth.fuse_clip, fields["fuse_clip"].evidence
    assert fitted.fp16_layers == truth.fp16_layers  # an FP16 layer's weights are off the grid, too
    assert result.fits and min(result.agreement.values()) > 0.99, result.agreement


def test_outputs_of_an_unmodelled_toolchain_fit_nothing_and_say_so(kit, tmp_path):
    import numpy as np

    device = write_simulated_outputs(kit, QuantProfile(name="x"), tmp_path / "device")
    for path in (device / "weights").glob("*.npy"):  # a toolchain that rounds weights its own odd way
        values = np.load(path)
        wobble = np.sin(np.arange(values.size)).reshape(values.shape)
        np.save(path, values + 0.3 * np.abs(values).max() * wobble)
    result = fit_kit(kit, device)
    weights = next(f for f in result.fields if f.field.startswith("weights.granularity"))
    assert not result.fits and weights.confidence == "none"
    assert "per_tensor, bias correction" in weights.evidence  # the nearest candidates, with residuals
