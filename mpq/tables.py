"""Tables of the report: each written as CSV (the numbers) and Markdown (for reading).

The CSV is the tidy frame as computed (full precision; DVC and notebooks read
it). The Markdown is a rendering of it, or of a display frame the caller
passes (e.g. ``"96.1 ± 0.3"`` cells), under a title and a caption that says
what the numbers are. ``pandas.DataFrame.to_markdown`` needs ``tabulate``,
which this project does not depend on, so ``markdown`` is a small writer of
its own: GitHub pipe tables, numbers right-aligned.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path

import pandas as pd

from . import atomic

__all__ = ["format_number", "markdown", "write"]

Formatter = Callable[[object], str]


def format_number(x: object) -> str:
    """A readable rendering: NaN/None -> ``n/a``; ints as is; floats to 2 decimals or 3 significant digits."""
    if x is None:
        return "n/a"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, numbers.Integral):
        return str(int(x))
    if isinstance(x, numbers.Real):
        v = float(x)
        if not math.isfinite(v):
            return "n/a" if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if v == 0:
            return "0"
        if abs(v) >= 1e5:
            return f"{v:.3g}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 1:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(x)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _numeric(col: pd.Series) -> bool:
    """Right-align numbers, and text columns of rendered numbers ("96.1 ± 0.3", "1.37x (96.5)", "none")."""
    if pd.api.types.is_bool_dtype(col):
        return False
    if pd.api.types.is_numeric_dtype(col):
        return True
    text = [str(v) for v in col if v is not None]
    return bool(text) and all(t[:1].isdigit() or t[:1] == "-" or t in ("n/a", "none", "not run") for t in text)


def markdown(df: pd.DataFrame, *, formats: Mapping[str, Formatter] | None = None) -> str:
    """``df`` as a GitHub Markdown pipe table (``formats``: a formatter per column)."""
    formats = dict(formats or {})
    cols = [str(c) for c in df.columns]
    numeric = [_numeric(df[c]) for c in df.columns]
    lines = ["| " + " | ".join(_cell(c) for c in cols) + " |",
             "|" + "|".join("---:" if num else ":---" for num in numeric) + "|"]
    for row in df.itertuples(index=False):
        cells = [formats.get(c, format_number)(v) for c, v in zip(cols, row)]
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def write(df: pd.DataFrame, stem: str | Path, *, title: str, caption: str = "",
          display: pd.DataFrame | None = None, formats: Mapping[str, Formatter] | None = None) -> Path:
    """Write ``<stem>.csv`` (``df``) and ``<stem>.md`` (title, caption, ``display`` or ``df``); return the CSV."""
    stem = Path(stem)
    csv, md = stem.with_suffix(".csv"), stem.with_suffix(".md")
    atomic.write_text(csv, df.to_csv(index=False))
    body = f"### {title}\n\n" + (f"{caption}\n\n" if caption else "")
    atomic.write_text(md, body + markdown(df if display is None else display, formats=formats))
    return csv
