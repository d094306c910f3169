"""How fast is the allocator, and how much does the exact MILP beat the greedy rule?

Builds ResNet-101-sized instances (104 candidate layers x {4, 2} bits) with
lognormal, MAC-proportional throughput costs (``MACs / speedup(b)``, speed-up
2 at 4 bits and 4 at 2 bits) and an 8-bit first conv and classifier as fixed
cost, then sweeps 12 relative targets from 1.0x to all-2-bit with each solver.
Two kinds of sensitivity: continuous scores (EAGL- or Hessian-like, no ties)
and ALPS-like accuracy drops, multiples of 1/500 (a 500-image validation
split), which tie often and so exercise the tie-break.

    python benchmarks/allocate_speed.py [--seeds 3] [--layers 104] [--points 12]

Prints, per instance, milliseconds per budget point (mean: wall time of the
whole sweep, matrix building included, divided by the points; worst: the
slowest solve) and greedy's summed score over the MILP's (>= 1; mean and worst
over the points where the MILP's score is positive). Then, per kind of score,
the median and worst milliseconds of one solve (``Allocation.seconds``) over
every point, against the speed targets for continuous scores: median at most
50 ms and worst at most 100 ms per solve. Exits with status 1 if a target is
missed.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from mpq.allocate import Allocation, sweep, target_grid

TARGET_MEDIAN_MS = 50.0     # per solve, continuous scores
TARGET_WORST_MS = 100.0


def instance(seed: int, layers: int, tied: bool) -> tuple[dict, dict, float]:
    """(sensitivity, cost, fixed_cost) of a random ResNet-like network."""
    rng = np.random.default_rng(seed)
    macs = rng.lognormal(mean=18.0, sigma=1.0, size=layers + 2)     # ~1e8 MACs a layer
    names = [f"layer{i:03d}" for i in range(layers)]
    cost = {n: {4: float(m / 2), 2: float(m / 4)} for n, m in zip(names, macs[1:-1])}
    drop = rng.gamma(shape=1.0, scale=0.01, size=layers)            # score of going to 2 bits
    if tied:
        drop = np.round(drop * 500) / 500
    sens = {n: {4: 0.0, 2: float(d)} for n, d in zip(names, drop)}
    fixed = float(macs[0] + macs[-1])                                # 8 bits: speed-up 1
    return sens, cost, fixed


def timed(sens: dict, cost: dict, fixed: float, grid: list[float], solver: str) -> tuple[list[Allocation], float]:
    began = time.perf_counter()
    points = sweep(sens, cost, grid, fixed_cost=fixed, solver=solver)
    return points, (time.perf_counter() - began) / len(grid) * 1e3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=104)
    parser.add_argument("--points", type=int, default=12)
    args = parser.parse_args()
    print(f"{args.layers} layers x {{4, 2}} bits, {args.points} targets from 1.0x to all-2-bit\n")
    print(f"{'scores':<11}{'seed':>5}{'milp ms/pt':>12}{'worst':>8}{'greedy ms/pt':>14}"
          f"{'greedy/milp':>13}{'worst':>8}")
    solve_ms: dict[str, list[float]] = {}
    for tied in (False, True):
        kind = "ALPS-tied" if tied else "continuous"
        for seed in range(args.seeds):
            sens, cost, fixed = instance(seed, args.layers, tied)
            grid = target_grid(cost, args.points, fixed_cost=fixed)
            exact, exact_ms = timed(sens, cost, fixed, grid, "milp")
            heuristic, greedy_ms = timed(sens, cost, fixed, grid, "greedy")
            ratios = [h.score / e.score for e, h in zip(exact, heuristic) if e.score > 0]
            solve_ms.setdefault(kind, []).extend(p.seconds * 1e3 for p in exact)
            print(f"{kind:<11}{seed:>5}{exact_ms:>12.1f}{max(p.seconds for p in exact) * 1e3:>8.1f}"
                  f"{greedy_ms:>14.2f}{np.mean(ratios):>13.4f}{max(ratios):>8.4f}")
    print(f"\nms per MILP solve, over every seed and target (targets for continuous scores: "
          f"median <= {TARGET_MEDIAN_MS:g}, worst <= {TARGET_WORST_MS:g})")
    print(f"{'scores':<11}{'solves':>7}{'median':>9}{'worst':>9}")
    for kind, ms in solve_ms.items():
        print(f"{kind:<11}{len(ms):>7}{np.median(ms):>9.1f}{max(ms):>9.1f}")
    continuous = solve_ms["continuous"]
    met = np.median(continuous) <= TARGET_MEDIAN_MS and max(continuous) <= TARGET_WORST_MS
    print("speed targets met" if met else "speed targets MISSED")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
