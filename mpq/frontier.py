"""The accuracy-throughput frontier: plan the configurations, summarise the results.

Planning (no torch): every selection method's scores go through the same
allocator and the same cost model, over the same grid of relative-throughput
targets between all-``start_bits`` (1.0x) and all-``low_bits``; the two ends
are the uniform configurations and are shared by every method (the
``uniform`` points). Each configuration is then fine-tuned with the same LSQ
recipe and epochs from the all-``start_bits`` checkpoint and evaluated on the
test split, for several seeds (``mpq.frontier_run.run`` runs the
jobs through ``mpq.jobs``, resumable and parallel).

Summaries, per method: the metric at each matched target (mean and spread
over seeds), the area under the frontier (trapezoid over the targets, in
metric x throughput units, divided by the throughput span so it reads as a
mean metric), and the highest throughput whose mean metric is within
``tolerance`` points of float ("recovers full precision").
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from . import allocate

__all__ = ["Point", "plan", "summarize", "RESULT_COLUMNS", "UNIFORM"]

UNIFORM = "uniform"
RESULT_COLUMNS = ("network", "method", "target", "seed", "rel_throughput", "gbops", "size_mb", "n_low",
                  "metric", "seconds", "config")


@dataclass(frozen=True)
class Point:
    """One configuration to fine-tune: a method's choice at one target (for one seed if random)."""

    method: str
    target: float
    bits: dict[str, int] = field(hash=False)
    seeds: tuple[int, ...]          # fine-tune seeds this configuration runs with
    score: float = 0.0              # summed sensitivity of the choice

    def name(self, seed: int) -> str:
        return f"{self.method}-t{self.target:.4f}-s{seed}"


def plan(scores: Mapping[str, Callable[[int], Mapping[str, Mapping[int, float]]] | Mapping[str, Mapping[int, float]]],
         cost: Mapping[str, Mapping[int, float]], *, points: int, seeds: Sequence[int],
         start_bits: int, low_bits: int, fixed_cost: float = 0.0, solver: str = "milp",
         per_seed: Sequence[str] = ()) -> list[Point]:
    """All configurations of the frontier.

    ``scores[method]`` is the allocator's sensitivity table ``{layer: {bits: s}}``,
    or, for the methods in ``per_seed`` (e.g. random selection), a function of the
    seed returning one (a different random selection per seed). ``points``
    interior targets are spaced evenly between 1.0x and the all-``low_bits``
    value; the ends are the ``uniform`` points, shared by every method.
    """
    if points < 1:
        raise ValueError(f"points must be >= 1, got {points}")
    grid = allocate.target_grid(cost, points + 2, reference_bits=start_bits, fixed_cost=fixed_cost)
    interior = grid[1:-1]
    layers = list(cost)
    out = [Point(UNIFORM, grid[0], {l: start_bits for l in layers}, tuple(seeds)),
           Point(UNIFORM, grid[-1], {l: low_bits for l in layers}, tuple(seeds))]
    for method, table in scores.items():
        if method in per_seed:
            for seed in seeds:
                out += _allocations(method, table(seed), cost, interior, (seed,), start_bits, fixed_cost, solver)
        else:
            out += _allocations(method, table, cost, interior, tuple(seeds), start_bits, fixed_cost, solver)
    return out


def _allocations(method, table, cost, targets, seeds, start_bits, fixed_cost, solver) -> list[Point]:
    allocs = allocate.sweep(table, cost, targets, reference_bits=start_bits, fixed_cost=fixed_cost, solver=solver)
    return [Point(method, a.target, dict(a.bits), seeds, a.score) for a in allocs]


def summarize(results: pd.DataFrame, float_metric: float, *, tolerance: float = 0.1) -> pd.DataFrame:
    """Per method: metric per target (mean, std over seeds), area under the frontier, FP recovery.

    ``results`` has the columns of ``RESULT_COLUMNS``; ``uniform`` rows (the
    frontier's ends) are added to every method's curve. Returns one row per
    (method, target) with ``metric_mean``, ``metric_std``, ``seeds``, and the
    per-method ``auc`` (mean metric over the throughput span) and
    ``recovers_fp_at`` (highest relative throughput within ``tolerance`` of
    float; NaN if none) repeated on each of the method's rows.
    """
    if results.empty:
        raise ValueError("no frontier results to summarise")
    g = (results.groupby(["method", "target"], as_index=False)
         .agg(rel_throughput=("rel_throughput", "mean"), metric_mean=("metric", "mean"),
              metric_std=("metric", "std"), seeds=("seed", "nunique")))
    g["metric_std"] = g["metric_std"].fillna(0.0)
    uniform = g[g.method == UNIFORM]
    rows = []
    for method, part in g[g.method != UNIFORM].groupby("method"):
        curve = pd.concat([part, uniform.assign(method=method)]).sort_values("rel_throughput")
        x, y = curve["rel_throughput"].to_numpy(), curve["metric_mean"].to_numpy()
        auc = float(np.trapezoid(y, x) / (x[-1] - x[0])) if x[-1] > x[0] else float(y.mean())
        ok = curve[curve["metric_mean"] >= float_metric - tolerance]
        recovers = float(ok["rel_throughput"].max()) if len(ok) else float("nan")
        rows.append(curve.assign(auc=auc, recovers_fp_at=recovers))
    if not rows:  # only the uniform points were run
        return g.assign(auc=np.nan, recovers_fp_at=np.nan)
    return pd.concat(rows, ignore_index=True)
