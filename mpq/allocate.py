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

``solve`` hands this to HiGHS through ``scipy.optimize.milp`` and gets the exact
optimum (relative and absolute MIP gaps set to zero). ``greedy`` is the usual
sensitivity-per-saved-cost heuristic, kept as the comparison the MILP must beat.

Exactness and ties. HiGHS accepts rows violated by up to its feasibility
tolerance (1e-7), more than the 1e-9 relative slack this module grants the
budget for float noise. So every answer is re-checked in exact (``math.fsum``)
arithmetic and an assignment that breaks a row is excluded by a no-good cut
(``sum of its chosen binaries <= layers - 1``, which removes that one
assignment and nothing else) before solving again. Equal-score optima are
common (ALPS scores are differences of accuracies on a finite validation split;
repeated blocks have identical costs), so the answer among them is fixed by a
lexicographic three-stage solve rather than by a mixed objective with an
epsilon, which no epsilon makes sound for arbitrary float data:

1. minimise the summed sensitivity: ``S*``;
2. keep ``score <= S* + 1e-9 max(1, S*)`` (scores in units of the largest
   per-layer spread of sensitivity) and minimise the total cost: ``C*``;
3. keep both, with ``cost <= C* (1 + 1e-9)``, and minimise ``sum_l (n - i_l) * level_l``, where ``i_l`` is the
   layer's position in sorted-name order and ``level_l`` the rank of its choice
   (0 = most bits). So, among answers equal in score and cost, the earlier
   layers (sorted names) keep the higher precision. The weights are integers,
   so this stage is exact; it is a weighted rather than strictly lexicographic
   order (that would need weights ``2**-i``, below any solver's resolution).

Variables are laid out in canonical order (layers sorted by name, bits
descending), so the answer does not depend on the insertion order of the input
dictionaries, and HiGHS, deterministic for a given model, breaks any tie left.

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
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, milp

__all__ = ["InfeasibleBudget", "Allocation", "SOLVERS", "solve", "greedy", "sweep",
           "max_relative", "target_grid"]

Table = Mapping[str, Mapping[int, float]]
Groups = Sequence[Sequence[str]]

SOLVERS = ("milp", "greedy")
MIN_TARGET = 1e-6          # smallest relative target accepted (targets must be positive)
BUDGET_RTOL = 1e-9         # slack on the budget, relative to the scale of the costs
TIE_RTOL = 1e-9            # scores (costs) this close count as equal in stages 2 (3)
_MAX_CUTS = 32             # no-good cuts per stage before giving up on that stage
# Zero gaps: HiGHS's defaults (1e-4 relative, 1e-6 absolute) stop short of the optimum.
# scipy passes options it does not list (mip_abs_gap) to HiGHS verbatim, with a warning.
_HIGHS_OPTIONS = {"mip_rel_gap": 0.0, "mip_abs_gap": 0.0}


class InfeasibleBudget(ValueError):
    """No assignment fits the budget: even the cheapest one costs more.

    ``budget`` and ``min_cost`` are absolute costs of the candidate layers;
    ``max_relative`` is set when the budget came from a relative target.
    """

    def __init__(self, budget: float, min_cost: float, message: str | None = None, *,
                 max_relative: float | None = None) -> None:
        self.budget = budget
        self.min_cost = min_cost
        self.max_relative = max_relative
        super().__init__(message or f"budget {budget:.6g} is below the smallest achievable "
                                    f"cost {min_cost:.6g} (every layer at its cheapest choice)")


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


# --------------------------------------------------------------------------- instance


@dataclass(frozen=True, eq=False)
class _Instance:
    """A validated problem in canonical order: layers by name, each layer's bits descending.

    Binary ``j`` is (layer ``layer[j]``, ``bits[j]``); layer ``i`` owns the
    binaries ``start[i]:start[i+1]`` and ``level`` is ``j - start[layer[j]]``.
    ``units`` are the sets of layer indices that share one precision (groups,
    and singletons for the rest), sorted by their first layer.
    """

    names: tuple[str, ...]       # sorted layer names
    caller_order: tuple[str, ...]
    start: np.ndarray            # (n_layers + 1,)
    layer: np.ndarray            # (n_vars,)
    level: np.ndarray            # (n_vars,)
    bits: np.ndarray             # (n_vars,)
    sens: np.ndarray             # (n_vars,)
    cost: np.ndarray             # (n_vars,)
    units: tuple[tuple[int, ...], ...]

    def unit_table(self, unit: Sequence[int], values: np.ndarray) -> list[float]:
        """``values`` summed over the unit's layers, per choice level (shared by the unit)."""
        width = self.start[unit[0] + 1] - self.start[unit[0]]
        return [math.fsum(values[self.start[i] + k] for i in unit) for k in range(width)]

    def min_cost(self) -> float:
        """Smallest total cost over all assignments that respect the groups."""
        return math.fsum(min(self.unit_table(u, self.cost)) for u in self.units)

    def cost_scale(self) -> float:
        """Largest possible total: what budget tolerances are relative to."""
        return math.fsum(self.cost[self.start[i]:self.start[i + 1]].max() for i in range(len(self.names)))

    def total(self, chosen: np.ndarray, values: np.ndarray) -> float:
        return math.fsum(values[chosen])

    def to_bits(self, chosen: np.ndarray) -> dict[str, int]:
        by_name = {self.names[self.layer[j]]: int(self.bits[j]) for j in chosen}
        return {name: by_name[name] for name in self.caller_order}


def _check_choices(layer: str, table: Any, what: str, *, nonnegative: bool) -> dict[int, float]:
    if not isinstance(table, Mapping) or not table:
        raise ValueError(f"layer {layer!r}: {what} must be a non-empty mapping bits -> value")
    out: dict[int, float] = {}
    for b, v in table.items():
        if isinstance(b, bool) or not isinstance(b, numbers.Integral) or b <= 0:
            raise ValueError(f"layer {layer!r}: bits must be positive integers, got {b!r}")
        if not isinstance(v, numbers.Real) or not math.isfinite(v) or (nonnegative and v < 0):
            kind = "a finite non-negative number" if nonnegative else "a finite number"
            raise ValueError(f"layer {layer!r}: {what} at {b} bits must be {kind}, got {v!r}")
        out[int(b)] = float(v)
    return out


def _check_tables(sensitivity: Table | None, cost: Table) -> dict[str, tuple[dict, dict]]:
    if not isinstance(cost, Mapping):
        raise ValueError("cost must be a mapping layer -> {bits: cost}")
    for name in cost:
        if not isinstance(name, str):
            raise ValueError(f"layer names must be strings, got {name!r}")
    if sensitivity is not None:
        if not isinstance(sensitivity, Mapping):
            raise ValueError("sensitivity must be a mapping layer -> {bits: score}")
        unknown = sorted(str(k) for k in sensitivity if k not in cost)
        if unknown:
            raise ValueError(f"sensitivity names layers that have no cost: {unknown}")
    tables = {}
    for name, choices in cost.items():
        c = _check_choices(name, choices, "cost", nonnegative=True)
        if sensitivity is None:
            s = dict.fromkeys(c, 0.0)
        elif name not in sensitivity:
            raise ValueError(f"layer {name!r} has a cost but no sensitivity")
        else:
            s = _check_choices(name, sensitivity[name], "sensitivity", nonnegative=False)
        if set(s) != set(c):
            raise ValueError(f"layer {name!r}: sensitivity bits {sorted(s)} differ from cost bits {sorted(c)}")
        tables[name] = (s, c)
    return tables


def _units(names: Sequence[str], choice_sets: Sequence[tuple[int, ...]],
           groups: Groups | None) -> tuple[tuple[int, ...], ...]:
    """Union the groups (they may overlap) into sets of layer indices with one precision."""
    index = {n: i for i, n in enumerate(names)}
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for group in groups or ():
        if isinstance(group, str) or not isinstance(group, Sequence):
            raise ValueError(f"each group must be a list of layer names, got {group!r}")
        for name in group:
            if name not in index:
                raise ValueError(f"group names unknown layer {name!r}")
            if choice_sets[index[name]] != choice_sets[index[group[0]]]:
                raise ValueError(f"grouped layers {group[0]!r} and {name!r} have different bits choices: "
                                 f"{list(choice_sets[index[group[0]]])} vs {list(choice_sets[index[name]])}")
            parent[root(index[name])] = root(index[group[0]])
    members: dict[int, list[int]] = {}
    for i in range(len(names)):
        members.setdefault(root(i), []).append(i)
    return tuple(sorted(tuple(m) for m in members.values()))


def _prepare(sensitivity: Table | None, cost: Table, groups: Groups | None) -> _Instance:
    """Validate the inputs and lay the binaries out in canonical order."""
    tables = _check_tables(sensitivity, cost)
    names = tuple(sorted(tables))
    choice_sets = [tuple(sorted(tables[n][1], reverse=True)) for n in names]
    sizes = np.array([len(c) for c in choice_sets], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(sizes)])
    layer = np.repeat(np.arange(len(names)), sizes)
    return _Instance(
        names=names, caller_order=tuple(cost), start=start, layer=layer,
        level=np.arange(int(start[-1])) - start[layer],
        bits=np.array([b for c in choice_sets for b in c], dtype=np.int64),
        sens=np.array([tables[n][0][b] for n, c in zip(names, choice_sets) for b in c], dtype=float),
        cost=np.array([tables[n][1][b] for n, c in zip(names, choice_sets) for b in c], dtype=float),
        units=_units(names, choice_sets, groups))


def _budget_tolerance(inst: _Instance, budget: float) -> float:
    return BUDGET_RTOL * max(abs(budget), inst.cost_scale())


def _check_budget(inst: _Instance, budget: float) -> float:
    """The slack granted to ``budget``; raises InfeasibleBudget if nothing fits."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number, got {budget!r}")
    tol = _budget_tolerance(inst, budget)
    lowest = inst.min_cost()
    if lowest > budget + tol:
        raise InfeasibleBudget(float(budget), lowest)
    return tol


# --------------------------------------------------------------------------- MILP


class _Milp:
    """The MILP of one instance, built once and re-solved for any budget.

    Rows: one equality per layer, the group equalities, then one cost row and
    one score row whose bounds change per budget and per stage. Both rows are
    shifted by each layer's minimum (a constant, since a layer takes exactly
    one choice) and scaled to order one, so HiGHS's absolute tolerances mean
    the same thing whatever the unit of cost (MACs, seconds) or score.
    """

    def __init__(self, inst: _Instance) -> None:
        self.inst = inst
        n_layers, n_vars = len(inst.names), len(inst.bits)
        self.cost_offset = math.fsum(np.minimum.reduceat(inst.cost, inst.start[:-1]))
        shifted_cost = inst.cost - np.minimum.reduceat(inst.cost, inst.start[:-1])[inst.layer]
        self.cost_unit = math.fsum(np.maximum.reduceat(shifted_cost, inst.start[:-1])) or 1.0
        self.row_cost = shifted_cost / self.cost_unit
        shifted_sens = inst.sens - np.minimum.reduceat(inst.sens, inst.start[:-1])[inst.layer]
        self.score = shifted_sens / (shifted_sens.max() or 1.0)   # the stage-1 objective, max entry 1
        self.tiebreak = ((n_layers - inst.layer) * inst.level).astype(float)   # stage 3, integers
        one_each = sparse.csr_array((np.ones(n_vars), (inst.layer, np.arange(n_vars))),
                                    shape=(n_layers, n_vars))
        self.fixed_rows = sparse.vstack([one_each, self._group_rows()], format="csr")
        self.matrix = sparse.vstack([self.fixed_rows, self.row_cost[None, :], self.score[None, :]],
                                    format="csr")
        self.n_fixed = self.fixed_rows.shape[0]

    def _group_rows(self) -> sparse.csr_array:
        """``x[m, k] - x[first, k] = 0`` for every other member ``m`` of a unit, every level ``k``."""
        inst, rows, cols, vals = self.inst, [], [], []
        for unit in inst.units:
            first = unit[0]
            for m in unit[1:]:
                for k in range(inst.start[first + 1] - inst.start[first]):
                    r = len(rows) // 2
                    rows += [r, r]
                    cols += [inst.start[m] + k, inst.start[first] + k]
                    vals += [1.0, -1.0]
        return sparse.csr_array((vals, (rows, cols)), shape=(len(rows) // 2, len(inst.bits)))

    def scaled_cost(self, total: float) -> float:
        """An absolute total cost in the units of the cost row."""
        return (total - self.cost_offset) / self.cost_unit

    def optimise(self, objective: np.ndarray, cost_ub: float, score_ub: float,
                 accept: Callable[[np.ndarray], bool]) -> tuple[np.ndarray | None, int]:
        """Minimise ``objective``; return (chosen binaries or None, HiGHS status).

        An answer that ``accept`` (the exact check) rejects is cut off and the
        model solved again, at most ``_MAX_CUTS`` times.
        """
        n_layers = len(self.inst.names)
        lower = np.zeros(self.n_fixed + 2)
        lower[:n_layers] = 1.0                     # one choice per layer; group rows are = 0
        lower[-2:] = -np.inf
        upper = lower.copy()
        upper[-2:] = cost_ub, score_ub
        matrix, cuts = self.matrix, []
        for _ in range(_MAX_CUTS + 1):
            if cuts:
                cut_rows = sparse.csr_array((np.ones(n_layers * len(cuts)),
                                             (np.repeat(np.arange(len(cuts)), n_layers), np.concatenate(cuts))),
                                            shape=(len(cuts), len(self.inst.bits)))
                matrix = sparse.vstack([self.matrix, cut_rows], format="csr")
                lower = np.concatenate([lower[:self.n_fixed + 2], np.full(len(cuts), -np.inf)])
                upper = np.concatenate([upper[:self.n_fixed + 2], np.full(len(cuts), n_layers - 1.0)])
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
                res = milp(objective, integrality=np.ones_like(objective), bounds=Bounds(0.0, 1.0),
                           constraints=LinearConstraint(matrix, lower, upper), options=dict(_HIGHS_OPTIONS))
            if res.status != 0 or res.x is None:
                return None, res.status
            chosen = self._chosen(res.x)
            if accept(chosen):
                return chosen, 0
            cuts.append(chosen)
        return None, -1

    def _chosen(self, x: np.ndarray) -> np.ndarray:
        """The binary set to one in each layer (largest value, robust to integrality slack)."""
        start = self.inst.start
        return np.array([start[i] + int(np.argmax(x[start[i]:start[i + 1]]))
                         for i in range(len(self.inst.names))], dtype=np.int64)

    def solve(self, budget: float, tol: float) -> np.ndarray:
        """The three-stage lexicographic optimum (module docstring) for ``budget``."""
        inst = self.inst

        def fits(chosen: np.ndarray) -> bool:
            return inst.total(chosen, inst.cost) <= budget + tol

        best, status = self.optimise(self.score, self.scaled_cost(budget + tol), np.inf, fits)
        if best is None:
            if status == 2:
                raise InfeasibleBudget(float(budget), inst.min_cost())
            raise RuntimeError(f"HiGHS found no assignment within the budget {budget:.6g} "
                               f"(status {status}; -1: every answer broke the budget when checked)")
        score_ub = inst.total(best, self.score)
        score_ub += TIE_RTOL * max(1.0, score_ub)

        def as_good(chosen: np.ndarray) -> bool:
            return fits(chosen) and inst.total(chosen, self.score) <= score_ub

        cheaper, _ = self.optimise(self.row_cost, self.scaled_cost(budget + tol), score_ub, as_good)
        best = best if cheaper is None else cheaper
        cost_ub = inst.total(best, inst.cost)
        cost_ub = min(cost_ub + TIE_RTOL * max(abs(cost_ub), inst.cost_scale()), budget + tol)

        def as_cheap(chosen: np.ndarray) -> bool:
            return as_good(chosen) and inst.total(chosen, inst.cost) <= cost_ub

        canonical, _ = self.optimise(self.tiebreak, self.scaled_cost(cost_ub), score_ub, as_cheap)
        return best if canonical is None else canonical


# --------------------------------------------------------------------------- greedy


def _greedy(inst: _Instance, budget: float, tol: float) -> np.ndarray:
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
    then the one that keeps earlier layers (sorted names) at more bits; see the
    module docstring for the three-stage solve and why.

    Raises ``InfeasibleBudget`` (a ValueError) if even the cheapest assignment
    exceeds the budget, ``ValueError`` for inconsistent inputs.
    """
    inst = _prepare(sensitivity, cost, groups)
    tol = _check_budget(inst, budget)
    if not inst.names:
        return {}
    return inst.to_bits(_Milp(inst).solve(float(budget), tol))


def greedy(sensitivity: Table, cost: Table, budget: float, *, groups: Groups | None = None) -> dict[str, int]:
    """Heuristic allocation: repeatedly demote the layer with the least score increase per cost saved.

    Starts from every layer's costliest choice and applies single-layer (or
    single-group) moves to a cheaper choice, cheapest ``score increase / cost
    saved`` first, until the total fits ``budget``. Deterministic; never
    better than ``solve`` and often worse: it cannot undo a move, and its last
    move may overshoot the budget. Same inputs and errors as ``solve``.
    """
    inst = _prepare(sensitivity, cost, groups)
    tol = _check_budget(inst, budget)
    if not inst.names:
        return {}
    return inst.to_bits(_greedy(inst, float(budget), tol))


def _reference_total(inst: _Instance, reference_bits: int, fixed_cost: float) -> float:
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


def _max_relative(inst: _Instance, reference_total: float, fixed_cost: float) -> float:
    lowest = fixed_cost + inst.min_cost()
    return reference_total / lowest if lowest > 0 else math.inf


def max_relative(cost: Table, *, reference_bits: int = 4, fixed_cost: float = 0.0,
                 groups: Groups | None = None) -> float:
    """The relative value of the cheapest assignment (all-2-bit for {4, 2} choices).

    ``reference / (fixed_cost + smallest candidate cost)``; the largest target
    ``sweep`` accepts. ``inf`` if the cheapest assignment costs nothing.
    """
    inst = _prepare(None, cost, groups)
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
    The MILP is built once and re-solved per target. ``solver`` is ``"milp"``
    (exact, ``solve``) or ``"greedy"`` (``greedy``). All targets are checked
    before any is solved: a non-positive one is a ValueError, one above
    ``max_relative`` an InfeasibleBudget naming the largest achievable value.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}: choose one of {list(SOLVERS)}")
    inst = _prepare(sensitivity, cost, groups)
    reference = _reference_total(inst, reference_bits, fixed_cost)
    top = _max_relative(inst, reference, fixed_cost)
    lowest, points = inst.min_cost(), []
    for t in _check_targets(targets):
        budget = reference / t - fixed_cost
        tol = _budget_tolerance(inst, budget)
        if lowest > budget + tol:
            raise InfeasibleBudget(budget, lowest, max_relative=top, message=(
                f"relative target {t:g} is beyond reach: the largest achievable relative value is "
                f"{top:.6g} (every layer at its cheapest choice, cost {lowest:.6g} "
                f"against a budget of {budget:.6g})"))
        points.append((t, budget, tol))
    model = _Milp(inst) if solver == "milp" and inst.names else None
    return [_allocate(inst, model, point, reference, fixed_cost, solver) for point in points]


def _allocate(inst: _Instance, model: _Milp | None, point: tuple[float, float, float], reference: float,
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
