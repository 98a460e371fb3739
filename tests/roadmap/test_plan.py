"""Plans: shipped ones load (or fail naming the missing remedy), and bad YAML is one clear line."""

import pytest

from npuq.errors import NpuqError
from npuq.roadmap.plan import USER_BASELINE, USER_EXPECTATIONS, load_plan, shipped_plans


def test_the_user_paths_and_npuqs_own_plans_ship():
    assert {"path-a", "path-b", "path-c", "recommended", "demo"} <= set(shipped_plans())


@pytest.mark.parametrize("name", ["path-a", "path-b", "path-c", "recommended", "recommended-qaf",
                                  "recommended-kd", "recommended-ft", "demo", "demo-quick"])
def test_shipped_plans_load_and_name_their_remedies(name):
    plan = load_plan(name)
    assert plan.steps and all(step.config.name for step in plan.steps)
    assert plan.to_dict()["steps"][0]["remedy"] == plan.steps[0].config.name


def test_a_plan_with_an_unknown_remedy_fails_naming_it(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("name: x\nsteps:\n  - remedy: calibration\n"
                    "  - label: FP16 tail\n    remedy: fp16-magic\n")
    with pytest.raises(NpuqError, match="step 2 .*unknown remedy 'fp16-magic'"):
        load_plan(path)


def test_expectations_are_the_users_figures_as_ratios_to_their_baseline():
    step = next(s for s in load_plan("path-c").steps if s.expect == "path-c")
    assert step.expected_ratio == pytest.approx(USER_EXPECTATIONS["path-c"] / USER_BASELINE)


@pytest.mark.parametrize("text, message", [
    ("name: x\nsteps:\n  - remedy: calibration\n    remedy: head\n", "line 4: duplicate key 'remedy'"),
    ("name: x\nsteps: [\n", "not valid YAML at line"),
    ("name: x\nstepz: []\n", "unknown key 'stepz'"),
    ("name: x\nsteps:\n  - remedy: calibration\n    config: {size: 0}\n", "step 1.*size must be positive"),
    ("name: x\nsteps:\n  - remedy: calibration\n    expect: phase9\n", "expect must be one of"),
    ("name: x\nsteps: []\n", "non-empty list"),
])
def test_bad_plans_are_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "plan.yaml"
    path.write_text(text)
    with pytest.raises(NpuqError, match=message) as info:
        load_plan(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_unknown_plan_names_list_the_shipped_ones(tmp_path):
    with pytest.raises(NpuqError, match="shipped: demo"):
        load_plan("path-z")
    with pytest.raises(NpuqError, match="no such plan file"):
        load_plan(tmp_path / "missing.yaml")
