"""The error type of a bad setting, shared by the settings loader and the registries."""
from __future__ import annotations

__all__ = ["ConfigError", "check"]


class ConfigError(ValueError):
    """A bad settings file or value; the message names the key and the fix."""


def check(cond: bool, key: str, msg: str) -> None:
    """Raise ``ConfigError("<key>: <msg>")`` unless ``cond``."""
    if not cond:
        raise ConfigError(f"{key}: {msg}")
