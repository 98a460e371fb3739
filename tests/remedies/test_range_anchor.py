"""Range anchors: chosen where a calibrator is trapped by the ELU spike, skipped where none is."""

import torch

from npuq.models.anchors import add_range_anchors, anchor_blocks
from npuq.models.checkpoint import load_model
from npuq.quant.profile import activation_calibrators, load_profile
from npuq.remedies import apply_remedy
from npuq.remedies.range_anchor import (
    PINNED_VALUE,
    RangeAnchorConfig,
    flipped_blocks,
    pinned_candidate,
    search_block,
    stronger_candidate,
)

DEFAULT = load_profile("npu-default")


def _elu_like(trapped_share: float = 0.3) -> torch.Tensor:
    """An ELU output reaching ~10, with ``trapped_share`` of its values saturated near -1."""
    g = torch.Generator().manual_seed(0)
    x = torch.nn.functional.elu(torch.randn(4, 8, 16, 16, generator=g) * 2.0)
    saturated = torch.rand(x.shape, generator=g) < trapped_share
    x = torch.where(saturated, -1 + 1e-4 * torch.rand(x.shape, generator=g), x)
    x.view(-1)[0] = 10.0
    return x


def test_the_tensorrt_kl_trap_at_one_is_found_and_anchors_lift_it():
    cfg = RangeAnchorConfig(calibrators=("profile",))
    best, rows = search_block(_elu_like(), activation_calibrators(DEFAULT, cfg.calibrators), cfg)
    assert abs(rows[0]["range_hi"]["profile"] - 1.0) < 0.05  # without anchors: the threshold is the spike
    assert best is not None and best["gain"] >= cfg.min_gain
    assert best["range_hi"]["profile"] > 2.0 and best["value"] >= 10.0


def test_no_anchors_where_no_calibrator_is_trapped():
    x = torch.nn.functional.elu(torch.randn(4, 8, 16, 16, generator=torch.Generator().manual_seed(1)))
    cfg = RangeAnchorConfig(calibrators=("minmax", "mse"))
    best, rows = search_block(x, activation_calibrators(DEFAULT, cfg.calibrators), cfg)
    assert best is None and len(rows) > 1  # candidates were scored, none pays


def test_the_worst_calibrator_decides():
    # min/max pays for every anchor (its range becomes the anchor value): judged together with KL,
    # the choice is the smallest anchor value that lifts the trap
    x = _elu_like()
    cfg = RangeAnchorConfig(calibrators=("profile", "minmax"))
    best, rows = search_block(x, activation_calibrators(DEFAULT, cfg.calibrators), cfg)
    only_own = RangeAnchorConfig(calibrators=("profile",))
    alone, _ = search_block(x, activation_calibrators(DEFAULT, only_own.calibrators), only_own)
    same = next(r for r in rows if (r["count"], r["value"]) == (alone["count"], alone["value"]))
    assert best is not None and best["mse"]["minmax"] <= same["mse"]["minmax"]
    assert best["worst_mse"] == max(best["mse"].values()) == min(r["worst_mse"] for r in rows[1:])


def test_the_hand_off_keeps_its_float_outputs(handoff, context, test_data):
    cfg = RangeAnchorConfig(blocks=(7, 8, 9), counts=(2,), values=(20.0,), min_gain=0.0, frames=2)
    result = apply_remedy(handoff, cfg, context)
    before, after = load_model(handoff.checkpoint).eval(), load_model(result.checkpoint).eval()
    assert set(anchor_blocks(after)) == {int(b) for b in result.notes["anchors"]}
    assert anchor_blocks(after) and all(k == 2 for k in anchor_blocks(after).values())
    rgb = handoff.calib.rgb((64, 64))
    with torch.no_grad():
        assert torch.allclose(before(rgb), after(rgb), atol=1e-5)


def test_the_notes_count_the_work_the_anchors_add(handoff, context):
    none = apply_remedy(handoff, RangeAnchorConfig(blocks=(9,), min_gain=1e9, frames=2), context.within("a"))
    some = apply_remedy(handoff, RangeAnchorConfig(blocks=(9,), counts=(4,), min_gain=0.0, frames=2),
                        context.within("b"))
    assert none.notes["mac_overhead"] == 0.0 and not none.notes["anchors"]
    assert some.notes["mac_overhead"] > 0.0 and some.notes["anchors"]["9"][0] == 4


def test_a_range_the_fresh_ptq_does_not_reproduce_is_flagged(handoff):
    model = load_model(handoff.checkpoint).eval()
    anchored = add_range_anchors(model, 8, 2, 20.0)
    rgb = handoff.calib.rgb((64, 64))
    predicted = {"minmax": 20.0, "profile": 20.0}
    chosen = {8: {"count": 2, "value": 20.0, "range_hi": predicted}}
    assert flipped_blocks(anchored, DEFAULT, ("minmax",), rgb, chosen) == {}  # min/max takes the anchor
    wrong = {8: {**chosen[8], "range_hi": {"minmax": 1000.0}}}
    assert flipped_blocks(anchored, DEFAULT, ("minmax",), rgb, wrong) == {8: ["minmax"]}


def test_a_flipped_block_is_repaired_with_an_anchor_no_entropy_search_can_leave():
    cfg = RangeAnchorConfig(calibrators=("profile",))
    _, rows = search_block(_elu_like(), activation_calibrators(DEFAULT, cfg.calibrators), cfg)
    pinned = pinned_candidate(rows)
    assert pinned["value"] >= PINNED_VALUE and pinned["range_hi"]["profile"] > 2.0
    assert pinned["worst_mse"] == min(r["worst_mse"] for r in rows[1:] if r["value"] >= PINNED_VALUE)
    assert pinned_candidate(rows[:1]) is None


def test_a_block_that_flips_again_gets_more_anchor_channels():
    rows = [{"count": 0, "value": 0.0, "worst_mse": 9.0},
            *({"count": c, "value": v, "worst_mse": w} for c, v, w in
              [(1, 57.0, 1.0), (4, 57.0, 2.0), (16, 57.0, 3.0), (16, 8.0, 0.5), (32, 24.0, 4.0)])]
    assert pinned_candidate(rows)["count"] == 1  # no choice yet: the best pinned one
    assert pinned_candidate(rows, rows[1])["count"] == 4  # 1 channel at 57 flipped: the best with more
    assert pinned_candidate(rows, rows[4])["count"] == 16 and pinned_candidate(rows, rows[4])["value"] == 57.0
    assert pinned_candidate(rows, rows[5]) is None  # nothing stronger than 32 at 24 was tried


def test_a_block_that_flips_at_the_most_channels_tried_gets_twice_as_many():
    cfg = RangeAnchorConfig(calibrators=("profile",), counts=(1, 2))
    calibrators = activation_calibrators(DEFAULT, cfg.calibrators)
    x = _elu_like()  # 8 channels
    _, rows = search_block(x, calibrators, cfg)
    current = next(r for r in rows if r["count"] == 2 and r["value"] >= PINNED_VALUE)
    tried = len(rows)
    nxt = stronger_candidate([x], calibrators, cfg, rows, current)
    assert nxt["count"] == 4 and nxt["value"] >= PINNED_VALUE
    assert len(rows) > tried and {r["count"] for r in rows[tried:]} == {4}  # scored and recorded
    at_most = {**current, "count": 8}
    assert stronger_candidate([x], calibrators, cfg, rows, at_most) is None  # every channel already
