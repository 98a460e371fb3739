"""simulate_ptq / QuantSim end to end: float equivalence, grids, STE, calibration errors, save/load."""

import json
import math

import pytest
import torch
from nets import PlainNet, TinyUNet, images, randomize_bn, seeded

from npuq.errors import NpuqError
from npuq.models import DepthNetConfig, DepthResNet
from npuq.quant import QuantSim, load_quantsim, simulate_ptq
from npuq.quant.profile import QuantProfile, TensorQuantConfig

pytestmark = pytest.mark.filterwarnings("ignore:npuq. the NPU profile cannot express")

DEFAULT = QuantProfile()  # KL activations, CLE, BN folding, empirical bias correction
MINMAX = QuantProfile(activations=TensorQuantConfig(range="minmax"))


def plain():
    return randomize_bn(seeded(PlainNet))


def on_grid(t, q):
    """Every value an integer multiple of the scale (offset by the zero-point) inside the grid."""
    ints = t / q.scale + q.zero_point
    return bool(((ints - ints.round()).abs() < 1e-3).all() and ints.min() > q.grid.qmin - 1e-3
                and ints.max() < q.grid.qmax + 1e-3)


def test_model_is_not_modified():
    model = plain().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sim = simulate_ptq(model, DEFAULT, images(4))
    assert isinstance(sim, QuantSim) and model.training
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert type(model.conv1) is torch.nn.Conv2d and not any(p is q for p in sim.parameters()
                                                           for q in model.parameters())


@pytest.mark.parametrize("net", [plain, lambda: seeded(TinyUNet)])
def test_disabled_quantizers_give_the_float_model(net):
    model = net()
    x = images(4)
    sim = simulate_ptq(model, DEFAULT, x)
    with torch.no_grad():
        ref = model(x)
        quantized = sim(x)
        with sim.quant_disabled():
            off = sim(x)
    ref, quantized, off = [r if isinstance(r, tuple) else (r,) for r in (ref, quantized, off)]
    for r, o, q in zip(ref, off, quantized, strict=True):
        torch.testing.assert_close(o, r, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(q, r, atol=1e-5)  # while enabled it is really quantized
    assert all(q.enabled for q in sim.all_quantizers())  # state restored after the block


def test_outputs_lie_on_the_output_grid():
    sim = simulate_ptq(seeded(TinyUNet), MINMAX, images(4))
    with torch.no_grad():
        depth, aux = sim(images(2, seed=5))
    assert on_grid(depth, sim.quantizers["sigmoid"]) and on_grid(aux, sim.quantizers["aux"])
    model_out = simulate_ptq(plain(), MINMAX, images(4))
    with torch.no_grad():
        assert on_grid(model_out(images(2, seed=5)), model_out.quantizers["fc"])


def test_unquantized_output_and_fp16_layers():
    profile = MINMAX.replace(quantize_outputs=(True, False), fp16_layers=("dec", "mi*"))
    sim = simulate_ptq(seeded(TinyUNet), profile, images(4))
    aux_q = sim.quantizers["aux"]
    assert (aux_q.mode, aux_q.enabled, aux_q.active) == ("float", False, False)
    assert sim.quantizers["sigmoid"].active
    assert [sim.quantizers[n].mode for n in ("mid", "dec", "elu")] == ["fp16", "fp16", "int"]
    assert sim.weight_quantizers["dec"].mode == "fp16" and sim.weight_quantizers["head"].mode == "int"
    with torch.no_grad():
        _, aux = sim(images(2, seed=5))
    assert not on_grid(aux, aux_q)
    # enabling everything does not quantize what the profile leaves in float
    sim.set_enabled(lambda q: True, True)
    assert not aux_q.active


def test_unmatched_fp16_pattern_warns():
    with pytest.warns(UserWarning, match="'nothing.here' matches no layer"):
        simulate_ptq(plain(), MINMAX.replace(fp16_layers=("nothing.here",)), images(2))


def mse_with_bits(bits):
    profile = MINMAX.replace(weights={"bits": bits}, activations={"bits": bits})
    model = plain()
    sim = simulate_ptq(model, profile, images(8))
    x = images(8, seed=9)
    with torch.no_grad():
        return float((sim(x) - model(x)).square().mean())


def test_16_bit_is_far_more_accurate_than_4_bit():
    assert mse_with_bits(16) < 1e-4 * mse_with_bits(4)


def test_gradients_reach_float_weights_straight_through():
    model = plain()
    # MSE clipping: TensorRT's KL clips this random net's output, which sits away from 0, to a constant
    # (as ModelOpt does; see test_observers), and a saturated output passes no gradient
    sim = simulate_ptq(model, DEFAULT.replace(activations={"range": "mse"}), images(4)).train()
    loss = sim(images(2, seed=3)).square().sum()
    loss.backward()
    for name, layer in sim.layers.items():
        assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0, name
    assert all(p.grad is None for p in model.parameters())


def test_cached_weights_follow_in_place_updates():
    sim = simulate_ptq(plain(), MINMAX, images(4))
    x = images(2, seed=3)
    with torch.no_grad():
        first = sim(x)
        sim.layers["conv3"].weight.mul_(0.5)
        second = sim(x)
    assert not torch.equal(first, second)
    with torch.enable_grad():
        fresh = sim(x)  # recomputes the quantized weights instead of using the cache
    torch.testing.assert_close(second, fresh.detach(), atol=0, rtol=0)


def test_per_channel_weights_lie_on_their_channel_grids():
    profile = MINMAX.replace(weights={"granularity": "per_channel", "bits": 4})
    sim = simulate_ptq(plain(), profile, images(4))
    wq = sim.weight_quantizers["conv2"]
    assert wq.per_channel and wq.scale.shape == (16,)
    w = wq(sim.layers["conv2"].weight.detach())
    ints = w / wq.scale.view(-1, 1, 1, 1)
    assert torch.allclose(ints, ints.round(), atol=1e-3) and ints.abs().max() <= 8
    # the channel with the largest weight uses the full grid
    assert torch.isclose(ints.flatten(1).abs().amax(1), torch.tensor(7.0)).any()


def test_calibration_data_errors():
    model = plain()
    x = images(4)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(NpuqError, match="calibration data: image 1 contains NaN"):
        simulate_ptq(model, MINMAX, x)
    batches = [images(2), images(2).fill_(float("inf"))]
    with pytest.raises(NpuqError, match="calibration data: batch 1 contains Inf"):
        simulate_ptq(model, MINMAX, batches)
    for empty in (torch.zeros(0, 3, 16, 16), [], iter(())):
        with pytest.raises(NpuqError, match="calibration data: empty"):
            simulate_ptq(model, MINMAX, empty)
    with pytest.raises(NpuqError, match="batch 0 is a dict without key 'rgb'"):
        simulate_ptq(model, MINMAX, [{"image": images(1)}])
    with pytest.raises(NpuqError, match="batch 0 is a str"):
        simulate_ptq(model, MINMAX, ["frame.png"])


def test_dataset_items_and_batches_calibrate_like_a_tensor():
    model = plain()
    x = images(6)
    reference = simulate_ptq(model, DEFAULT, x).table()
    items = [{"rgb": img, "name": str(i)} for i, img in enumerate(x)]  # dataset items, unbatched
    loader = (x[i:i + 4] for i in range(0, 6, 4))  # a one-shot generator of batches
    for data in (items, loader):
        table = simulate_ptq(model, DEFAULT, data).table()
        assert [r["scale"] for r in table] == pytest.approx([r["scale"] for r in reference], rel=1e-6)


def test_enable_subsets_and_restore_state():
    sim = simulate_ptq(plain(), MINMAX, images(4))
    total = len(sim.quantizers) + len(sim.weight_quantizers)
    assert sim.set_enabled(lambda q: q.kind == "weight", False) == len(sim.weight_quantizers)
    with sim.preserve_state():
        assert sim.set_mode(lambda q: q.layer == "conv2", "fp16") == 2  # activation and weight
        assert sim.set_enabled(lambda q: True, False) == total
    assert not any(wq.enabled for wq in sim.weight_quantizers.values())
    assert all(q.enabled for q in sim.quantizers.values())
    assert sim.quantizers["conv2"].mode == "int" and sim.weight_quantizers["conv2"].mode == "int"
    with pytest.raises(ValueError, match="mode"):
        sim.set_mode(lambda q: True, "int4")


def test_capture_gives_per_layer_sqnr():
    sim = simulate_ptq(plain(), MINMAX, images(4))
    x = images(2, seed=3)
    names = list(sim.quantizers)
    with torch.no_grad():
        with sim.quant_disabled(), sim.capture() as ref:
            sim(x)
        assert list(ref.outputs) == names and all(torch.equal(ref.inputs[n], ref.outputs[n]) for n in names)
        with sim.preserve_state():  # only conv2's output quantized: no error before it, some after
            sim.set_enabled(lambda q: q.name != "conv2", False)
            with sim.capture(reference=ref) as run:
                sim(x)
    sqnr = run.sqnr_db()
    assert sqnr["input"] == sqnr["conv1"] == math.inf
    assert all(math.isfinite(sqnr[n]) for n in ("conv2", "conv3", "pool", "fc"))
    assert math.isfinite(run.local_sqnr_db()["conv2"]) and run.local_sqnr_db()["conv3"] == math.inf
    full = sim.layer_sqnr([x, images(2, seed=4)])
    assert list(full) == names and all(10 < v < 80 for v in full.values())
    assert all(q._capture is None for q in sim.quantizers.values())


def test_table_is_json_and_consistent():
    sim = simulate_ptq(plain(), DEFAULT, images(4))
    rows = json.loads(json.dumps(sim.table()))
    assert [r["name"] for r in rows] == list(sim.quantizers)
    for r in rows:
        assert r["observed_min"] <= r["observed_max"] and r["scale"] > 0
        assert r["clip_lo"] <= 0 <= r["clip_hi"]
        assert r["clip_hi"] == pytest.approx((r["qmax"] - r["zero_point"]) * r["scale"])
        assert r["clip_hi"] <= max(abs(r["observed_min"]), r["observed_max"]) * 1.01  # KL never widens
    assert json.dumps(sim.weight_table())


def round_trip(model, profile, x, tmp_path):
    sim = simulate_ptq(model, profile, x)
    ref = {"checkpoint": "model.pt", "sha256": "0" * 64}
    sim.save(tmp_path / "q", model_ref=ref)
    assert json.loads((tmp_path / "q" / "model.json").read_text()) == ref
    assert json.loads((tmp_path / "q" / "scales.json").read_text())["format"] == "npuq-quantsim/1"
    loaded = load_quantsim(tmp_path / "q", model)
    assert loaded.table() == sim.table() and loaded.bias_corrections == sim.bias_corrections
    assert loaded.weight_table() == sim.weight_table()
    return sim, loaded


def test_save_load_round_trip(tmp_path):
    model = seeded(TinyUNet)
    profile = DEFAULT.replace(weights={"granularity": "per_channel"}, quantize_outputs=(True, False))
    sim, loaded = round_trip(model, profile, images(4), tmp_path)
    x = images(3, seed=7)
    with torch.no_grad():
        for a, b in zip(sim(x), loaded(x), strict=True):
            assert torch.equal(a, b)
    assert loaded.profile == sim.profile and loaded.unsupported_ops == ["norm (GroupNorm)"]


def test_load_errors(tmp_path):
    simulate_ptq(seeded(TinyUNet), MINMAX, images(2)).save(tmp_path / "q", {})
    with pytest.raises(NpuqError, match=r"scales\.json: quantizers do not match the model's graph"):
        load_quantsim(tmp_path / "q", plain())
    with pytest.raises(NpuqError, match=r"missing[/\\]scales\.json: not found"):
        load_quantsim(tmp_path / "missing", plain())
    scales = tmp_path / "q" / "scales.json"
    data = json.loads(scales.read_text())
    data["weight_quantizers"][0]["scale"] = [1.0, 2.0]
    scales.write_text(json.dumps(data))
    with pytest.raises(NpuqError, match=r"scales\.json: weight quantizer 'enc'"):
        load_quantsim(tmp_path / "q", seeded(TinyUNet))
    scales.write_text(json.dumps({**data, "format": "other/1"}))
    with pytest.raises(NpuqError, match=r"scales\.json: format is 'other/1'"):
        load_quantsim(tmp_path / "q", seeded(TinyUNet))


@pytest.fixture(scope="module")
def depth_sim():
    model = seeded(DepthResNet, DepthNetConfig(depth=18))
    return model, simulate_ptq(model, DEFAULT, images(1, 64))


def test_depthresnet_end_to_end(depth_sim, tmp_path):
    model, sim = depth_sim
    ops = [q.op for q in sim.quantizers.values()]
    assert ops.count("elu") == 10 and ops.count("cat") == 4 and ops.count("interpolate") == 5
    out_q = [q for q in sim.quantizers.values() if q.kind == "output"]
    assert [(q.layer, q.op) for q in out_q] == [("head.sigmoid", "sigmoid")]
    assert len(sim.bias_corrections) == 31 and not sim.unsupported_ops
    # CLE: the two convs of each BasicBlock; ELU, the residual adds and the maxpool fan-out stop the rest
    assert len(sim.cle.pairs) == 8
    for a, b in sim.cle.pairs:
        assert a.startswith("encoder.") and a.endswith(".conv1") and b == a[:-1] + "2"
    x = images(1, 64, seed=3)
    with torch.no_grad():
        out, ref = sim(x), model(x)
        with sim.quant_disabled():
            torch.testing.assert_close(sim(x), ref, atol=1e-5, rtol=1e-4)
    assert out.shape == ref.shape and on_grid(out, out_q[0])
    sim.save(tmp_path / "d", {"checkpoint": "x"})
    loaded = load_quantsim(tmp_path / "d", model)
    with torch.no_grad():
        assert torch.equal(loaded(x), out)
