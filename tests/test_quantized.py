"""Model wrapping: quantize / set_bits / get_bits / candidate_layers."""
import pytest
import torch
import torchvision

import mpq
from mpq.quantized import NotQuantizedError, quant_layers
from mpq.quantizers import QConv2d, QLinear


def small_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3), torch.nn.ReLU(),
        torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(4, 3))


def test_quantize_returns_copy_with_first_and_last_at_8_bits():
    model = small_cnn()
    q = mpq.quantize(model, 4)
    assert not any(isinstance(m, (QConv2d, QLinear)) for m in model.modules())  # original untouched
    assert mpq.get_bits(q) == {"0": 8, "2": 4, "4": 4, "8": 8}
    assert mpq.candidate_layers(q) == ["2", "4"]
    x = torch.rand(2, 3, 8, 8)
    assert q(x).shape == (2, 3)


def test_quantize_torchvision_model_by_module_names():
    q = mpq.quantize(torchvision.models.resnet18(num_classes=10), 4)
    bits = mpq.get_bits(q)
    assert bits["conv1"] == 8 and bits["fc"] == 8 and bits["layer1.0.conv1"] == 4
    assert len(bits) == 21  # 20 convs (incl. 3 downsample) + fc


def test_set_bits_changes_in_place_and_reinitialises_steps():
    torch.manual_seed(0)
    q = mpq.quantize(small_cnn(), 4)
    q(torch.rand(4, 3, 8, 8))  # calibrates activation steps
    layer = quant_layers(q)["2"]
    w_step, a_step = layer.wq.step.item(), layer.aq.step.item()
    assert mpq.set_bits(q, {"2": 2}) is q
    assert mpq.get_bits(q)["2"] == 2 and mpq.get_bits(q)["4"] == 4
    assert layer.wq.step.item() != w_step and layer.aq.step.item() > a_step
    mpq.set_bits(q, 2)  # one int: every candidate
    assert [mpq.get_bits(q)[n] for n in mpq.candidate_layers(q)] == [2, 2]


def test_set_bits_errors():
    q = mpq.quantize(small_cnn(), 4)
    with pytest.raises(KeyError, match="no quantized layer named 'nope'"):
        mpq.set_bits(q, {"nope": 2})
    with pytest.raises(ValueError, match="kept at 8 bits"):
        mpq.set_bits(q, {"0": 4})
    mpq.set_bits(q, {"0": 6}, allow_fixed=True)
    assert mpq.get_bits(q)["0"] == 6
    with pytest.raises(ValueError, match="bits must be"):
        mpq.set_bits(q, {"2": 1})


def test_float_model_is_refused():
    with pytest.raises(NotQuantizedError, match="mpq.quantize"):
        mpq.get_bits(small_cnn())
    with pytest.raises(ValueError, match="already quantized"):
        mpq.quantize(mpq.quantize(small_cnn()))


def test_keep_and_skip():
    q = mpq.quantize(small_cnn(), 4, keep_8bit=["4"], skip=["8"])
    assert mpq.get_bits(q) == {"0": 4, "2": 4, "4": 8}
    assert isinstance(q[8], torch.nn.Linear) and not isinstance(q[8], QLinear)
    with pytest.raises(ValueError, match="not quantizable"):
        mpq.quantize(small_cnn(), keep_8bit=["missing"])


def test_quantized_state_dict_round_trip():
    torch.manual_seed(0)
    q = mpq.quantize(small_cnn(), 4)
    x = torch.rand(3, 3, 8, 8)
    mpq.calibrate(q, [x])
    mpq.set_bits(q, {"2": 2})
    q2 = mpq.quantize(small_cnn(), 4)
    mpq.set_bits(q2, mpq.get_bits(q), allow_fixed=True)
    q2.load_state_dict(q.state_dict())
    q.eval(), q2.eval()
    assert torch.equal(q(x), q2(x))
