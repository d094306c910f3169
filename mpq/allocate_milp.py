"""The exact allocator's MILP (internal to ``mpq.allocate``): one HiGHS solve per budget.

Model. One binary per (layer, bits) in the canonical layout of
``mpq.allocate_instance``; rows: one choice per layer (``= 1``), the group
equalities (``x[m, k] = x[first, k]``) and one cost row (``<= budget``). The
cost row is shifted by each layer's cheapest choice (a constant, since a layer
takes exactly one choice) and divided by the summed per-layer cost spreads, so
HiGHS's absolute tolerances mean the same whatever the unit of cost.

Folded objective. The allocation rule is lexicographic: least summed score,
then least total cost, then least tie weight ``T = sum_l (n - i_l) level_l``
(``i_l``: the layer's position in sorted-name order, ``level_l``: the rank of
its choice, 0 = most bits; so among equal score and cost the earlier layers
keep more bits). Rather than one solve per criterion, one solve minimises::

    F = W_s sigma + W_c kappa + rho T

``sigma`` is the score shifted by each layer's minimum and divided by the
largest per-layer spread (every coefficient in [0, 1]); ``kappa`` the shifted
cost over the summed spreads (in [0, 1] for any assignment); ``T`` an integer
in [0, T_max]. The weights nest: ``rho T`` stays below ``rho (T_max + 1)``, so a
cost difference of at least ``Delta_c = rho (T_max + 1) / W_c`` outweighs any
tie weight, and a score difference of at least ``Delta_s = (W_c + rho (T_max +
1)) / W_s`` outweighs any cost and tie weight together, each by at least one
tie unit ``rho``.

Numerical margins. HiGHS proves optimality only to its tolerances: it prunes a
node that cannot beat the incumbent by more than ``mip_feasibility_tolerance``,
and its LP bounds are exact to its primal and dual feasibility tolerances. All
three are set to 1e-9 (``mpq.allocate_highs``); the tie unit ``rho = 1e-7`` is
100 times larger. The objective stays below 1e7 (``W_s = min(1e5, 1e7 / (n +
1))``), so its rounding in double precision (ulp below 2e-9) is 50 times below
``rho``, and coefficients of at most 1e5 against tolerances of 1e-9 need a
relative precision of 1e-14, within double precision. That range, ``1e7 / rho
= 1e14``, is what the three criteria share; it sets the resolutions:

* ``Delta_s`` is the smallest non-zero gap between two *score changes* (a
  change: the difference between two choices of one layer or group, or 0),
  capped at 1e-4, in units of the largest spread. So neither moving one layer
  nor trading the moves of two layers is ever weighed against cost; nor is
  anything when the scores lie on a grid whose step is such a gap, as ALPS
  scores (multiples of one over a validation split) over many layers do, and
  harmless layers at ``SCORE_FLOOR`` (``mpq.sensitivity``, 1e-6 of the largest
  score): those are reduced only when the budget needs it. ``Delta_s`` is
  raised to ``2 rho (T_max + 1) / W_s`` if smaller (1.2e-8 for 104 layers), so
  that ``Delta_c <= 1``.
* ``W_c = W_s Delta_s - rho (T_max + 1)``, whence ``Delta_c``, in units of the
  summed cost spreads: for 104 two-choice layers, 5.7e-5 with ``Delta_s =
  1e-4`` and 5.8e-3 with ``Delta_s = 1e-6`` (a floored score). Three exact
  criteria for a hundred layers would need a range near 1e16, beyond any
  floating-point solver, so the cost resolution is what gives.

Guarantee. Let ``x*`` be the lexicographic optimum and ``x`` the answer. Then
``sigma(x) < sigma(x*) + Delta_s``; if their scores are equal, ``kappa(x) <
kappa(x*) + Delta_c``; if scores and costs are equal, ``T(x) = T(x*)``
("equal": up to float rounding, about 1e-15 relative; a tie in all three is
broken by HiGHS, deterministic for a given model). So ``x = x*`` unless a
feasible assignment *near-ties* ``x*``: scores strictly between ``sigma(x*)``
and ``sigma(x*) + Delta_s``, or at the optimal score costs strictly between
``kappa(x*)`` and ``kappa(x*) + Delta_c``. Scores on a grid as above, with
costs that differ by ``Delta_c`` or more wherever they differ, never near-tie;
continuous scores rarely do (``tests/test_allocate.py`` measures how rarely).
``score_resolution`` and ``cost_resolution`` give ``Delta_s`` and ``Delta_c``
in the caller's units.

Speed. Before each solve, reduced-cost fixing (``mpq.knapsack_fixing``)
removes the choices that no assignment within reach of the optimum uses, and
bounds the objective from above; the MILP's answer is unchanged, its tree much
smaller.

Budget. HiGHS accepts a cost row violated by its 1e-9 tolerance; the answer is
re-checked in exact (``math.fsum``) arithmetic, and one that breaks the budget
is excluded by a no-good cut (``sum of its binaries <= layers - 1``, removing
that one assignment) before a further solve. So a budget point is one solve,
plus one per such rejection (rare: it needs an assignment within 1e-9 of the
budget). HiGHS's output never reaches the console (``mpq.allocate_highs``).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import sparse

from . import allocate_highs
from .allocate_instance import InfeasibleBudget, Instance
from .knapsack_fixing import Fixing

__all__ = ["Model", "TIE_UNIT", "OBJECTIVE_MAX", "WEIGHT_MAX", "SCORE_RESOLUTION_CAP", "SCORE_NOISE"]

TIE_UNIT = 100 * allocate_highs.FEASIBILITY_TOL   # rho = 1e-7: objective weight of one unit of tie weight
OBJECTIVE_MAX = 1e7           # bound on the objective, for its rounding to stay far below TIE_UNIT
WEIGHT_MAX = 1e5              # bound on a score coefficient
SCORE_RESOLUTION_CAP = 1e-4   # largest Delta_s, in units of the largest per-layer score spread
SCORE_NOISE = 1e-9            # score gaps up to this (same units) are float noise, not a resolution
_MAX_CUTS = 32                # no-good cuts before giving up on a budget


class Model:
    """The MILP of one instance with its folded objective, built once and solved for any budget.

    ``score_resolution`` and ``cost_resolution`` are ``Delta_s`` and ``Delta_c``
    (module docstring) in the caller's units of score and cost.
    """

    def __init__(self, inst: Instance) -> None:
        self.inst = inst
        n_layers, n_vars = len(inst.names), len(inst.bits)
        firsts = inst.start[:-1]
        cheapest = np.minimum.reduceat(inst.cost, firsts)
        self.cost_offset = math.fsum(cheapest)
        shifted_cost = inst.cost - cheapest[inst.layer]
        self.cost_unit = math.fsum(np.maximum.reduceat(shifted_cost, firsts)) or 1.0
        kappa = shifted_cost / self.cost_unit
        shifted_sens = inst.sens - np.minimum.reduceat(inst.sens, firsts)[inst.layer]
        score_unit = float(shifted_sens.max()) or 1.0
        sigma = shifted_sens / score_unit
        tiebreak = ((n_layers - inst.layer) * inst.level).astype(float)                 # T, integers
        ties = float(np.maximum.reduceat(tiebreak, firsts).sum()) + 1.0                 # T_max + 1
        score_weight = min(WEIGHT_MAX, OBJECTIVE_MAX / (n_layers + 1))
        delta_s = max(min(SCORE_RESOLUTION_CAP, self._score_step(sigma)),
                      2.0 * TIE_UNIT * ties / score_weight)
        cost_weight = score_weight * delta_s - TIE_UNIT * ties
        self.score_resolution = delta_s * score_unit
        self.cost_resolution = TIE_UNIT * ties / cost_weight * self.cost_unit
        self.objective = score_weight * sigma + cost_weight * kappa + TIE_UNIT * tiebreak
        one_each = sparse.csr_array((np.ones(n_vars), (inst.layer, np.arange(n_vars))),
                                    shape=(n_layers, n_vars))
        self.matrix = sparse.vstack([one_each, self._group_rows(), kappa[None, :]], format="csr")
        self.lower = np.zeros(self.matrix.shape[0])
        self.lower[:n_layers] = 1.0                 # one choice per layer; group rows are = 0
        self.lower[-1] = -np.inf
        self.unit_of = np.empty(n_layers, dtype=np.int64)
        for u, unit in enumerate(inst.units):
            self.unit_of[list(unit)] = u
        self.fixing = Fixing(self._unit_array(self.objective, np.inf), self._unit_array(inst.cost, 0.0))

    def _score_step(self, sigma: np.ndarray) -> float:
        """The smallest gap above ``SCORE_NOISE`` between two score changes of single units (1 if none).

        A change is the score difference between two choices of one unit (and
        0); the gap between two changes is what one move of a unit, or an
        exchange of moves between two units, does to the total score.
        """
        tables = [np.array(self.inst.unit_table(u, sigma)) for u in self.inst.units]
        changes = np.unique(np.concatenate([np.subtract.outer(t, t).ravel() for t in tables]))
        gaps = np.diff(changes)
        real = gaps[gaps > SCORE_NOISE]
        return float(real.min()) if real.size else 1.0

    def _unit_array(self, values: np.ndarray, missing: float) -> np.ndarray:
        """``values`` summed per (unit, level), ``missing`` where a unit has fewer levels than another."""
        tables = [self.inst.unit_table(u, values) for u in self.inst.units]
        out = np.full((len(tables), max(map(len, tables))), missing)
        for u, table in enumerate(tables):
            out[u, :len(table)] = table
        return out

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

    def solve(self, budget: float, tol: float) -> np.ndarray:
        """The chosen binaries (one per layer) of the folded optimum within ``budget + tol``.

        An answer over the budget in exact arithmetic is cut off and the model
        solved again, at most ``_MAX_CUTS`` times. Raises ``InfeasibleBudget``
        if no assignment fits in exact arithmetic.
        """
        inst, limit = self.inst, budget + tol
        kept = self.fixing.keep(limit, lambda k: inst.total(self._binaries(k), inst.cost) <= limit)
        if kept is None:        # the caller's check passed only by rounding: nothing fits exactly
            raise InfeasibleBudget(float(budget), inst.min_cost())
        var_upper, bound = kept[0][self.unit_of[inst.layer], inst.level].astype(float), kept[1]
        matrix, lower, upper = self.matrix, self.lower, self.lower.copy()
        upper[-1] = (limit - self.cost_offset) / self.cost_unit
        n_layers, cuts = len(inst.names), []
        for _ in range(_MAX_CUTS + 1):
            if cuts:
                cut_rows = sparse.csr_array((np.ones(n_layers * len(cuts)),
                                             (np.repeat(np.arange(len(cuts)), n_layers), np.concatenate(cuts))),
                                            shape=(len(cuts), len(inst.bits)))
                matrix = sparse.vstack([self.matrix, cut_rows], format="csr")
                lower = np.concatenate([self.lower, np.full(len(cuts), -np.inf)])
                upper = np.concatenate([upper[:len(self.lower)], np.full(len(cuts), n_layers - 1.0)])
            res = allocate_highs.run(self.objective, matrix, lower, upper, var_upper, bound)
            if res.status != 0 or res.x is None:        # an assignment fits: the fixing found one
                raise RuntimeError(f"HiGHS found no assignment within the budget {budget:.6g} "
                                   f"(status {res.status}: {res.message})")
            chosen = self._chosen(res.x)
            if inst.total(chosen, inst.cost) <= limit:
                return chosen
            cuts.append(chosen)
        raise RuntimeError(f"every assignment HiGHS found for the budget {budget:.6g} broke it when checked "
                           f"({_MAX_CUTS} no-good cuts)")

    def _binaries(self, levels: np.ndarray) -> np.ndarray:
        """The binaries of a per-unit choice of levels (one per layer)."""
        return self.inst.start[:-1] + levels[self.unit_of]

    def _chosen(self, x: np.ndarray) -> np.ndarray:
        """The binary set to one in each layer (largest value, robust to integrality slack)."""
        start = self.inst.start
        return np.array([start[i] + int(np.argmax(x[start[i]:start[i + 1]]))
                         for i in range(len(self.inst.names))], dtype=np.int64)
