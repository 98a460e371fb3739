"""ONNX export: the float graph matches PyTorch, the QDQ graph carries exactly the simulator's numbers."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from export_nets import make_net  # noqa: E402
from onnx import numpy_helper

from npuq.errors import NpuqError
from npuq.export.onnx_export import export_float_onnx, export_qdq_onnx
from npuq.export.ort_check import compare_with_sim
from npuq.quant.profile import load_profile
from npuq.quant.quantizer import IntGrid
from npuq.quant.sim import simulate_ptq

SIZE = (32, 32)


def images(n: int, seed: int, size: tuple[int, int] = SIZE) -> torch.Tensor:
    return torch.rand(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def simulate(profile, two_outputs: bool = False):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return simulate_ptq(make_net(two_outputs), profile, images(8, seed=1))


def run_float(path, rgb: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"rgb": rgb.numpy()})


def initializers(path) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in onnx.load(str(path)).graph.initializer}


# -- float export -----------------------------------------------------------------------------------


@pytest.mark.parametrize("two_outputs", [False, True])
def test_float_export_matches_pytorch(tmp_path, two_outputs):
    model = make_net(two_outputs).train()
    path = export_float_onnx(model, SIZE, tmp_path / "float.onnx")
    assert model.training, "export must restore the model's mode"
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["rgb"]
    dims = [d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, *SIZE]
    assert [o.name for o in proto.graph.output] == list(model.head.output_names)
    assert proto.opset_import[0].version == 17
    rgb = images(1, seed=5)
    with torch.no_grad():
        expected = model.eval()(rgb)
    expected = expected if isinstance(expected, tuple) else (expected,)
    for got, want in zip(run_float(path, rgb), expected, strict=True):
        np.testing.assert_allclose(got, want.numpy(), atol=1e-4)


def test_float_export_depth_resnet18(tmp_path):
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet

    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(depth=18)).eval()
    path = export_float_onnx(model, (64, 64), tmp_path / "depth.onnx")
    rgb = images(1, seed=6, size=(64, 64))
    (got,) = run_float(path, rgb)
    with torch.no_grad():
        want = model(rgb).numpy()
    assert [o.name for o in onnx.load(str(path)).graph.output] == ["disp"]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_float_export_refuses_to_overwrite(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"keep me")
    with pytest.raises(NpuqError, match="already exists"):
        export_float_onnx(make_net(), SIZE, path)
    assert path.read_bytes() == b"keep me"
    export_float_onnx(make_net(), SIZE, path, force=True)
    onnx.checker.check_model(onnx.load(str(path)))


def test_float_export_bad_arguments(tmp_path):
    with pytest.raises(NpuqError, match="output_names"):
        export_float_onnx(make_net(), SIZE, tmp_path / "a.onnx", output_names=["a", "b"])
    with pytest.raises(NpuqError, match="input_size"):
        export_float_onnx(make_net(), (0, 32), tmp_path / "b.onnx")
    assert not list(tmp_path.iterdir())


# -- QDQ export -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sims():
    default = load_profile("npu-default")
    return {
        "npu-default": simulate(default),
        "npu-asym": simulate(load_profile("npu-asym")),
        "per-channel": simulate(load_profile("per-channel-whatif")),
        "fp16-up": simulate(default.replace(fp16_layers=("up",))),
    }


@pytest.fixture(scope="module")
def qdq_paths(sims, tmp_path_factory):
    out = tmp_path_factory.mktemp("qdq")
    return {name: export_qdq_onnx(sim, SIZE, out / f"{name}.onnx", output_names=["disp"])
            for name, sim in sims.items()}


@pytest.mark.parametrize("name", ["npu-default", "npu-asym", "per-channel"])
def test_qdq_activation_scales_are_the_simulators(sims, qdq_paths, name):
    sim, path = sims[name], qdq_paths[name]
    proto = onnx.load(str(path))
    inits = initializers(path)
    quantized_inputs = {n.input[1] for n in proto.graph.node if n.op_type == "QuantizeLinear"}
    active = [q for q in sim.quantizers.values() if q.active and q.mode == "int"]
    assert len(active) == len(sim.quantizers) >= 10
    for q in active:
        scale, zero_point = inits[f"{q.name}.scale"], inits[f"{q.name}.zero_point"]
        assert f"{q.name}.scale" in quantized_inputs, f"no QuantizeLinear for {q.name}"
        assert scale.dtype == np.float32 and scale == np.float32(q.scale), q.name
        assert zero_point.dtype == (np.int8 if q.grid.signed else np.uint8), q.name
        assert int(zero_point) == q.zero_point, q.name
    assert any(q.zero_point != 0 for q in active) == (name == "npu-asym")


@pytest.mark.parametrize("name", ["npu-default", "npu-asym", "per-channel"])
def test_qdq_weights_int8_and_biases_int32_are_the_simulators(sims, qdq_paths, name):
    sim, path = sims[name], qdq_paths[name]
    inits = initializers(path)
    nodes = {n.input[0]: n for n in onnx.load(str(path)).graph.node if n.op_type == "DequantizeLinear"}
    assert len(sim.layers) == 5
    for layer_name, layer in sim.layers.items():
        wq = layer.weight_quantizer
        ints, scale = inits[f"{layer_name}.weight_quantized"], inits[f"{layer_name}.weight_scale"]
        assert ints.dtype == np.int8
        with torch.no_grad():
            weight, bias = layer.quantized_weight_bias()
        channel_scale = np.float32(wq.scale.numpy()) if wq.per_channel else np.float32(wq.scale.item())
        assert np.array_equal(scale, channel_scale)
        expected = np.rint(weight.numpy() / channel_scale.reshape(-1, *[1] * (weight.dim() - 1)))
        assert np.array_equal(ints.astype(np.int64), expected.astype(np.int64)), layer_name
        if wq.per_channel:
            assert scale.shape == (weight.shape[0],)
            axis = next(a.i for a in nodes[f"{layer_name}.weight_quantized"].attribute if a.name == "axis")
            assert axis == 0
        if bias is None:
            continue
        bias_ints, bias_scale = inits[f"{layer_name}.bias_quantized"], inits[f"{layer_name}.bias_scale"]
        weight_step = wq.step().numpy() if wq.per_channel else wq.step()
        step = layer.input_quantizer.scale * np.float64(weight_step)
        assert bias_ints.dtype == np.int32
        assert int(inits[f"{layer_name}.bias_zero_point"].max()) == 0
        np.testing.assert_allclose(bias_scale, step, rtol=1e-6)
        assert np.array_equal(bias_ints, np.rint(bias.double().numpy() / step).astype(np.int32)), layer_name


def test_qdq_fp16_layer_is_cast_to_half_and_back(sims, qdq_paths):
    sim, path = sims["fp16-up"], qdq_paths["fp16-up"]
    assert sim.quantizers["up"].mode == "fp16"
    proto = onnx.load(str(path))
    casts = [n for n in proto.graph.node if n.op_type == "Cast" and n.name.startswith("up/")]
    targets = [next(a.i for a in n.attribute if a.name == "to") for n in casts]
    assert targets == [onnx.TensorProto.FLOAT16, onnx.TensorProto.FLOAT]
    inits = initializers(path)
    assert "up.scale" not in inits and "elu.scale" in inits
    assert inits["up.weight"].dtype == np.float16
    assert compare_with_sim(sim, path, images(2, seed=9))["agreement"] >= 0.99


def test_qdq_export_refuses_to_overwrite_and_non_8_bit_grids(sims, tmp_path):
    sim = sims["npu-default"]
    path = tmp_path / "q.onnx"
    export_qdq_onnx(sim, SIZE, path)
    before = path.read_bytes()
    with pytest.raises(NpuqError, match="already exists"):
        export_qdq_onnx(sim, SIZE, path)
    assert path.read_bytes() == before
    quantizer = sim.quantizers["conv2"]
    grid = quantizer.grid
    quantizer.grid = IntGrid(bits=6, signed=True)
    try:
        with pytest.raises(NpuqError, match="6-bit"):
            export_qdq_onnx(sim, SIZE, tmp_path / "six.onnx")
    finally:
        quantizer.grid = grid
    assert not (tmp_path / "six.onnx").exists()


def test_qdq_export_needs_a_quantsim(tmp_path):
    with pytest.raises(NpuqError, match="QuantSim"):
        export_qdq_onnx(make_net(), SIZE, tmp_path / "q.onnx")
