"""Tiny hand-offs on synthetic sequences: every remedy runs on them in seconds."""

import pytest

from npuq.quant.profile import load_profile
from npuq.remedies import CalibSet, Context, DataRef, Handoff

SPEC = "synth:mode=sequence,n=48,seed=0,size=64x64"
# exact TensorRT KL collapses an untrained model's sigmoid outputs: MSE keeps the tiny figures meaningful
PROFILE = load_profile("npu-default").replace(activations={"range": "mse"})


@pytest.fixture
def context(tmp_path):
    return Context(DataRef(SPEC + ",part=train"), DataRef(SPEC + ",part=val"), tmp_path / "work")


@pytest.fixture
def test_data():
    return DataRef(SPEC + ",part=test")


@pytest.fixture
def handoff(tiny_checkpoint, context):
    pool = context.train.open((64, 64))
    return Handoff(tiny_checkpoint, CalibSet(context.train, tuple(pool.names[:4])), PROFILE)
