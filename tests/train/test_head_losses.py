"""Per-head losses against hand-computed values on toy maps; zero at exact targets; masking; scales."""

import math

import pytest
import torch

from npuq.errors import NpuqError
from npuq.models.heads import DepthHead, build_head
from npuq.train.head_losses import HEAD_LOSSES, head_loss, masked_l1
from npuq.train.losses import combined_loss, multiscale_loss


def m(rows):
    return torch.tensor(rows, dtype=torch.float32).reshape(1, 1, len(rows), len(rows[0]))


def head(name, min_depth=0.1, max_depth=100.0):
    return build_head(name, [16, 32], min_depth, max_depth)


def test_every_registered_head_has_a_loss():
    for name in ("sigmoid-disp", "int-frac", "coarse-residual", "log-depth"):
        assert name in HEAD_LOSSES


def test_int_frac_by_hand():
    integer, fraction = m([[2.0, 3.5]]), m([[0.25, 0.0]])
    gt = m([[2.5, 3.0]])
    # integer targets (2, 3): |0| + |0.5| -> 0.25; fraction targets (0.5, 0): |0.25| + 0 -> 0.125
    assert float(head_loss(head("int-frac"), (integer, fraction), gt)) == pytest.approx(0.375)


def test_coarse_residual_by_hand():
    coarse, residual = m([[2.0, 5.0]]), m([[0.5, -0.25]])
    gt = m([[2.25, 4.0]])
    # coarse: |2 - 2.25| + |5 - 4| -> 0.625; sum: |2.5 - 2.25| + |4.75 - 4| -> 0.5
    assert float(head_loss(head("coarse-residual"), (coarse, residual), gt)) == pytest.approx(1.125)


def test_log_depth_by_hand():
    x = m([[0.0, 1.0]])
    gt = m([[math.e, math.e]])
    # |0 - 1| + |1 - 1| -> 0.5
    assert float(head_loss(head("log-depth"), x, gt)) == pytest.approx(0.5, rel=1e-6)


def test_sigmoid_disp_is_the_fp32_default_loss():
    h = head("sigmoid-disp")
    sig = m([[0.1, 0.02], [0.5, 0.9]])
    gt = m([[1.0, 3.0], [0.5, 0.0]])
    expected = combined_loss(h.decode((sig,)), gt, gt > 0, "l1_inv+silog")
    assert float(head_loss(h, sig, gt)) == pytest.approx(float(expected))
    assert float(expected) > 0


@pytest.mark.parametrize("name", ["sigmoid-disp", "int-frac", "coarse-residual", "log-depth"])
def test_zero_at_exact_targets(name):
    h = head(name, 0.1, 16.0)
    gt = m([[0.3, 1.0, 2.999], [5.5, 12.0, 15.9]])
    assert float(head_loss(h, h.encode(gt), gt)) == pytest.approx(0.0, abs=1e-5)


def test_masking_ignores_invalid_and_non_finite_gt():
    h = head("int-frac")
    integer, fraction = m([[2.0, 7.0, 9.0]]), m([[0.5, 0.9, 0.1]])
    gt = m([[2.0, 0.0, float("inf")]])
    # only pixel 0 counts: integer |2-2| = 0, fraction |0.5 - 0| = 0.5
    assert float(head_loss(h, (integer, fraction), gt)) == pytest.approx(0.5)


def test_no_valid_pixel_gives_a_zero_that_backpropagates():
    h = head("coarse-residual")
    coarse, residual = m([[2.0, 5.0]]).requires_grad_(), m([[0.1, 0.2]]).requires_grad_()
    loss = head_loss(h, (coarse, residual), torch.zeros(1, 1, 1, 2))
    assert loss.item() == 0.0
    loss.backward()
    assert coarse.grad is not None and float(coarse.grad.abs().sum()) == 0.0


def test_scales_are_upsampled_to_gt_and_averaged():
    h = head("log-depth")
    gt = torch.full((1, 1, 4, 4), math.e)
    full = torch.full((1, 1, 4, 4), 1.5)  # |1.5 - 1| = 0.5
    half = torch.full((1, 1, 2, 2), 0.0)  # upsampled constant 0: |0 - 1| = 1
    assert float(head_loss(h, [(full,), (half,)], gt)) == pytest.approx(0.75)
    assert float(head_loss(h, [full, half], gt, weights=[3.0, 1.0])) == pytest.approx((1.5 + 1.0) / 4)


def test_matches_multiscale_loss_convention_for_sigmoid_disp():
    h = head("sigmoid-disp")
    gt = m([[1.0, 2.0, 3.0, 4.0], [2.0, 2.0, 0.0, 8.0], [1.0, 1.0, 1.0, 1.0], [5.0, 5.0, 5.0, 5.0]])
    s0 = torch.full((1, 1, 4, 4), 0.05)
    s1 = torch.full((1, 1, 2, 2), 0.2)
    expected = multiscale_loss([h.decode((s0,)), h.decode((s1,))], gt, "l1_inv+silog")
    assert float(head_loss(h, [s0, s1], gt)) == pytest.approx(float(expected), rel=1e-5)


def test_wrong_output_count_and_weights_are_errors():
    with pytest.raises(NpuqError, match="has 2 outputs, got 1"):
        head_loss(head("int-frac"), m([[1.0]]), m([[1.0]]))
    with pytest.raises(NpuqError, match="2 scales but 1 weights"):
        head_loss(head("log-depth"), [m([[1.0]]), m([[1.0]])], m([[1.0]]), weights=[1.0])


def test_unregistered_head_falls_back_to_l1_on_encoded_targets():
    class Twice(DepthHead):
        name = "test-twice"
        output_names = ("a", "b")

        def encode(self, depth):
            return depth, 2 * depth

    h = Twice([8], 0.1, 10.0)
    gt = m([[1.0, 2.0]])
    # a: |1-1| + |3-2| -> 0.5; b: |2-2| + |4-4| -> 0
    assert float(head_loss(h, (m([[1.0, 3.0]]), m([[2.0, 4.0]])), gt)) == pytest.approx(0.5)


def test_masked_l1_by_hand():
    pred, target = m([[1.0, 4.0, 0.0]]), m([[2.0, 2.0, 9.0]])
    assert float(masked_l1(pred, target, m([[1.0, 1.0, 0.0]]) > 0)) == pytest.approx(1.5)


def test_depth_loss_gives_the_int_frac_integer_part_no_gradient_but_head_loss_does():
    """Why int-frac needs its own loss: decode rounds the integer output."""
    torch.manual_seed(0)
    h = build_head("int-frac", [8], 0.1, 16.0)
    feats = [torch.randn(1, 8, 6, 6, generator=torch.Generator().manual_seed(1))]
    gt = torch.full((1, 1, 6, 6), 3.7)
    outputs = h(feats)
    depth_loss = combined_loss(h.decode(outputs[0]), gt, gt > 0, "l1_inv+silog")
    depth_loss.backward()
    int_grad = h.int_convs[0].conv.weight.grad
    assert int_grad is None or float(int_grad.abs().sum()) == 0.0
    assert float(h.frac_convs[0].conv.weight.grad.abs().sum()) > 0.0
    h.zero_grad()
    head_loss(h, h(feats), gt).backward()
    assert float(h.int_convs[0].conv.weight.grad.abs().sum()) > 0.0
