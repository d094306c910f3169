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
``x`` and ``x_hat`` for the backward pass: this is the cheapest form we measured
(see ``benchmarks/quantized_step.py``).

Mixed precision: under ``torch.autocast`` an activation arrives in bf16/fp16
while the step is an fp32 parameter. The fake-quant math then runs in fp32 on
the (exactly) up-cast input, so the codes and the output ``q * s`` are those of
the fp32 quantizer and the step's gradient is summed in fp32; the output is
fp32 (the next conv/linear casts it as autocast does any fp32 input) and the
gradient to ``x`` comes back in ``x``'s dtype. A model converted to one dtype
as a whole (``model.bfloat16()``, step included) quantizes in that dtype.

No host synchronisation: a forward reads only Python values (bits, the
activation quantizer's ``initialized``/``signed`` flags are mirrored in plain
attributes), so it never waits for the GPU.
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
    "QConv1d",
    "QConv2d",
    "QConv3d",
    "QConvTranspose1d",
    "QConvTranspose2d",
    "QConvTranspose3d",
    "QLinear",
    "QMultiheadAttention",
    "QUANTIZED_TWIN",
    "QUANT_LAYERS",
    "UnsupportedLayerError",
]


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Return ``(Q_N, Q_P)``: the integer codes span ``[-Q_N, Q_P]``."""
    # 1 bit is left out: its signed LSQ grid {-1, 0} is degenerate.
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer in 2..16, got {bits!r}")
    if signed:
        return 2 ** (bits - 1), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


_HALF = (torch.float16, torch.bfloat16)


def _memory_order(t: Tensor) -> tuple[int, ...] | None:
    """The permutation under which a channels-last ``t`` is contiguous; None for any other layout.

    The backward's dot products pair the elements of several tensors: flattened
    in this order (a view, not a copy, when they share the layout), they pair
    the same elements as flattened in logical order.
    """
    if t.is_contiguous():
        return None
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return (0, 2, 3, 1)
    if t.dim() == 5 and t.is_contiguous(memory_format=torch.channels_last_3d):
        return (0, 2, 3, 4, 1)
    return None


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

    A bf16/fp16 ``x`` with a step of another dtype (autocast) is quantized in
    fp32: ``x`` is up-cast (exactly) for the math, the output is fp32 and the
    gradients come back in the dtypes of ``x`` and ``step``. The dot products
    of channels-last tensors run over them in memory order (no copies).
    """

    @staticmethod
    def forward(ctx, x: Tensor, step: Tensor, qn: int, qp: int, grad_scale: float) -> Tensor:
        r = step.reciprocal()
        if x.dtype in _HALF and step.dtype != x.dtype and r.dim() == 0:
            # a 0-dim step would not promote x: as a (1, ..., 1) tensor it does, so the product
            # is computed (and written) in fp32 in one pass, from the exactly up-cast x
            r = r.reshape((1,) * x.dim())
        out = (x * r).round_().clamp_(-qn, qp).mul_(step)
        ctx.save_for_backward(x, step, out)
        ctx.qn, ctx.qp, ctx.grad_scale = qn, qp, grad_scale
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, step, out = ctx.saved_tensors
        x_dtype = x.dtype
        x = x.to(out.dtype)  # the identity, unless a half-precision x was quantized in fp32
        grad = grad.to(out.dtype)
        inside = (x >= -ctx.qn * step) & (x <= ctx.qp * step)
        grad_x = grad * inside
        grad_step = None
        if ctx.needs_input_grad[1]:
            perm = _memory_order(out)
            g, o, gx, xx = (grad, out, grad_x, x) if perm is None else \
                (t.permute(perm) for t in (grad, out, grad_x, x))
            if step.numel() == 1:
                dot = (g.flatten() @ o.flatten()) - (gx.flatten() @ xx.flatten())
                grad_step = (dot * ctx.grad_scale / step).reshape(step.shape)
            else:  # per-channel: one dot product per channel (dim 0)
                dot = (g.flatten(1) * o.flatten(1)).sum(1) - (gx.flatten(1) * xx.flatten(1)).sum(1)
                grad_step = (dot * ctx.grad_scale).view_as(step) / step
            grad_step = grad_step.to(step.dtype)
        return grad_x.to(x_dtype) if ctx.needs_input_grad[0] else None, grad_step, None, None, None


def lsq_quantize(
    x: Tensor, step: Tensor, *, bits: int, signed: bool, grad_scale: float | None = None
) -> Tensor:
    """Fake-quantize ``x`` with step ``step`` to ``bits`` bits, with LSQ gradients.

    ``step`` is a scalar tensor or broadcasts against ``x`` (per-channel).
    ``grad_scale`` defaults to ``1/sqrt(x.numel() * Q_P)`` (the LSQ weight rule).
    Forward: ``round(clamp(x/step, -Q_N, Q_P)) * step``. A bf16/fp16 ``x`` with
    an fp32 step (autocast) is quantized in fp32 and gives an fp32 output (see
    ``_LSQ``).
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

    ``initialized`` and ``signed`` are buffers (they travel in checkpoints) with
    Python mirrors that ``forward`` reads instead, so that it never waits for
    the GPU: the mirrors are set by the calibration and by ``load_state_dict``
    (and copied by ``deepcopy``/pickling; ``.to()`` keeps them). Code that
    writes the buffers in place otherwise calls ``refresh_flags()``.
    """

    # (initialized, signed) mirrored from the buffers; None: not read yet (refreshed at first use)
    _flags: tuple[bool, bool] | None = None

    def __init__(self, bits: int | None):
        super().__init__()
        self.bits = bits
        self.step = nn.Parameter(torch.ones(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("signed", torch.zeros((), dtype=torch.bool))
        self.register_buffer("abs_mean", torch.zeros(()))
        self._flags = (False, False)

    def refresh_flags(self) -> tuple[bool, bool]:
        """Read the ``initialized`` and ``signed`` buffers into their Python mirrors (one host sync)."""
        if self.initialized.is_meta or self.signed.is_meta:  # no values yet: read at first use
            self._flags = None
            return False, False
        self._flags = (bool(self.initialized), bool(self.signed))
        return self._flags

    def _get_flags(self) -> tuple[bool, bool]:
        return self._flags if self._flags is not None else self.refresh_flags()

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self.refresh_flags()

    def init_step(self) -> None:
        """Re-initialise the step for the current bits from the stored ``mean|x|``."""
        initialized, signed = self._get_flags()
        if self.bits is None or not initialized:
            return
        with torch.no_grad():
            self.step.copy_(lsq_init_step(self.abs_mean, self.bits, signed).clamp_min(1e-8))

    @torch.no_grad()
    def _calibrate(self, x: Tensor) -> None:
        signed = bool((x < 0).any())  # the one host sync, at the first batch only
        self.signed.fill_(signed)
        self.abs_mean.copy_(x.float().abs().mean())  # .float(): the identity for fp32 x
        self.initialized.fill_(True)
        self._flags = (True, signed)
        self.init_step()

    def forward(self, x: Tensor) -> Tensor:
        if self.bits is None:
            return x
        initialized, signed = self._get_flags()
        if not initialized:
            self._calibrate(x)
            signed = self._flags[1]
        _, qp = qrange(self.bits, signed)
        n = x[0].numel() if x.dim() > 1 else x.numel()  # features of one sample
        return lsq_quantize(x, self.step, bits=self.bits, signed=signed,
                            grad_scale=1.0 / math.sqrt(n * qp))

    def extra_repr(self) -> str:
        return f"bits={self.bits}"


class _QuantLayer:
    """Mixin: a weighted layer whose weights and input activations share one precision."""

    wq: WeightQuantizer
    aq: ActQuantizer
    fixed: bool  # True for the layers kept at 8 bits (first conv, classifier)

    @property
    def bits(self) -> int | None:
        return self.wq.bits

    def act_quantizers(self) -> list[ActQuantizer]:
        """Every input-activation quantizer of the layer (one, except for attention)."""
        return [self.aq]

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
        self.wq.init_step(self.weight)
        for aq in self.act_quantizers():
            aq.bits = bits
            aq.init_step()

    def _attach(self, bits: int | None, per_channel: bool, fixed: bool) -> None:
        self.wq = WeightQuantizer(self.weight.shape, bits, per_channel=per_channel)
        self.aq = ActQuantizer(bits)
        self.wq.init_step(self.weight)
        self.fixed = fixed


class _QConvNd(_QuantLayer):
    """``nn.Conv{1,2,3}d`` with LSQ-quantized weights and input activations."""

    @classmethod
    def from_float(cls, conv: nn.Module, bits: int | None, *, per_channel: bool = False,
                   fixed: bool = False):
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                bias=conv.bias is not None, padding_mode=conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        return q._adopt(conv, bits, per_channel, fixed)

    def forward(self, x: Tensor) -> Tensor:
        return self._conv_forward(self.aq(x), self.wq(self.weight), self.bias)


class QConv1d(_QConvNd, nn.Conv1d):
    """``nn.Conv1d`` with LSQ-quantized weights and input activations."""


class QConv2d(_QConvNd, nn.Conv2d):
    """``nn.Conv2d`` with LSQ-quantized weights and input activations."""


class QConv3d(_QConvNd, nn.Conv3d):
    """``nn.Conv3d`` with LSQ-quantized weights and input activations."""


class _QConvTransposeNd(_QuantLayer):
    """``nn.ConvTranspose{1,2,3}d`` with LSQ-quantized weights and input activations.

    The weight is ``(in, out/groups, *kernel)``: a per-channel step is per input channel.
    """

    _functional = staticmethod(F.conv_transpose2d)

    @classmethod
    def from_float(cls, conv: nn.Module, bits: int | None, *, per_channel: bool = False,
                   fixed: bool = False):
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                padding=conv.padding, output_padding=conv.output_padding, groups=conv.groups,
                bias=conv.bias is not None, dilation=conv.dilation, padding_mode=conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)
        return q._adopt(conv, bits, per_channel, fixed)

    def forward(self, x: Tensor, output_size: list[int] | None = None) -> Tensor:
        dims = len(self.kernel_size)
        output_padding = self._output_padding(x, output_size, self.stride, self.padding,
                                              self.kernel_size, dims, self.dilation)
        return self._functional(self.aq(x), self.wq(self.weight), self.bias, self.stride, self.padding,
                                output_padding, self.groups, self.dilation)


class QConvTranspose1d(_QConvTransposeNd, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` with LSQ-quantized weights and input activations."""

    _functional = staticmethod(F.conv_transpose1d)


class QConvTranspose2d(_QConvTransposeNd, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with LSQ-quantized weights and input activations."""

    _functional = staticmethod(F.conv_transpose2d)


class QConvTranspose3d(_QConvTransposeNd, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` with LSQ-quantized weights and input activations."""

    _functional = staticmethod(F.conv_transpose3d)


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


class QMultiheadAttention(_QuantLayer, nn.MultiheadAttention):
    """``nn.MultiheadAttention`` whose input projection is a quantized layer.

    The decision unit named by the attention module is its packed query/key/value
    projection (``in_proj_weight``, with LSQ steps for the weights and for the
    query, key and value inputs: one shared input quantizer in self-attention,
    where the three are one tensor). The output projection ``out_proj`` is a
    ``QLinear`` of its own (a separate unit) that this module calls, so both
    projections are quantized; the attention products themselves (``QK^T``,
    ``softmax·V``) hold no weights and stay float, as in the paper's convs.
    """

    weight = property(lambda self: self.in_proj_weight)

    @classmethod
    def from_float(cls, mha: nn.MultiheadAttention, bits: int | None, *, per_channel: bool = False,
                   fixed: bool = False) -> "QMultiheadAttention":
        if not mha._qkv_same_embed_dim:
            raise UnsupportedLayerError(
                "nn.MultiheadAttention with kdim/vdim != embed_dim (separate q/k/v projection "
                "weights) is not supported")
        q = cls(mha.embed_dim, mha.num_heads, dropout=mha.dropout, bias=mha.in_proj_bias is not None,
                add_bias_kv=mha.bias_k is not None, add_zero_attn=mha.add_zero_attn,
                batch_first=mha.batch_first, device=mha.in_proj_weight.device,
                dtype=mha.in_proj_weight.dtype)
        q._adopt(mha, bits, per_channel, fixed)
        if not isinstance(q.out_proj, QLinear):  # the output projection: a unit of its own
            q.out_proj = QLinear.from_float(q.out_proj, bits, per_channel=per_channel, fixed=fixed)
        return q

    def _attach(self, bits: int | None, per_channel: bool, fixed: bool) -> None:
        super()._attach(bits, per_channel, fixed)
        self.aq_key = ActQuantizer(bits)
        self.aq_value = ActQuantizer(bits)

    def act_quantizers(self) -> list[ActQuantizer]:
        return [self.aq, self.aq_key, self.aq_value]

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Tensor | None = None,
                need_weights: bool = True, attn_mask: Tensor | None = None,
                average_attn_weights: bool = True, is_causal: bool = False):
        q = self.aq(query)
        k = q if key is query else self.aq_key(key)
        v = q if value is query else k if value is key else self.aq_value(value)
        if self.batch_first:
            q, k, v = (t.transpose(1, 0) for t in (q, k, v))
        identity = torch.eye(self.embed_dim, dtype=q.dtype, device=q.device)
        out, weights = F.multi_head_attention_forward(
            q, k, v, self.embed_dim, self.num_heads, self.wq(self.in_proj_weight), self.in_proj_bias,
            self.bias_k, self.bias_v, self.add_zero_attn, self.dropout, identity, None,
            training=self.training, key_padding_mask=key_padding_mask, need_weights=need_weights,
            attn_mask=attn_mask, average_attn_weights=average_attn_weights, is_causal=is_causal)
        out = self.out_proj(out)  # the heads' concatenation through the quantized output projection
        return (out.transpose(1, 0) if self.batch_first else out), weights


class UnsupportedLayerError(ValueError):
    """A weighted layer mpq cannot quantize: named in one line, never left float in silence."""


# float class -> quantized twin; a subclass of a float class maps like its base (the
# first match in this order wins, so the quantized classes themselves are never re-wrapped)
QUANTIZED_TWIN: dict[type, type] = {
    nn.Conv1d: QConv1d, nn.Conv2d: QConv2d, nn.Conv3d: QConv3d,
    nn.ConvTranspose1d: QConvTranspose1d, nn.ConvTranspose2d: QConvTranspose2d,
    nn.ConvTranspose3d: QConvTranspose3d,
    nn.Linear: QLinear, nn.MultiheadAttention: QMultiheadAttention,
}

QUANT_LAYERS = tuple(QUANTIZED_TWIN.values())
