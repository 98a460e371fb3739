"""Equal-terms head fine-tune: both stages run, the result is a float checkpoint of the new head."""

import pytest
import torch

from npuq.analysis.head_compare import measure_head
from npuq.analysis.metrics import MetricConfig
from npuq.data.datasets import open_dataset
from npuq.errors import NpuqError
from npuq.models.checkpoint import load_checkpoint_dict, load_model
from npuq.quant.profile import load_profile
from npuq.train.fp32 import TrainConfig, train
from npuq.train.head_finetune import HeadFinetuneConfig, finetune_head

DATA = "synth:n=6,seed=0,size=64x64"
SIZE = (64, 64)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.pt"
    return train(TrainConfig(data=DATA, steps=2, out=str(out), size=SIZE, batch_size=2), progress=False)


def calib():
    pool = open_dataset(DATA, size=SIZE)
    return torch.stack([pool[i]["rgb"] for i in range(4)])


def test_finetune_into_int_frac_keeps_trunk_and_goes_through_the_quantsim(reference, tmp_path):
    cfg = HeadFinetuneConfig(head="int-frac", data=DATA, size=SIZE, steps=2, batch_size=2, qaf_steps=2,
                             qaf_batch_size=2)
    out = finetune_head(reference, cfg, calib(), tmp_path / "int-frac.pt")
    model = load_model(out)
    assert model.config.head == "int-frac"
    extra = load_checkpoint_dict(out)["extra"]
    trained = extra["qaf"]["trained_parameters"]  # stage 2 ran, on the head's layers only
    assert trained and all(name.startswith("head.") for name in trained)
    assert not (tmp_path / "int-frac.fp32.pt").exists()
    ref = load_model(reference).state_dict()
    # stage 1 moved the trunk away from the reference, and the head is the new one
    assert any(not torch.equal(v, ref[k]) for k, v in model.state_dict().items() if k.startswith("encoder."))
    assert not any(k.startswith("head.convs") for k in model.state_dict())


def test_same_config_same_weights(reference, tmp_path):
    cfg = HeadFinetuneConfig(head="log-depth", data=DATA, size=SIZE, steps=2, batch_size=2, qaf_steps=0)
    a = load_model(finetune_head(reference, cfg, calib(), tmp_path / "a.pt")).state_dict()
    b = load_model(finetune_head(reference, cfg, calib(), tmp_path / "b.pt")).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_refuses_to_overwrite_and_bad_config(reference, tmp_path):
    (tmp_path / "x.pt").write_text("mine")
    cfg = HeadFinetuneConfig(head="log-depth", data=DATA, size=SIZE, steps=1, qaf_steps=0)
    with pytest.raises(NpuqError, match="exists"):
        finetune_head(reference, cfg, calib(), tmp_path / "x.pt")
    with pytest.raises(NpuqError, match="steps"):
        HeadFinetuneConfig(head="log-depth", data=DATA, steps=0)


def test_measure_head_reports_int8_floor_and_integer_flips(reference, tmp_path):
    cfg = HeadFinetuneConfig(head="int-frac", data=DATA, size=SIZE, steps=1, batch_size=2, qaf_steps=0)
    model = load_model(finetune_head(reference, cfg, calib(), tmp_path / "m.pt")).eval()
    test = [open_dataset("synth:n=3,seed=1,size=64x64", size=SIZE)[i] for i in range(3)]
    profiles = {"npu-default": load_profile("npu-default"), "npu-asym": load_profile("npu-asym")}
    row = measure_head(model, profiles, calib(), test, MetricConfig(min_depth=0.1, max_depth=20.0))
    assert row["head"] == "int-frac"
    assert {"fp32", "int8 npu-default", "int8 npu-asym", "output floor"} <= set(row)
    assert 0.0 <= row["output floor"] < row["int8 npu-default"]
    assert 0.0 <= row["integer misassigned (INT8 vs FP32)"] <= 1.0
    assert 0.0 <= row["integer wrong (INT8 vs GT)"] <= 1.0
