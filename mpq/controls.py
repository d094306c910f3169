"""Selection controls: selections that carry no information about sensitivity.

- ``random_scores``: random scores from a seed. The allocator then picks a
  random mix under the budget (still feasible, still using the cost model), so
  the comparison with the other methods is about the *scores* alone. The
  frontier draws a new selection for every fine-tune seed (``per_seed`` in the
  method registry).

The uniform 4-bit / 2-bit and float models need no scores: they are fixed
configurations (``mpq.experiment.Experiment.baselines``); the no-fine-tune
drop is ALPS without the fine-tune (``mpq.alps``).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from .quantized import candidate_layers
from .sensitivity import CostRecord, Sensitivity

__all__ = ["random_scores", "run_random"]


def random_scores(layers: Sequence[str], *, seed: int, bits_from: int = 4, bits_to: int = 2) -> Sensitivity:
    """Scores drawn uniformly from [0, 1) with ``numpy.random.default_rng(seed)``, one per layer."""
    if not layers:
        raise ValueError("random_scores needs at least one layer")
    score = np.random.default_rng(seed).random(len(layers))
    table = pd.DataFrame({"layer": list(layers), "bits_from": bits_from, "bits_to": bits_to, "score": score})
    cost = CostRecord(method="random", seconds=0.0, device="none", notes=f"seed {seed}")
    return Sensitivity("random", table, cost, meta={"seed": seed})


def run_random(exp, *, method: str, qmodel, teacher, out, seed: int) -> Sensitivity:
    """The pipeline's random control (``mpq.methods`` entry): ``random_scores`` of the candidates."""
    q = exp.cfg.quant
    return random_scores(candidate_layers(qmodel), seed=seed, bits_from=q.start_bits, bits_to=q.low_bits)
