"""Shipped NPU profiles load as documented; bad profile files fail with one line naming file and key."""

import dataclasses
import fnmatch
import re

import pytest
import yaml

from npuq.errors import NpuqError
from npuq.quant.profile import PROFILE_DIR, TensorQuantConfig, load_profile, profile_from_dict

SHIPPED = ("npu-default", "npu-asym", "npu-fp16-decoder", "npu-ort-entropy", "per-channel-whatif")
MODULE_NAMES = {
    "encoder": ["encoder.encoder.conv1", "encoder.encoder.layer1.0.conv1", "encoder.encoder.layer4.1.conv2"],
    "decoder": ["decoder.decoder.0.conv.conv", "decoder.decoder.3.conv.conv", "decoder.decoder.9.conv.conv"],
    "head": ["head.convs.0.conv", "head.convs.3.conv"],
}


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profile_loads_by_name_and_path(name):
    profile = load_profile(name)
    assert profile.name == name
    assert profile == load_profile(PROFILE_DIR / f"{name}.yaml")
    assert profile.description


def test_every_key_in_the_shipped_profiles_is_commented():
    for name in SHIPPED:
        for line in (PROFILE_DIR / f"{name}.yaml").read_text().splitlines():
            if re.match(r"^\s*[a-z_0-9]+:", line) and line.split(":")[0].strip() != "description":
                assert "#" in line, f"{name}: undocumented key line {line!r}"


def test_npu_default_is_the_pessimistic_model():
    p = load_profile("npu-default")
    assert (p.weights.bits, p.weights.symmetric, p.weights.granularity, p.weights.range) == (
        8, True, "per_tensor", "minmax")
    assert (p.activations.bits, p.activations.symmetric, p.activations.range) == (8, True, "kl")
    assert (p.bias_correction, p.cle, p.fold_bn, p.fp16_layers) == ("empirical", True, True, ())
    assert p.quantize_outputs is True


def test_variants_differ_from_default_only_where_named():
    default = load_profile("npu-default")
    changes = {
        "npu-asym": {"activations": {"symmetric": False}},
        "npu-fp16-decoder": {"fp16_layers": ("decoder.*", "head.*")},
        "per-channel-whatif": {"weights": {"granularity": "per_channel"}},
    }
    for name, change in changes.items():
        profile = load_profile(name)
        renamed = profile.replace(name="npu-default", description=default.description)
        assert renamed == default.replace(**change)


def test_fp16_patterns_cover_decoder_and_head_but_not_encoder():
    patterns = load_profile("npu-fp16-decoder").fp16_layers
    for part, names in MODULE_NAMES.items():
        for module in names:
            # glob semantics; the patterns read the same as regular expressions
            as_glob = any(fnmatch.fnmatchcase(module, p) for p in patterns)
            as_regex = any(re.fullmatch(p, module) for p in patterns)
            assert as_glob == as_regex == (part != "encoder"), module


# -- validation errors ------------------------------------------------------------------------------


def write(tmp_path, text: str, name: str = "bad.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def error_line(path) -> str:
    with pytest.raises(NpuqError) as info:
        load_profile(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.parametrize(
    "text, key",
    [
        ("bits: 8\n", "bits"),
        ("weights:\n  bits: 8\n  rounding: nearest\n", "weights.rounding"),
        ("weights:\n  bits: 1\n", "weights.bits"),
        ("activations:\n  bits: eight\n", "activations.bits"),
        ("activations:\n  range: entropy\n", "activations.range"),
        ("weights:\n  range: kl\n", "weights.range"),
        ("activations:\n  granularity: per_channel\n", "activations.granularity"),
        ("activations:\n  percentile: 30\n", "activations.percentile"),
        ("activations:\n  kl_variant: tensorrt8\n", "activations.kl_variant"),
        ("activations:\n  mse_variant: aimet\n", "activations.mse_variant"),
        ("activations:\n  percentile_variant: [ort]\n", "activations.percentile_variant"),
        ("activations:\n  hist_bins: 4\n", "activations.hist_bins"),
        ("activations:\n  hist_bins: 2048.0\n", "activations.hist_bins"),
        ("activations:\n  kl_quantized_bins: true\n", "activations.kl_quantized_bins"),
        ("activations:\n  kl_variant: onnxruntime\n  kl_quantized_bins: 256\n",
         "activations.kl_quantized_bins"),
        ("activations:\n  range: mse\n  mse_variant: modelopt\n  symmetric: false\n",
         "activations.mse_variant"),
        ("quantize_outputs: [true, maybe]\n", "quantize_outputs"),
        ("quantize_outputs: []\n", "quantize_outputs"),
        ("bias_correction: analytic\n", "bias_correction"),
        ("cle: 1\n", "cle"),
        ("fp16_layers: decoder.*\n", "fp16_layers"),
        ("weights: per_tensor\n", "weights"),
        ("7: 1\n", "7"),
    ],
)
def test_bad_values_name_file_and_key(tmp_path, text, key):
    assert key in error_line(write(tmp_path, text))


@pytest.mark.parametrize("text", ["weights: [unclosed\n", "a: b: c\n", "\tkey: 1\n"])
def test_invalid_yaml(tmp_path, text):
    assert "not valid YAML" in error_line(write(tmp_path, text))


@pytest.mark.parametrize("text", ["- npu-default\n", "just a string\n", ""])
def test_non_mapping_file(tmp_path, text):
    assert "mapping" in error_line(write(tmp_path, text))


def test_unknown_profile_name_lists_the_shipped_ones():
    with pytest.raises(NpuqError, match="npu-default") as info:
        load_profile("no-such-npu")
    assert "no-such-npu" in str(info.value)


def test_a_folder_is_not_a_profile(tmp_path):
    assert "is a folder, not a profile YAML" in error_line(tmp_path)


def test_a_folder_named_like_a_shipped_profile_does_not_shadow_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "npu-default").mkdir()
    assert load_profile("npu-default").name == "npu-default"


def test_partial_sections_keep_the_defaults(tmp_path):
    path = write(tmp_path, "activations:\n  symmetric: false\nbias_correction: off\n", "p.yaml")
    profile = load_profile(path)
    assert profile.name == "p"
    # a partial section changes only the keys it names: activations stay on KL clipping
    assert profile.activations == TensorQuantConfig(symmetric=False, range="kl")
    assert profile.bias_correction == "off"


# -- replace / round trip -------------------------------------------------------------------------------


def test_replace_changes_only_what_is_named():
    default = load_profile("npu-default")
    changed = default.replace(activations={"range": "mse"}, cle=False, quantize_outputs=(True, False))
    assert changed.activations.range == "mse"
    assert changed.activations.symmetric == default.activations.symmetric
    assert (changed.cle, changed.weights) == (False, default.weights)
    assert changed.output_quantized(0) and not changed.output_quantized(1)
    with pytest.raises(NpuqError, match="output #2"):
        changed.output_quantized(2)
    assert default.activations.range == "kl"  # frozen: the original is untouched


@pytest.mark.parametrize("name", SHIPPED)
def test_to_yaml_round_trip(name, tmp_path):
    profile = load_profile(name).replace(quantize_outputs=(False, True), fp16_layers=("head.*",))
    again = profile_from_dict(yaml.safe_load(profile.to_yaml()), source="round-trip")
    assert again == profile
    path = write(tmp_path, profile.to_yaml(), f"{name}-copy.yaml")
    assert load_profile(path) == profile


@pytest.mark.parametrize(("name", "calibrator"), [("npu-default", "kl/tensorrt"),
                                                  ("npu-ort-entropy", "kl/onnxruntime")])
def test_shipped_profiles_name_their_calibrator(name, calibrator):
    assert load_profile(name).activations.calibrator == calibrator


def test_calibrator_names():
    act = load_profile("npu-default").activations
    assert dataclasses.replace(act, range="minmax").calibrator == "minmax"
    assert dataclasses.replace(act, range="percentile", percentile_variant="onnxruntime").calibrator == \
        "percentile 99.99/onnxruntime"
    assert dataclasses.replace(act, range="mse", mse_variant="modelopt").calibrator == "mse/modelopt"
    assert dataclasses.replace(act, kl_variant="onnxruntime", hist_bins=2048).calibrator == \
        "kl/onnxruntime (2048 bins)"
    assert dataclasses.replace(act, kl_variant="onnxruntime").histogram_bins == 128
    assert act.histogram_bins == 2048
