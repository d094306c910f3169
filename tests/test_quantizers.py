"""LSQ quantizer invariants: grid, clamp ranges, idempotence, gradients."""
import math

import pytest
import torch

from mpq.quantizers import (ActQuantizer, QConv2d, QLinear, WeightQuantizer, lsq_codes,
                            lsq_init_step, lsq_quantize, qrange)

BITS = [2, 3, 4, 8]


@pytest.mark.parametrize("bits", BITS)
def test_qrange(bits):
    assert qrange(bits, True) == (2 ** (bits - 1), 2 ** (bits - 1) - 1)
    assert qrange(bits, False) == (0, 2**bits - 1)


@pytest.mark.parametrize("bad", [0, 1, 17, 4.0, True, "4"])
def test_qrange_rejects_bad_bits(bad):
    with pytest.raises(ValueError, match="bits must be"):
        qrange(bad, True)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("signed", [True, False])
def test_values_on_grid_and_clamped(bits, signed):
    torch.manual_seed(bits)
    step = torch.tensor(0.37)
    x = torch.randn(1000) * 2 ** bits * 0.37  # wide enough to reach both ends of the range
    y = lsq_quantize(x, step, bits=bits, signed=signed)
    codes = y / step
    assert torch.allclose(codes, codes.round(), atol=1e-5)  # on the grid
    qn, qp = qrange(bits, signed)
    assert codes.min() >= -qn - 1e-5 and codes.max() <= qp + 1e-5  # clamp range
    # both ends of the range are reached by such wide inputs
    assert codes.max().round() == qp and codes.min().round() == -qn


@pytest.mark.parametrize("bits", BITS)
def test_idempotent(bits):
    x = torch.randn(500)
    step = torch.tensor(0.1)
    y = lsq_quantize(x, step, bits=bits, signed=True)
    assert torch.equal(lsq_quantize(y, step, bits=bits, signed=True), y)


def test_codes_match_forward():
    x = torch.randn(300)
    step = torch.tensor(0.2)
    codes = lsq_codes(x, step, bits=4, signed=True)
    assert codes.dtype == torch.int64
    assert torch.allclose(codes.float() * step, lsq_quantize(x, step, bits=4, signed=True))


@pytest.mark.parametrize("bits", [4, 8])
def test_agrees_with_torch_fake_quantize(bits):
    torch.manual_seed(0)
    x = torch.randn(2000) * 2
    scale = 0.05
    qn, qp = qrange(bits, True)
    ref = torch.fake_quantize_per_tensor_affine(x, scale, 0, -qn, qp)
    ours = lsq_quantize(x, torch.tensor(scale), bits=bits, signed=True)
    assert torch.allclose(ours, ref, atol=1e-6)
    # unsigned grid against torch's [0, 2^b - 1]
    ref_u = torch.fake_quantize_per_tensor_affine(x.abs(), scale, 0, 0, 2**bits - 1)
    assert torch.allclose(lsq_quantize(x.abs(), torch.tensor(scale), bits=bits, signed=False), ref_u, atol=1e-6)


def test_ste_gradient_to_input():
    step = torch.tensor(0.5)
    x = torch.tensor([-10.0, -4.0, -0.3, 0.0, 0.7, 3.5, 3.6, 10.0], requires_grad=True)
    y = lsq_quantize(x, step, bits=4, signed=True)  # range [-8, 7] * 0.5 = [-4, 3.5]
    y.sum().backward()
    expected = torch.tensor([0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0])
    assert torch.equal(x.grad, expected)


@pytest.mark.parametrize("signed", [True, False])
def test_step_gradient_matches_lsq_formula(signed):
    torch.manual_seed(1)
    bits = 3
    qn, qp = qrange(bits, signed)
    x = torch.randn(64) * 2
    g = torch.randn(64)
    step = torch.tensor(0.4, requires_grad=True)
    scale = 0.123
    (lsq_quantize(x, step, bits=bits, signed=signed, grad_scale=scale) * g).sum().backward()
    v = x / 0.4
    d = torch.where(v <= -qn, torch.tensor(-float(qn)),
                    torch.where(v >= qp, torch.tensor(float(qp)), torch.round(v) - v))
    assert torch.allclose(step.grad, (g * d).sum() * scale, rtol=1e-5, atol=1e-6)


def test_default_grad_scale_is_lsq_rule():
    x = torch.randn(100)
    g = torch.randn(100)
    s1 = torch.tensor(0.3, requires_grad=True)
    s2 = torch.tensor(0.3, requires_grad=True)
    (lsq_quantize(x, s1, bits=4, signed=True) * g).sum().backward()
    (lsq_quantize(x, s2, bits=4, signed=True, grad_scale=1 / math.sqrt(100 * 7)) * g).sum().backward()
    assert torch.allclose(s1.grad, s2.grad)


def test_per_channel_step_gradient_is_per_channel_sum():
    torch.manual_seed(2)
    w = torch.randn(3, 4, 2, 2)
    steps = torch.tensor([0.1, 0.2, 0.3]).view(3, 1, 1, 1).requires_grad_()
    lsq_quantize(w, steps, bits=4, signed=True, grad_scale=1.0).sum().backward()
    for c in range(3):
        s = steps[c].detach().clone().requires_grad_()
        lsq_quantize(w[c], s, bits=4, signed=True, grad_scale=1.0).sum().backward()
        assert torch.allclose(steps.grad[c], s.grad, atol=1e-6)


def test_init_step_rule():
    assert float(lsq_init_step(1.0, 4, True)) == pytest.approx(2 / math.sqrt(7))
    assert float(lsq_init_step(0.5, 2, False)) == pytest.approx(1 / math.sqrt(3))


def test_weight_quantizer_init_and_disable():
    w = torch.randn(8, 4, 3, 3)
    wq = WeightQuantizer(w.shape, 4)
    wq.init_step(w)
    assert wq.step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-5)
    pc = WeightQuantizer(w.shape, 4, per_channel=True)
    pc.init_step(w)
    assert pc.step.shape == (8, 1, 1, 1)
    off = WeightQuantizer(w.shape, None)
    assert off(w) is w
    with pytest.raises(ValueError):
        off.codes(w)


def test_act_quantizer_sign_and_reinit():
    aq = ActQuantizer(4)
    x = torch.rand(16, 8)  # non-negative: as after a ReLU
    y = aq(x)
    assert not bool(aq.signed) and bool(aq.initialized)
    assert float(aq.abs_mean) == pytest.approx(x.abs().mean().item())
    assert (y >= 0).all()
    step4 = aq.step.item()
    aq.bits = 2
    aq.init_step()  # re-initialised from the stored mean|x|, no data needed
    assert float(aq.step) == pytest.approx(step4 * math.sqrt(15) / math.sqrt(3), rel=1e-5)
    signed = ActQuantizer(4)
    signed(torch.randn(16, 8))
    assert bool(signed.signed)


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_quant_layers_forward_backward_and_set_bits(layer):
    torch.manual_seed(0)
    if layer == "conv":
        f = torch.nn.Conv2d(4, 6, 3, padding=1)
        x = torch.rand(2, 4, 5, 5)
        q = QConv2d.from_float(f, 4)
    else:
        f = torch.nn.Linear(5, 3)
        x = torch.rand(2, 5)
        q = QLinear.from_float(f, 4)
    assert torch.equal(q.weight, f.weight) and q.bits == 4 and not q.fixed
    y = q(x)
    assert y.shape == f(x).shape
    assert (y - f(x)).abs().max() < 0.5  # 4 bits is close to float
    y.sum().backward()
    assert q.wq.step.grad is not None and q.aq.step.grad is not None and q.weight.grad is not None
    old = float(q.wq.step)
    q.set_bits(2)
    assert q.bits == 2 and q.aq.bits == 2
    assert float(q.wq.step) == pytest.approx(2 * f.weight.abs().mean().item(), rel=1e-5)
    assert float(q.wq.step) > old
    with pytest.raises(ValueError):
        q.set_bits(1)
