"""Turn a float model into a quantized one and read or change its precisions.

The decision unit is one conv/linear layer, named by its module name in the
model (``layer3.4.conv2``). ``quantize`` replaces every ``nn.Conv{1,2,3}d``,
``nn.ConvTranspose{1,2,3}d``, ``nn.Linear`` and ``nn.MultiheadAttention`` by its
LSQ twin (``QConv2d``, ``QLinear``, ...: ``mpq.quantizers.QUANTIZED_TWIN``); the layers named in
``keep_8bit`` (by default the first and the last quantizable layer: the stem
conv and the classifier) stay at 8 bits and are not candidates.
"""
from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence

import torch
from torch import nn

from .quantizers import QUANT_LAYERS, QUANTIZED_TWIN, UnsupportedLayerError, qrange

__all__ = ["quantize", "set_bits", "get_bits", "candidate_layers", "quant_layers",
           "is_quantized", "calibrate", "float_view", "NotQuantizedError"]


class NotQuantizedError(ValueError):
    """Raised where a quantized model is required but a float one was given."""


# weighted layers mpq does not quantize: named in one line instead of left float in silence
_UNSUPPORTED = (nn.RNNBase, nn.RNNCellBase, nn.Bilinear, nn.modules.lazy.LazyModuleMixin)


def _twin(module: nn.Module) -> type | None:
    """The quantized class for ``module``'s type (subclasses map like their base), else None."""
    return next((q for f, q in QUANTIZED_TWIN.items() if isinstance(module, f)), None)


def _float_layers(model: nn.Module, skip: Sequence[str]) -> dict[str, list[str]]:
    """``{first name: [every name]}`` of the quantizable layers, in model order.

    A module registered under several names (shared weights) is one layer, named
    by its first name; every name is replaced by the same quantized module, so the
    sharing survives. Layers inside a quantizable module (an attention's output
    projection) are listed too: the quantized parent calls them.
    """
    def skipped(name: str) -> bool:
        return any(name == p or name.startswith(p + ".") for p in skip)
    groups: dict[int, list[str]] = {}
    first: dict[int, str] = {}
    for n, m in model.named_modules(remove_duplicate=False):
        if skipped(n):
            continue
        if isinstance(m, _UNSUPPORTED):
            raise UnsupportedLayerError(
                f"layer {n!r} is a {type(m).__name__}, which mpq cannot quantize (supported: "
                f"{', '.join(c.__name__ for c in QUANTIZED_TWIN)}); pass skip=[{n!r}] to keep it float")
        if _twin(m) is not None and not isinstance(m, QUANT_LAYERS):
            groups.setdefault(id(m), []).append(n)
            first.setdefault(id(m), n)
    return {first[k]: names for k, names in groups.items()}


def quantize(model: nn.Module, bits: int = 4, *, keep_8bit: Sequence[str] | None = None,
             skip: Sequence[str] = (), per_channel: bool = False) -> nn.Module:
    """Return a quantized deep copy of ``model`` (any torchvision-style model).

    Every ``Conv{1,2,3}d``, ``ConvTranspose{1,2,3}d``, ``Linear`` and
    ``MultiheadAttention`` (its input projection; its output projection is a
    ``Linear`` of its own) gets LSQ quantizers for its weights and input
    activations at ``bits``; those named in ``keep_8bit`` stay at 8 bits (None:
    the first and the last such layer). Module names under a prefix in ``skip``
    stay float (e.g. a training-only auxiliary head). A layer type mpq cannot
    quantize (recurrent, bilinear, lazy) raises ``UnsupportedLayerError``. Weight
    steps are set from the weights now; activation steps from the first batch the
    model sees (``calibrate``).
    """
    if is_quantized(model):
        raise ValueError("the model is already quantized: use mpq.set_bits to change its precisions")
    qrange(bits, True)
    groups = _float_layers(model, skip)
    names = list(groups)
    if not names:
        raise ValueError("the model has no Conv, ConvTranspose, Linear or MultiheadAttention layer to quantize")
    keep = [names[0], names[-1]] if keep_8bit is None else list(keep_8bit)
    unknown = [k for k in keep if k not in names]
    if unknown:
        raise ValueError(f"keep_8bit names layers that are not quantizable in this model: {unknown}")
    qmodel = copy.deepcopy(model)
    for name, paths in groups.items():
        fixed = name in keep
        layer = qmodel.get_submodule(name)
        if isinstance(layer, QUANT_LAYERS):  # made by its quantized parent (attention's out_proj)
            layer.fixed = fixed
            layer.set_bits(8 if fixed else bits)
            continue
        qlayer = _twin(layer).from_float(layer, 8 if fixed else bits, per_channel=per_channel, fixed=fixed)
        for path in paths:
            parent_name, _, child = path.rpartition(".")
            setattr(qmodel.get_submodule(parent_name) if parent_name else qmodel, child, qlayer)
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
        for aq in layer.act_quantizers():
            aq.bits = None
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
