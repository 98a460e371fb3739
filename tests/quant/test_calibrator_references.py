"""Each calibrator variant against the library it models, on the same tensors.

The references are the libraries themselves, called on this machine: NVIDIA ModelOpt's histogram
calibrator (TensorRT / pytorch-quantization entropy, its MSE search) and ONNX Runtime's
``HistogramCollector`` (its entropy and percentile calibrators). Thresholds must agree within one
histogram bin for every distribution.
"""

from __future__ import annotations

import modelopt.torch.quantization.calib.histogram as modelopt_histogram
import modelopt.torch.quantization.tensor_quant as modelopt_tensor_quant
import numpy as np
import onnxruntime.quantization.calibrate as ort_calibrate
import pytest
import torch

from npuq.quant.observers import RangeObserver
from npuq.quant.profile import TensorQuantConfig
from npuq.quant.quantizer import IntGrid

N = 200_000


def _distributions() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    normal = torch.randn(N, generator=g)
    uniform = torch.rand(N, generator=g).clamp(1e-7, 1 - 1e-7)
    laplace = -torch.sign(uniform - 0.5) * torch.log1p(-2 * (uniform - 0.5).abs())
    low, high = torch.randn(N // 2, generator=g) * 0.3 - 2.0, torch.randn(N // 2, generator=g) + 3.0
    return {
        "gaussian": normal,
        "laplace": laplace,
        "relu-gaussian": torch.relu(normal),
        "elu-gaussian": torch.nn.functional.elu(normal * 3.0),  # a spike at -1
        "t3": _student_t3(g),
        "bimodal": torch.cat([low, high]),
        "sigmoid-away-from-zero": torch.sigmoid(normal * 0.4),
        "all-positive": torch.rand(N, generator=g) * 5.0 + 0.5,
        "all-negative": -torch.rand(N, generator=g) * 5.0 - 0.5,
        "constant": torch.full((N,), 1.7),
    }


def _student_t3(g: torch.Generator) -> torch.Tensor:
    """t with 3 degrees of freedom: a normal over the root of a chi-square(3) / 3."""
    chi2 = torch.randn(3, N, generator=g).square().sum(0)
    return torch.randn(N, generator=g) / (chi2 / 3).sqrt()


DISTRIBUTIONS = _distributions()


def npuq_range(x: torch.Tensor, symmetric: bool = True, **cfg) -> tuple[float, float, RangeObserver]:
    obs = RangeObserver(TensorQuantConfig(symmetric=symmetric, **cfg))
    obs.observe_minmax(x)
    obs.observe_histogram(x)
    lo, hi = obs.compute_range(IntGrid(8, signed=symmetric))
    return lo, hi, obs


def bin_width(obs: RangeObserver) -> float:
    lo, hi = obs.hist_range()
    return max((hi - lo) / obs.bins, 1e-12)


@pytest.fixture
def modelopt_mse_fixed(monkeypatch):
    """ModelOpt 0.47's ``_compute_amax_mse`` calls ``fake_tensor_quant(centers, amax, num_bits, unsigned)``
    but that function's third parameter is now ``bias``: the bits are subtracted from the inputs and
    the search is meaningless. Give it ModelOpt's own quantizer with the arguments it means."""
    monkeypatch.setattr(modelopt_histogram, "fake_tensor_quant", lambda x, amax, bits, unsigned:
                        modelopt_tensor_quant._tensor_quant(x, amax, bits, unsigned))


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize(("range_", "variant", "method"), [("kl", "tensorrt", "entropy"),
                                                          ("mse", "modelopt", "mse")])
def test_against_modelopt(name, range_, variant, method, modelopt_mse_fixed):
    x = DISTRIBUTIONS[name]
    calib = modelopt_histogram.HistogramCalibrator(num_bits=8, unsigned=False, num_bins=2048)
    calib.collect(x.clone())
    reference = float(calib.compute_amax(method))
    lo, hi, obs = npuq_range(x, range=range_, **{f"{range_}_variant": variant})
    assert max(abs(lo), abs(hi)) == pytest.approx(reference, abs=bin_width(obs) * 1.001)


def test_modelopt_mse_can_choose_the_last_centre(modelopt_mse_fixed):
    """A two-point tensor {-1, 1}: the last bin centre is ModelOpt's optimum, and so npuq's."""
    x = torch.tensor([-1.0, 1.0]).repeat(1000)
    calib = modelopt_histogram.HistogramCalibrator(num_bits=8, unsigned=False, num_bins=2048)
    calib.collect(x.clone())
    _, hi, _ = npuq_range(x, range="mse", mse_variant="modelopt")
    assert hi == pytest.approx(float(calib.compute_amax("mse")), rel=1e-6)


def ort_thresholds(x: torch.Tensor, method: str, symmetric: bool, bins: int, percentile: float = 99.99):
    collector = ort_calibrate.HistogramCollector(method=method, symmetric=symmetric, num_bins=bins,
                                                 num_quantized_bins=128, percentile=percentile,
                                                 scenario="same")
    collector.collect({"t": [x.numpy().astype(np.float32)]})
    lo, hi = collector.compute_collection_result()["t"][:2]
    return float(lo), float(hi)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("bins", [128, 2048])
def test_entropy_against_onnxruntime(name, bins):
    x = DISTRIBUTIONS[name]
    ref_lo, ref_hi = ort_thresholds(x, "entropy", symmetric=False, bins=bins)
    for symmetric in (True, False):
        lo, hi, obs = npuq_range(x, symmetric=symmetric, range="kl", kl_variant="onnxruntime", hist_bins=bins)
        width = bin_width(obs) * 1.001
        if symmetric:  # the signed grid's scale comes from the larger side, as ORT's symmetric QDQ does
            assert max(abs(lo), abs(hi)) == pytest.approx(max(abs(ref_lo), abs(ref_hi)), abs=width)
        else:
            assert (lo, hi) == pytest.approx((ref_lo, ref_hi), abs=width)


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
@pytest.mark.parametrize("symmetric", [True, False])
def test_percentile_against_onnxruntime(name, symmetric):
    x = DISTRIBUTIONS[name]
    ref_lo, ref_hi = ort_thresholds(x, "percentile", symmetric=symmetric, bins=2048)
    lo, hi, obs = npuq_range(x, symmetric=symmetric, range="percentile", percentile_variant="onnxruntime")
    width = bin_width(obs) * 1.001
    if symmetric:  # ORT clamps -T to the minimum too (a constant gives (c, c)); the scale is the same
        assert max(abs(lo), abs(hi)) == pytest.approx(max(abs(ref_lo), abs(ref_hi)), abs=width)
    else:
        assert (lo, hi) == pytest.approx((ref_lo, ref_hi), abs=width)


def test_ort_entropy_with_default_bins_is_minmax():
    """With 128 bins ORT's window search has one candidate, the whole histogram."""
    x = DISTRIBUTIONS["elu-gaussian"]
    lo, hi, _ = npuq_range(x, symmetric=False, range="kl", kl_variant="onnxruntime")
    assert (lo, hi) == pytest.approx((float(x.min()), float(x.max())))


def test_tensorrt_locks_onto_the_elu_spike_where_onnxruntime_does_not():
    """The measured trap: a decoder-like ELU output (19% of it below -0.99, reaching 12.8) whose |x|
    histogram has a spike at 1.0. TensorRT's search clips at the spike; ORT's signed search does not."""
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.elu(torch.randn(N, generator=g) * 3.0 - 2.0)
    _, trt, _ = npuq_range(x, range="kl", kl_variant="tensorrt")
    _, ort, _ = npuq_range(x, range="kl", kl_variant="onnxruntime", hist_bins=2048)
    assert trt == pytest.approx(1.0, abs=0.01)
    assert ort > 5.0
