"""The activation change: spike-free decoder activations export to standard ONNX ops and run in ORT."""

import onnx
import pytest
import torch

from npuq.export.onnx_export import export_float_onnx
from npuq.export.ort_check import run_onnx
from npuq.models.decoder import ACTIVATIONS
from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
from npuq.quant import simulate_ptq
from npuq.quant.profile import load_profile

NONLINEARITY = {"elu": "Elu", "relu": "Relu", "leaky_relu": "LeakyRelu"}


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_decoder_activation_exports_to_standard_onnx_and_runs_in_onnxruntime(activation, tmp_path):
    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(activation=activation)).eval()
    path = export_float_onnx(model, (64, 64), tmp_path / "m.onnx")
    graph = onnx.load(str(path)).graph
    assert {node.domain for node in graph.node} <= {"", "ai.onnx"}  # standard operators only
    ops = {node.op_type for node in graph.node}
    assert NONLINEARITY[activation] in ops and ("Elu" in ops) == (activation == "elu")  # encoder has Relu
    rgb = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(rgb).numpy()
    assert abs(run_onnx(path, rgb.numpy())[0] - expected).max() < 1e-4


def test_relu_decoder_has_no_elu_quantizers_and_no_negative_values():
    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(activation="relu")).eval()
    sim = simulate_ptq(model, load_profile("npu-default"), torch.rand(2, 3, 64, 64))
    decoder = [q for q in sim.quantizers.values() if q.name.startswith("decoder")]
    assert decoder and not any(q.op == "elu" for q in decoder)
    assert all(q.observed_min >= 0 for q in decoder if q.name.endswith("nonlin"))
