"""Reduced-cost fixing for the allocator's knapsack (internal to ``mpq.allocate_milp``).

The problem: units ``u`` (a layer, or a group of layers sharing one
precision), each taking one of its choices ``k``, of objective ``f[u, k]`` and
cost ``w[u, k]``; minimise the summed objective with the summed cost at most
``limit``. For a multiplier ``lam >= 0`` the Lagrangian relaxation of the
budget bounds every feasible assignment ``x`` from below::

    f(x) >= f(x) + lam (w(x) - limit) = L(lam) + sum_u r[u, x_u]
    L(lam)    = sum_u min_k (f[u, k] + lam w[u, k]) - lam limit
    r[u, k]   = f[u, k] + lam w[u, k] - min_k' (f[u, k'] + lam w[u, k'])   (>= 0)

so an assignment that uses choice ``k`` of unit ``u`` has objective at least
``L(lam) + r[u, k]``. Given a feasible assignment of objective ``U``, a choice
with ``L(lam) + r[u, k] > U + margin`` belongs to no assignment within
``margin`` of the optimum and can be removed before the MILP: the optimum
stays, and so does every assignment the MILP could return, while the tree
search shrinks (on the benchmark's 104-layer instances, to about ten free
layers). ``margin`` is far above the rounding error of these sums.

The multiplier. The minimiser of ``f + lam w`` changes only at breakpoints
(values of ``lam`` where two choices of one unit tie) and its cost does not
increase with ``lam``: a binary search over the intervals between the sorted
breakpoints finds the first one whose minimiser fits the budget. The left end
of that interval maximises ``L`` (it is the LP bound of the knapsack); its
minimiser, topped up greedily with the budget it leaves, is the feasible
assignment that gives ``U``.
"""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["Fixing"]

_MARGIN = 1e-9      # relative to the magnitudes summed: far above their rounding (1e-16 each)


class Fixing:
    """Reduced-cost fixing for one table of objectives and costs, for any budget.

    ``f`` and ``w`` are ``(units, levels)`` arrays; a unit with fewer choices
    than ``levels`` has ``f = inf`` (and any finite ``w``) in the missing ones.
    """

    def __init__(self, f: np.ndarray, w: np.ndarray) -> None:
        self.f, self.w = f, w
        self.rows = np.arange(f.shape[0])
        a, b = np.meshgrid(np.arange(f.shape[1]), np.arange(f.shape[1]), indexing="ij")
        fa, fb, wa, wb = f[:, a.ravel()], f[:, b.ravel()], w[:, a.ravel()], w[:, b.ravel()]
        crossing = (wa < wb) & (fa > fb) & np.isfinite(fa) & np.isfinite(fb)   # a cheaper, b better
        breaks = np.unique((fa[crossing] - fb[crossing]) / (wb[crossing] - wa[crossing]))   # all > 0
        ends = np.concatenate([[0.0], breaks])                        # left end of each interval
        inner = (ends[:-1] + ends[1:]) / 2
        self.left, self.probes = ends, np.concatenate([inner, [2.0 * ends[-1] + 1.0]])

    def _minimiser(self, lam: float) -> np.ndarray:
        return np.argmin(self.f + lam * self.w, axis=1)

    def keep(self, limit: float, fits: Callable[[np.ndarray], bool]) -> tuple[np.ndarray, float] | None:
        """The choices that may stay (bool ``(units, levels)``) and a bound above the optimum.

        ``fits(k)`` is the exact budget check of the assignment ``k`` (one
        level per unit). None if nothing fits, not even the cheapest choice of
        every unit (the last interval's minimiser).
        """
        lo, hi = 0, len(self.probes) - 1
        if not fits(self._minimiser(self.probes[hi])):
            return None
        while lo < hi:
            mid = (lo + hi) // 2
            if fits(self._minimiser(self.probes[mid])):
                hi = mid
            else:
                lo = mid + 1
        lam, best = self.left[lo], self._minimiser(self.probes[lo])
        topped = self._top_up(best.copy(), limit)
        if fits(topped):
            best = topped
        values = self.f + lam * self.w
        lowest = values.min(axis=1)
        bound = math.fsum(lowest) - lam * limit
        incumbent = math.fsum(self.f[self.rows, best])
        finite = np.where(np.isfinite(self.f), np.abs(self.f), 0.0)
        margin = _MARGIN * math.fsum([*finite.max(axis=1), lam * (math.fsum(self.w.max(axis=1)) + abs(limit))])
        return bound + (values - lowest[:, None]) <= incumbent + margin, incumbent + margin

    def _top_up(self, k: np.ndarray, limit: float) -> np.ndarray:
        """Spend the budget ``k`` leaves on the units that gain most from a better choice that fits."""
        slack = limit - math.fsum(self.w[self.rows, k])
        here_f, here_w = self.f[self.rows, k], self.w[self.rows, k]
        better = (self.f < here_f[:, None]) & (self.w - here_w[:, None] <= slack)
        units = np.flatnonzero(better.any(axis=1))
        for u in units[np.argsort(self.f[units].min(axis=1) - here_f[units], kind="stable")]:
            extra = self.w[u] - self.w[u, k[u]]
            ok = np.flatnonzero((self.f[u] < self.f[u, k[u]]) & (extra <= slack))
            if ok.size:
                j = ok[np.argmin(self.f[u, ok])]
                slack -= extra[j]
                k[u] = j
        return k
