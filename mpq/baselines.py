"""Selection baselines that are not methods of their own module.

- ``random_scores``: random scores from a seed. The allocator then picks a
  random mix under the budget (still feasible, still using the cost model), so
  the comparison with the other methods is about the *scores* alone.
- No-fine-tune drop (AIMET-style) is ALPS with ``epochs=0``: ``mpq.alps.scores``
  with ``settings.epochs == 0`` returns it under the method name ``noft``.
- Uniform 4-bit / 2-bit and float need no scores: they are fixed configurations
  (``mpq.experiment.Experiment.baselines``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .sensitivity import CostRecord, Sensitivity

__all__ = ["random_scores"]


def random_scores(layers: Sequence[str], *, seed: int, bits_from: int = 4, bits_to: int = 2) -> Sensitivity:
    """Scores drawn uniformly from [0, 1) with ``numpy.random.default_rng(seed)``, one per layer."""
    if not layers:
        raise ValueError("random_scores needs at least one layer")
    score = np.random.default_rng(seed).random(len(layers))
    table = pd.DataFrame({"layer": list(layers), "bits_from": bits_from, "bits_to": bits_to, "score": score})
    cost = CostRecord(method="random", seconds=0.0, device="none", notes=f"seed {seed}")
    return Sensitivity("random", table, cost, meta={"seed": seed})
