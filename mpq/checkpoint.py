"""Checkpoints: written atomically with what they are, verified on load.

A checkpoint is one ``torch.save`` file holding the state dict and a ``meta``
record (network, width, number of classes, the bits of every quantized layer or
none for a float model, free-form provenance). It is written to a temporary
file in the same folder and moved into place with ``os.replace``, so a crash
or Ctrl-C never leaves a half-written file behind under the final name.
``load`` checks the meta against what the caller expects and gives one clear
line when they differ (another network, another width, ...).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from . import atomic

__all__ = ["CheckpointError", "CheckpointMismatch", "save", "load", "FORMAT"]

FORMAT = "mpq-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, corrupt, truncated, not ours)."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint written for something else than what is asked for."""


def save(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save ``model``'s state dict (unwrapping DDP) with ``meta``, atomically."""
    module = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {"format": FORMAT, "meta": dict(meta), "state_dict": state}
    atomic.write_with(path, lambda f: torch.save(payload, f))


def load(path: str | Path, *, expect: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Return ``(state_dict, meta)``; every ``expect`` key must equal the stored meta's."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} not found: run the stage that writes it first")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, ...
        raise CheckpointError(f"checkpoint {p} is unreadable ({type(e).__name__}): delete it and "
                              "rerun the stage that writes it") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {p} is not an mpq checkpoint ({FORMAT}): delete it and "
                              "rerun the stage that writes it")
    meta = payload["meta"]
    for k, v in (expect or {}).items():
        if meta.get(k) != v:
            raise CheckpointMismatch(f"checkpoint {p} was written for {k}={meta.get(k)!r}, not {v!r}: "
                                     "delete it (or point to the right one) and rerun")
    return payload["state_dict"], meta
