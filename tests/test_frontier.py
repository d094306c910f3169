"""Frontier planning and summaries (no training here; the jobs are tested in test_jobs)."""
import math

import numpy as np
import pandas as pd
import pytest

from mpq import frontier
from mpq.frontier import UNIFORM

LAYERS = [f"l{i}" for i in range(6)]
COST = {l: {4: float(10 * (i + 1)), 2: float(5 * (i + 1))} for i, l in enumerate(LAYERS)}
SENS = {l: {4: 0.0, 2: float(6 - i)} for i, l in enumerate(LAYERS)}


def test_plan_covers_methods_targets_and_uniform_ends():
    rnd = lambda seed: {l: {4: 0.0, 2: float(np.random.default_rng(seed).random())} for l in LAYERS}  # noqa
    pts = frontier.plan({"eagl": SENS, "random": rnd}, COST, points=3, seeds=[0, 1], start_bits=4, low_bits=2,
                         per_seed=["random"])
    uni = [p for p in pts if p.method == UNIFORM]
    assert [p.target for p in uni] == [1.0, pytest.approx(2.0)]
    assert set(uni[0].bits.values()) == {4} and set(uni[1].bits.values()) == {2}
    eagl = [p for p in pts if p.method == "eagl"]
    assert len(eagl) == 3 and all(p.seeds == (0, 1) for p in eagl)
    assert [p.target for p in eagl] == sorted(p.target for p in eagl)
    assert all(1.0 < p.target < 2.0 for p in eagl)
    rand = [p for p in pts if p.method == "random"]
    assert len(rand) == 6 and {p.seeds for p in rand} == {(0,), (1,)}
    # more reduced layers as the target rises, and always within budget
    n_low = [sum(b == 2 for b in p.bits.values()) for p in eagl]
    assert n_low == sorted(n_low) and n_low[0] >= 1
    for p in eagl:
        achieved = sum(COST[l][b] for l, b in p.bits.items())
        assert sum(c[4] for c in COST.values()) / achieved >= p.target - 1e-9
    assert eagl[0].name(1) == f"eagl-t{eagl[0].target:.4f}-s1"


def test_plan_prefers_low_scores():
    pts = frontier.plan({"m": SENS}, COST, points=1, seeds=[0], start_bits=4, low_bits=2)
    [p] = [p for p in pts if p.method == "m"]
    # l5 has the lowest score and the largest saving: it is reduced first
    assert p.bits["l5"] == 2 and p.bits["l0"] == 4


def results():
    rows = []
    for seed in (0, 1):
        rows += [{"method": UNIFORM, "target": 1.0, "seed": seed, "rel_throughput": 1.0, "metric": 90.0 + seed},
                 {"method": UNIFORM, "target": 2.0, "seed": seed, "rel_throughput": 2.0, "metric": 50.0},
                 {"method": "a", "target": 1.5, "seed": seed, "rel_throughput": 1.5, "metric": 90.0 + seed},
                 {"method": "b", "target": 1.5, "seed": seed, "rel_throughput": 1.5, "metric": 70.0}]
    return pd.DataFrame(rows)


def test_summarize_auc_recovery_and_spread():
    s = frontier.summarize(results(), float_metric=90.5, tolerance=0.1)
    a, b = s[s.method == "a"], s[s.method == "b"]
    assert list(a.rel_throughput) == [1.0, 1.5, 2.0]
    assert a.metric_mean.tolist() == [90.5, 90.5, 50.0] and a.metric_std.iloc[0] == pytest.approx(math.sqrt(0.5))
    # trapezoid: ((90.5+90.5)/2*0.5 + (90.5+50)/2*0.5) / 1.0
    assert a.auc.iloc[0] == pytest.approx(45.25 + 35.125)
    assert a.recovers_fp_at.iloc[0] == 1.5 and b.recovers_fp_at.iloc[0] == 1.0
    assert b.auc.iloc[0] < a.auc.iloc[0]
    none = frontier.summarize(results(), float_metric=99.0)
    assert none.recovers_fp_at.isna().all()


def test_bad_input():
    with pytest.raises(ValueError, match="points must be"):
        frontier.plan({"m": SENS}, COST, points=0, seeds=[0], start_bits=4, low_bits=2)
    with pytest.raises(ValueError, match="no frontier results"):
        frontier.summarize(pd.DataFrame(columns=frontier.RESULT_COLUMNS), 90.0)
