"""Two-output heads through ONNX: the float export matches PyTorch in ONNX Runtime, and the QDQ export of
the simulated INT8 model agrees with the QuantSim on both outputs."""

import warnings

import numpy as np
import pytest
import torch

from npuq.export.onnx_export import export_float_onnx, export_qdq_onnx
from npuq.export.ort_check import compare_with_sim, run_onnx
from npuq.models import DepthNetConfig, DepthResNet
from npuq.quant import simulate_ptq
from npuq.quant.profile import load_profile

SIZE = (64, 64)


def images(n, seed):
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


def model_with(head):
    torch.manual_seed(0)
    return DepthResNet(DepthNetConfig(depth=18, head=head, max_depth=16.0, num_scales=1)).eval()


@pytest.fixture(scope="module")
def int_frac_qdq(tmp_path_factory):
    model = model_with("int-frac")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sim = simulate_ptq(model, load_profile("npu-default"), images(4, seed=1))
    path = export_qdq_onnx(sim, SIZE, tmp_path_factory.mktemp("qdq") / "int_frac_qdq.onnx",
                           output_names=list(model.head.output_names))
    return sim, path


@pytest.mark.parametrize("head", ["int-frac", "coarse-residual"])
def test_float_export_has_both_outputs_and_matches_pytorch(tmp_path, head):
    import onnx

    model = model_with(head)
    path = export_float_onnx(model, SIZE, tmp_path / f"{head}.onnx")
    names = [o.name for o in onnx.load(str(path)).graph.output]
    assert names == list(model.head.output_names)
    x = images(2, seed=3)
    ort_outs = run_onnx(path, x)
    with torch.no_grad():
        torch_outs = model(x)
    assert len(ort_outs) == 2
    for ort_out, torch_out in zip(ort_outs, torch_outs, strict=True):
        np.testing.assert_allclose(ort_out, torch_out.numpy(), rtol=1e-4, atol=1e-4)
    # the two outputs really are different tensors (not one output twice)
    assert not np.allclose(ort_outs[0], ort_outs[1])


def test_qdq_export_agrees_with_the_sim_on_both_outputs(int_frac_qdq):
    sim, path = int_frac_qdq
    report = compare_with_sim(sim, path, images(2, seed=4))
    assert set(report["outputs"]) == {"integer", "fraction"}
    integer, fraction = report["outputs"]["integer"], report["outputs"]["fraction"]
    assert integer["scale"] != fraction["scale"]
    assert report["agreement"] >= 0.99
    assert integer["max_abs_diff_steps"] <= 2.0 and fraction["max_abs_diff_steps"] <= 2.0
