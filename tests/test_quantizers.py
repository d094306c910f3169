"""LSQ quantizer invariants: grid, clamp ranges, idempotence, gradients, autocast, no host syncs."""
import copy
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


# ---- the arithmetic of the fp32 path is that of the original implementation -----------------------------------

class _ReferenceLSQ(torch.autograd.Function):
    """The LSQ Function as first written (fp32, contiguous): the fp32 path must match it bit for bit."""

    @staticmethod
    def forward(ctx, x, step, qn, qp, grad_scale):
        out = (x * step.reciprocal()).round_().clamp_(-qn, qp).mul_(step)
        ctx.save_for_backward(x, step, out)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return out

    @staticmethod
    def backward(ctx, grad):
        x, step, out = ctx.saved_tensors
        inside = (x >= -ctx.qn * step) & (x <= ctx.qp * step)
        grad_x = grad * inside
        if step.numel() == 1:
            dot = (grad.flatten() @ out.flatten()) - (grad_x.flatten() @ x.flatten())
            grad_step = (dot * ctx.grad_scale / step).reshape(step.shape)
        else:
            dot = (grad.flatten(1) * out.flatten(1)).sum(1) - (grad_x.flatten(1) * x.flatten(1)).sum(1)
            grad_step = (dot * ctx.grad_scale).view_as(step) / step
        return grad_x, grad_step, None, None, None


@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("signed", [True, False])
def test_fp32_path_is_bit_identical_to_the_reference(per_channel, signed):
    torch.manual_seed(3)
    x = torch.randn(6, 5, 7, 7) * 1.5
    g = torch.randn(6, 5, 7, 7)
    step0 = (torch.rand(6, 1, 1, 1) + 0.1) if per_channel else torch.tensor(0.23)
    results = []
    for fn in (lambda x, s: lsq_quantize(x, s, bits=3, signed=signed, grad_scale=0.07),
               lambda x, s: _ReferenceLSQ.apply(x, s, *qrange(3, signed), 0.07)):
        xi, si = x.clone().requires_grad_(), step0.clone().requires_grad_()
        y = fn(xi, si)
        (y * g).sum().backward()
        results.append((y.detach(), xi.grad, si.grad))
    for a, b in zip(*results):
        assert a.dtype == torch.float32 and torch.equal(a, b)


# ---- autocast (bf16) ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_bf16_input_under_autocast_is_quantized_in_fp32(bits, signed, per_channel):
    torch.manual_seed(bits)
    x16 = (torch.randn(4, 3, 5, 5) * 2 ** (bits - 2)).bfloat16()
    step0 = (torch.rand(4, 1, 1, 1) * 0.3 + 0.2) if per_channel else torch.tensor(0.37)
    g = torch.randn(4, 3, 5, 5)
    x, step = x16.clone().requires_grad_(), step0.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lsq_quantize(x, step, bits=bits, signed=signed, grad_scale=0.05)
    (y * g).sum().backward()
    # the fp32 quantizer on the same (exactly up-cast) input
    x32, step32 = x16.float().requires_grad_(), step0.clone().requires_grad_()
    y32 = lsq_quantize(x32, step32, bits=bits, signed=signed, grad_scale=0.05)
    (y32 * g).sum().backward()
    assert y.dtype == torch.float32 and torch.equal(y, y32)
    # exactly on the grid q * s
    q = lsq_codes(x16.float(), step0, bits=bits, signed=signed)
    assert torch.equal(y.detach(), q.float() * step0)
    # gradients in the inputs' dtypes, finite, and those of the fp32 quantizer
    assert x.grad.dtype == torch.bfloat16 and step.grad.dtype == torch.float32
    assert torch.isfinite(x.grad.float()).all() and torch.isfinite(step.grad).all()
    assert torch.equal(x.grad, x32.grad.bfloat16())
    assert torch.allclose(step.grad, step32.grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("layer", ["conv", "linear"])
def test_quant_layer_under_bf16_autocast_is_close_to_fp32(layer):
    torch.manual_seed(0)
    if layer == "conv":
        f, x = torch.nn.Conv2d(8, 6, 3, padding=1), torch.relu(torch.randn(4, 8, 9, 9))
        q = QConv2d.from_float(f, 4)
    else:
        f, x = torch.nn.Linear(16, 5), torch.randn(4, 16)
        q = QLinear.from_float(f, 4)
    q(x)  # calibrate in fp32, as mpq.calibrate does
    q16 = copy.deepcopy(q)
    y32 = q(x)
    y32.square().sum().backward()
    # bf16 activations from the layer before, as under autocast
    x16 = x.bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y16 = q16(x16)
    y16.float().square().sum().backward()
    assert y16.dtype == torch.bfloat16 and torch.allclose(y16.float(), y32, rtol=0.02, atol=0.05)
    assert x16.grad.dtype == torch.bfloat16
    for name, p in q16.named_parameters():
        p32 = dict(q.named_parameters())[name]
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
        assert torch.allclose(p.grad, p32.grad, rtol=0.05, atol=0.05 * p32.grad.abs().max().item()), name


def test_channels_last_input_gives_the_same_values_and_close_gradients():
    torch.manual_seed(4)
    x = torch.randn(3, 8, 5, 5)
    g = torch.randn(3, 8, 5, 5)
    grads = []
    for fmt in (torch.contiguous_format, torch.channels_last):
        xi = x.clone(memory_format=fmt).requires_grad_()
        s = torch.tensor(0.3, requires_grad=True)
        y = lsq_quantize(xi, s, bits=4, signed=True)
        assert y.is_contiguous(memory_format=fmt)
        (y * g.contiguous(memory_format=fmt)).sum().backward()
        grads.append((y.detach(), xi.grad, s.grad))
    (y0, gx0, gs0), (y1, gx1, gs1) = grads
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)
    assert torch.allclose(gs0, gs1, rtol=1e-5, atol=1e-6)  # the same sum in another order


# ---- no host synchronisation in forward --------------------------------------------------------------------

def _calibrated_layers():
    torch.manual_seed(0)
    conv = QConv2d.from_float(torch.nn.Conv2d(3, 4, 3), 4, per_channel=True)
    lin = QLinear.from_float(torch.nn.Linear(5, 2), 4)
    conv(torch.rand(2, 3, 6, 6))
    lin(torch.randn(2, 5))
    return conv, lin


def test_forward_and_backward_read_no_tensor_value(monkeypatch):
    conv, lin = _calibrated_layers()

    def fail(self, *args, **kwargs):
        raise AssertionError("a tensor value was read on the host (a sync on a GPU)")
    for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, fail)
    y = conv(torch.rand(2, 3, 6, 6)).sum() + lin(torch.randn(2, 5)).sum()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = y + conv(torch.rand(2, 3, 6, 6)).float().sum()
    y.backward()
    monkeypatch.undo()
    assert conv.aq.step.grad is not None and lin.aq.step.grad is not None


def test_act_quantizer_flags_follow_the_buffers():
    x = torch.rand(4, 6)
    aq = ActQuantizer(4)
    assert aq._flags == (False, False)
    aq(x)
    assert aq._flags == (True, False)
    assert list(aq.state_dict()) == ["step", "initialized", "signed", "abs_mean"]  # checkpoints unchanged
    signed = ActQuantizer(4)
    signed(torch.randn(4, 6))
    assert signed._flags == (True, True)
    # load_state_dict: the flags of the loaded state, and no re-calibration on the next batch
    fresh = ActQuantizer(4)
    fresh.load_state_dict(signed.state_dict())
    assert fresh._flags == (True, True)
    fresh(torch.rand(4, 6) * 100)
    assert torch.equal(fresh.abs_mean, signed.abs_mean) and torch.equal(fresh.step, signed.step)
    back = ActQuantizer(4)
    signed.load_state_dict(back.state_dict())  # an uncalibrated state: calibrates again
    assert signed._flags == (False, False)
    # deepcopy and .to() keep them; a module without the mirror (pickled before it existed) reads the buffers
    assert copy.deepcopy(aq)._flags == (True, False) and aq.to(torch.float64)._flags == (True, False)
    del aq.__dict__["_flags"]
    assert aq._flags is None
    aq(x.double())
    assert aq._flags == (True, False)
