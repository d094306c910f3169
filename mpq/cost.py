"""Cost model: per-layer MACs and parameters, and the cost of a bit assignment.

Three costs (defined in docs/methods.md), all "lower is better" and all additive over
layers, so the allocator can treat them alike:

- ``throughput``: the time of a layer is proportional to ``MACs / speedup(b)``
  with ``speedup = {8: 1, 4: 2, 2: 4}`` (integer kernels twice as fast per halving
  of the precision; float counts as 8 bits' half, i.e. speed-up 0.5). The
  *relative throughput* of a mix is ``time(all candidates at 4 bits) / time(mix)``,
  so all-4-bit = 1.0x and all-2-bit is close to 2x (the 8-bit first and last
  layers keep it a little under 2x).
- ``bops``: ``MACs * b_w * b_a`` (weights and input activations share ``b``).
- ``size``: ``parameters * b_w`` in bits.

A measured per-layer latency table ``{layer: {bits: seconds}}`` may replace the
``throughput`` model (``latency_table=``).
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd, _ConvTransposeNd

from .quantizers import QUANT_LAYERS as _Quantized
from .quantizers import UnsupportedLayerError

__all__ = ["COSTS", "SPEEDUP", "LAYER_TYPES", "layer_macs", "layer_params", "layer_costs", "total_cost",
           "relative", "summary"]

COSTS = ("throughput", "bops", "size")
# the layer types with a cost (the float classes; their quantized twins subclass them)
LAYER_TYPES = (_ConvNd, nn.Linear, nn.MultiheadAttention)
SPEEDUP = {32: 0.5, 16: 0.5, 8: 1.0, 4: 2.0, 2: 4.0}


def _layers(model: nn.Module) -> dict[str, nn.Module]:
    """The weighted layers the cost counts (float or quantized), by first module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LAYER_TYPES)}


def _weight(module: nn.Module) -> torch.Tensor:
    return module.in_proj_weight if isinstance(module, nn.MultiheadAttention) else module.weight


def _macs(module: nn.Module, args: tuple, kwargs: dict, output, batch: int) -> int:
    """Multiply-accumulates of one call of ``module`` per sample."""
    if isinstance(module, nn.MultiheadAttention):  # q, k and v through the packed input projection
        inputs = list(args[:3]) + [kwargs[k] for k in ("query", "key", "value")[len(args):] if k in kwargs]
        return sum(t.numel() for t in inputs) // batch * module.embed_dim
    if isinstance(module, _ConvTransposeNd):  # every input element is spread over out/groups x kernel
        return args[0].numel() // batch * math.prod(module.kernel_size) * (module.out_channels // module.groups)
    if isinstance(module, _ConvNd):  # every output element is a dot product over in/groups x kernel
        return output.numel() // batch * math.prod(module.kernel_size) * (module.in_channels // module.groups)
    return output.numel() // batch * module.in_features  # Linear


@torch.no_grad()
def layer_macs(model: nn.Module, example_input: torch.Tensor) -> dict[str, int]:
    """MACs of every weighted layer for one sample of ``example_input``'s shape.

    Measured with forward hooks in eval mode, so it follows the real graph
    (dilations, pyramid-pooling bins, the layers a forward pass actually runs).
    A layer run twice (or shared under two names) counts every call; a layer
    that never runs in eval (a training-only auxiliary head) counts 0. A layer
    whose parent runs but reads the layer's weight itself, bypassing its forward
    (so neither a quantizer nor this count would see it), is an
    ``UnsupportedLayerError`` naming both. ``example_input`` is ``(N, ...)``;
    results are per sample.
    """
    layers = _layers(model)
    macs = dict.fromkeys(layers, 0)
    ran: set[int] = set()
    batch = example_input.shape[0]

    def hook(name):
        def fn(module, args, kwargs, output):
            macs[name] += int(_macs(module, args, kwargs, output, batch))
            if isinstance(module, nn.MultiheadAttention) and not isinstance(module.out_proj, _Quantized):
                # torch's attention applies its float out_proj's weight itself
                out = output[0] if isinstance(output, tuple) else output
                macs[f"{name}.out_proj"] += out.numel() // batch * module.embed_dim
                ran.add(id(module.out_proj))
        return fn

    handles = [m.register_forward_hook(hook(n), with_kwargs=True) for n, m in layers.items()]
    handles += [m.register_forward_hook(lambda module, i, o: ran.add(id(module))) for m in model.modules()]
    was_training = model.training
    try:
        model.eval()
        model(example_input)
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    for name, layer in layers.items():
        parent_name = name.rpartition(".")[0]
        parent = model.get_submodule(parent_name)
        if id(layer) not in ran and id(parent) in ran:
            raise UnsupportedLayerError(
                f"layer {name!r} never runs its own forward: its parent {parent_name or 'the model'!r} "
                f"({type(parent).__name__}) applies its weight directly, so mpq can neither quantize "
                "nor count it; replace that module by one that calls its layers")
    return macs


def layer_params(model: nn.Module) -> dict[str, int]:
    """Weight parameters of every weighted layer (biases excluded: they stay in 32 bits)."""
    return {n: _weight(m).numel() for n, m in _layers(model).items()}


def _unit(kind: str, bits: int, macs: int, params: int) -> float:
    if kind == "throughput":
        if bits not in SPEEDUP:
            raise ValueError(f"no speed-up known for {bits} bits (known: {sorted(SPEEDUP)}); "
                             "supply a measured latency_table instead")
        return macs / SPEEDUP[bits]
    if kind == "bops":
        return float(macs * bits * bits)
    if kind == "size":
        return float(params * bits)
    raise ValueError(f"unknown cost {kind!r}: choose one of {list(COSTS)}")


def layer_costs(kind: str, macs: Mapping[str, int], params: Mapping[str, int],
                layers: list[str], choices: list[int], *,
                latency_table: Mapping[str, Mapping[int, float]] | None = None) -> dict[str, dict[int, float]]:
    """``{layer: {bits: cost}}`` for the allocator, for each layer and bits choice."""
    if latency_table is not None:
        missing = [(l, b) for l in layers for b in choices if b not in latency_table.get(l, {})]
        if missing:
            raise ValueError(f"latency_table lacks {missing[0][0]!r} at {missing[0][1]} bits")
        return {l: {b: float(latency_table[l][b]) for b in choices} for l in layers}
    return {l: {b: _unit(kind, b, macs[l], params[l]) for b in choices} for l in layers}


def total_cost(kind: str, bits: Mapping[str, int | None], macs: Mapping[str, int],
               params: Mapping[str, int]) -> float:
    """Cost of a whole network's assignment (``None`` bits = float, counted as 32)."""
    return sum(_unit(kind, 32 if b is None else b, macs[l], params[l]) for l, b in bits.items())


def relative(kind: str, bits: Mapping[str, int | None], reference: Mapping[str, int | None],
             macs: Mapping[str, int], params: Mapping[str, int]) -> float:
    """``cost(reference) / cost(bits)``: e.g. relative throughput vs the all-4-bit network."""
    return total_cost(kind, reference, macs, params) / total_cost(kind, bits, macs, params)


def summary(bits: Mapping[str, int | None], reference: Mapping[str, int | None],
            macs: Mapping[str, int], params: Mapping[str, int]) -> dict[str, float]:
    """Relative throughput, and absolute GBOPs and size (MB) of an assignment."""
    return {
        "rel_throughput": relative("throughput", bits, reference, macs, params),
        "gbops": total_cost("bops", bits, macs, params) / 1e9,
        "size_mb": total_cost("size", bits, macs, params) / 8 / 2**20,
    }
