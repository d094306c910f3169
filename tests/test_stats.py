"""Paired bootstrap intervals (mpq.stats, mpq.uncertainty), per-sample counts (mpq.metrics),
the size controls (mpq.controls), the step diagnostic (mpq.diagnostics) and the interval verdicts
and reliability table of the report (mpq.claims, mpq.report_items)."""
import numpy as np
import pandas as pd
import pytest
import torch

from mpq import claims, controls, diagnostics, paths, report_items, stats
from mpq.metrics import metric_from_sums, miou, sample_stats, top1
from mpq.quantizers import lsq_init_step
from mpq.uncertainty import NetworkUncertainty, ci_text


def test_sample_stats_sum_to_the_metric():
    torch.manual_seed(0)
    p, t = torch.randint(0, 4, (6, 5, 5)), torch.randint(0, 4, (6, 5, 5))
    t[0, 0, 0] = 255
    rows = sample_stats(p, t, task="segmentation", num_classes=4)
    assert rows.shape == (6, 8)
    assert float(metric_from_sums(rows.sum(0), "segmentation")) == pytest.approx(miou(p, t, num_classes=4))
    p, t = torch.randint(0, 3, (10,)), torch.randint(0, 3, (10,))
    rows = sample_stats(p, t, task="classification", num_classes=3)
    assert float(metric_from_sums(rows.sum(0), "classification")) == pytest.approx(top1(p, t))


def _samples(rng, acc, n=400, seeds=4):
    return np.stack([np.stack([(rng.random(n) < acc).astype(np.int64), np.ones(n, np.int64)], 1)
                     for _ in range(seeds)])


def test_bootstrap_interval_covers_the_mean_and_shrinks_with_more_images():
    rng = np.random.default_rng(0)
    small, large = _samples(rng, 0.8, n=200), _samples(rng, 0.8, n=3200)
    widths = []
    for x in (small, large):
        r = stats.replicates(x.shape[1], x.shape[0], reps=500, seed=1)
        v = r.values(x, "classification")
        lo, hi = stats.interval(v)
        point = 100 * x[..., 0].mean()
        assert lo < point < hi
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2  # 16x the images: about a quarter of the width


def test_paired_difference_is_tighter_than_unpaired_and_detects_a_shift():
    rng = np.random.default_rng(0)
    a = _samples(rng, 0.8, n=1000)
    b = a.copy()
    flip = rng.random(b.shape[:2]) < 0.03  # b: the same predictions, 3 % of them made wrong
    b[..., 0] = np.where(flip, 0, b[..., 0])
    r = stats.replicates(1000, 4, reps=500)
    lo, hi = stats.interval(r.values(a, "classification") - r.values(b, "classification"))
    assert lo > 0  # a is better, and the paired interval sees it
    other = stats.replicates(1000, 4, reps=500, seed=7)
    ulo, uhi = stats.interval(r.values(a, "classification") - other.values(b, "classification"))
    assert hi - lo < (uhi - ulo) / 2


def test_grouped_bootstrap_draws_the_copies_of_a_digit_together():
    rng = np.random.default_rng(3)
    x = _samples(rng, 0.8, n=400, seeds=1)
    copies = np.concatenate([x] * 5, axis=1)  # every digit five times: no new information
    groups = np.tile(np.arange(400), 5)
    r = stats.replicates(2000, 1, reps=400, seed=2, groups=groups)
    w = r.image_weights.reshape(400, 5, 400)
    assert (w == w[:, :1]).all() and (r.image_weights.sum(1) == 2000).all()  # one count per digit, 5 copies
    width = {}
    for name, (samples, draw) in {"digits": (x, stats.replicates(400, 1, reps=400, seed=2)), "grouped": (copies, r),
                                  "as images": (copies, stats.replicates(2000, 1, reps=400, seed=2))}.items():
        lo, hi = stats.interval(draw.values(samples, "classification"))
        width[name] = hi - lo
    assert width["grouped"] == pytest.approx(width["digits"], rel=0.2)  # copies add nothing, and the groups know it
    assert width["as images"] < 0.6 * width["digits"]  # counted as images they would feign sqrt(5) x the data
    for bad in (np.zeros(2), np.array([0, 2, 2]), np.array([-1, 0, 1])):
        with pytest.raises(ValueError, match="groups must number"):
            stats.replicates(3, 1, groups=bad)


def test_values_refuse_mismatched_samples():
    r = stats.replicates(10, 2, reps=5)
    with pytest.raises(ValueError, match="samples per seed"):
        r.values(np.ones((2, 11, 2)), "classification")
    with pytest.raises(ValueError, match="seeds"):
        r.values(np.ones((3, 10, 2)), "classification")
    assert ci_text(float("nan"), 1.0) == "n/a" and ci_text(1.0, 2.5) == "[1.00, 2.50]"


def _frontier(tmp_path, rng, shifts):
    """A fake network's frontier: uniform ends and two methods at two targets, 2 seeds, samples files."""
    n, rows, samples = 300, [], {}
    base = rng.random(n)
    def preds(acc):
        return np.stack([(base < acc).astype(np.int64), np.ones(n, np.int64)], 1)
    points = [("uniform", 1.0, 1.0, 0.9), ("uniform", 2.0, 2.0, 0.5)]
    for m, shift in shifts.items():
        points += [(m, 1.3, 1.3, 0.8 + shift), (m, 1.6, 1.6, 0.7 + shift)]
    for m, t, x, acc in points:
        for s in (0, 1):
            rows.append({"method": m, "target": t, "seed": s, "rel_throughput": x, "metric": 100 * acc})
            samples[f"{m}-t{t:.4f}-s{s}"] = preds(acc)
    np.savez(tmp_path / paths.FRONTIER_SAMPLES, **samples)
    np.savez(tmp_path / paths.BASELINES_SAMPLES, float=preds(0.9), uniform4=preds(0.9), uniform2=preds(0.5))
    return pd.DataFrame(rows)


def test_network_uncertainty_auc_and_verdicts(tmp_path, monkeypatch):
    rng = np.random.default_rng(123)  # not the draw's seed 0: the same stream would correlate them
    frontier = _frontier(tmp_path, rng, {"eagl": 0.05, "hessian": 0.0})
    unc = NetworkUncertainty.load(tmp_path, frontier, "classification", reps=300)
    assert unc is not None
    lo, hi = unc.interval(unc.config("eagl", 1.3))
    point = float(frontier[(frontier.method == "eagl") & (frontier.target == 1.3)]["metric"].mean())
    assert lo <= point <= hi
    assert unc.auc("eagl").mean() > unc.auc("hessian").mean()
    lo, hi = unc.diff(unc.auc("eagl"), unc.auc("hessian"))
    assert lo > 0  # 5 points better everywhere, paired on the same images
    monkeypatch.setattr(claims, "_ours", lambda: ["eagl"])
    monkeypatch.setattr(claims, "_compared", lambda: ["hessian"])
    facts = {"auc": {"eagl": float(unc.auc("eagl").mean()), "hessian": float(unc.auc("hessian").mean())},
             "unc": unc, "float": 90.0,
             "targets": {"eagl": [(1.3, 85.0, 1.3), (1.6, 75.0, 1.6)]}}
    outcomes, words = claims._frontier_ci(facts)
    assert outcomes == [claims.YES] and "minus Hessian" in words
    outcomes, words = claims._recovery_ci(facts)
    assert outcomes == [claims.NO] and "not recovered" in words  # 5 points under float
    assert unc.groups is None and unc.sources == unc.images == 300
    # the baselines file names each test image's digit: the draw follows it, and a mismatch is refused
    with np.load(tmp_path / paths.BASELINES_SAMPLES) as z:
        base = {k: z[k] for k in z.files}
    np.savez(tmp_path / paths.BASELINES_SAMPLES, **base, **{paths.SAMPLE_GROUPS: np.arange(300) % 100})
    grouped = NetworkUncertainty.load(tmp_path, frontier, "classification", reps=50)
    assert (grouped.images, grouped.sources) == (300, 100) and "test_groups" not in grouped.baselines
    w = grouped.resampling("images").draw.image_weights
    assert (w[:, :100] == w[:, 100:200]).all()
    np.savez(tmp_path / paths.BASELINES_SAMPLES, **base, **{paths.SAMPLE_GROUPS: np.arange(299)})
    with pytest.raises(ValueError, match="299 test groups for 300 test images"):
        NetworkUncertainty.load(tmp_path, frontier, "classification", reps=50)
    # no samples: no uncertainty
    (tmp_path / paths.FRONTIER_SAMPLES).unlink()
    assert NetworkUncertainty.load(tmp_path, frontier, "classification") is None


def test_three_way_verdicts():
    v = claims._verdict3
    assert v([claims.YES, claims.YES], []) == "reproduced"
    assert v([claims.YES, claims.NO], []) == "partially reproduced"
    assert v([claims.NO, claims.NO], []) == "not reproduced"
    assert v([claims.NO, claims.UNSURE], []) == "inconclusive"
    assert v([claims.UNSURE], []) == "inconclusive"
    assert v([], []) == "not testable"


def test_size_controls():
    params = {"a": 10, "b": 1000, "c": 50}
    largest = controls.size_scores(params, order="largest")
    smallest = controls.size_scores(params, order="smallest")
    assert set(largest.table["score"]) == {1.0} and largest.method == "largest"
    assert list(smallest.table["score"]) == [10.0, 1000.0, 50.0] and smallest.cost.seconds == 0
    with pytest.raises(ValueError, match="order"):
        controls.size_scores(params, order="middle")


def test_step_diagnostic_ratios():
    w = torch.randn(8, 4, 3, 3)
    fstate = {"conv.weight": w}
    init = lsq_init_step(w.abs().mean(), 4, True)
    r = diagnostics.step_ratios(fstate, {"conv.wq.step": init * 1.5}, {"conv": 4}, ["conv"])
    assert r == pytest.approx([1.5])
    d = diagnostics.step_diagnostic(np.array([1.0, 1.005, 0.8]), [2.0, 2.0, 3.0])
    assert d["moved_over_1pct"] == pytest.approx(1 / 3) and d["score_max"] == 3.0
    assert d["score_cv_pct"] == pytest.approx(100 * np.std([2, 2, 3]) / np.mean([2, 2, 3]))


def test_reliability_table():
    class Net:
        network = "resnet50"
        sensitivity = {
            "alps": pd.DataFrame({"score": [1, 2, 3, 4.0], "retest_score": [1, 2, 4, 3.0],
                                  "score_half_a": [1, 2, 3, 4.0], "score_half_b": [4, 3, 2, 1.0]}),
            "hessian": pd.DataFrame({"score": [1, 2, 3.0], "retest_score": [1, 2, 3.0]}),
            "eagl": pd.DataFrame({"score": [1, 2, 3.0]})}
    t = report_items.reliability([Net()])
    got = {(r.method, r.retest): r.spearman for r in t.itertuples()}
    assert got == {("alps", "seed"): pytest.approx(0.8), ("alps", "split-half"): pytest.approx(-1.0),
                   ("hessian", "seed"): pytest.approx(1.0)}


def test_recovery_rule_is_the_same_for_t1_c1_and_metrics():
    """claims.recovery: without intervals the mean within tolerance; with them the interval of
    (mix - float) above minus float's half-width; the highest throughput that passes wins."""
    targets = [(1.2, 95.9, 1.2), (1.4, 95.5, 1.4), (1.6, 90.0, 1.6), (1.0, 96.0, 1.0)]
    assert claims.recovery(targets, "eagl", 96.0, 0.2) == (1.2, 95.9, pytest.approx(np.nan, nan_ok=True),
                                                            pytest.approx(np.nan, nan_ok=True))
    assert claims.recovery(targets, "eagl", 96.0, 0.01) is None  # the 1.0x point never counts

    class Unc:  # float's interval [95.5, 96.5] (half-width 0.5); (mix - float) intervals per target
        diffs = {1.2: (-0.3, 0.1), 1.4: (-0.45, 0.0), 1.6: (-7.0, -5.0), 1.0: (0.0, 0.0)}
        def float_values(self): return "float"
        def interval(self, values): return (95.5, 96.5)
        def config(self, method, target): return target
        def diff(self, a, b): return self.diffs[a]

    assert claims.float_tolerance(Unc()) == pytest.approx(0.5)
    assert claims.recovery(targets, "eagl", 96.0, 0.01, Unc()) == (1.4, 95.5, -0.45, 0.0)
    Unc.diffs = {**Unc.diffs, 1.2: (-0.6, -0.1), 1.4: (-0.9, -0.2)}
    assert claims.recovery(targets, "eagl", 96.0, 0.5, Unc()) is None
    # the best miss T1 shows is the mix C1 judges: by mean without intervals, by the upper end with them
    assert claims.best_miss(targets, "eagl")[:2] == (1.2, 95.9)
    Unc.diffs = {**Unc.diffs, 1.2: (-0.9, -0.3), 1.4: (-0.8, -0.2)}
    assert claims.best_miss(targets, "eagl", Unc()) == (1.4, 95.5, -0.8, -0.2)
    assert report_items._best_miss(targets, "eagl", Unc()).startswith(" (best 1.40x: 95.50")
    assert claims.best_miss([(1.0, 96.0, 1.0)], "eagl") is None


def test_noise_budget_splits_test_images_from_seeds(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    frontier = _frontier(tmp_path, rng, {"eagl": 0.05, "hessian": 0.0})
    unc = NetworkUncertainty.load(tmp_path, frontier, "classification", reps=300)
    images, seeds = unc.resampling("images"), unc.resampling("seeds")
    # the two seeds predict alike here: all of the spread comes from the test images
    assert np.std(seeds.config("eagl", 1.3)) == 0 and np.std(images.config("eagl", 1.3)) > 0
    assert np.std(unc.config("eagl", 1.3)) == pytest.approx(np.std(images.config("eagl", 1.3)), rel=0.25)
    with pytest.raises(ValueError, match="resample: choose one or more of"):
        stats.replicates(10, 2, resample=("pixels",))
    monkeypatch.setattr(claims, "_ours", lambda: ["eagl"])
    monkeypatch.setattr(claims, "_compared", lambda: ["hessian"])
    facts = {"auc": {"eagl": float(unc.auc("eagl").mean()), "hessian": float(unc.auc("hessian").mean())},
             "unc": unc, "targets": {"eagl": [(1.3, 85.0, 1.3), (1.6, 75.0, 1.6)]}}

    class Net:
        network = "n"

    t = report_items.noise_budget([Net()], {"n": {**facts, "float": 90.0}})
    assert list(t.quantity) == ["AUC EAGL - Hessian (HAWQ)", "mix - float (median over 2 mixes above 1.0x)"]
    auc, mix = t.iloc[0], t.iloc[1]
    assert auc.estimate == pytest.approx(facts["auc"]["eagl"] - facts["auc"]["hessian"])
    assert auc.sd_seeds == 0 and auc.sd_images > 0 and (auc.images, auc.sources, auc.seeds) == (300, 300, 2)
    assert mix.estimate == -10.0 and mix.sd_seeds == pytest.approx(0, abs=1e-9) and mix.sd_images > 0
    # paired with float on the same images: far less spread than the mix's metric alone
    assert mix.sd_images < np.std(images.config("eagl", 1.3))
    none = report_items.noise_budget([Net()], {"n": {**facts, "unc": None}})
    assert list(none.quantity) == ["n/a (no per-image results)"]


def test_noise_budget_cannot_measure_seeds_from_one_seed(tmp_path):
    rng = np.random.default_rng(5)
    frontier = _frontier(tmp_path, rng, {"eagl": 0.05, "hessian": 0.0})
    frontier = frontier[frontier.seed == 0]
    unc = NetworkUncertainty.load(tmp_path, frontier, "classification", reps=100)
    facts = {"auc": {"eagl": 1.0, "hessian": 0.5}, "unc": unc, "float": 90.0,
             "targets": {"eagl": [(1.3, 85.0, 1.3)]}}

    class Net:
        network = "n"

    t = report_items.noise_budget([Net()], {"n": facts})
    assert t.sd_seeds.isna().all() and (t.sd_images > 0).all() and (t.seeds == 1).all()
