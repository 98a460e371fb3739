"""Distillation: the teacher never changes, labels are optional, gradients reach what trains, by seed."""

import dataclasses

import torch

from npuq.models.checkpoint import load_model
from npuq.remedies import apply_remedy
from npuq.remedies.base import DataRef
from npuq.remedies.distill import Distillation, DistillConfig


def _state(path):
    return {k: v.clone() for k, v in load_model(path).state_dict().items()}


def test_distillation_without_labels_leaves_the_teacher_and_is_deterministic(handoff, context, tmp_path):
    unlabelled = dataclasses.replace(context, train=DataRef("synth:mode=sequence,n=48,seed=0,size=64x64,"
                                                            "part=train"))
    cfg = DistillConfig(steps=3, batch_size=2, recalibrate_every=2, supervised=0.0)
    teacher = _state(handoff.checkpoint)
    first = apply_remedy(handoff, cfg, dataclasses.replace(unlabelled, work_dir=tmp_path / "a"))
    second = apply_remedy(handoff, cfg, dataclasses.replace(unlabelled, work_dir=tmp_path / "b"))
    assert all(torch.equal(v, _state(handoff.checkpoint)[k]) for k, v in teacher.items())
    a, b = _state(first.checkpoint), _state(second.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in a)
    changed = [k for k in a if not torch.equal(a[k], teacher[k])]
    assert changed and all(k.startswith(("decoder.", "head.")) for k in changed)


def test_every_trained_parameter_gets_a_gradient_and_the_teacher_none(handoff):
    from npuq.quant import simulate_ptq
    from npuq.train.qaf_head import mappable_parameters

    model, teacher = load_model(handoff.checkpoint).eval(), load_model(handoff.checkpoint)
    rgb = handoff.calib.rgb((64, 64))
    sim = simulate_ptq(model, handoff.profile, rgb)
    names = mappable_parameters(sim, model, ("decoder.", "head."))
    objective = Distillation(sim, teacher, model.head, DistillConfig())
    terms = objective(sim, rgb[:2], torch.zeros(2, 1, 64, 64))
    assert set(terms) == {"kd_output", "kd_features", "float_anchor"}  # no supervised term: no labels
    sum(terms.values()).backward()
    params = dict(sim.named_parameters())
    missing = [n for n in names if params[f"graph_module.{n}"].grad is None
               or not params[f"graph_module.{n}"].grad.abs().sum() > 0]
    assert names and not missing
    assert all(p.grad is None for p in teacher.parameters())


def test_the_float_anchor_compares_the_unquantized_student_with_the_teacher(handoff):
    from npuq.quant import simulate_ptq

    model, teacher = load_model(handoff.checkpoint).eval(), load_model(handoff.checkpoint)
    rgb = handoff.calib.rgb((64, 64))[:2]
    sim = simulate_ptq(model, handoff.profile, handoff.calib.rgb((64, 64)))
    depth = torch.zeros(2, 1, 64, 64)
    untouched = Distillation(sim, teacher, model.head, DistillConfig())(sim, rgb, depth)
    # the student is the teacher, so in float it is exact; quantized it is not
    assert untouched["float_anchor"].item() < 1e-4 < untouched["kd_output"].item()
    with torch.no_grad():
        next(p for n, p in sim.named_parameters() if n.startswith("graph_module.head.")).mul_(1.5)
    moved = Distillation(sim, teacher, model.head, DistillConfig(float_weight=2.0))(sim, rgb, depth)
    assert moved["float_anchor"].item() > 1e-3
    off = Distillation(sim, teacher, model.head, DistillConfig(float_weight=0.0))(sim, rgb, depth)
    assert "float_anchor" not in off
