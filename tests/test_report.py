"""The report: every declared output from synthetic result folders, and claim verdicts both ways.

The result folders are written here from a known per-layer "true" drop: a
mix's metric is the uniform 4-bit metric minus the true drops of its 2-bit
layers. When EAGL and ALPS rank layers like the truth (``agree=True``) the
paper's claims hold; with their scores reversed and EAGL made slow, they fail.
"""
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from mpq import bitconfig, checkpoint, claims, cost, frontier, methods, paths, report, report_items, results, tables
from mpq.quantizers import lsq_init_step

SETTINGS = {"start_bits": 4, "low_bits": 2, "tolerance": 0.1, "compute_factor": 100.0, "cost_kind": "throughput"}

NETWORKS = ("resnet50", "pspnet")
FLOAT = {"resnet50": 90.0, "pspnet": 60.0}
FIGURES = {"F1_frontier_resnet50", "F3_frontier_pspnet", "F4_sensitivity_profiles", "F5_rank_correlation",
           "F6_compute_time", "F7_ablation", "F8_additivity"}
TABLES = {"T1_headline", "T2_matched_throughput", "T3_compute_time", "T4_claims", "T5_rank_correlation",
          "T6_ablation", "T7_additivity", "T8_step_diagnostic", "T9_reliability", "T10_noise_budget"}


STEP_MOVE = {4: (1.0, 1.0), 2: (0.9, 1.2)}  # trained / initial step of the even and odd layers
TEST_IMAGES = 4000  # per-image results: enough that a 4-point gap lies outside the intervals


class _State:
    """A state dict in the shape ``mpq.checkpoint.save`` takes (anything with ``state_dict()``)."""

    def __init__(self, state):
        self.state = state

    def state_dict(self):
        return self.state


def _layers(network: str, n: int) -> tuple[list[str], str, str]:
    first, last = ("conv1", "fc") if network.startswith("resnet") else ("backbone.conv1", "classifier")
    return [f"block{i}.conv" for i in range(n)], first, last


def write_results(root, network: str, *, agree: bool = True, n: int = 12, seeds=(0, 1), points: int = 3) -> None:
    """A plausible ``results/<network>/`` folder (what baselines, sensitivity and frontier write)."""
    rng = np.random.default_rng(len(network))
    d = root / network
    (d / "sensitivity").mkdir(parents=True)
    cands, first, last = _layers(network, n)
    macs = {l: int(m) for l, m in zip(cands, rng.integers(2_000, 20_000, n))}
    params = {l: int(p) for l, p in zip(cands, rng.integers(100, 3_000, n))}
    macs.update({first: 30_000, last: 1_000})
    params.update({first: 500, last: 640})
    # true drop of reducing each layer: half harmless (<= 0.005 points), half harmful (0.5-3 points)
    true = {l: (float(rng.uniform(0, 0.005)) if i % 2 else float(rng.uniform(0.5, 3.0))) for i, l in enumerate(cands)}
    fp = FLOAT[network]
    u4 = fp - 0.03
    order = [first, *cands, last]
    pd.DataFrame({"layer": order, "macs": [macs[l] for l in order], "params": [params[l] for l in order],
                  "bits": [8 if l in (first, last) else 4 for l in order],
                  "candidate": [l not in (first, last) for l in order]}).to_csv(d / "layers.csv", index=False)
    (d / "baselines.json").write_text(json.dumps({
        "float": {"metric": fp, "val_metric": fp - 0.2, "seconds": 9.0, "bits": None},
        "uniform4": {"metric": u4 - 0.01, "val_metric": u4, "seconds": 6.0, "bits": 4},
        "uniform2": {"metric": u4 - sum(true.values()), "val_metric": 40.0, "seconds": 5.0, "bits": 2}}))

    noise = lambda scale: rng.normal(0, scale, n)  # noqa: E731
    t = np.array([true[l] for l in cands])
    ranked = t if agree else t.max() - t   # disagreeing: the harmless layers score highest
    entropy = 2.5 + 0.4 * ranked + noise(0.001)
    scores = {
        "eagl": pd.DataFrame({"score": entropy, "entropy": entropy, "params": [params[l] for l in cands],
                              "levels_used": 9, "entropy_low": entropy * 0.5}),
        "alps": pd.DataFrame({"score": ranked + noise(0.0005), "metric": u4 - t, "reference_metric": u4,
                              "seconds": 2.0, "retest_score": ranked + noise(0.3),
                              "score_half_a": ranked + noise(0.1), "score_half_b": ranked + noise(0.1)}),
        "hessian": pd.DataFrame({"score": rng.uniform(0.01, 2.0, n), "trace": 1.0, "trace_stderr": 0.1,
                                 "params": [params[l] for l in cands], "qerr_from": 0.4, "qerr_to": 3.0}),
        "noft": pd.DataFrame({"score": rng.normal(1.0, 1.0, n), "metric": 80.0, "reference_metric": u4,
                              "seconds": 0.5}),
        "random": pd.DataFrame({"score": rng.random(n)}),
        "largest": pd.DataFrame({"score": np.ones(n)}),
        "smallest": pd.DataFrame({"score": [float(params[l]) for l in cands]}),
    }
    seconds = {"eagl": 0.01 if agree else 2.0, "alps": 60.0, "hessian": 5.0, "noft": 8.0, "random": 0.0,
               "largest": 0.0, "smallest": 0.0}
    workers = {"alps": 2, "noft": 2}
    for m, table in scores.items():
        table.insert(0, "layer", cands)
        table.insert(1, "bits_from", 4)
        table.insert(2, "bits_to", 2)
        table.to_csv(d / "sensitivity" / f"{m}.csv", index=False)
        (d / "sensitivity" / f"{m}_cost.json").write_text(json.dumps({
            "cost": {"method": m, "seconds": seconds[m], "device": "cpu:x86_64 x2 threads",
                     "workers": workers.get(m, 1), "forward_passes": 100, "backward_passes": 10, "epochs": 0.5,
                     "host": "test", "notes": ""}, "meta": {"network": network}}))

    # checkpoints: float weights, and uniform LSQ steps moved by a known factor from LSQ's initial step
    weights = {l: torch.randn(4, 3, generator=torch.Generator().manual_seed(i)) * (0.1 + i / n)
               for i, l in enumerate(cands)}
    checkpoint.save(d / "float.pt", _State({f"{l}.weight": w for l, w in weights.items()}), {"bits": None})
    for b in (4, 2):
        steps = {f"{l}.wq.step": lsq_init_step(w.abs().mean(), b, True) * STEP_MOVE[b][i % 2]
                 for i, (l, w) in enumerate(weights.items())}
        checkpoint.save(d / f"uniform{b}.pt", _State(steps), {"bits": {l: b for l in cands}})

    table = cost.layer_costs("throughput", macs, params, cands, [4, 2])
    fixed = cost.total_cost("throughput", {first: 8, last: 8}, macs, params)
    alloc = {m: {r.layer: {4: 0.0, 2: float(r.score)} for r in scores[m].itertuples()} for m in scores if m != "random"}
    alloc["random"] = lambda seed: {l: {4: 0.0, 2: float(v)}  # noqa: E731
                                    for l, v in zip(cands, np.random.default_rng(seed).random(n))}
    plan = frontier.plan(alloc, table, points=points, seeds=seeds, start_bits=4, low_bits=2, fixed_cost=fixed,
                         per_seed=["random"])
    all4 = {first: 8, **{l: 4 for l in cands}, last: 8}
    rows = []
    for p in plan:
        bits = {**all4, **p.bits}
        low = [l for l, b in p.bits.items() if b == 2]
        pred = cost.summary(bits, all4, macs, params)
        for seed in p.seeds:
            bitconfig.save_bits(d / "configs" / f"{p.name(seed)}.yaml", bits, network=network, method=p.method)
            rows.append({"network": network, "method": p.method, "target": p.target, "seed": seed,
                         "rel_throughput": pred["rel_throughput"], "gbops": pred["gbops"], "size_mb": pred["size_mb"],
                         "n_low": len(low), "metric": u4 - sum(true[l] for l in low) + 0.01 * (seed - 0.5),
                         "seconds": 1.0, "config": str(d / "configs" / f"{p.name(seed)}.yaml")})
    table = pd.DataFrame(rows, columns=list(frontier.RESULT_COLUMNS))
    table.to_csv(d / "frontier.csv", index=False)
    if network == "resnet50":  # per-test-image results (bootstrap intervals); PSPNet goes without them
        u = np.random.default_rng(99).random(TEST_IMAGES)  # one draw: paired predictions across configs
        right = lambda metric: np.stack([(u < metric / 100).astype(np.int32),  # noqa: E731
                                         np.ones(TEST_IMAGES, np.int32)], 1)
        np.savez(d / paths.FRONTIER_SAMPLES, **{f"{r['method']}-t{r['target']:.4f}-s{r['seed']}": right(r["metric"])
                                                 for r in rows})
        np.savez(d / paths.BASELINES_SAMPLES, float=right(fp), uniform4=right(u4), uniform2=right(40.0))
    frontier.summarize(table, fp).to_csv(d / "frontier_summary.csv", index=False)
    (d / "frontier_inputs.json").write_text(json.dumps(results.frontier_inputs(
        d, [m for m in set(table["method"]) if (d / "sensitivity" / f"{m}.csv").is_file()])))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("results")
    for net in NETWORKS:
        write_results(root, net)
    out = tmp_path_factory.mktemp("report") / "report"
    return root, out, report.build(root, out, list(NETWORKS), scale="embedded", **SETTINGS)


def test_every_declared_output_exists_and_is_valid(built):
    _, out, items = built
    assert set(items) == FIGURES | TABLES | {"metrics", "frontier_points", "index"}
    for key in FIGURES:
        png = items[key]
        assert png == out / f"{key}.png" and png.stat().st_size > 0
        with Image.open(png) as im:
            im.verify()
        with Image.open(png) as im:
            assert im.size[0] > 300 and im.size[1] > 200
        assert png.with_suffix(".pdf").read_bytes()[:4] == b"%PDF"
    for key in TABLES:
        assert items[key] == out / f"{key}.csv"
        md = items[key].with_suffix(".md").read_text()
        assert md.startswith("### ") and "|---" in md.replace(":---", "---")
    index = items["index"].read_text()
    assert all(f"{k}.png" in index for k in FIGURES)


def _numbers_ok(df, cols):
    for c in cols:
        v = pd.to_numeric(df[c], errors="raise")
        assert v.notna().all() and np.isfinite(v).all(), c


def test_tables_have_their_columns_and_numbers(built):
    _, out, _ = built
    t1 = pd.read_csv(out / "T1_headline.csv")
    assert list(t1.network) == list(NETWORKS)
    _numbers_ok(t1, ["float", "uniform4", "uniform4_std", "uniform2", "uniform2_std", "uniform4_baseline",
                     "uniform2_baseline"])
    # EAGL and ALPS rank layers like the truth: one of them recovers float above 1.0x on each network
    fp_at = {m: pd.to_numeric(t1[f"{m}_fp_at"], errors="coerce") for m in methods.names()}
    assert ((fp_at["eagl"] > 1.0) | (fp_at["alps"] > 1.0)).all() and (fp_at["alps"] > 1.0).all()
    assert fp_at["random"].isna().all() and set(t1.random_fp_at) == {"none"}
    # intervals where the per-image results exist (ResNet-50), none where they do not (PSPNet)
    r50, psp = t1.set_index("network").loc["resnet50"], t1.set_index("network").loc["pspnet"]
    assert r50.float_ci_low < FLOAT["resnet50"] < r50.float_ci_high and np.isnan(psp.float_ci_low)
    assert r50.uniform4_ci_low < r50.uniform4 < r50.uniform4_ci_high
    # recovery: C1's interval rule where intervals exist (its margin: float's half-width), means elsewhere
    assert (r50.recovery_rule, psp.recovery_rule) == ("interval", "means") and psp.recovery_margin == 0.1
    assert r50.recovery_margin == pytest.approx((r50.float_ci_high - r50.float_ci_low) / 2)
    assert r50.alps_fp_minus_float_ci_low >= -r50.recovery_margin and np.isnan(psp.alps_fp_minus_float_ci_low)
    t10 = pd.read_csv(out / "T10_noise_budget.csv")
    assert list(t10.columns) == report_items.NOISE_COLUMNS
    assert list(t10[t10.network == "pspnet"].quantity) == ["n/a (no per-image results)"]
    r10 = t10[t10.network == "resnet50"]
    assert len(r10) == 3 and r10.quantity.iloc[-1].startswith("mix - float")
    _numbers_ok(r10, ["estimate", "sd", "sd_images", "sd_seeds", "images", "sources", "seeds"])
    assert (r10.sd > 0).all() and (r10.images == TEST_IMAGES).all() and (r10.seeds == 2).all()
    t2 = pd.read_csv(out / "T2_matched_throughput.csv")
    assert len(t2) == 2 * 3
    _numbers_ok(t2, ["target"] + [f"{m}_{k}" for m in methods.names() for k in ("mean", "std", "rel_throughput")])
    assert (t2.eagl_mean > t2.random_mean).all()
    t9 = pd.read_csv(out / "T9_reliability.csv")
    assert set(zip(t9.method, t9.retest)) == {("alps", "seed"), ("alps", "split-half")}
    assert (t9[t9.retest == "split-half"].spearman > t9[t9.retest == "seed"].spearman.min()).all()  # less noise
    t4 = pd.read_csv(out / "T4_claims.csv").set_index("id")
    assert "minus float: [" in t4.loc["C1", "evidence"] and "[" not in t4.loc["C3", "evidence"]
    t3 = pd.read_csv(out / "T3_compute_time.csv")
    assert {"seconds", "device_seconds", "device", "workers", "forward_passes", "backward_passes", "epochs",
            "ratio_to_eagl", "units"} <= set(t3.columns)
    _numbers_ok(t3, ["seconds", "device_seconds", "workers", "ratio_to_eagl"])
    alps = t3[(t3.network == "resnet50") & (t3.method == "alps")].iloc[0]
    assert alps.device_seconds == 120.0 and alps.ratio_to_eagl == pytest.approx(12_000)
    t5 = pd.read_csv(out / "T5_rank_correlation.csv")
    assert list(t5.columns) == ["network", "method", "spearman", "spearman_p", "kendall", "kendall_p", "layers"]
    _numbers_ok(t5, ["spearman", "spearman_p", "kendall", "kendall_p", "layers"])
    eagl = t5[t5.method == "eagl"]
    assert (eagl.spearman > 0.8).all() and (eagl.layers == 12).all()
    t6 = pd.read_csv(out / "T6_ablation.csv")
    assert set(t6.variant) == {"entropy", "entropy_x_params", "entropy_drop", "largest", "smallest", "alps"}
    assert set(t6.cost) == {"throughput", "bops"} and set(t6.network) == set(NETWORKS)
    _numbers_ok(t6, ["target", "n_low", "alps_predicted_drop", "alps_optimal_drop", "jaccard_vs_alps"])
    assert (t6.alps_predicted_drop >= t6.alps_optimal_drop - 1e-9).all()  # ALPS's choice is the proxy's optimum
    assert (t6[t6.variant == "alps"].jaccard_vs_alps == 1.0).all()
    assert t6.jaccard_vs_alps.between(0, 1).all()
    assert "training-free" in (out / "T6_ablation.md").read_text()
    t7 = pd.read_csv(out / "T7_additivity.csv")
    assert list(t7.columns) == ["network", "method", "configurations", "pearson", "pearson_p", "spearman",
                                "spearman_p"]
    # score tables only (random is drawn per seed), and the layer-count reference
    assert set(t7.method) == {"eagl", "alps", "hessian", "noft", "2-bit layer count"}
    _numbers_ok(t7, ["configurations", "pearson", "spearman"])
    # the synthetic drops are exactly additive in the true per-layer drops, which ALPS scores here
    assert (t7[t7.method == "alps"].pearson > 0.99).all()
    assert (t7.configurations == t7.configurations.iloc[0]).all() and t7.configurations.iloc[0] > 10
    t8 = pd.read_csv(out / "T8_step_diagnostic.csv").set_index(["network", "checkpoint"])
    for net in NETWORKS:
        still, moved = t8.loc[(net, "uniform4.pt")], t8.loc[(net, "uniform2.pt")]
        assert still.step_ratio_min == pytest.approx(1.0) and still.moved_over_1pct == 0.0
        assert (moved.step_ratio_min, moved.step_ratio_max) == (pytest.approx(0.9), pytest.approx(1.2))
        assert moved.moved_over_1pct == 1.0 and still.layers == 12
        assert still.eagl_cv_pct > 0 and math.isnan(moved.eagl_cv_pct)
    pts = pd.read_csv(out / "frontier_points.csv")
    assert list(pts.columns[:6]) == ["network", "method", "target", "rel_throughput", "metric_mean", "metric_std"]
    _numbers_ok(pts, ["rel_throughput", "metric_mean", "metric_std"])


def test_metrics_json_is_dvc_readable(built):
    _, out, _ = built

    def no_nan(name):
        raise AssertionError(f"{name} in metrics.json")

    m = json.loads((out / "metrics.json").read_text(), parse_constant=no_nan)
    assert set(m) == set(NETWORKS)
    r = m["resnet50"]
    assert r["float"] == 90.0 and set(r["auc"]) == set(methods.names())
    assert set(r["seconds"]) == {"eagl", "alps", "hessian"} and r["recovers_fp_at"]["eagl"] > 1.0
    assert (r["recovery_rule"], m["pspnet"]["recovery_rule"]) == ("interval", "means")
    t1 = pd.read_csv(out / "T1_headline.csv").set_index("network")
    assert r["recovers_fp_at"]["alps"] == pytest.approx(float(t1.loc["resnet50", "alps_fp_at"]), abs=1e-4)  # one rule


def test_claims_hold_on_agreeing_data(built):
    _, out, _ = built
    t4 = pd.read_csv(out / "T4_claims.csv")
    assert list(t4.columns) == ["id", "claim", "evidence", "verdict"]
    v = dict(zip(t4.id, t4.verdict))
    assert len(v) == 4 and all(s.endswith(" at embedded scale") for s in v.values())
    # ResNet-101 is absent: claims 1-2 hold on ResNet-50 only
    assert v == {"C1": "partially reproduced at embedded scale", "C2": "partially reproduced at embedded scale",
                 "C3": "reproduced at embedded scale", "C4": "partially reproduced at embedded scale"}
    assert "ResNet-101" in t4.evidence[0] and "EAGL" in t4.evidence[3]


def test_claims_flip_when_the_data_disagree(tmp_path):
    for net in NETWORKS:
        write_results(tmp_path, net, agree=False)
    t4 = report.assess(tmp_path, list(NETWORKS), scale="embedded", tolerance=0.1, compute_factor=100.0)
    assert list(t4.verdict) == ["not reproduced at embedded scale"] * 4


def _facts(recover: bool = True, auc_ours: float = 80.0, eagl_s: float = 0.01, alps_s: float = 0.05) -> dict:
    curve = [(1.2, 90.0 if recover else 85.0), (1.5, 70.0)]
    one = {"float": 90.0, "curves": {"eagl": curve, "alps": curve, "hessian": [(1.2, 80.0)]},
           "auc": {"eagl": auc_ours, "alps": auc_ours, "hessian": 75.0, "random": 70.0},
           "device_seconds": {"eagl": eagl_s, "hessian": 10.0, "alps": alps_s}}
    return {n: json.loads(json.dumps(one)) for n in ("resnet50", "resnet101", "pspnet")}


def test_verdict_functions_both_ways():
    assert claims.claim_recovery(_facts(), tolerance=0.1)[0] == "reproduced"
    assert claims.claim_recovery(_facts(recover=False), tolerance=0.1)[0] == "not reproduced"
    mixed = _facts()
    mixed["resnet101"]["curves"]["eagl"] = mixed["resnet101"]["curves"]["alps"] = [(1.2, 50.0)]
    assert claims.claim_recovery(mixed, tolerance=0.1)[0] == "partially reproduced"
    # a point at exactly 1.0x (the all-4-bit start) does not count
    at_one = _facts()
    for m in ("eagl", "alps"):
        at_one["resnet50"]["curves"][m] = at_one["resnet101"]["curves"][m] = [(1.0, 90.0), (1.3, 80.0)]
    assert claims.claim_recovery(at_one, tolerance=0.1)[0] == "not reproduced"
    assert claims.claim_frontier(_facts())[0] == "reproduced"
    assert claims.claim_frontier(_facts(auc_ours=74.0))[0] == "not reproduced"
    half = _facts()
    half["resnet50"]["auc"]["alps"] = 60.0
    assert claims.claim_frontier(half)[0] == "partially reproduced"
    assert claims.claim_segmentation(_facts(), tolerance=0.1)[0] == "reproduced"
    assert claims.claim_segmentation(_facts(recover=False, auc_ours=60.0), tolerance=0.1)[0] == "not reproduced"
    # each proposed method against the Hessian (10 s): EAGL and ALPS 1000x and 200x less
    assert claims.claim_compute(_facts(), factor=100.0)[0] == "reproduced"
    assert claims.claim_compute(_facts(eagl_s=2.0, alps_s=1.0), factor=100.0)[0] == "not reproduced"  # 5x, 10x
    verdict, evidence = claims.claim_compute(_facts(alps_s=100.0), factor=100.0)   # EAGL 1000x, ALPS 0.1x
    assert verdict == "partially reproduced" and "(10x more)" in evidence and "(1,000x less)" in evidence
    # missing networks: not testable, or at most partial
    only_psp = {"pspnet": _facts()["pspnet"]}
    assert claims.claim_recovery(only_psp, tolerance=0.1)[0] == "not testable"
    assert claims.claim_segmentation({}, tolerance=0.1)[0] == "not testable"
    assert claims.claim_recovery({"resnet50": _facts()["resnet50"]}, tolerance=0.1)[0] == "partially reproduced"
    t4 = claims.claims(only_psp, tolerance=0.1, compute_factor=100.0, scale="paper")
    assert list(t4.verdict) == ["not testable at paper scale", "not testable at paper scale",
                                "reproduced at paper scale", "reproduced at paper scale"]


def test_missing_input_names_the_file_and_the_step(tmp_path):
    write_results(tmp_path, "resnet50", n=4, seeds=(0,), points=1)
    (tmp_path / "resnet50" / "sensitivity" / "hessian_cost.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"hessian_cost\.json.*mpq sensitivity .*--method hessian"):
        results.load_network(tmp_path, "resnet50")
    (tmp_path / "resnet50" / "frontier.csv").unlink()
    with pytest.raises(FileNotFoundError) as e:
        report.build(tmp_path, tmp_path / "out", ["resnet50"], scale="tiny", **SETTINGS)
    msg = str(e.value)
    assert "\n" not in msg and "frontier.csv" in msg and "`mpq frontier" in msg
    assert not (tmp_path / "out").exists()
    with pytest.raises(FileNotFoundError, match=r"baselines\.json.*`mpq baselines"):
        results.load_network(tmp_path, "resnet101")


def test_markdown_writer():
    df = pd.DataFrame({"name": ["a|b", "c"], "x": [1.23456, math.nan], "n": [3, 4000]})
    md = tables.markdown(df)
    lines = md.splitlines()
    assert lines[0] == "| name | x | n |" and lines[1] == "|:---|---:|---:|"
    assert lines[2] == "| a\\|b | 1.23 | 3 |" and lines[3] == "| c | n/a | 4000 |"
    assert tables.format_number(0.000123) == "0.000123" and tables.format_number(None) == "n/a"


def test_frontier_of_other_inputs_is_refused(tmp_path):
    write_results(tmp_path, "resnet50", n=4, seeds=(0,), points=1)
    results.load_network(tmp_path, "resnet50")  # as written: consistent
    d = tmp_path / "resnet50"
    table = d / "sensitivity" / "eagl.csv"
    table.write_text(table.read_text().replace("\n", "\n", 1) + "\n")  # the table was recomputed since
    with pytest.raises(results.StaleResults, match=r"frontier\.csv is stale: sensitivity/eagl\.csv changed"
                                                   r".*`mpq frontier --network resnet50`"):
        results.load_network(tmp_path, "resnet50")
    (d / "frontier_inputs.json").unlink()
    with pytest.raises(results.StaleResults, match="carries no readable record of its inputs"):
        results.load_network(tmp_path, "resnet50")
