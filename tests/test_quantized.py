"""Model wrapping: quantize / set_bits / get_bits / candidate_layers."""
import pytest
import torch
import torchvision

import mpq
from mpq.quantized import NotQuantizedError, float_view, quant_layers
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


class _Shapes(torch.nn.Module):
    """One of every supported layer kind, and one conv used at two places under two names."""

    def __init__(self):
        super().__init__()
        self.c1 = torch.nn.Conv1d(3, 4, 3, padding=1)
        self.c3 = torch.nn.Conv3d(4, 4, (1, 3, 3), padding=(0, 1, 1))
        self.t1 = torch.nn.ConvTranspose1d(4, 4, 2, stride=2)
        self.t2 = torch.nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2)
        self.t3 = torch.nn.ConvTranspose3d(4, 4, (1, 2, 2), stride=(1, 2, 2))
        self.shared = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.again = self.shared  # the same module under a second name
        self.attn = torch.nn.MultiheadAttention(4, 2, batch_first=True)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):                                     # x: (N, 3, 8)
        y = self.t1(self.c1(x))                               # (N, 4, 16)
        y = self.c3(y.view(-1, 4, 1, 4, 4)).flatten(2, 3)     # (N, 4, 4, 4)
        y = self.again(self.shared(self.t2(y)))               # (N, 4, 8, 8), shared conv twice
        y = self.t3(y.unsqueeze(2)).flatten(2)                # (N, 4, 256)
        y = y.transpose(1, 2)                                 # (N, 256, 4) tokens
        y, _ = self.attn(y, y, y, need_weights=False)
        return self.fc(y.mean(1))


def test_every_supported_layer_kind_is_quantized_and_counted():
    from mpq import cost
    from mpq.quantizers import QUANT_LAYERS, QMultiheadAttention

    torch.manual_seed(0)
    model = _Shapes().eval()
    q = mpq.quantize(model, 4).eval()
    layers = quant_layers(q)
    assert list(layers) == ["c1", "c3", "t1", "t2", "t3", "shared", "attn", "attn.out_proj", "fc"]
    assert all(isinstance(m, QUANT_LAYERS) for m in layers.values())
    assert q.again is q.shared and isinstance(q.attn, QMultiheadAttention)  # sharing survives
    x = torch.randn(2, 3, 8)
    with torch.no_grad():
        assert torch.allclose(float_view(q)(x), model(x), atol=1e-5)  # quantizers off = float
        assert not torch.allclose(q(x), model(x), atol=1e-3)
    macs = cost.layer_macs(q, x)
    assert macs["shared"] == 2 * 4 * 64 * (4 * 9)              # run twice: counted twice
    assert macs["t2"] == 4 * 16 * (4 // 2) * 4                 # input elements x out/groups x kernel
    assert macs["c3"] == 4 * 16 * 4 * 9
    assert macs["attn"] == 3 * 256 * 4 * 4 and macs["attn.out_proj"] == 256 * 4 * 4
    assert cost.layer_macs(model, x) == macs                  # the float model counts the same
    assert cost.layer_params(q)["attn"] == 3 * 4 * 4
    q.train()
    q(x).sum().backward()
    assert q.attn.wq.step.grad is not None and q.attn.out_proj.wq.step.grad is not None


def test_unsupported_and_bypassed_layers_are_named():
    from mpq import cost
    from mpq.quantizers import UnsupportedLayerError

    with pytest.raises(UnsupportedLayerError, match="'rnn' is a LSTM"):
        mpq.quantize(_with_lstm(), 4)

    class Bypass(torch.nn.Module):  # reads its child's weight itself, like Swin's attention
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.nn.functional.linear(x, self.proj.weight)

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Bypass(), torch.nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"'1.proj' never runs .* '1' \(Bypass\)"):
        cost.layer_macs(mpq.quantize(model, 4), torch.randn(1, 4))


def _with_lstm():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    model.add_module("rnn", torch.nn.LSTM(2, 2))
    return model


def test_layers_not_run_in_eval_count_zero():
    from mpq import cost

    class Aux(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.head = torch.nn.Linear(4, 4), torch.nn.Linear(4, 2)
            self.aux_head = torch.nn.Sequential(torch.nn.Linear(4, 2))

        def forward(self, x):
            x = self.body(x)
            return (self.head(x), self.aux_head(x)) if self.training else self.head(x)

    macs = cost.layer_macs(mpq.quantize(Aux(), 4), torch.randn(1, 4))
    assert macs["aux_head.0"] == 0 and macs["head"] == 8
