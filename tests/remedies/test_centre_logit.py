"""centre-logit: exact in float, centred on the calibration frames, refused for other heads."""

import dataclasses

import pytest
import torch

from npuq.errors import NpuqError
from npuq.models.checkpoint import load_model, save_checkpoint
from npuq.models.depth_resnet import DepthNetConfig, DepthResNet
from npuq.remedies import apply_remedy
from npuq.remedies.centre_logit import CentreLogitConfig, to_centred_logit


def _disp_model():
    torch.manual_seed(0)
    model = DepthResNet(DepthNetConfig())
    with torch.no_grad():
        for conv in model.head.convs:  # one room: logits well away from 0, as on 7-Scenes
            conv.conv.bias.fill_(-2.7)
    return model.eval()


def test_the_centred_model_predicts_the_same_depth_and_its_output_straddles_zero():
    model = _disp_model()
    rgb = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        logits = model.head.convs[0](model.decoder(model.encoder(rgb))[0])
        centre = float(logits.min() + logits.max()) / 2
        centred = to_centred_logit(model, centre).eval()
        assert torch.allclose(centred.predict_depth(rgb), model.predict_depth(rgb), rtol=1e-5)
        out = centred(rgb)
    assert out.min() < 0 < out.max() and abs(float(out.max() + out.min())) < 1e-4
    assert logits.max() < -1.0  # before: all on one side of 0


def test_encode_inverts_decode_with_the_centre():
    head = to_centred_logit(_disp_model(), -2.5).head
    depth = torch.tensor([0.5, 2.0, 7.0, 40.0]).view(1, 1, 2, 2)
    assert torch.allclose(head.decode(head.encode(depth)), depth, rtol=1e-4)
    lo, hi = head.output_ranges()[0]
    assert lo < float(head.encode(depth)[0].min()) and float(head.encode(depth)[0].max()) < hi


def test_the_remedy_centres_on_the_calibration_frames(handoff, context):
    result = apply_remedy(handoff, CentreLogitConfig(), context)
    lo, hi = result.notes["centred_range"]
    assert lo == pytest.approx(-hi, abs=1e-5)
    again = apply_remedy(result, CentreLogitConfig(), context.within("again"))  # re-centring: a no-op
    assert again.notes["centre"] == pytest.approx(result.notes["centre"], abs=1e-5)
    rgb = handoff.calib.rgb((64, 64))
    with torch.no_grad():
        before = load_model(handoff.checkpoint).eval().predict_depth(rgb)
        assert torch.allclose(load_model(again.checkpoint).eval().predict_depth(rgb), before, rtol=1e-4)


def test_other_heads_are_refused(tmp_path, handoff, context):
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "log.pt", DepthResNet(DepthNetConfig(head="log-depth")),
                           extra={"train": {"config": {"size": [64, 64]}}})
    with pytest.raises(NpuqError, match="needs a sigmoid-disp model"):
        apply_remedy(dataclasses.replace(handoff, checkpoint=path), CentreLogitConfig(), context)


def test_the_hand_off_readme_tells_the_host_how_to_decode():
    from npuq.export.handoff import _decode_text

    text = _decode_text(to_centred_logit(_disp_model(), -2.5))
    assert "sigmoid(logit + -2.5)" in text and "min_depth 0.1 m" in text
