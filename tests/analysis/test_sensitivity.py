"""Per-layer SQNR: hand-computed on a two-quantizer toy sim, then on a real tiny QuantSim."""

import math

import pytest
import torch
from torch import nn

from npuq.analysis.sensitivity import layer_sqnr, sqnr_db
from npuq.quant.quantizer import IntGrid, fake_quant


class ToyQuantizer(nn.Module):
    """An ActQuantizer stand-in: per-tensor signed 8-bit, ``enabled`` flag."""

    def __init__(self, name, layer, kind, order, scale):
        super().__init__()
        self.name, self.layer, self.kind, self.order, self.op = name, layer, kind, order, "toy"
        self.scale, self.zero_point, self.grid, self.enabled = scale, 0, IntGrid(8, True), True

    def quantize(self, x):
        return fake_quant(x, self.scale, self.zero_point, self.grid)

    def forward(self, x):
        return self.quantize(x) if self.enabled else x


class ToyWeight:
    enabled = True


class ToySim(nn.Module):
    """y = Q_out(w * Q_in(x)); the weight 2.1 is stored as 2.0 when its quantizer is on."""

    def __init__(self):
        super().__init__()
        self.q_in = ToyQuantizer("input", "x", "input", 0, 0.2)
        self.q_out = ToyQuantizer("out", "mul", "output", 1, 0.25)
        self.quantizers = {"input": self.q_in, "out": self.q_out}
        self.weight_quantizers = {"mul": ToyWeight()}

    def forward(self, x):
        w = 2.0 if self.weight_quantizers["mul"].enabled else 2.1
        return self.q_out(w * self.q_in(x))


X = torch.tensor([[0.12, 0.26, 0.46]])


def ratio_db(ref, err):
    return 10 * math.log10(sum(v * v for v in ref) / sum(v * v for v in err))


def test_sqnr_by_hand():
    rows = layer_sqnr(ToySim(), X)
    assert [r["name"] for r in rows] == ["input", "out"]
    # input: 0.12, 0.26, 0.46 on a 0.2 grid -> 0.2, 0.2, 0.4
    assert rows[0]["sqnr_db"] == pytest.approx(ratio_db([0.12, 0.26, 0.46], [0.08, -0.06, -0.06]), rel=1e-5)
    assert rows[0]["sqnr_db_isolated"] == pytest.approx(rows[0]["sqnr_db"], rel=1e-6)
    # float reference at the output: 2.1 * x = 0.252, 0.546, 0.966
    # INT8 run: 2.0 * (0.2, 0.2, 0.4) = 0.4, 0.4, 0.8 on a 0.25 grid -> 0.5, 0.5, 0.75
    ref = [0.252, 0.546, 0.966]
    assert rows[1]["sqnr_db"] == pytest.approx(ratio_db(ref, [0.248, -0.046, -0.216]), rel=1e-4)
    # local: the float reference itself on the 0.25 grid -> 0.25, 0.5, 1.0
    assert rows[1]["sqnr_db_isolated"] == pytest.approx(ratio_db(ref, [-0.002, -0.046, 0.034]), rel=1e-4)
    assert rows[1]["sqnr_db_isolated"] > rows[1]["sqnr_db"]  # inherited error shows as the gap
    assert rows[1]["stage"] == "output" and rows[0]["kind"] == "input"


def test_batches_are_summed_not_averaged():
    two = torch.cat([X, 2 * X])
    split = layer_sqnr(ToySim(), two, batch_size=1)
    whole = layer_sqnr(ToySim(), two, batch_size=2)
    assert [r["sqnr_db"] for r in split] == pytest.approx([r["sqnr_db"] for r in whole], rel=1e-9)


def test_all_disabled_is_exact_and_state_is_restored():
    sim = ToySim()
    for quantizer in sim.quantizers.values():
        quantizer.enabled = False
    sim.weight_quantizers["mul"].enabled = False
    rows = layer_sqnr(sim, X)
    assert all(r["sqnr_db"] == math.inf and r["sqnr_db_isolated"] == math.inf for r in rows)
    assert not any(q.enabled for q in sim.quantizers.values()) and not sim.weight_quantizers["mul"].enabled


def test_weights_only():
    sim = ToySim()
    sim.q_in.enabled = sim.q_out.enabled = False
    rows = layer_sqnr(sim, X, isolated=False)
    assert rows[0]["sqnr_db"] == math.inf
    # 2.0 x against 2.1 x: error 0.1 x everywhere -> 10 log10(2.1^2 / 0.1^2)
    assert rows[1]["sqnr_db"] == pytest.approx(20 * math.log10(21), rel=1e-4)
    assert rows[1]["sqnr_db_isolated"] is None
    assert sim.weight_quantizers["mul"].enabled and not sim.q_in.enabled  # restored


def test_sqnr_db_edge_cases():
    assert sqnr_db(1.0, 0.0) == math.inf
    assert sqnr_db(0.0, 1.0) == -math.inf
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)


# -- on a real QuantSim of a tiny DepthResNet-18 -------------------------------------------------------


def tiny_sim(bits: int):
    from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
    from npuq.quant import simulate_ptq
    from npuq.quant.profile import QuantProfile, TensorQuantConfig

    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(depth=18)).eval()
    rgb = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    profile = QuantProfile(weights=TensorQuantConfig(bits=bits),
                           activations=TensorQuantConfig(bits=bits, range="minmax"),
                           bias_correction="off", cle=False)
    return model, simulate_ptq(model, profile, rgb), rgb


@pytest.fixture(scope="module")
def sim8():
    return tiny_sim(8)


def test_real_sim_rows_follow_network_order_and_match_the_sims_own_capture(sim8):
    model, sim, rgb = sim8
    rows = layer_sqnr(sim, rgb)
    assert [r["name"] for r in rows] == list(sim.quantizers)
    assert [r["order"] for r in rows] == sorted(r["order"] for r in rows)
    assert rows[0]["kind"] == "input" and rows[-1]["kind"] == "output" and rows[-1]["section"] == "head"
    assert {r["section"] for r in rows} == {"encoder", "decoder", "head"}
    # QuantSim.capture measures the accumulated SQNR its own way: the two must agree
    own = sim.layer_sqnr([rgb])
    assert [r["sqnr_db"] for r in rows] == pytest.approx([own[r["name"]] for r in rows], abs=1e-6)
    # the first quantizer sees the float input, so accumulated and local error coincide there
    assert rows[0]["sqnr_db"] == pytest.approx(rows[0]["sqnr_db_isolated"])
    assert all(q.enabled for q in sim.quantizers.values())


def test_real_sim_all_disabled_is_exact(sim8):
    _, sim, rgb = sim8
    with sim.quant_disabled():
        rows = layer_sqnr(sim, rgb)
    assert all(r["sqnr_db"] == math.inf for r in rows)
    assert all(r["sqnr_db_isolated"] == math.inf for r in rows)


def test_fewer_bits_lower_sqnr(sim8):
    _, sim, rgb = sim8
    _, sim4, _ = tiny_sim(4)
    eight = {r["name"]: r["sqnr_db"] for r in layer_sqnr(sim, rgb, isolated=False)}
    four = {r["name"]: r["sqnr_db"] for r in layer_sqnr(sim4, rgb, isolated=False)}
    assert all(four[name] < eight[name] for name in eight)
    # 4 bits fewer is 16x the step, i.e. about 24 dB less signal to noise
    mean_drop = sum(eight[n] - four[n] for n in eight) / len(eight)
    assert 15.0 < mean_drop < 30.0
