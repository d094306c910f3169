"""LSQ quantizers (Esser et al., "Learned Step Size Quantization", ICLR 2020).

A value ``x`` is quantized with a learned step ``s`` to ``b`` bits as

    q = clamp(round(x / s), -Q_N, Q_P)          (the integer code)
    x_hat = q * s                               (what the network sees)

with ``Q_N = 2^(b-1), Q_P = 2^(b-1) - 1`` for signed values (weights, and
activations that can be negative) and ``Q_N = 0, Q_P = 2^b - 1`` for unsigned
values (activations after a ReLU).

Gradients (the LSQ paper, eq. 3 and 5):
- to ``x``: straight-through inside the clamp range, zero outside;
- to ``s``: ``round(v) - v`` inside the range (``v = x/s``), ``-Q_N`` below and
  ``Q_P`` above, times the gradient scale ``g = 1/sqrt(N * Q_P)``, where ``N`` is
  the number of weights in the tensor (per channel: in one channel) or the
  number of activation features of one sample.

The forward/backward pair is one ``torch.autograd.Function`` that keeps only
``v = x/s`` for the backward pass: this is the cheapest form we measured (see
``benchmarks/quantized_step.py``).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "qrange",
    "lsq_quantize",
    "lsq_codes",
    "lsq_init_step",
    "WeightQuantizer",
    "ActQuantizer",
    "QConv2d",
    "QLinear",
    "QUANT_LAYERS",
]


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Return ``(Q_N, Q_P)``: the integer codes span ``[-Q_N, Q_P]``."""
    # 1 bit is left out: its signed LSQ grid {-1, 0} is degenerate.
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 2..16, got {bits!r}")
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


class _LSQ(torch.autograd.Function):
    """Fake-quantize with LSQ gradients. ``step`` is a scalar or per-channel ``(C, 1, ...)``.

    Written for few, cheap passes over memory, which is what a fake-quant costs on
    a CPU (measured: ~5x faster than PyTorch's fused fake-quant kernels, whose
    mask computation we do not need). The forward is ``round(x * (1/s))`` clamped,
    times ``s``, in place on one buffer; the backward derives both gradients from
    ``x`` and the output ``x_hat`` (tensors the neighbouring layers keep alive
    anyway, so saving them costs no memory):

        inside = (-Q_N s <= x <= Q_P s)
        dL/dx  = g * inside
        dL/ds  = gs * sum(g * (q - v * inside)),  q = x_hat / s, v = x / s
               = gs / s * (<g, x_hat> - <dL/dx, x>)       (two dot products)
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float) -> Tensor:
        out = (x * step.reciprocal()).round_().clamp_(-qn, qp).mul_(step)
        ctx.save_for_backward(x, step, out)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, step, out = ctx.saved_tensors
        inside = (x >= -ctx.qn * step) & (x <= ctx.qp * step)
        grad_x = grad * inside
        grad_step = None
        if ctx.needs_input_grad[1]:
            if step.numel() == 1:
                dot = (grad.flatten() @ out.flatten()) - (grad_x.flatten() @ x.flatten())
                grad_step = (dot * ctx.grad_scale / step).reshape(step.shape)
            else:  # per-channel: one dot product per channel (dim 0)
                dot = (grad.flatten(1) * out.flatten(1)).sum(1) - (grad_x.flatten(1) * x.flatten(1)).sum(1)
                grad_step = (dot * ctx.grad_scale).view_as(step) / step
        return grad_x if ctx.needs_input_grad[0] else None, grad_step, None, None, None


def lsq_quantize(
    x: Tensor, step: Tensor, *, bits: int, signed: bool, grad_scale: float | None = None
) -> Tensor:
    """Fake-quantize ``x`` with step ``step`` to ``bits`` bits, with LSQ gradients.

    ``step`` is a scalar tensor or broadcasts against ``x`` (per-channel).
    ``grad_scale`` defaults to ``1/sqrt(x.numel() * Q_P)`` (the LSQ weight rule).
    Forward: ``round(clamp(x/step, -Q_N, Q_P)) * step``.
    """
    qn, qp = qrange(bits, signed)
    if grad_scale is None:
        grad_scale = 1.0 / math.sqrt(x.numel() * qp)
    return _LSQ.apply(x, step, qn, qp, float(grad_scale))


def lsq_codes(x: Tensor, step: Tensor, *, bits: int, signed: bool) -> Tensor:
    """The integer codes ``clamp(round(x/step), -Q_N, Q_P)`` as an int64 tensor."""
    qn, qp = qrange(bits, signed)
    return torch.clamp(torch.round(x * step.reciprocal()), -qn, qp).long()


def lsq_init_step(abs_mean: Tensor | float, bits: int, signed: bool) -> Tensor:
    """LSQ's step initialisation ``2 * mean(|v|) / sqrt(Q_P)``."""
    _, qp = qrange(bits, signed)
    return 2.0 * torch.as_tensor(abs_mean, dtype=torch.float32) / math.sqrt(qp)


class WeightQuantizer(nn.Module):
    """Signed LSQ quantizer for a weight tensor; per-tensor or per-output-channel step.

    ``bits=None`` disables quantization (float pass-through).
    """

    def __init__(self, weight_shape: torch.Size, bits: int | None, *, per_channel: bool = False):
        super().__init__()
        self.per_channel = per_channel
        shape = (weight_shape[0],) + (1,) * (len(weight_shape) - 1) if per_channel else ()
        self.step = nn.Parameter(torch.ones(shape))
        self.bits = bits
        # elements that share one step: the N of the LSQ gradient scale
        self._n = math.prod(weight_shape[1:]) if per_channel else math.prod(weight_shape)

    def init_step(self, weight: Tensor) -> None:
        """Set the step from the weights: ``2 * mean|w| / sqrt(Q_P)`` (per channel if so)."""
        if self.bits is None:
            return
        with torch.no_grad():
            w = weight.detach().abs()
            m = w.flatten(1).mean(1).view_as(self.step) if self.per_channel else w.mean()
            self.step.copy_(lsq_init_step(m, self.bits, True).clamp_min(1e-8))

    def forward(self, weight: Tensor) -> Tensor:
        if self.bits is None:
            return weight
        _, qp = qrange(self.bits, True)
        return lsq_quantize(weight, self.step, bits=self.bits, signed=True,
                            grad_scale=1.0 / math.sqrt(self._n * qp))

    def codes(self, weight: Tensor) -> Tensor:
        """Integer codes of ``weight`` at the current step and bits."""
        if self.bits is None:
            raise ValueError("this weight quantizer is disabled (bits=None): it has no codes")
        return lsq_codes(weight.detach(), self.step.detach(), bits=self.bits, signed=True)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, per_channel={self.per_channel}"


class ActQuantizer(nn.Module):
    """LSQ quantizer for the input activations of a layer (per-tensor step).

    The step and the sign are initialised from the first batch it sees:
    unsigned if that batch has no negative value (the input follows a ReLU),
    signed otherwise. ``mean|x|`` of that batch is kept, so that a later change
    of ``bits`` re-initialises the step without data.
    """

    def __init__(self, bits: int | None):
        super().__init__()
        self.bits = bits
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("abs_mean", torch.zeros(()))

    def init_step(self) -> None:
        """Re-initialise the step for the current bits from the stored ``mean|x|``."""
        if self.bits is None or not bool(self.initialized):
            return
        with torch.no_grad():
            self.step.copy_(lsq_init_step(self.abs_mean, self.bits, bool(self.signed)).clamp_min(1e-8))

    @torch.no_grad()
    def _calibrate(self, x: Tensor) -> None:
        self.signed.fill_(bool((x < 0).any()))
        self.abs_mean.copy_(x.abs().mean())
        self.initialized.fill_(True)
        self.init_step()

    def forward(self, x: Tensor) -> Tensor:
        if self.bits is None:
            return x
        if not bool(self.initialized):
            self._calibrate(x)
        signed = bool(self.signed)
        _, qp = qrange(self.bits, signed)
        n = x[0].numel() if x.dim() > 1 else x.numel()  # features of one sample
        return lsq_quantize(x, self.step, bits=self.bits, signed=signed,
                            grad_scale=1.0 / math.sqrt(n * qp))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class _QuantLayer:
    """Mixin: a conv/linear whose weights and input activations share one precision."""

    wq: WeightQuantizer
    aq: ActQuantizer
    fixed: bool  # True for the layers kept at 8 bits (first conv, classifier)

    @property
    def bits(self) -> int | None:
        return self.wq.bits

    def _adopt(self, module: nn.Module, bits: int | None, per_channel: bool, fixed: bool):
        """Take ``module``'s weights and mode, then attach the quantizers; return self."""
        self.load_state_dict(module.state_dict())
        self.train(module.training)
        self._attach(bits, per_channel, fixed)
        return self

    def set_bits(self, bits: int | None) -> None:
        """Change the precision and re-initialise both steps (LSQ init)."""
        if bits is not None:
            qrange(bits, True)  # validates
        if bits == self.wq.bits:
            return
        self.wq.bits = bits
        self.aq.bits = bits
        self.wq.init_step(self.weight)
        self.aq.init_step()

    def _attach(self, bits: int | None, per_channel: bool, fixed: bool) -> None:
        self.wq = WeightQuantizer(self.weight.shape, bits, per_channel=per_channel)
        self.aq = ActQuantizer(bits)
        self.wq.init_step(self.weight)
        self.fixed = fixed


class QConv2d(_QuantLayer, nn.Conv2d):
    """``nn.Conv2d`` with LSQ-quantized weights and input activations."""

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int | None, *, per_channel: bool = False,
                   fixed: bool = False) -> "QConv2d":
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        return q._adopt(conv, bits, per_channel, fixed)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.aq(x), self.wq(self.weight), self.bias)


class QLinear(_QuantLayer, nn.Linear):
    """``nn.Linear`` with LSQ-quantized weights and input activations."""

    @classmethod
    def from_float(cls, linear: nn.Linear, bits: int | None, *, per_channel: bool = False,
                   fixed: bool = False) -> "QLinear":
        q = cls(linear.in_features, linear.out_features, bias=linear.bias is not None,
                device=linear.weight.device, dtype=linear.weight.dtype)
        return q._adopt(linear, bits, per_channel, fixed)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.aq(x), self.wq(self.weight), self.bias)


QUANT_LAYERS = (QConv2d, QLinear)
