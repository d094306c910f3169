"""Does LSQ learn its steps? The step diagnostic of a quantized checkpoint.

A uniform LSQ model is fine-tuned from the float model, and LSQ starts each
layer's weight step at ``2 mean|w| / sqrt(Q_P)`` of the float weights at the
layer's bits (``mpq.quantizers.lsq_init_step``). The ratio trained / initial
step says how far training moved it (1.0: not at all). With steps that never
move, the entropy of the 4-bit codes (EAGL) is close to what the initial step
gives every layer, and the data-free score is nearly constant: so the
diagnostic also reports the spread of EAGL's scores.

``step_ratios`` works on state dicts (the report reads checkpoints);
``step_diagnostic`` summarises one checkpoint as plain data (the baselines
step writes it to ``step_diagnostic.json`` and notebook 01 shows it).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from torch import Tensor

from .quantizers import lsq_init_step

__all__ = ["step_ratios", "step_diagnostic"]


def step_ratios(float_state: Mapping[str, Tensor], quant_state: Mapping[str, Tensor], bits: Mapping[str, int],
                layers: Sequence[str]) -> np.ndarray:
    """Trained / initial weight step of ``layers`` (per-channel steps averaged)."""
    ratios = []
    for layer in layers:
        w, step = float_state[f"{layer}.weight"].abs(), quant_state[f"{layer}.wq.step"]
        mean = w.flatten(1).mean(1).view_as(step) if step.numel() > 1 else w.mean()
        ratios.append(float((step / lsq_init_step(mean, int(bits[layer]), True)).mean()))
    return np.array(ratios)


def step_diagnostic(ratios: np.ndarray, scores: Sequence[float] | None = None) -> dict[str, Any]:
    """Min / median / max of the ratios, the share moved by over 1 %, and (``scores``: EAGL's) the
    scores' min, max and coefficient of variation in percent."""
    r = np.asarray(ratios, dtype=float)
    out: dict[str, Any] = {"layers": int(r.size), "step_ratio_min": float(r.min()),
                           "step_ratio_median": float(np.median(r)), "step_ratio_max": float(r.max()),
                           "moved_over_1pct": float(np.mean(np.abs(r - 1) > 0.01))}
    if scores is not None:
        s = np.asarray(scores, dtype=float)
        out.update(score_min=float(s.min()), score_max=float(s.max()),
                   score_cv_pct=float(100 * s.std() / abs(s.mean())) if s.mean() else float("nan"))
    return out
