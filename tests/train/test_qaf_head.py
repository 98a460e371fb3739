"""Fake-quant fine-tune through the QuantSim: which weights train, write-back equivalence, the checkpoint.

Tiny runs: DepthResNet-18 at 64x64, batch 2, a few steps on an in-memory synthetic set, min/max
activation ranges (calibration is then a single pass).
"""

import pytest
import torch

from npuq.data.datasets import open_dataset
from npuq.errors import NpuqError
from npuq.models import DepthNetConfig, DepthResNet, load_checkpoint_dict, load_model
from npuq.quant import simulate_ptq
from npuq.quant.profile import QuantProfile, TensorQuantConfig, recalibration_variant
from npuq.train.head_losses import head_loss
from npuq.train.qaf_head import (
    finetune_through_quantsim,
    mappable_parameters,
    recalibrate,
    train_through_sim,
    write_back,
)

pytestmark = pytest.mark.filterwarnings("ignore:npuq. the NPU profile cannot express")

DATA = "synth:n=4,seed=0,size=64x64"
PROFILE = QuantProfile(activations=TensorQuantConfig(range="minmax"))


@pytest.fixture(scope="module")
def dataset():
    return open_dataset(DATA, size=(64, 64), depth_at="input")


def calib(dataset):
    return torch.stack([dataset[i]["rgb"] for i in range(len(dataset))])


def model_with(head, num_scales=1):
    torch.manual_seed(0)
    return DepthResNet(DepthNetConfig(depth=18, head=head, max_depth=16.0, num_scales=num_scales)).eval()


def test_only_untransformed_decoder_and_head_parameters_are_mappable(dataset):
    model = model_with("coarse-residual", num_scales=2)
    sim = simulate_ptq(model, PROFILE, calib(dataset))
    names = mappable_parameters(sim, model)
    # every decoder conv and the scale-0 head convs: no BN there and CLE never crosses ELU/sigmoid/tanh
    scale0_head = ("head.coarse_convs.0.", "head.residual_convs.0.")
    expected = [n for n, _ in model.named_parameters() if n.startswith(("decoder.", *scale0_head))]
    assert sorted(names) == sorted(expected)
    # the encoder's convs are all BN-folded (and partly equalized): none can be mapped back
    assert not any(n.startswith("encoder.") for n in names) and sim.folded_bn and sim.cle.pairs
    assert mappable_parameters(sim, model, prefixes=("head.",)) == [n for n in names if n.startswith("head.")]


def test_write_back_makes_the_float_model_equal_the_disabled_sim(dataset):
    model = model_with("int-frac")
    sim = simulate_ptq(model, PROFILE, calib(dataset))
    names = mappable_parameters(sim, model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    losses = train_through_sim(sim, model.head, dataset, names, steps=2, lr=1e-3, seed=0, batch_size=2)
    assert len(losses) == 2
    write_back(sim, model, names)
    after = model.state_dict()
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    assert changed == set(names)  # the trained weights moved, nothing else did
    x = calib(dataset)[:2]
    with torch.no_grad():
        float_out = model(x)
        with sim.quant_disabled():
            sim_off = sim(x)
        sim_on = sim(x)
    for f, off, on in zip(float_out, sim_off, sim_on, strict=True):
        torch.testing.assert_close(f, off, rtol=0, atol=1e-4)
        assert not torch.allclose(f, on, atol=1e-4)  # while enabled the sim really quantizes
    assert all(p.requires_grad for p in sim.parameters())  # requires_grad restored after training


def test_training_through_the_sim_lowers_the_quantized_loss(dataset):
    model = model_with("coarse-residual")
    sim = simulate_ptq(model, PROFILE, calib(dataset))
    names = mappable_parameters(sim, model, prefixes=("head.",))
    one_batch = [dataset[0], dataset[1]]  # every step sees the same two frames

    def quantized_loss():
        with torch.no_grad():
            rgb = torch.stack([it["rgb"] for it in one_batch])
            depth = torch.stack([it["depth"] for it in one_batch])
            return float(head_loss(model.head, sim(rgb), depth))

    start = quantized_loss()
    # an untrained model's outputs sit in a narrow calibrated range: recalibrate as they move out of it
    train_through_sim(sim, model.head, one_batch, names, steps=8, lr=3e-2, seed=0, batch_size=2,
                      calib_batches=[calib(dataset)], recalibrate_every=2)
    assert quantized_loss() < 0.8 * start


def test_recalibrated_scales_are_those_of_a_fresh_ptq_of_the_written_back_model(dataset):
    model = model_with("int-frac")
    sim = simulate_ptq(model, PROFILE, calib(dataset))
    names = mappable_parameters(sim, model)
    train_through_sim(sim, model.head, dataset, names, steps=2, lr=1e-2, seed=0, batch_size=2)
    write_back(sim, model, names)
    stale = [q.scale for q in sim.quantizers.values()]
    recalibrate(sim, [calib(dataset)])
    fresh = simulate_ptq(model, PROFILE, calib(dataset))
    now, expected = [q.scale for q in sim.quantizers.values()], [q.scale for q in fresh.quantizers.values()]
    assert now == pytest.approx(expected, rel=1e-5) and now != pytest.approx(stale, rel=1e-5)
    for name, wq in sim.weight_quantizers.items():
        assert wq.scale_list() == pytest.approx(fresh.weight_quantizers[name].scale_list(), rel=1e-5), name


def test_recalibrating_without_bias_correction_drops_the_earlier_corrections(dataset):
    model = model_with("int-frac")
    corrected = PROFILE.replace(bias_correction="empirical")
    sim = simulate_ptq(model, corrected, calib(dataset))
    assert sim.bias_corrections
    sim.profile = corrected.replace(bias_correction="off")
    recalibrate(sim, [calib(dataset)])
    fresh = simulate_ptq(model, corrected.replace(bias_correction="off"), calib(dataset))
    assert sim.bias_corrections == {} and all(layer.bias_correction is None for layer in sim.layers.values())
    with torch.no_grad():
        assert all(torch.equal(a, b) for a, b in zip(sim(calib(dataset)), fresh(calib(dataset)), strict=True))


def test_a_calibrator_rotation_recalibrates_as_each_fresh_ptq_would(dataset):
    model = model_with("log-depth")
    own = PROFILE.replace(bias_correction="empirical")
    rotation = [own, *(recalibration_variant(own, n) for n in ("percentile 99.99", "no-bias-correction"))]
    sim = simulate_ptq(model, own, calib(dataset))
    names = mappable_parameters(sim, model)
    seen = {}

    def snapshot(step):  # after the step's re-calibration, before its update
        write_back(sim, model, names)
        seen[step] = ([q.scale for q in sim.quantizers.values()], dict(sim.bias_corrections),
                      simulate_ptq(model, rotation[step % 3], calib(dataset)))

    train_through_sim(sim, model.head, dataset, names, steps=3, lr=1e-2, seed=0, batch_size=2,
                      calib_batches=[calib(dataset)], recalibrate_every=1, every_step=snapshot,
                      rotation=rotation)
    for step in (1, 2):
        scales, corrections, fresh = seen[step]
        assert scales == pytest.approx([q.scale for q in fresh.quantizers.values()], rel=1e-5), step
        assert set(corrections) == set(fresh.bias_corrections), step
    assert seen[1][0] != pytest.approx(seen[2][0], rel=1e-3)  # percentile, then the profile's min/max
    assert seen[1][1] and not seen[2][1]
    assert sim.profile is own  # restored
    with pytest.raises(NpuqError, match="changes the grids"):
        train_through_sim(sim, model.head, dataset, names, steps=1, lr=1e-2, seed=0, batch_size=2,
                          calib_batches=[calib(dataset)], recalibrate_every=1,
                          rotation=[own, own.replace(activations={"symmetric": False})])


def test_finetune_writes_a_float_checkpoint_that_a_fresh_ptq_accepts(dataset, tmp_path):
    model = model_with("int-frac")
    encoder_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("encoder.")}
    head_before = model.head.int_convs[0].conv.weight.clone()
    out = finetune_through_quantsim(model, PROFILE, calib(dataset), DATA, steps=2, lr=1e-3, seed=0,
                                    out=tmp_path / "qaf.pt", batch_size=2)
    saved = load_checkpoint_dict(out)
    assert saved["config"]["head"] == "int-frac"
    train_extra = saved["extra"]["train"]
    assert train_extra["config"]["size"] == [64, 64] and train_extra["step"] == 2 and train_extra["finished"]
    assert saved["extra"]["qaf"]["trained_parameters"] and len(saved["extra"]["qaf"]["losses"]) == 2
    reloaded = load_model(out).eval()
    assert not torch.equal(reloaded.head.int_convs[0].conv.weight, head_before)
    for k, v in encoder_before.items():
        assert torch.equal(reloaded.state_dict()[k], v), k
    # the rule: INT8 figures come from a fresh simulate_ptq on the saved float checkpoint
    fresh = simulate_ptq(reloaded, PROFILE, calib(dataset))
    with torch.no_grad():
        integer, fraction = fresh(calib(dataset)[:1])
    assert integer.shape == fraction.shape == (1, 1, 64, 64)


def test_finetune_keeps_range_anchor_entries_fixed_and_trains_the_rest(dataset, tmp_path):
    from npuq.models.anchors import add_range_anchors, anchor_entries

    model = add_range_anchors(add_range_anchors(model_with("sigmoid-disp"), 5, 2, 20.0), 8, 1, 30.0).eval()
    masks = anchor_entries(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = finetune_through_quantsim(model, PROFILE, calib(dataset), dataset, steps=3, lr=1e-2, seed=0,
                                    out=tmp_path / "anchored.pt", batch_size=2)
    after = load_model(out).state_dict()
    assert set(masks) >= {"decoder.decoder.5.conv.conv.weight", "decoder.decoder.6.conv.conv.weight",
                          "decoder.decoder.8.conv.conv.bias", "decoder.decoder.9.conv.conv.weight"}
    for name, keep in masks.items():
        assert torch.equal(after[name][keep], before[name][keep]), name
        if name.endswith("weight"):  # the block's own entries of the same tensors do train
            assert not torch.equal(after[name][~keep], before[name][~keep]), name
    # the anchor channels still hold their value: the producers' anchor rows stayed zero
    assert torch.all(after["decoder.decoder.5.conv.conv.weight"][-2:] == 0)


def test_finetune_is_deterministic_in_its_arguments(dataset, tmp_path):
    paths = [finetune_through_quantsim(model_with("log-depth"), PROFILE, calib(dataset), dataset, steps=1,
                                       lr=1e-3, seed=3, out=tmp_path / f"run{i}.pt", batch_size=2)
             for i in range(2)]
    a, b = (load_checkpoint_dict(p)["state_dict"] for p in paths)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_bad_arguments_are_clear_errors(dataset, tmp_path):
    model = model_with("int-frac")
    with pytest.raises(NpuqError, match="must be positive"):
        finetune_through_quantsim(model, PROFILE, calib(dataset), dataset, steps=0, lr=1e-3, seed=0,
                                  out=tmp_path / "x.pt")
    (tmp_path / "exists.pt").write_bytes(b"")
    with pytest.raises(NpuqError, match="already exists"):
        finetune_through_quantsim(model, PROFILE, calib(dataset), dataset, steps=1, lr=1e-3, seed=0,
                                  out=tmp_path / "exists.pt")
    with pytest.raises(NpuqError, match="nothing can be mapped back"):
        finetune_through_quantsim(model, PROFILE, calib(dataset), dataset, steps=1, lr=1e-3, seed=0,
                                  out=tmp_path / "y.pt", prefixes=("encoder.",))
    with pytest.raises(NpuqError, match="recalibrate_every must be positive"):
        finetune_through_quantsim(model, PROFILE, calib(dataset), dataset, steps=1, lr=1e-3, seed=0,
                                  out=tmp_path / "w.pt", recalibrate_every=0)
    small = open_dataset("synth:n=2,seed=0,size=32x32", size=(32, 32))
    with pytest.raises(NpuqError, match="open it with size=\\(64, 64\\)"):
        finetune_through_quantsim(model, PROFILE, calib(dataset), small, steps=1, lr=1e-3, seed=0,
                                  out=tmp_path / "z.pt")
