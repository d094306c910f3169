"""Bit allocation: choose one precision per layer under a cost budget.

The problem is a multiple-choice knapsack. Layer ``l`` has choices ``b`` (bits)
with a cost ``c[l][b]`` (time, BOPs or size; see ``mpq.cost``) and a sensitivity
``s[l][b]`` (how much the task suffers when ``l`` runs at ``b`` bits; lower is
better). With one binary ``x[l,b]`` per (layer, bits)::

    minimise    sum_{l,b} s[l][b] x[l,b]
    subject to  sum_b x[l,b] = 1                     for every layer l
                sum_{l,b} c[l][b] x[l,b] <= budget
                x[l,b] = x[m,b]                      for layers l, m in one group
                x[l,b] in {0, 1}

``solve`` hands this to HiGHS through ``scipy.optimize.milp`` and gets the
optimum (MIP gaps set to zero), one solve per budget. ``greedy`` is the usual
sensitivity-per-saved-cost heuristic, kept as the comparison the MILP must beat.

Ties. Equal-score optima are common (ALPS scores are differences of accuracies
on a finite validation split; repeated blocks have identical costs), so the
answer among them is fixed by a lexicographic rule: least summed score, then
least total cost, then the least weight ``sum_l (n - i_l) * level_l``, where
``i_l`` is the layer's position in sorted-name order and ``level_l`` the rank
of its choice (0 = most bits). So, among answers equal in score and cost, the
earlier layers (sorted names) keep the higher precision (a weighted rather
than strictly lexicographic order, which would need weights ``2**-i``, below
any solver's resolution). The three criteria are folded into one objective
with nested weights; ``mpq.allocate_milp`` gives the weights, their margins
against HiGHS's tolerances and the precise guarantee: the rule holds exactly
unless a feasible assignment near-ties the rule's answer, with a score less
than a resolution ``Delta_s`` above the optimum (at most 1e-4 of the largest
per-layer score spread, and no larger than any gap between the score changes
of single layers) or, at the optimal score, a cost less than ``Delta_c`` above
the least; the answer is then within those resolutions of the rule's.

Exactness. Every answer is re-checked in exact (``math.fsum``) arithmetic
against the budget, which may be exceeded by a relative 1e-9 (float noise)
and never by HiGHS's tolerance. Variables are laid out in canonical order
(layers sorted by name, bits descending; ``mpq.allocate_instance``), so the
answer does not depend on the insertion order of the input dictionaries, and
HiGHS, deterministic for a given model, breaks any tie left.

Relative values. A sweep is indexed by a *relative* target ``T = reference /
achieved``: ``reference = fixed_cost + sum_l c[l][reference_bits]`` (every
candidate layer at the reference bits) and ``achieved = fixed_cost + sum of the
chosen costs``. ``T = 1.5`` is a mix 1.5x faster (or smaller) than the all-4-bit
network; ``fixed_cost`` is the cost of the layers that are not candidates (the
8-bit first conv and classifier), so that the ratio is honest for the whole
network. The budget for the candidates at target ``T`` is ``reference / T -
fixed_cost``.

This module knows nothing of torch: sensitivities and costs are plain mappings.
"""
from __future__ import annotations

import heapq
import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .allocate_instance import (Groups, InfeasibleBudget, Instance, Table, budget_tolerance, check_budget,
                                prepare)
from .allocate_milp import Model

__all__ = ["InfeasibleBudget", "Allocation", "SOLVERS", "solve", "greedy", "sweep",
           "max_relative", "target_grid"]

SOLVERS = ("milp", "greedy")
MIN_TARGET = 1e-6          # smallest relative target accepted (targets must be positive)


@dataclass(frozen=True)
class Allocation:
    """One point of a sweep: the bits chosen for one relative target.

    ``budget`` is the absolute budget of the candidate layers; ``cost`` the
    achieved absolute total *including* ``fixed_cost``; ``relative`` the
    achieved ``reference / cost`` (>= ``target``); ``score`` the summed
    sensitivity of the choice; ``seconds`` the wall time of this solve.
    """

    target: float
    budget: float
    bits: dict[str, int] = field(hash=False)
    cost: float
    relative: float
    score: float
    solver: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy (plain floats, ints and a fresh ``bits`` dict)."""
        return {"target": float(self.target), "budget": float(self.budget),
                "bits": {k: int(v) for k, v in self.bits.items()}, "cost": float(self.cost),
                "relative": float(self.relative), "score": float(self.score),
                "solver": self.solver, "seconds": float(self.seconds)}


# --------------------------------------------------------------------------- greedy


def _greedy(inst: Instance, budget: float, tol: float) -> np.ndarray:
    """Start every unit at its costliest choice; take the cheapest score-per-saving move until it fits.

    A move sends one unit (a layer, or a group) to a cheaper choice; its price
    is (score increase) / (cost saved). Ties go to the larger saving, then to
    the later unit in sorted-name order (the MILP's tie rule: earlier layers
    keep precision), then to the choice with more bits.
    """
    costs = [inst.unit_table(u, inst.cost) for u in inst.units]
    scores = [inst.unit_table(u, inst.sens) for u in inst.units]
    # costliest first; among equally costly choices the lower score, then more bits
    current = [min(range(len(c)), key=lambda k, c=c, s=s: (-c[k], s[k], k)) for c, s in zip(costs, scores)]
    version = [0] * len(inst.units)
    heap: list[tuple[float, float, int, int, int]] = []

    def push(u: int) -> None:
        here = current[u]
        moves = [((scores[u][k] - scores[u][here]) / (costs[u][here] - costs[u][k]),
                  -(costs[u][here] - costs[u][k]), -u, k, version[u])
                 for k in range(len(costs[u])) if costs[u][k] < costs[u][here]]
        if moves:
            heapq.heappush(heap, min(moves))

    for u in range(len(inst.units)):
        push(u)
    while math.fsum(costs[u][current[u]] for u in range(len(inst.units))) > budget + tol:
        _, _, neg_u, k, seen = heapq.heappop(heap)
        if seen != version[-neg_u]:
            continue
        current[-neg_u], version[-neg_u] = k, version[-neg_u] + 1
        push(-neg_u)
    return np.array(sorted(inst.start[i] + current[u] for u, unit in enumerate(inst.units) for i in unit),
                    dtype=np.int64)


# --------------------------------------------------------------------------- public API


def solve(sensitivity: Table, cost: Table, budget: float, *, groups: Groups | None = None) -> dict[str, int]:
    """Exact allocation: the bits per layer with the least summed sensitivity within ``budget``.

    ``cost[layer]`` maps each allowed bits value to that layer's cost;
    ``sensitivity[layer]`` must have the same keys. Layers named together in
    one of ``groups`` share one precision. The total may exceed ``budget`` by
    a relative 1e-9 (float noise). Among equal-score optima the cheapest wins,
    then the one that keeps earlier layers (sorted names) at more bits, within
    the resolutions of ``mpq.allocate_milp`` (module docstring); one HiGHS solve.

    Raises ``InfeasibleBudget`` (a ValueError) if even the cheapest assignment
    exceeds the budget, ``ValueError`` for inconsistent inputs.
    """
    inst = prepare(sensitivity, cost, groups)
    tol = check_budget(inst, budget)
    if not inst.names:
        return {}
    return inst.to_bits(Model(inst).solve(float(budget), tol))


def greedy(sensitivity: Table, cost: Table, budget: float, *, groups: Groups | None = None) -> dict[str, int]:
    """Heuristic allocation: repeatedly demote the layer with the least score increase per cost saved.

    Starts from every layer's costliest choice and applies single-layer (or
    single-group) moves to a cheaper choice, cheapest ``score increase / cost
    saved`` first, until the total fits ``budget``. Deterministic; never
    better than ``solve`` and often worse: it cannot undo a move, and its last
    move may overshoot the budget. Same inputs and errors as ``solve``.
    """
    inst = prepare(sensitivity, cost, groups)
    tol = check_budget(inst, budget)
    if not inst.names:
        return {}
    return inst.to_bits(_greedy(inst, float(budget), tol))


def _reference_total(inst: Instance, reference_bits: int, fixed_cost: float) -> float:
    if isinstance(fixed_cost, bool) or not isinstance(fixed_cost, numbers.Real) \
            or not math.isfinite(fixed_cost) or fixed_cost < 0:
        raise ValueError(f"fixed_cost must be a finite non-negative number, got {fixed_cost!r}")
    at_reference = inst.cost[inst.bits == reference_bits]
    missing = sorted(set(inst.names) - {inst.names[i] for i in inst.layer[inst.bits == reference_bits]})
    if missing:
        raise ValueError(f"layer {missing[0]!r} has no {reference_bits}-bit choice (reference_bits)")
    total = math.fsum([fixed_cost, *at_reference])
    if total <= 0:
        raise ValueError("the reference network costs nothing: relative values are undefined")
    return total


def _max_relative(inst: Instance, reference_total: float, fixed_cost: float) -> float:
    lowest = fixed_cost + inst.min_cost()
    return reference_total / lowest if lowest > 0 else math.inf


def max_relative(cost: Table, *, reference_bits: int = 4, fixed_cost: float = 0.0,
                 groups: Groups | None = None) -> float:
    """The relative value of the cheapest assignment (all-2-bit for {4, 2} choices).

    ``reference / (fixed_cost + smallest candidate cost)``; the largest target
    ``sweep`` accepts. ``inf`` if the cheapest assignment costs nothing.
    """
    inst = prepare(None, cost, groups)
    return _max_relative(inst, _reference_total(inst, reference_bits, fixed_cost), fixed_cost)


def target_grid(cost: Table, n: int, *, reference_bits: int = 4, fixed_cost: float = 0.0,
                groups: Groups | None = None) -> list[float]:
    """``n`` evenly spaced relative targets from 1.0 (all at ``reference_bits``) to ``max_relative``.

    Both ends included (``n == 1`` gives ``[1.0]``).
    """
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    top = max_relative(cost, reference_bits=reference_bits, fixed_cost=fixed_cost, groups=groups)
    if not math.isfinite(top):
        raise ValueError("the cheapest assignment costs nothing: no finite grid of targets")
    if n == 1:
        return [1.0]
    return [float(t) for t in np.linspace(1.0, top, int(n))]


def _check_targets(targets: Sequence[float]) -> list[float]:
    out = []
    for t in targets:
        if isinstance(t, bool) or not isinstance(t, numbers.Real) or not math.isfinite(t) or t < MIN_TARGET:
            raise ValueError(f"relative targets must be finite numbers >= {MIN_TARGET:g}, got {t!r}")
        out.append(float(t))
    return out


def sweep(sensitivity: Table, cost: Table, targets: Sequence[float], *, reference_bits: int = 4,
          fixed_cost: float = 0.0, groups: Groups | None = None, solver: str = "milp") -> list[Allocation]:
    """One allocation per relative target (module docstring: ``T = reference / achieved``).

    The budget of the candidate layers at target ``T`` is ``reference / T -
    fixed_cost``, with ``reference = fixed_cost + sum_l cost[l][reference_bits]``.
    The MILP is built once and solved once per target. ``solver`` is ``"milp"``
    (exact, ``solve``) or ``"greedy"`` (``greedy``). All targets are checked
    before any is solved: a non-positive one is a ValueError, one above
    ``max_relative`` an InfeasibleBudget naming the largest achievable value.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: choose one of {list(SOLVERS)}")
    inst = prepare(sensitivity, cost, groups)
    reference = _reference_total(inst, reference_bits, fixed_cost)
    top = _max_relative(inst, reference, fixed_cost)
    lowest, points = inst.min_cost(), []
    for t in _check_targets(targets):
        budget = reference / t - fixed_cost
        tol = budget_tolerance(inst, budget)
        if lowest > budget + tol:
            raise InfeasibleBudget(budget, lowest, max_relative=top, message=(
                f"relative target {t:g} is beyond reach: the largest achievable relative value is "
                f"{top:.6g} (every layer at its cheapest choice, cost {lowest:.6g} "
                f"against a budget of {budget:.6g})"))
        points.append((t, budget, tol))
    model = Model(inst) if solver == "milp" and inst.names else None
    return [_allocate(inst, model, point, reference, fixed_cost, solver) for point in points]


def _allocate(inst: Instance, model: Model | None, point: tuple[float, float, float], reference: float,
              fixed_cost: float, solver: str) -> Allocation:
    """Solve one sweep point ``(target, budget, tolerance)``, timed."""
    target, budget, tol = point
    began = time.perf_counter()
    if not inst.names:
        chosen = np.zeros(0, dtype=np.int64)
    elif model is not None:
        chosen = model.solve(budget, tol)
    else:
        chosen = _greedy(inst, budget, tol)
    seconds = time.perf_counter() - began
    total = math.fsum([fixed_cost, inst.total(chosen, inst.cost)])
    return Allocation(target=target, budget=budget, bits=inst.to_bits(chosen), cost=total,
                      relative=reference / total if total > 0 else math.inf,
                      score=inst.total(chosen, inst.sens), solver=solver, seconds=seconds)
