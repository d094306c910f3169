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

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["CheckpointError", "CheckpointMismatch", "save", "load", "atomic_write_bytes",
           "atomic_write_text", "atomic_write_json", "FORMAT"]

FORMAT = "mpq-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read (missing, corrupt, truncated, not ours)."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint written for something else than what is asked for."""


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file + rename)."""
    _atomic(Path(path), lambda f: f.write(data))


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def save(path: str | Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save ``model``'s state dict (unwrapping DDP) with ``meta``, atomically."""
    module = getattr(model, "module", model)
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    payload = {"format": FORMAT, "meta": dict(meta), "state_dict": state}
    _atomic(Path(path), lambda f: torch.save(payload, f))


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
