"""Every registered remedy, with its smoke config: input untouched, lineage grown, measurable,
config round trip. A remedy added to the registry is covered here without a new test."""

import os

import pytest

from npuq.errors import NpuqError
from npuq.io import file_sha256
from npuq.measure import measure
from npuq.remedies import REMEDIES, apply_remedy, remedy_config


@pytest.mark.parametrize("name", sorted(REMEDIES))
def test_remedy_conforms(name, handoff, context, test_data):
    config = REMEDIES[name].config.smoke()
    before = (file_sha256(handoff.checkpoint), os.stat(handoff.checkpoint).st_mtime_ns, handoff.calib)
    lineage = handoff.lineage()
    result = apply_remedy(handoff, config, context)
    assert (file_sha256(handoff.checkpoint), os.stat(handoff.checkpoint).st_mtime_ns, handoff.calib) == before
    assert result.checkpoint != handoff.checkpoint and result.checkpoint.parent == context.work_dir
    grown = result.lineage()
    # one entry per remedy applied: ``best`` also records the steps of the alternative it kept
    kept = len(config.alternatives[result.notes["chosen"]]) if name == "best" else 0
    assert len(grown) == len(lineage) + 1 + kept
    assert grown[:len(lineage)] == lineage
    assert grown[-1]["remedy"] == name and grown[-1]["source"] == before[0]
    assert grown[-1]["config"] == config.to_dict()
    score = measure(result, test_data, context.metric)
    assert score.int8["abs_rel"] > 0 and score.fp32["abs_rel"] > 0
    assert remedy_config(name, config.to_dict()) == config


def test_unknown_keys_and_remedies_are_refused_by_name():
    with pytest.raises(NpuqError, match="unknown config key 'stepz'"):
        remedy_config("weight-norm", {"stepz": 3})
    with pytest.raises(NpuqError, match="unknown remedy 'magic'"):
        remedy_config("magic")
