"""qaf / distill curves: each point is a fresh PTQ of the weights at that step, on validation frames."""

import pytest

from npuq.measure import measure
from npuq.remedies import apply_remedy
from npuq.remedies.distill import DistillConfig
from npuq.remedies.qaf import QafConfig


@pytest.mark.parametrize("config", [QafConfig(steps=2, batch_size=2, recalibrate_every=1, curve_every=1),
                                    DistillConfig(steps=2, batch_size=2, recalibrate_every=1, curve_every=1)])
def test_the_curve_ends_with_a_fresh_ptq_of_the_hand_off(config, handoff, context):
    result = apply_remedy(handoff, config, context)
    curve = result.notes["curve"]
    assert [p["step"] for p in curve] == [0, 1, 2]
    final = measure(result, context.val, context.metric)
    start = measure(handoff, context.val, context.metric)
    assert curve[0]["val_int8"] == pytest.approx(start.int8["abs_rel"], rel=1e-6)
    assert curve[-1]["val_int8"] == pytest.approx(final.int8["abs_rel"], rel=1e-6)
    assert curve[-1]["val_fp32"] == pytest.approx(final.fp32["abs_rel"], rel=1e-6)


def test_without_curve_every_there_is_no_curve(handoff, context):
    result = apply_remedy(handoff, QafConfig(steps=1, batch_size=2), context)
    assert "curve" not in result.notes
