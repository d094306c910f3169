"""Atomic file writes: the one place that writes a result file.

Every writer goes through a temporary sibling file (same folder, so the same
file system), flushed and fsynced, then moved into place with ``os.replace``.
A crash, a kill or Ctrl-C therefore never leaves a half-written file under the
final name: a reader sees the old file or the new one, nothing in between.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["write_with", "write_bytes", "write_text", "write_json"]


def write_with(path: str | Path, write: Callable[[IO[bytes]], Any]) -> Path:
    """Call ``write(binary file object)`` on a temporary sibling of ``path``, then move it into place."""
    path = Path(path)
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
    return path


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return write_with(path, lambda f: f.write(data))


def write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    return write_bytes(path, text.encode())


def write_json(path: str | Path, obj: Any, *, indent: int | None = 2) -> Path:
    """``obj`` as JSON (sorted keys, a final newline), atomically; non-JSON values via ``str``."""
    return write_text(path, json.dumps(obj, indent=indent, sort_keys=True, default=str) + "\n")
