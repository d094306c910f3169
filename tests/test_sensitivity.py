"""The common result type: validation, persistence, the allocator's table (and the random baseline)."""
import pandas as pd
import pytest

from mpq import allocate
from mpq.controls import random_scores
from mpq.sensitivity import COLUMNS, SCORE_FLOOR, CostRecord, Sensitivity, allocator_table


def make(scores):
    t = pd.DataFrame({"layer": list(scores), "bits_from": 4, "bits_to": 2, "score": list(scores.values()),
                      "extra": 1})
    return Sensitivity("m", t, CostRecord(method="m", seconds=1.5, device="cpu", workers=2))


def test_columns_first_and_validation():
    s = make({"a": 1.0, "b": 2.0})
    assert list(s.table.columns) == [*COLUMNS, "extra"]
    assert s.cost.device_seconds == 3.0
    with pytest.raises(ValueError, match="missing \\['score'\\]"):
        Sensitivity("m", pd.DataFrame({"layer": ["a"], "bits_from": [4], "bits_to": [2]}), s.cost)
    with pytest.raises(ValueError, match="layer 'a' appears twice"):
        make({"a": 1.0}).__class__("m", pd.concat([s.table, s.table.iloc[:1]]), s.cost)


def test_save_load_round_trip(tmp_path):
    s = make({"a": 1.0, "b": -2.0})
    s.meta["k"] = 1
    s.save(tmp_path)
    back = Sensitivity.load(tmp_path, "m")
    pd.testing.assert_frame_equal(back.table, s.table)
    assert back.cost == s.cost and back.meta == {"k": 1}
    with pytest.raises(FileNotFoundError, match="mpq sensitivity --method x"):
        Sensitivity.load(tmp_path, "x")


def test_negative_scores_are_floored_so_the_budget_is_met_not_overshot():
    scores = {f"l{i}": -1.0 for i in range(6)}
    scores["l0"] = 5.0
    table = allocator_table(scores, 4, 2)
    assert table["l1"] == {4: 0.0, 2: pytest.approx(SCORE_FLOOR * 5.0)} and table["l0"][2] == 5.0
    cost = {l: {4: 10.0, 2: 5.0} for l in scores}
    [a] = allocate.sweep(table, cost, [1.05], reference_bits=4)
    # one 2-bit layer reaches 1.05x (60/55 = 1.09x); negative raw scores must not pull in all five
    assert sum(b == 2 for b in a.bits.values()) == 1 and a.bits["l0"] == 4
    assert make(scores).for_allocator() == table


def test_random_scores_are_seeded():
    a, b = random_scores(["x", "y", "z"], seed=1), random_scores(["x", "y", "z"], seed=1)
    assert a.scores == b.scores != random_scores(["x", "y", "z"], seed=2).scores
    assert a.table["score"].between(0, 1).all() and a.cost.seconds == 0.0
    with pytest.raises(ValueError, match="at least one layer"):
        random_scores([], seed=0)
