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

``load_bits(path, model=qmodel)`` returns the ``bits`` mapping, checked against
the model's layer names, ready for ``mpq.set_bits(qmodel, bits, allow_fixed=True)``.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from torch import nn

from . import atomic
from .quantized import get_bits

__all__ = ["FORMAT", "save_bits", "read_bits_file", "load_bits"]

FORMAT = "mpq-bits/1"


def save_bits(path: str | Path, bits: Mapping[str, int | None], **info: Any) -> Path:
    """Write a bit-configuration file (atomically); ``info`` adds the provenance fields."""
    body = {"format": FORMAT, **info, "bits": {k: (None if v is None else int(v)) for k, v in bits.items()}}
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

    A file written for another network (layer names that do not match the
    model's quantized layers) is a clear one-line error.
    """
    body = read_bits_file(path)
    bits = {str(k): int(v) for k, v in body["bits"].items()}
    if model is not None:
        have = set(get_bits(model))
        missing, extra = sorted(have - set(bits)), sorted(set(bits) - have)
        if missing or extra:
            where = f"network {body.get('network')!r}" if body.get("network") else "another model"
            raise ValueError(f"{path} was written for {where}: its layers do not match this model "
                             f"({len(extra)} unknown, e.g. {extra[:1]}; {len(missing)} missing, e.g. {missing[:1]})")
    return bits
