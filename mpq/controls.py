"""Selection controls: selections that carry no information about sensitivity.

- ``random_scores``: random scores from a seed. The allocator then picks a
  random mix under the budget (still feasible, still using the cost model), so
  the comparison with the other methods is about the *scores* alone. The
  frontier draws a new selection for every fine-tune seed (``per_seed`` in the
  method registry).

- ``size_scores``: scores that only know a layer's size. ``largest`` gives
  every layer the same score, so the exact knapsack lowers the fewest layers
  that meet the budget: those with the largest savings ("largest layers
  first"). ``smallest`` scores each layer by its parameter count, so the
  knapsack prefers many small layers ("smallest first"). A method whose
  frontier does not beat these two has not shown that its scores know more
  than the sizes the cost model already holds.

The uniform 4-bit / 2-bit and float models need no scores: they are fixed
configurations (``mpq.experiment.Experiment.baselines``); the no-fine-tune
drop is ALPS without the fine-tune (``mpq.alps``).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from .cost import layer_params
from .quantized import candidate_layers
from .sensitivity import CostRecord, Sensitivity

__all__ = ["random_scores", "run_random", "size_scores", "run_largest", "run_smallest"]


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


def size_scores(params: Mapping[str, int], *, order: str, bits_from: int = 4, bits_to: int = 2) -> Sensitivity:
    """The size controls' scores of the layers in ``params`` (name -> parameter count).

    ``order="largest"``: a constant 1 (the knapsack lowers the layers with the
    largest savings first); ``order="smallest"``: the parameter count (it lowers
    small layers first).
    """
    if order not in ("largest", "smallest"):
        raise ValueError(f"order must be 'largest' or 'smallest', got {order!r}")
    if not params:
        raise ValueError("size_scores needs at least one layer")
    layers = list(params)
    score = np.ones(len(layers)) if order == "largest" else np.array([float(params[n]) for n in layers])
    table = pd.DataFrame({"layer": layers, "bits_from": bits_from, "bits_to": bits_to, "score": score,
                          "params": [int(params[n]) for n in layers]})
    return Sensitivity(order, table, CostRecord(method=order, seconds=0.0, device="none", notes="no computation"))


def _run_size(order: str, exp, qmodel) -> Sensitivity:
    q, counts = exp.cfg.quant, layer_params(qmodel)
    return size_scores({n: counts[n] for n in candidate_layers(qmodel)}, order=order,
                       bits_from=q.start_bits, bits_to=q.low_bits)


def run_largest(exp, *, method: str, qmodel, teacher, out, seed: int) -> Sensitivity:
    """The pipeline's "largest layers first" control (``mpq.methods`` entry)."""
    return _run_size("largest", exp, qmodel)


def run_smallest(exp, *, method: str, qmodel, teacher, out, seed: int) -> Sensitivity:
    """The pipeline's "smallest layers first" control (``mpq.methods`` entry)."""
    return _run_size("smallest", exp, qmodel)
