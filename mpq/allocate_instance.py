"""The allocator's input checking and canonical problem layout (internal to ``mpq.allocate``).

``prepare`` validates a sensitivity table, a cost table and optional groups and
returns an ``Instance``: the binaries of the multiple-choice knapsack laid out
in canonical order (layers sorted by name, each layer's bits descending), so
that no answer depends on the insertion order of the caller's dictionaries.
``check_budget`` decides whether a budget can be met at all. The public API,
and the error types callers catch, are re-exported by ``mpq.allocate``.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Table", "Groups", "BUDGET_RTOL", "InfeasibleBudget", "Instance", "prepare",
           "budget_tolerance", "check_budget"]

Table = Mapping[str, Mapping[int, float]]
Groups = Sequence[Sequence[str]]

BUDGET_RTOL = 1e-9         # slack on the budget, relative to the scale of the costs


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


@dataclass(frozen=True, eq=False)
class Instance:
    """A validated problem in canonical order: layers by name, each layer's bits descending.

    Binary ``j`` is (layer ``layer[j]``, ``bits[j]``); layer ``i`` owns the
    binaries ``start[i]:start[i+1]`` and ``level`` is ``j - start[layer[j]]``
    (0 = most bits). ``units`` are the sets of layer indices that share one
    precision (groups, and singletons for the rest), sorted by their first layer.
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
        """Exact (``math.fsum``) sum of ``values`` over the chosen binaries."""
        return math.fsum(values[chosen])

    def to_bits(self, chosen: np.ndarray) -> dict[str, int]:
        """The chosen binaries as ``{layer: bits}``, keys in the caller's order."""
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


def prepare(sensitivity: Table | None, cost: Table, groups: Groups | None) -> Instance:
    """Validate the inputs and lay the binaries out in canonical order.

    ``sensitivity=None`` stands for all-zero scores (used where only costs matter).
    Raises ``ValueError`` naming the offending layer for inconsistent inputs.
    """
    tables = _check_tables(sensitivity, cost)
    names = tuple(sorted(tables))
    choice_sets = [tuple(sorted(tables[n][1], reverse=True)) for n in names]
    sizes = np.array([len(c) for c in choice_sets], dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(sizes)])
    layer = np.repeat(np.arange(len(names)), sizes)
    return Instance(
        names=names, caller_order=tuple(cost), start=start, layer=layer,
        level=np.arange(int(start[-1])) - start[layer],
        bits=np.array([b for c in choice_sets for b in c], dtype=np.int64),
        sens=np.array([tables[n][0][b] for n, c in zip(names, choice_sets) for b in c], dtype=float),
        cost=np.array([tables[n][1][b] for n, c in zip(names, choice_sets) for b in c], dtype=float),
        units=_units(names, choice_sets, groups))


def budget_tolerance(inst: Instance, budget: float) -> float:
    """The float-noise slack granted to ``budget``: ``BUDGET_RTOL`` of the larger of it and the cost scale."""
    return BUDGET_RTOL * max(abs(budget), inst.cost_scale())


def check_budget(inst: Instance, budget: float) -> float:
    """The slack granted to ``budget``; raises InfeasibleBudget if nothing fits."""
    if isinstance(budget, bool) or not isinstance(budget, numbers.Real) or not math.isfinite(budget):
        raise ValueError(f"budget must be a finite number, got {budget!r}")
    tol = budget_tolerance(inst, budget)
    lowest = inst.min_cost()
    if lowest > budget + tol:
        raise InfeasibleBudget(float(budget), lowest)
    return tol
