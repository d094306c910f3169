"""Bit-configuration files: a mixed-precision choice you can carry to deployment.

A small, human-readable YAML file: which network and checkpoint it was derived
from, the method and budget that chose it, the cost model, the predicted
relative throughput / GBOPs / size, and the bits of every quantized layer::

    format: mpq-bits/1
    network: resnet50
    method: eagl
    cost_model: throughput
    target: 1.5              # relative throughput asked for
    predicted: {rel_throughput: 1.52, gbops: 0.031, size_mb: 0.41}
    checkpoint: results/resnet50/uniform4.pt
    bits: {conv1: 8, layer1.0.conv1: 4, layer1.0.conv2: 2, ..., fc: 8}

Bits are whole numbers in 2..16. A float layer (a quantized layer whose
quantizer is disabled, ``bits`` None in ``mpq.get_bits``) is written as
``null``; ``load_bits`` leaves such layers out of the mapping it returns, so
``mpq.set_bits`` keeps them as they are.

``load_bits(path, model=qmodel)`` returns the ``bits`` mapping, checked against
the model's layer names, ready for ``mpq.set_bits(qmodel, bits, allow_fixed=True)``.
"""
from __future__ import annotations

import operator
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from . import atomic
from .quantized import get_bits
from .quantizers import qrange

__all__ = ["FORMAT", "save_bits", "read_bits_file", "load_bits"]

FORMAT = "mpq-bits/1"


def _layer_bits(where: str | Path, name: str, value: Any) -> int:
    """``value`` as a layer's bits (an integer in 2..16), else a ``ValueError`` naming the layer."""
    try:
        bits = operator.index(value)  # 4.7 and "4" are refused, numpy integers accepted
        qrange(bits, True)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: layer {name!r} has bits {value!r}: bits must be an integer "
                         "in 2..16 (null for a float layer)") from None
    return bits


def save_bits(path: str | Path, bits: Mapping[str, int | None], **info: Any) -> Path:
    """Write a bit-configuration file (atomically); ``info`` adds the provenance fields.

    ``None`` (a float layer) is written as ``null``; any other value must be an
    integer in 2..16.
    """
    body = {"format": FORMAT, **info,
            "bits": {k: (None if v is None else _layer_bits(path, k, v)) for k, v in bits.items()}}
    path = Path(path)
    atomic.write_text(path, yaml.safe_dump(body, sort_keys=False, default_flow_style=False))
    return path


def read_bits_file(path: str | Path) -> dict[str, Any]:
    """The whole file as a dict (format checked)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"bit-configuration file {p} not found")
    try:
        body = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(body, dict) or body.get("format") != FORMAT or not isinstance(body.get("bits"), dict):
        raise ValueError(f"{p} is not an mpq bit-configuration file ({FORMAT} with a 'bits' mapping)")
    return body


def load_bits(path: str | Path, model: nn.Module | None = None) -> dict[str, int]:
    """The per-layer bits of a configuration file; with ``model``, checked against its layers.

    Layers written as ``null`` (float) are left out of the result. Bits that
    are not whole numbers in 2..16, a file written for another network (layer
    names this model does not have) and a file that lacks one of the model's
    quantized layers are each a one-line ``ValueError`` naming the layer.
    """
    body = read_bits_file(path)
    bits = {str(k): _layer_bits(path, str(k), v) for k, v in body["bits"].items() if v is not None}
    if model is not None:
        have, listed = set(get_bits(model)), {str(k) for k in body["bits"]}
        missing, extra = sorted(have - listed), sorted(listed - have)
        if extra:
            where = f"network {body.get('network')!r}" if body.get("network") else "another model"
            raise ValueError(f"{path} was written for {where}: its layers do not match this model "
                             f"({len(extra)} unknown, e.g. {extra[:1]}; {len(missing)} missing, e.g. {missing[:1]})")
        if missing:
            raise ValueError(f"{path} has no bits for layer {missing[0]!r} of this model ({len(missing)} "
                             "missing): add them to its 'bits' (null for a float layer)")
    return bits
