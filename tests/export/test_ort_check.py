"""ONNX Runtime runs the QDQ export with integer kernels and agrees with the simulator within one step."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
import torch
from export_nets import TinyDepthNet  # noqa: E402
from onnx import numpy_helper

from npuq.errors import NpuqError
from npuq.export.onnx_export import export_qdq_onnx
from npuq.export.ort_check import (
    compare_output,
    compare_with_sim,
    fused_integer_ops,
    integer_op_count,
    run_onnx,
)
from npuq.quant.profile import load_profile
from npuq.quant.sim import simulate_ptq

SIZE = (32, 32)
N_CONVS = 5  # conv1, conv2, down, up, head conv


def images(n: int, seed: int) -> torch.Tensor:
    return torch.rand(n, 3, *SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """name -> (sim, QDQ path) for the symmetric and asymmetric profiles and a two-output model."""
    out = tmp_path_factory.mktemp("ort")
    cases = {"npu-default": False, "npu-asym": False, "two-outputs": True}
    result = {}
    for name, two in cases.items():
        torch.manual_seed(0)
        model = TinyDepthNet(two).eval()
        # MSE clipping: TensorRT's KL clips this untrained net's sigmoid output (around 0.5) to a constant
        # (as ModelOpt does), and a constant output cannot show a wrong number
        profile = load_profile("npu-default" if two else name).replace(activations={"range": "mse"})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            sim = simulate_ptq(model, profile, images(8, seed=1))
        path = export_qdq_onnx(sim, SIZE, out / f"{name}.onnx", output_names=list(model.head.output_names))
        result[name] = (sim, path)
    return result


@pytest.mark.parametrize("name", ["npu-default", "npu-asym"])
def test_ort_agrees_with_sim_within_one_step(exported, name):
    sim, path = exported[name]
    report = compare_with_sim(sim, path, images(4, seed=2))
    disp = report["outputs"]["disp"]
    assert disp["scale"] == sim.quantizers["sigmoid"].scale
    assert report["agreement"] == disp["within_one_step"] >= 0.99
    assert disp["max_abs_diff_steps"] <= 2.0
    assert report["n_images"] == 4


@pytest.mark.parametrize("name", ["npu-default", "npu-asym"])
def test_integer_kernels_agree_where_the_cpu_has_vnni(exported, name):
    """Without VNNI, ORT's x86 u8 x s8 kernels saturate pairs of products in int16, so only a VNNI CPU
    (or a non-x86 one) must reproduce the simulator with integer kernels too."""
    sim, path = exported[name]
    report = compare_with_sim(sim, path, images(4, seed=2))
    assert set(report["integer_outputs"]) == {"disp"}
    assert report["integer_agreement"] == report["integer_outputs"]["disp"]["within_one_step"]
    if report["cpu_has_vnni"]:
        assert report["integer_agreement"] >= 0.99


def test_two_output_model_each_output_has_its_own_scale(exported):
    sim, path = exported["two-outputs"]
    report = compare_with_sim(sim, path, images(4, seed=2))
    assert list(report["outputs"]) == ["disp", "conf"]
    scales = [report["outputs"][name]["scale"] for name in ("disp", "conf")]
    expected = [next(q.scale for q in sim.quantizers.values() if q.output_index == i) for i in (0, 1)]
    assert scales == expected and scales[0] != scales[1]
    assert report["agreement"] >= 0.99
    # Each ONNX output is the DequantizeLinear of its own quantizer.
    proto = onnx.load(str(path))
    producers = {o: n for n in proto.graph.node for o in n.output}
    output_scales = [producers[o.name].input[1] for o in proto.graph.output]
    assert all(producers[o.name].op_type == "DequantizeLinear" for o in proto.graph.output)
    assert len(set(output_scales)) == 2


@pytest.mark.parametrize("name", ["npu-default", "npu-asym", "two-outputs"])
def test_ort_fuses_integer_kernels(exported, name):
    _, path = exported[name]
    ops = fused_integer_ops(path)
    assert ops.get("QLinearConv", 0) + ops.get("ConvInteger", 0) == N_CONVS + (name == "two-outputs")
    assert ops.get("Conv", 0) == 0 and ops.get("FusedConv", 0) == 0
    assert integer_op_count(ops) > N_CONVS  # Add, Concat, Sigmoid too


def test_unoptimized_qdq_graph_is_the_simulator(exported):
    """Without fusion ONNX Runtime evaluates the QDQ graph in float: the simulator up to rounding ties."""
    sim, path = exported["npu-default"]
    rgb = images(2, seed=4)
    (got,) = run_onnx(path, rgb, optimize=False)
    with torch.no_grad():
        want = sim(rgb).numpy()
    step = sim.quantizers["sigmoid"].scale
    assert np.mean(np.abs(got - want) <= 1e-3 * step) >= 0.99


def test_agreement_check_catches_wrong_numbers(exported, tmp_path):
    """A QDQ graph whose head weights differ from the simulator's must fail the 99% check."""
    sim, path = exported["npu-default"]
    proto = onnx.load(str(path))
    for init in proto.graph.initializer:
        if init.name == "head.conv.weight_quantized":
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), init.name))
    broken = tmp_path / "broken.onnx"
    onnx.save(proto, str(broken))
    assert compare_with_sim(sim, broken, images(2, seed=2))["agreement"] < 0.5


def test_compare_output_counts_steps():
    sim_out = np.zeros((1, 1, 1, 4), np.float32)
    ort_out = np.array([0.0, 0.1, -0.1, 0.25], np.float32).reshape(1, 1, 1, 4)
    result = compare_output(ort_out, sim_out, step=0.1)
    assert result["within_one_step"] == 0.75
    assert result["max_abs_diff_steps"] == pytest.approx(2.5)
    assert result["exact"] == 0.25


def test_run_onnx_rejects_bad_input(exported, tmp_path):
    _, path = exported["npu-default"]
    with pytest.raises(NpuqError, match="no such ONNX file"):
        run_onnx(tmp_path / "missing.onnx", images(1, seed=0))
    with pytest.raises(NpuqError, match="exported for 32x32"):
        run_onnx(path, torch.rand(1, 3, 64, 64))
    with pytest.raises(NpuqError, match="expected"):
        run_onnx(path, np.zeros((32, 32), np.float32))
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a model")
    with pytest.raises(NpuqError, match="garbage.onnx"):
        run_onnx(garbage, images(1, seed=0))
