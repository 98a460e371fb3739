"""Black box (b): ONNX Runtime's ``quantize_static``, a real and independent toolchain, under several of
its settings; the fit must name its grid, range method and weight granularity."""

from __future__ import annotations

import pytest

from npuq.probe import fit_kit
from npuq.probe.ort_device import OrtSettings, run_onnxruntime_device

CASES = [
    # settings, symmetric activations, fitted calibrator (prefix), per-channel weights
    (OrtSettings("QUInt8", per_channel=False, method="MinMax"), False, "minmax", "per_tensor"),
    (OrtSettings("QInt8", per_channel=True, method="MinMax", symmetric_activations=True), True, "minmax",
     "per_channel"),
    (OrtSettings("QUInt8", per_channel=False, method="Entropy"), False, "minmax", "per_tensor"),
    (OrtSettings("QInt8", per_channel=True, method="Percentile"), False, "percentile 99.999", "per_channel"),
    (OrtSettings("QInt8", per_channel=False, method="Entropy", symmetric_activations=True), True, "minmax",
     "per_tensor"),
]


@pytest.mark.parametrize("settings, symmetric, calibrator, granularity", CASES,
                         ids=[c[0].label for c in CASES])
def test_onnxruntime_settings_are_identified(kit, tmp_path, settings, symmetric, calibrator, granularity):
    result = fit_kit(kit, run_onnxruntime_device(kit, tmp_path / "ort", settings))
    fitted, fields = result.profile, {f.field: f for f in result.fields}
    assert fitted.activations.symmetric == symmetric and fitted.activations.bits == 8
    assert fitted.activations.calibrator.startswith(calibrator), fields["activations.range"].evidence
    assert fitted.weights.granularity == granularity
    assert fitted.bias_correction == "off" and not fitted.cle and fitted.quantize_outputs
    assert fitted.fuse_clip  # its QDQ quantizer gives the conv the Clip's output range
    if settings.method == "Entropy":  # ONNX Runtime's entropy, 128 bins over the whole set: min/max
        assert "kl/onnxruntime give" in fields["activations.range"].evidence
    assert min(result.agreement.values()) > 0.95, result.agreement
