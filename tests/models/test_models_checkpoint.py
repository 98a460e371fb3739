"""Checkpoints: npuq / PackNet-SfM / Monodepth2 layouts, strict key checking, bad files, pickle safety."""

import fractions
import importlib.util
import os
import sys
import types
from collections import OrderedDict

import pytest
import torch

from npuq.errors import NpuqError
from npuq.models import DepthNetConfig, DepthResNet, load_checkpoint_dict, load_model, save_checkpoint
from npuq.models.checkpoint import (
    FORMAT,
    infer_config,
    load_monodepth2,
    packnet_state_dict,
    read_torch_file,
)

RGB = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(3))


def randomised(model: DepthResNet) -> DepthResNet:
    """Give BN running statistics non-default values so that every tensor matters for the output."""
    gen = torch.Generator().manual_seed(7)
    for name, buf in model.named_buffers():
        if name.endswith("running_mean"):
            buf.copy_(0.1 * torch.randn(buf.shape, generator=gen))
        elif name.endswith("running_var"):
            buf.copy_(0.5 + torch.rand(buf.shape, generator=gen))
    return model.eval()


@pytest.fixture(scope="module")
def source18():
    torch.manual_seed(0)
    return randomised(DepthResNet(DepthNetConfig(depth=18)))


def outputs(model):
    with torch.no_grad():
        return model.eval()(RGB)


def assert_same_model(loaded, source):
    assert loaded.config == source.config
    assert torch.equal(outputs(loaded), outputs(source))


# --- layouts written independently of the loader's own renaming ---------------------------------------


def head_to_decoder_index(key: str) -> str:
    """``head.convs.S.rest`` -> ``decoder.decoder.{10+S}.rest`` (PackNet-SfM / Monodepth2 numbering)."""
    scale, rest = key[len("head.convs."):].split(".", 1)
    return f"decoder.decoder.{10 + int(scale)}.{rest}"


def packnet_layout(model):
    sd = OrderedDict()
    for key, value in model.state_dict().items():
        key = head_to_decoder_index(key) if key.startswith("head.convs.") else key
        sd["model.depth_net." + key] = value.clone()
    fc_in = model.encoder.num_ch_enc[-1]
    sd["model.depth_net.encoder.encoder.fc.weight"] = torch.zeros(1000, fc_in)
    sd["model.depth_net.encoder.encoder.fc.bias"] = torch.zeros(1000)
    sd["model.pose_net.squeeze.weight"] = torch.zeros(256, 512, 1, 1)
    return sd


def monodepth2_layout(model):
    encoder, depth = OrderedDict(), OrderedDict()
    for key, value in model.state_dict().items():
        if key.startswith("encoder.encoder."):
            encoder["encoder." + key[len("encoder.encoder."):]] = value.clone()
        else:
            key = head_to_decoder_index(key) if key.startswith("head.convs.") else key
            depth[key[len("decoder."):]] = value.clone()
    encoder["encoder.fc.weight"] = torch.zeros(1000, model.encoder.num_ch_enc[-1])
    encoder["encoder.fc.bias"] = torch.zeros(1000)
    encoder.update(height=192, width=640, use_stereo=False)
    return encoder, depth


def fake_cfgnode_class():
    """A class that pickles as ``yacs.config.CfgNode`` (a dict subclass with private flags, like yacs)."""

    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__.update({"__immutable__": False, "__deprecated_keys__": set(),
                                  "__renamed_keys__": {}, "__new_allowed__": False})

    CfgNode.__module__ = "yacs.config"
    CfgNode.__qualname__ = CfgNode.__name__ = "CfgNode"
    return CfgNode


def save_with_fake_yacs(path, build_obj):
    """torch.save an object holding fake CfgNodes; yacs is importable only while saving."""
    yacs, yacs_config = types.ModuleType("yacs"), types.ModuleType("yacs.config")
    yacs_config.CfgNode = fake_cfgnode_class()
    yacs.config = yacs_config
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, "yacs", yacs)
        mp.setitem(sys.modules, "yacs.config", yacs_config)
        torch.save(build_obj(yacs_config.CfgNode), path)
    assert importlib.util.find_spec("yacs") is None


def packnet_config(cfg_node, version="18pt"):
    return cfg_node({"model": cfg_node({
        "name": "SelfSupModel",
        "depth_net": cfg_node({"name": "DepthResNet", "version": version, "checkpoint_path": ""}),
        "params": cfg_node({"crop": "garg", "min_depth": 0.0, "max_depth": 80.0}),
    }), "arch": cfg_node({"seed": 42, "max_epochs": 50})})


# --- npuq format ---------------------------------------------------------------------------------------


def test_npuq_round_trip(tmp_path, source18):
    path = save_checkpoint(tmp_path / "m.pt", source18, extra={"step": 12, "train": {"size": [64, 64]}})
    assert_same_model(load_model(path), source18)
    ckpt = load_checkpoint_dict(path)
    assert ckpt["format"] == FORMAT == "npuq-depth/1"
    assert ckpt["config"] == {"depth": 18, "head": "sigmoid-disp", "min_depth": 0.1, "max_depth": 100.0,
                              "num_scales": 4, "activation": "elu"}
    assert ckpt["extra"] == {"step": 12, "train": {"size": [64, 64]}}
    assert set(ckpt["state_dict"]) == set(source18.state_dict())


def test_npuq_config_survives_round_trip(tmp_path):
    model = randomised(DepthResNet(DepthNetConfig(min_depth=0.5, max_depth=20.0, num_scales=2)))
    loaded = load_model(save_checkpoint(tmp_path / "m.pt", model))
    assert loaded.config == DepthNetConfig(min_depth=0.5, max_depth=20.0, num_scales=2)
    with torch.no_grad():
        assert torch.equal(loaded.eval().predict_depth(RGB), model.predict_depth(RGB))


def test_save_refuses_to_overwrite_without_force(tmp_path, source18):
    path = tmp_path / "m.pt"
    path.write_bytes(b"keep me")
    with pytest.raises(NpuqError, match="already exists"):
        save_checkpoint(path, source18)
    assert path.read_bytes() == b"keep me"
    save_checkpoint(path, source18, force=True)
    assert load_checkpoint_dict(path)["format"] == FORMAT


def test_save_rejects_extra_that_would_not_load_safely(tmp_path, source18):
    with pytest.raises(NpuqError, match=r"extra\['when'\] is a Fraction"):
        save_checkpoint(tmp_path / "m.pt", source18, extra={"when": fractions.Fraction(1, 3)})
    assert not (tmp_path / "m.pt").exists()


def test_load_checkpoint_dict_refuses_foreign_files(tmp_path, source18):
    path = tmp_path / "packnet.ckpt"
    torch.save({"state_dict": packnet_layout(source18)}, path)
    with pytest.raises(NpuqError, match="not an npuq checkpoint"):
        load_checkpoint_dict(path)


def test_unknown_format_version(tmp_path):
    path = tmp_path / "m.pt"
    torch.save({"format": "npuq-depth/9", "config": {}, "state_dict": {}, "extra": {}}, path)
    with pytest.raises(NpuqError, match="unsupported checkpoint format 'npuq-depth/9'"):
        load_model(path)


# --- PackNet-SfM ---------------------------------------------------------------------------------------


def test_packnet_ckpt_with_yacs_config_loads_without_yacs(tmp_path, source18):
    path = tmp_path / "packnet.ckpt"
    save_with_fake_yacs(path, lambda cfg_node: {
        "config": packnet_config(cfg_node), "epoch": 3, "state_dict": packnet_layout(source18)})
    assert_same_model(load_model(path), source18)
    config = read_torch_file(path)["config"]
    assert isinstance(config, dict)
    assert config["model"]["depth_net"]["version"] == "18pt"
    # The trusting path (allow_pickle) must not need yacs either.
    assert_same_model(load_model(path, allow_pickle=True), source18)


def test_packnet_depth_comes_from_config_version(tmp_path, source18):
    path = tmp_path / "packnet.ckpt"
    save_with_fake_yacs(path, lambda cfg_node: {
        "config": packnet_config(cfg_node, version="50pt"), "state_dict": packnet_layout(source18)})
    with pytest.raises(NpuqError, match="DepthResNet-50") as err:
        load_model(path)
    assert "layer1.0.conv3.weight" in str(err.value)


@pytest.mark.parametrize("depth", [18, 34, 50])
def test_depth_and_scales_inferred_from_packnet_state_dict(depth):
    with torch.device("meta"):
        model = DepthResNet(DepthNetConfig(depth=depth, num_scales=3))
    config = infer_config(packnet_state_dict(packnet_layout(model)), "x.ckpt")
    assert config == DepthNetConfig(depth=depth, num_scales=3)


def test_packnet_ckpt_without_config_loads(tmp_path, source18):
    path = tmp_path / "packnet.ckpt"
    torch.save({"state_dict": packnet_layout(source18)}, path)
    assert_same_model(load_model(path), source18)


def test_packnet_other_depth_network_is_refused(tmp_path, source18):
    path = tmp_path / "packnet.ckpt"

    def build(cfg_node):
        cfg = packnet_config(cfg_node)
        cfg["model"]["depth_net"]["name"] = "PackNet01"
        return {"config": cfg, "state_dict": packnet_layout(source18)}

    save_with_fake_yacs(path, build)
    with pytest.raises(NpuqError, match="'PackNet01' is not supported"):
        load_model(path)


# --- Monodepth2 ----------------------------------------------------------------------------------------


def write_monodepth2(folder, model):
    folder.mkdir()
    encoder, depth = monodepth2_layout(model)
    torch.save(encoder, folder / "encoder.pth")
    torch.save(depth, folder / "depth.pth")
    return folder


def test_monodepth2_folder_round_trip(tmp_path, source18):
    folder = write_monodepth2(tmp_path / "mono_640x192", source18)
    assert_same_model(load_model(folder), source18)
    assert_same_model(load_model(folder / "encoder.pth"), source18)


def test_monodepth2_two_paths(tmp_path, source18):
    folder = write_monodepth2(tmp_path / "mono", source18)
    enc, dep = tmp_path / "enc_weights.pth", tmp_path / "dec_weights.pth"
    (folder / "encoder.pth").rename(enc)
    (folder / "depth.pth").rename(dep)
    assert_same_model(load_monodepth2(enc, dep), source18)


def test_monodepth2_half_alone_is_a_clear_error(tmp_path, source18):
    folder = write_monodepth2(tmp_path / "mono", source18)
    (folder / "depth.pth").unlink()
    with pytest.raises(NpuqError, match="depth.pth"):
        load_model(folder)
    with pytest.raises(NpuqError, match="half of a Monodepth2 model"):
        load_model(folder / "encoder.pth")


# --- mismatches and bad files --------------------------------------------------------------------------


def test_mismatched_keys_give_one_error_listing_them(tmp_path, source18):
    sd = packnet_layout(source18)
    del sd["model.depth_net.decoder.decoder.3.conv.conv.bias"]
    for n in range(8):
        sd[f"model.depth_net.decoder.extra{n}.weight"] = torch.zeros(1)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(NpuqError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(str(path))
    assert "\n" not in message
    assert "1 missing: decoder.decoder.3.conv.conv.bias" in message
    assert "8 unexpected: decoder.extra0.weight" in message
    assert "(+3 more)" in message  # long lists are truncated


def test_wrong_shape_is_reported(tmp_path, source18):
    sd = packnet_layout(source18)
    sd["model.depth_net.decoder.decoder.0.conv.conv.bias"] = torch.zeros(7)
    path = tmp_path / "bad.ckpt"
    torch.save({"state_dict": sd}, path)
    with pytest.raises(NpuqError, match=r"decoder.decoder.0.conv.conv.bias \(7,\) vs \(256,\)"):
        load_model(path)


def corrupt_files(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"format": FORMAT, "state_dict": {"w": torch.zeros(4096)}}, good)
    good = good.read_bytes()
    files = {
        "random.pt": os.urandom(4096),
        "truncated.pt": good[: len(good) // 2],
        "empty.pt": b"",
        "text.pt": b"this is not a checkpoint\n",
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    return [tmp_path / name for name in files]


@pytest.mark.parametrize("allow_pickle", [False, True])
def test_corrupt_files_give_a_one_line_error(tmp_path, allow_pickle):
    for path in corrupt_files(tmp_path):
        with pytest.raises(NpuqError) as err:
            load_model(path, allow_pickle=allow_pickle)
        message = str(err.value)
        assert message.startswith(f"{path}: ") and "\n" not in message
        assert err.value.__cause__ is None and err.value.__suppress_context__


def test_missing_path(tmp_path):
    with pytest.raises(NpuqError, match="no such file"):
        load_model(tmp_path / "nope.pt")


def test_unrecognised_layout(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(NpuqError, match="unrecognised checkpoint"):
        load_model(path)


# --- pickle safety -------------------------------------------------------------------------------------


def test_non_allow_listed_global_is_refused_unless_trusted(tmp_path, source18):
    path = tmp_path / "packnet.ckpt"
    torch.save({"state_dict": packnet_layout(source18), "lr": fractions.Fraction(1, 1000)}, path)
    with pytest.raises(NpuqError) as err:
        load_model(path)
    message = str(err.value)
    assert message.startswith(str(path)) and "\n" not in message
    assert "fractions.Fraction" in message
    assert "allow_pickle=True" in message and "--allow-pickle" in message
    assert_same_model(load_model(path, allow_pickle=True), source18)


def test_trusted_pickle_with_missing_module_is_a_clear_error(tmp_path):
    class Gone:
        pass

    Gone.__module__ = "npuq_test_module_that_does_not_exist"
    Gone.__qualname__ = Gone.__name__ = "Gone"
    module = types.ModuleType(Gone.__module__)
    module.Gone = Gone
    path = tmp_path / "gone.pt"
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(sys.modules, Gone.__module__, module)
        torch.save({"obj": Gone()}, path)
    with pytest.raises(NpuqError, match=r"refused the global npuq_test_module_that_does_not_exist\.Gone"):
        read_torch_file(path)
    with pytest.raises(NpuqError, match="needs the module 'npuq_test_module_that_does_not_exist'"):
        read_torch_file(path, allow_pickle=True)
