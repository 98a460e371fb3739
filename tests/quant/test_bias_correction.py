"""Empirical bias correction removes the mean output shift of coarsely quantized weights."""

import torch
from nets import ConvPair, images, seeded
from torch import nn

from npuq.quant import simulate_ptq
from npuq.quant.profile import QuantProfile, TensorQuantConfig

# 3-bit per-tensor weights: the rounding of each output channel's weights shifts its mean output.
COARSE = QuantProfile(weights=TensorQuantConfig(bits=3), activations=TensorQuantConfig(range="minmax"),
                      cle=False, bias_correction="off")


def mean_channel_error(sim, model, x):
    """E[conv2_q(Q(x)) - conv2_fp(x)] per output channel, x = conv2's float input in the float model."""
    seen = []
    handle = model.conv2.register_forward_hook(lambda mod, inp, out: seen.append((inp[0], out)))
    with torch.no_grad():
        model(x)
    handle.remove()
    x_in, y_fp = seen[0]
    layer = sim.layers["conv2"]
    with torch.no_grad():
        y_q = layer(layer.input_quantizer.quantize(x_in))
    return (y_q - y_fp).transpose(0, 1).flatten(1).mean(1)


def test_correction_zeroes_the_mean_output_error():
    model = seeded(ConvPair, nn.ReLU(), seed=1)
    x = images(6, 12, seed=2)
    plain = simulate_ptq(model, COARSE, x)
    corrected = simulate_ptq(model, COARSE.replace(bias_correction="empirical"), x)
    before = mean_channel_error(plain, model, x)
    after = mean_channel_error(corrected, model, x)
    assert plain.bias_corrections == {}
    assert set(corrected.bias_corrections) == {"conv1", "conv2"}
    # the correction is the measured shift (up to the int32 rounding of the old bias)
    layer = corrected.layers["conv2"]
    bias_step = layer.input_quantizer.scale * layer.weight_quantizer.step()
    shift = torch.tensor(corrected.bias_corrections["conv2"])
    torch.testing.assert_close(shift, before, atol=bias_step, rtol=0)
    # what is left is only the int32 rounding of the corrected bias
    assert before.abs().mean() > 20 * bias_step
    assert after.abs().max() <= bias_step / 2 + 1e-6
    assert after.abs().mean() < 0.05 * before.abs().mean()


def test_correction_belongs_to_the_quantized_layer():
    model = seeded(ConvPair, nn.ReLU(), seed=1)
    x = images(4, 12, seed=2)
    sim = simulate_ptq(model, COARSE.replace(bias_correction="empirical"), x)
    with torch.no_grad(), sim.quant_disabled():
        torch.testing.assert_close(sim(x), model(x), atol=1e-5, rtol=1e-5)
    assert torch.equal(sim.layers["conv2"].bias, model.conv2.bias)  # the float bias is not modified


def test_fp16_layers_are_not_corrected():
    model = seeded(ConvPair, nn.ReLU(), seed=1)
    profile = COARSE.replace(bias_correction="empirical", fp16_layers=("conv2",))
    sim = simulate_ptq(model, profile, images(2, 12))
    assert set(sim.bias_corrections) == {"conv1"}


def layer_output_means(net, layer, x):
    seen = []
    handle = layer.register_forward_hook(lambda mod, inp, out: seen.append(out))
    with torch.no_grad():
        net(x)
    handle.remove()
    return seen[0].transpose(0, 1).flatten(1).mean(1)


def test_sequential_correction_zeroes_the_accumulated_weight_error():
    """AIMET's semantics: with the layer output quantizers off (the model input still quantized), the
    weight-quantized model's mean output at each layer, earlier corrections included, equals the float
    model's."""
    model = seeded(ConvPair, nn.ReLU(), seed=1)
    x = images(6, 12, seed=2)
    sim = simulate_ptq(model, COARSE.replace(bias_correction="empirical-sequential"), x)
    assert set(sim.bias_corrections) == {"conv1", "conv2"}
    plain = simulate_ptq(model, COARSE, x)
    for name in ("conv1", "conv2"):
        float_mean = layer_output_means(model, getattr(model, name), x)
        errors = []
        for net in (plain, sim):
            with net.preserve_state():
                net.set_enabled(lambda q: q.kind in ("activation", "output"), False)
                errors.append(layer_output_means(net, net.layers[name], x) - float_mean)
                iq = net.layers[name].input_quantizer
                # a layer on the (quantized) model input keeps its bias on the int32 grid: the bias
                # the shift was measured with and the corrected one are each rounded to it
                rounding = iq.scale * net.layers[name].weight_quantizer.step() if iq.active else 0.0
        before, after = errors
        assert before.abs().mean() > 0.01
        assert after.abs().max() < rounding + 1e-5, name


def test_sequential_correction_survives_save_and_load(tmp_path):
    from npuq.quant.sim import load_quantsim

    model = seeded(ConvPair, nn.ReLU(), seed=1)
    x = images(4, 12, seed=2)
    sim = simulate_ptq(model, COARSE.replace(bias_correction="empirical-sequential"), x)
    sim.save(tmp_path / "q", {"checkpoint": "test"})
    loaded = load_quantsim(tmp_path / "q", model)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), sim(x))
        with sim.preserve_state(), loaded.preserve_state():
            for net in (sim, loaded):
                net.set_enabled(lambda q: q.kind != "weight", False)
            torch.testing.assert_close(loaded(x), sim(x))
