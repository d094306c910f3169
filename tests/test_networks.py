"""Networks registry: layer graphs, widths, torchvision compatibility."""
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
    with pytest.raises(ValueError, match="width 1.0"):
        networks.build("resnet50", num_classes=10, width=0.5, pretrained=True)
