"""Networks registry: layer graphs, widths, torchvision compatibility, starting weights."""
import socket
import urllib.error

import pytest
import torch
import torchvision

import mpq
from mpq import networks


def conv_linear_count(model):
    return sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in model.modules())


@pytest.mark.parametrize("name,tv,layers", [("resnet50", torchvision.models.resnet50, 54),
                                            ("resnet101", torchvision.models.resnet101, 105)])
def test_resnet_width_one_is_torchvision(name, tv, layers):
    ours = networks.build(name, num_classes=1000).state_dict()
    ref = tv().state_dict()
    assert ours.keys() == ref.keys()
    assert all(ours[k].shape == ref[k].shape for k in ref)
    assert conv_linear_count(networks.build(name, num_classes=10, width=0.25)) == layers


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "pspnet"])
def test_width_keeps_the_layer_graph(name):
    nc = 11 if name == "pspnet" else 10
    full = networks.build(name, num_classes=nc, width=1.0)
    small = networks.build(name, num_classes=nc, width=0.25)
    names = lambda m: [n for n, x in m.named_modules() if isinstance(x, (torch.nn.Conv2d, torch.nn.Linear))]  # noqa
    assert names(full) == names(small)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in full.parameters()) / 8


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "pspnet"])
def test_registry_quantization_counts(name):
    spec = networks.get_spec(name)
    model = networks.build(name, num_classes=11, width=0.125)
    q = mpq.quantize(model, 4, keep_8bit=spec.fixed_8bit, skip=spec.float_only)
    bits = mpq.get_bits(q)
    assert len(mpq.candidate_layers(q)) == spec.candidate_count
    assert all(bits[n] == 8 for n in spec.fixed_8bit)
    assert not any(n.startswith("aux") for n in bits)


def test_pspnet_outputs_and_aux_head():
    model = networks.build("pspnet", num_classes=11, width=0.125)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    out, aux = model(x)
    assert out.shape == aux.shape == (2, 11, 64, 64)
    model.eval()
    assert model(x).shape == (2, 11, 64, 64)
    # output stride 8: layer4 keeps 1/8 of the input resolution
    assert model.backbone.features(x)[1].shape[-1] == 8
    assert [type(s[0]).__name__ for s in model.ppm.stages] == ["Conv2d"] * 4 and model.ppm.bins == (1, 2, 3, 6)


def test_unknown_network_and_bad_width():
    with pytest.raises(ValueError, match="unknown network 'vgg'.*resnet50"):
        networks.build("vgg", num_classes=10)
    with pytest.raises(ValueError, match="width"):
        networks.build("resnet50", num_classes=10, width=0)


# ---- starting weights (nothing is downloaded: fake files, a fake TORCH_HOME, a blocked urlopen) -----
@pytest.fixture(scope="module")
def resnet50_state():
    """A ResNet-50 state dict in torchvision's layout with distinct random values (a stand-in for
    ImageNet weights)."""
    gen = torch.Generator().manual_seed(0)
    state = torchvision.models.resnet50().state_dict()
    return {k: torch.randn(v.shape, generator=gen) if v.is_floating_point() else v for k, v in state.items()}


def assert_loaded(model, state, skip=()):
    own = model.state_dict()
    for k, v in state.items():
        if not k.startswith(skip):
            assert torch.equal(own[k], v), k


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """An empty TORCH_HOME, and no downloads: urlopen fails as it does offline."""
    home = tmp_path / "torch_home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # in case something called torch.hub.set_dir

    def offline(*args, **kwargs):
        raise urllib.error.URLError(socket.gaierror(-3, "Temporary failure in name resolution"))

    monkeypatch.setattr(torch.hub, "urlopen", offline)
    return home


@pytest.mark.parametrize("name,enum", [("resnet50", "ResNet50_Weights"), ("resnet101", "ResNet101_Weights")])
@pytest.mark.parametrize("tag", ["IMAGENET1K_V1", "IMAGENET1K_V2"])
def test_torchvision_weights_go_through_their_enum(name, enum, tag, monkeypatch):
    calls = []

    def fake_get_state_dict(self, *args, **kwargs):  # checks which weights were asked for, then fails fast
        calls.append((self, kwargs))
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torchvision.models.WeightsEnum, "get_state_dict", fake_get_state_dict)
    with pytest.raises(networks.WeightsUnavailableError, match="could not be downloaded"):
        networks.build(name, num_classes=1000, weights=tag)
    assert calls == [(getattr(torchvision.models, enum)[tag], {"progress": False})]


@pytest.mark.parametrize("num_classes", [1000, 10])
def test_torchvision_weights_load_from_the_hub_cache(num_classes, resnet50_state, torch_home):
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url
    cached = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    torch.save(resnet50_state, cached)
    model = networks.build("resnet50", num_classes=num_classes, weights="IMAGENET1K_V2")
    # the classifier loads where its shape fits and is new (random) otherwise
    assert_loaded(model, resnet50_state, skip=() if num_classes == 1000 else ("fc.",))
    assert model.fc.out_features == num_classes


@pytest.mark.parametrize("name,tag", [("resnet50", "IMAGENET1K_V1"), ("resnet101", "IMAGENET1K_V2"),
                                      ("pspnet", "IMAGENET1K_V2")])
def test_offline_without_a_cache_is_one_line_naming_the_url_and_the_folder(name, tag, torch_home):
    enum = torchvision.models.ResNet101_Weights if name == "resnet101" else torchvision.models.ResNet50_Weights
    url = enum[tag].url
    with pytest.raises(networks.WeightsUnavailableError) as info:
        networks.build(name, num_classes=11, weights=tag)
    msg = str(info.value)
    assert "\n" not in msg and "name resolution" in msg
    assert url in msg and str(torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]) in msg
    assert isinstance(info.value, FileNotFoundError) and info.value.__suppress_context__


def test_a_corrupt_cached_file_is_one_line(torch_home):
    url = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url
    cached = torch_home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"truncated")
    with pytest.raises(networks.WeightsUnavailableError, match=r"unreadable.*delete the file and download") as info:
        networks.build("resnet50", num_classes=10, weights="IMAGENET1K_V1")
    assert "\n" not in str(info.value) and url in str(info.value)


@pytest.mark.parametrize("suffix,wrap", [(".pth", "plain"), (".pt", "state_dict"), (".bin", "model+module")])
def test_local_files_plain_wrapped_or_ddp_prefixed_load(suffix, wrap, resnet50_state, tmp_path):
    saved = resnet50_state
    if "module" in wrap:
        saved = {f"module.{k}": v for k, v in saved.items()}
    if wrap != "plain":
        saved = {wrap.split("+")[0]: saved, "epoch": 90}
    path = tmp_path / f"ckpt{suffix}"
    torch.save(saved, path)
    model = networks.build("resnet50", num_classes=1000, weights=str(path))
    assert_loaded(model, resnet50_state)


def test_pspnet_backbone_loads_a_local_resnet50_file(resnet50_state, tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save({"state_dict": resnet50_state}, path)
    model = networks.build("pspnet", num_classes=11, weights=str(path))
    assert_loaded(model.backbone, resnet50_state, skip=("fc.",))
    assert not hasattr(model.backbone, "fc") and model.classifier.out_channels == 11


def test_missing_unreadable_or_mismatching_local_files_are_one_line(resnet50_state, tmp_path):
    missing = tmp_path / "nowhere" / "w.pth"
    with pytest.raises(networks.WeightsUnavailableError) as info:
        networks.build("resnet101", num_classes=10, weights=str(missing))
    assert str(info.value) == f"network.resnet101.weights: no weights file {missing}"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"^network.resnet50.weights: cannot read .*garbage.pt") as info:
        networks.build("resnet50", num_classes=10, weights=str(garbage))
    assert "\n" not in str(info.value)
    renamed = dict(resnet50_state)
    renamed["stem.weight"] = renamed.pop("conv1.weight")
    renamed["layer1.0.conv1.weight"] = renamed["layer1.0.conv1.weight"][:1]
    path = tmp_path / "renamed.pth"
    torch.save(renamed, path)
    with pytest.raises(ValueError) as info:
        networks.build("pspnet", num_classes=11, weights=str(path))
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("network.pspnet.weights:")
    assert "missing ['backbone.conv1.weight']" not in msg  # keys are the file's layout, not the model's
    assert "missing ['conv1.weight']" in msg and "unexpected ['stem.weight']" in msg
    assert "wrong shape ['layer1.0.conv1.weight']" in msg


def test_weights_need_width_one_and_a_known_name():
    with pytest.raises(ValueError, match=r"width 1.0") as info:
        networks.build("resnet50", num_classes=10, width=0.5, weights="IMAGENET1K_V2")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=r"network.resnet50.weights: unknown weights 'IMAGENET1K_V3'.*"
                                         r"IMAGENET1K_V1.*IMAGENET1K_V2.*\.pth") as info:
        networks.build("resnet50", num_classes=10, weights="IMAGENET1K_V3")
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="unknown weights"):
        networks.eval_resize("weights.txt", 224)


def test_eval_resize_matches_the_weights():
    assert networks.eval_resize("IMAGENET1K_V1", 224) == 256
    assert networks.eval_resize("IMAGENET1K_V2", 224) == 232
    assert networks.eval_resize(None, 224) == networks.eval_resize("local/w.pth", 224) == 256
    assert networks.eval_resize("IMAGENET1K_V1", 160) == 183  # 256 * 160 / 224 = 182.9
    assert networks.eval_resize("IMAGENET1K_V2", 160) == 166  # 232 * 160 / 224 = 165.7
    assert networks.eval_resize(None, 160) == 183
    for tag in networks.TORCHVISION_WEIGHTS:  # ResNet-101's presets are ResNet-50's
        preset = torchvision.models.ResNet101_Weights[tag].transforms()
        assert networks.eval_resize(tag, preset.crop_size[0]) == preset.resize_size[0]
