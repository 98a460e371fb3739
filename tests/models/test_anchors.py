"""The range-anchor rewrite is exact in float and survives the checkpoint round trip."""

import pytest
import torch

from npuq.models.anchors import add_range_anchors, anchor_blocks, anchor_entries, consumer_convs
from npuq.models.checkpoint import load_model, save_checkpoint
from npuq.models.depth_resnet import DepthNetConfig, DepthResNet


def _model(head="sigmoid-disp"):
    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig(head=head))
    for p in model.decoder.parameters():  # trained-like biases: the anchors must not depend on zeros
        p.data.add_(0.05 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize("block", [2, 3, 7])
@pytest.mark.parametrize("head", ["sigmoid-disp", "log-depth"])
def test_anchors_leave_every_output_unchanged(block, head):
    model = _model(head)
    anchored = add_range_anchors(model, block, 2, 20.0)
    rgb = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        # float rounding only: the constant contribution cancels in the bias
        assert torch.allclose(anchored(rgb), model(rgb), rtol=1e-5, atol=1e-4)
        for a, b in zip(anchored.train()(rgb), model.train()(rgb), strict=True):  # every scale
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-4)
    assert anchored.decoder.block_channels[block] == model.decoder.block_channels[block] + 2


def test_anchor_channels_hold_the_value_and_consumers_read_them():
    model = _model()
    anchored = add_range_anchors(model, 3, 1, 17.0)
    seen = {}
    anchored.decoder.decoder[3].nonlin.register_forward_hook(lambda m, i, o: seen.update(out=o))
    with torch.no_grad():
        anchored(torch.rand(1, 3, 64, 64))
    assert torch.all(seen["out"][:, -1] == 17.0)
    consumers = consumer_convs(model, 3)
    assert consumers == ["decoder.decoder.4.conv.conv.weight", "head.convs.3.conv.weight"]
    weight = dict(anchored.named_parameters())["decoder.decoder.4.conv.conv.weight"]
    assert torch.all(weight[:, -1] != 0)  # not a dead channel: a pruner sees a used input


def test_anchored_checkpoint_round_trips(tmp_path):
    anchored = add_range_anchors(add_range_anchors(_model(), 5, 1, 18.0), 7, 2, 18.0)
    path = save_checkpoint(tmp_path / "a.pt", anchored)
    loaded = load_model(path).eval()
    assert anchor_blocks(loaded) == {5: 1, 7: 2}
    rgb = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(rgb), anchored.eval()(rgb))


def test_anchor_entries_are_exactly_the_entries_the_rewrite_added():
    model = _model()
    anchored = add_range_anchors(add_range_anchors(model, 3, 2, 17.0), 3, 1, 20.0)
    masks = anchor_entries(anchored)
    old, new = model.state_dict(), anchored.state_dict()
    assert sorted(masks) == sorted(["decoder.decoder.3.conv.conv.weight", "decoder.decoder.3.conv.conv.bias",
                                    *consumer_convs(model, 3)])
    for name, keep in masks.items():
        assert keep.shape == new[name].shape
        assert int(keep.sum()) == new[name].numel() - old[name].numel(), name  # three rows or columns
        producer_weight = name == "decoder.decoder.3.conv.conv.weight"  # zero rows; bias and columns not
        assert torch.all((new[name][keep] == 0) if producer_weight else (new[name][keep] != 0)), name
    assert anchor_entries(model) == {}
