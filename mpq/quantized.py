"""Turn a float model into a quantized one and read or change its precisions.

The decision unit is one conv/linear layer, named by its module name in the
model (``layer3.4.conv2``). ``quantize`` replaces every ``nn.Conv2d`` and
``nn.Linear`` by its LSQ twin (``QConv2d``/``QLinear``); the layers named in
``keep_8bit`` (by default the first and the last quantizable layer: the stem
conv and the classifier) stay at 8 bits and are not candidates.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .quantizers import QUANT_LAYERS, QConv2d, QLinear, qrange

__all__ = ["quantize", "set_bits", "get_bits", "candidate_layers", "quant_layers",
           "is_quantized", "calibrate", "float_view", "NotQuantizedError"]


class NotQuantizedError(ValueError):
    """Raised where a quantized model is required but a float one was given."""


def _float_layers(model: nn.Module, skip: Sequence[str]) -> list[str]:
    def skipped(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in skip)
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and not isinstance(m, QUANT_LAYERS) and not skipped(n)]


def quantize(model: nn.Module, bits: int = 4, *, keep_8bit: Sequence[str] | None = None,
             skip: Sequence[str] = (), per_channel: bool = False) -> nn.Module:
    """Return a quantized deep copy of ``model`` (any torchvision-style model).

    Every ``Conv2d``/``Linear`` gets LSQ quantizers for its weights and input
    activations at ``bits``; those named in ``keep_8bit`` stay at 8 bits (None:
    the first and the last such layer). Module names under a prefix in ``skip``
    stay float (e.g. a training-only auxiliary head). Weight steps are set from
    the weights now; activation steps from the first batch the model sees
    (``calibrate``).
    """
    if is_quantized(model):
        raise ValueError("the model is already quantized: use mpq.set_bits to change its precisions")
    qrange(bits, True)
    names = _float_layers(model, skip)
    if not names:
        raise ValueError("the model has no Conv2d or Linear layer to quantize")
    keep = [names[0], names[-1]] if keep_8bit is None else list(keep_8bit)
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise ValueError(f"keep_8bit names layers that are not quantizable in this model: {unknown}")
    qmodel = copy.deepcopy(model)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        layer = getattr(parent, child)
        fixed = name in keep
        cls = QConv2d if isinstance(layer, nn.Conv2d) else QLinear
        setattr(parent, child, cls.from_float(layer, 8 if fixed else bits, per_channel=per_channel,
                                              fixed=fixed))
    return qmodel


def quant_layers(qmodel: nn.Module) -> dict[str, nn.Module]:
    """All quantized layers by module name, in model order."""
    return {n: m for n, m in qmodel.named_modules() if isinstance(m, QUANT_LAYERS)}


def is_quantized(model: nn.Module) -> bool:
    return any(isinstance(m, QUANT_LAYERS) for m in model.modules())


def _require_quantized(qmodel: nn.Module) -> dict[str, nn.Module]:
    layers = quant_layers(qmodel)
    if not layers:
        raise NotQuantizedError("the model is not quantized: wrap it with mpq.quantize(model) first")
    return layers


def candidate_layers(qmodel: nn.Module) -> list[str]:
    """Names of the layers whose precision is chosen (all quantized layers not kept at 8 bits)."""
    return [n for n, m in _require_quantized(qmodel).items() if not m.fixed]


def get_bits(qmodel: nn.Module) -> dict[str, int | None]:
    """Precision of every quantized layer, fixed 8-bit layers included."""
    return {n: m.bits for n, m in _require_quantized(qmodel).items()}


def set_bits(qmodel: nn.Module, bits: Mapping[str, int] | int, *, allow_fixed: bool = False) -> nn.Module:
    """Change layer precisions in place; re-initialise the steps of changed layers (LSQ init).

    ``bits`` maps layer names to bits, or is one int for every candidate layer.
    Layers kept at 8 bits cannot be changed unless ``allow_fixed``.
    """
    layers = _require_quantized(qmodel)
    if isinstance(bits, int):
        bits = {n: bits for n, m in layers.items() if not m.fixed}
    unknown = [n for n in bits if n not in layers]
    if unknown:
        raise KeyError(f"no quantized layer named {unknown[0]!r} in this model "
                       f"({len(unknown)} unknown names); see mpq.candidate_layers(model)")
    for name, b in bits.items():
        layer = layers[name]
        if layer.fixed and b != layer.bits and not allow_fixed:
            raise ValueError(f"layer {name!r} is kept at {layer.bits} bits (first/last layer); "
                             "pass allow_fixed=True to change it")
        layer.set_bits(int(b))
    return qmodel


def float_view(qmodel: nn.Module) -> nn.Module:
    """A deep copy of a quantized model with every quantizer disabled (its latent float weights)."""
    fmodel = copy.deepcopy(qmodel)
    for layer in _require_quantized(fmodel).values():
        layer.wq.bits = None
        layer.aq.bits = None
    return fmodel


@torch.no_grad()
def calibrate(qmodel: nn.Module, batches: Iterable[torch.Tensor]) -> None:
    """Initialise activation steps from data: run the model once on the first batch."""
    _require_quantized(qmodel)
    was_training = qmodel.training
    qmodel.eval()
    for x in batches:
        qmodel(x)
        break
    qmodel.train(was_training)
