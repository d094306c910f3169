"""The report's items as frames: every table and the data behind every figure.

Each function takes the per-network results (``mpq.results.NetworkResults``)
and returns tidy ``pandas`` frames; ``mpq.report.build`` writes them (tables
through ``mpq.tables``, figures through ``mpq.plots``). Nothing here trains or
evaluates a model: the allocations of F4 and the ablation are recomputed from
the score tables and ``layers.csv`` with ``mpq.allocate.sweep`` (the same exact
MILP the frontier used). Methods are read from the method registry: the
profiled ones (``profile``), the reference the others are read against
(``reference``: ALPS) and those with ablation variants (``variants``: EAGL).
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import allocate, bitconfig, checkpoint, diagnostics, methods, paths
from .claims import (PAPER_CHEAP_METHOD, best_compared, best_miss, float_tolerance, mix_targets,
                     proposed_with_auc, ratio, recovery)
from .frontier import UNIFORM
from .results import NetworkResults
from .sensitivity import CostRecord, allocator_table
from .uncertainty import ci_text

__all__ = ["ABLATION_COSTS", "reference_method", "profiles", "rank_correlations", "compute_table", "headline",
           "matched", "ablation", "metrics", "clean", "device_seconds", "profiled_methods", "additivity", "LAYER_COUNT",
           "step_diagnostic", "reliability", "noise_budget", "recovery_rule", "NOISE_COLUMNS"]

ABLATION_COSTS = ("throughput", "bops")   # the cost models the ablation compares (mpq.cost.COSTS)
LAYER_COUNT = "2-bit layer count"         # T7's reference predictor: the number of low-bit layers


def reference_method() -> str:
    """The registry's reference method (ALPS): the measured scores the others are read against."""
    refs = [m.name for m in methods.METHODS.values() if m.reference]
    if len(refs) != 1:
        raise ValueError(f"the method registry needs exactly one reference method, has {refs}")
    return refs[0]


def profiled_methods() -> list[str]:
    """Methods drawn per layer (F4) and against the reference (F5): the registry's ``profile`` flag."""
    return [m.name for m in methods.METHODS.values() if m.profile]


def device_seconds(record: Mapping[str, Any]) -> float:
    """Device-seconds of a cost record (a ``CostRecord`` as a mapping): see ``CostRecord.device_seconds``."""
    return CostRecord(**record).device_seconds


def _low_set(bits: Mapping[str, int], low_bits: int) -> set[str]:
    return {l for l, b in bits.items() if b == low_bits}


def _allocate(net: NetworkResults, scores: Mapping[str, float], kind: str, targets: Sequence[float],
              start_bits: int, low_bits: int, model: tuple | None = None) -> list[set[str]]:
    """The low-bit layer set chosen at each target (exact MILP, the frontier's allocator)."""
    table, fixed = model or net.cost_model(kind, start_bits, low_bits)
    top = allocate.max_relative(table, reference_bits=start_bits, fixed_cost=fixed)
    targets = [min(float(t), top) for t in targets]
    allocs = allocate.sweep(allocator_table(scores, start_bits, low_bits), table, targets,
                            reference_bits=start_bits, fixed_cost=fixed)
    return [_low_set(a.bits, low_bits) for a in allocs]


def _jaccard(a: set[str], b: set[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


def profiles(nets: Sequence[NetworkResults], *, cost_kind: str, start_bits: int, low_bits: int
             ) -> list[tuple[str, pd.DataFrame]]:
    """F4: per network, each profiled method's normalised scores and its low-bit layers at the
    middle frontier target."""
    out = []
    for net in nets:
        targets = net.interior_targets()
        target = targets[len(targets) // 2] if targets else None
        model = net.cost_model(cost_kind, start_bits, low_bits)
        rows = []
        for m in profiled_methods():
            s = net.scores(m)
            low = _allocate(net, s, cost_kind, [target], start_bits, low_bits, model)[0] if target else set()
            v = np.array(list(s.values()))
            span = v.max() - v.min()
            norm = (v - v.min()) / span if span > 0 else np.zeros_like(v)
            rows += [{"method": m, "layer": l, "index": i, "score": s[l], "norm": float(n), "low": l in low}
                     for i, (l, n) in enumerate(zip(s, norm))]
        where = f"at the {target:.2f}x {cost_kind} target (middle of the frontier)" if target else "(no target)"
        out.append((f"{net.title}: layers each method sends to {low_bits} bits {where}",
                    pd.DataFrame(rows)))
    return out


def rank_correlations(nets: Sequence[NetworkResults]) -> tuple[pd.DataFrame, list[dict]]:
    """T5 and F5: every method's scores against the reference's (ALPS), per network (a method whose
    scores are all equal, the ``largest`` control, has no rank correlation and is left out)."""
    rows, panels = [], []
    ref = reference_method()
    for net in nets:
        ref_scores = net.scores(ref)
        for m in [m for m in methods.names() if m != ref and m in net.sensitivity
                  and net.sensitivity[m]["score"].nunique() > 1]:
            s = net.scores(m)
            x = np.array([ref_scores[l] for l in s])
            y = np.array([s[l] for l in s])
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.ConstantInputWarning)  # constant scores: NaN, reported n/a
                rho = stats.spearmanr(y, x) if len(x) > 2 else None
                tau = stats.kendalltau(y, x) if len(x) > 2 else None
            row = {"network": net.network, "method": m,
                   "spearman": float(rho.statistic) if rho else math.nan,
                   "spearman_p": float(rho.pvalue) if rho else math.nan,
                   "kendall": float(tau.statistic) if tau else math.nan,
                   "kendall_p": float(tau.pvalue) if tau else math.nan, "layers": len(x)}
            rows.append(row)
            if m in profiled_methods():
                panels.append({"row": net.title, "method": m, "x": x, "y": y, "reference": ref,
                               "spearman": row["spearman"], "kendall": row["kendall"],
                               "ylabel": methods.get(m).score_label or f"{methods.label(m)} score",
                               "xlabel": methods.get(ref).score_label})
    return pd.DataFrame(rows), panels


def _config_drops(net: NetworkResults, folder: Path, low_bits: int) -> pd.DataFrame:
    """Every frontier configuration but all-``start_bits``: its low-bit layers and its measured drop.

    The drop is paired by seed: the all-start-bits uniform point's metric minus the
    configuration's, with the same fine-tune seed (and the same test images), then
    averaged over the seeds the configuration ran with.
    """
    f = net.frontier
    start = f[(f["method"] == UNIFORM) & (f["n_low"] == 0)].groupby("seed")["metric"].mean()
    rows = []
    for (method, config), g in f[f["n_low"] > 0].groupby(["method", "config"], sort=False):
        drops = [start[s] - m for s, m in zip(g["seed"], g["metric"]) if s in start.index]
        if not drops:
            continue
        bits = bitconfig.read_bits_file(folder / paths.CONFIGS / Path(str(config)).name)["bits"]
        rows.append({"selection": method, "config": Path(str(config)).name, "seeds": len(drops),
                     "low": frozenset(_low_set(bits, low_bits)), "measured_drop": float(np.mean(drops))})
    return pd.DataFrame(rows, columns=["selection", "config", "seeds", "low", "measured_drop"])


def additivity(nets: Sequence[NetworkResults], results: str | Path, *, low_bits: int
               ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """T7 and F8, knapsack additivity: does the sum of per-layer scores predict a mix's drop?

    The allocator treats a method's per-layer scores as additive (a mix's harm =
    the sum over its low-bit layers). For every frontier configuration (any
    selection method, the uniform low-bit end included) and every method with a
    sensitivity table, the summed scores of the configuration's low-bit layers
    are set against its measured drop (``_config_drops``). Returns the
    correlations (Pearson r, Spearman rho, configurations) per network and method,
    and the points. Each network also gets a reference row, ``LAYER_COUNT``: the
    number of low-bit layers as the predictor (every layer scored 1), since any
    positive score summed over more layers grows with the drop; a method's scores
    add information only where its correlation beats the count's.
    """
    points, rows = [], []
    for net in nets:
        configs = _config_drops(net, paths.network_dir(net.network, results), low_bits)
        measured = configs["measured_drop"].to_numpy(float)
        # the methods' own score tables; the controls only know sizes (the layer-count row stands for them)
        scored = [m for m in methods.names() if m in net.sensitivity and methods.get(m).role != "control"]
        for m in scored + [LAYER_COUNT]:
            s = dict.fromkeys(net.candidates, 1.0) if m == LAYER_COUNT else net.scores(m)
            predicted = np.array([math.fsum(s[l] for l in low if l in s) for low in configs["low"]], float)  # exact: set order varies
            if m != LAYER_COUNT:
                points.append(configs.drop(columns="low").assign(network=net.network, method=m,
                                                                 summed_score=predicted))
            with np.errstate(all="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", stats.ConstantInputWarning)  # constant sums: NaN, reported n/a
                enough = len(measured) > 2
                r = stats.pearsonr(predicted, measured) if enough else None
                rho = stats.spearmanr(predicted, measured) if enough else None
            rows.append({"network": net.network, "method": m, "configurations": len(measured),
                         "pearson": float(r.statistic) if r else math.nan,
                         "pearson_p": float(r.pvalue) if r else math.nan,
                         "spearman": float(rho.statistic) if rho else math.nan,
                         "spearman_p": float(rho.pvalue) if rho else math.nan})
    return pd.DataFrame(rows), (pd.concat(points, ignore_index=True) if points else pd.DataFrame())


def _step_ratios(fstate: Mapping[str, Any], folder: Path, name: str, layers: Sequence[str]) -> np.ndarray:
    """Trained / initial weight step of ``layers`` in the checkpoint ``name`` (``mpq.diagnostics``)."""
    qstate, meta = checkpoint.load(folder / name)
    return diagnostics.step_ratios(fstate, qstate, meta["bits"], layers)


def step_diagnostic(nets: Sequence[NetworkResults], results: str | Path, *, start_bits: int,
                    low_bits: int) -> pd.DataFrame:
    """T8: does LSQ learn its steps, and how much does the data-free score vary across layers?

    Per network and uniform checkpoint (all ``start_bits``, all ``low_bits``): the
    distribution of the candidates' trained/initial weight-step ratios
    (``_step_ratios``) and the share of layers whose step moved by more than 1 %;
    on the ``start_bits`` row, the spread of the data-free method's scores
    (min, max, coefficient of variation), which a step that never moves keeps
    close to what LSQ's initial step gives every layer.
    """
    rows = []
    for net in nets:
        folder = paths.network_dir(net.network, results)
        cheap = net.scores(PAPER_CHEAP_METHOD)
        spread = np.array(list(cheap.values()), float)
        fstate, _ = checkpoint.load(folder / paths.FLOAT_CKPT)  # read once for both uniform checkpoints
        for bits in (start_bits, low_bits):
            r = _step_ratios(fstate, folder, paths.uniform_ckpt(bits), net.candidates)
            rows.append({"network": net.network, "checkpoint": paths.uniform_ckpt(bits), "layers": len(r),
                         "step_ratio_min": r.min(), "step_ratio_median": float(np.median(r)),
                         "step_ratio_max": r.max(), "moved_over_1pct": float(np.mean(np.abs(r - 1) > 0.01)),
                         f"{PAPER_CHEAP_METHOD}_min": spread.min() if bits == start_bits else math.nan,
                         f"{PAPER_CHEAP_METHOD}_max": spread.max() if bits == start_bits else math.nan,
                         f"{PAPER_CHEAP_METHOD}_cv_pct": (100 * spread.std() / abs(spread.mean())
                                                          if bits == start_bits else math.nan)})
    return pd.DataFrame(rows)


def compute_table(nets: Sequence[NetworkResults]) -> pd.DataFrame:
    """T3 and F6: each method's recorded cost, and its ratio to the data-free method's (C4)."""
    rows = []
    cheap = PAPER_CHEAP_METHOD
    for net in nets:
        e = device_seconds(net.costs[cheap]) if cheap in net.costs else math.nan
        for m in [m for m in methods.names() if m in net.costs]:
            c = net.costs[m]
            workers = int(c.get("workers", 1) or 1)
            ds = device_seconds(c)
            rows.append({"network": net.network, "method": m, "seconds": float(c["seconds"]), "device_seconds": ds,
                         "device": str(c.get("device", "")), "workers": workers,
                         "forward_passes": int(c.get("forward_passes", 0) or 0),
                         "backward_passes": int(c.get("backward_passes", 0) or 0),
                         "epochs": float(c.get("epochs", 0.0) or 0.0),
                         f"ratio_to_{cheap}": ratio(ds, e) if math.isfinite(e) else math.nan,
                         "units": "seconds (CPU here; GPU-hours at paper scale = device_seconds/3600)"})
    return pd.DataFrame(rows)


def headline(nets: Sequence[NetworkResults], summaries: Mapping[str, pd.DataFrame],
             uniforms: Mapping[str, pd.DataFrame], tolerance: float,
             uncs: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """T1: float, the uniform ends, and per method its cheapest own mix that recovers float
    (``claims.recovery``: C1's rule); with ``uncs`` (``mpq.uncertainty`` per network) every number gets
    its bootstrap interval, a mix its interval of (mix - float), and ``recovery_margin`` is the margin
    it was judged with (float's own half-width; without intervals: ``tolerance`` on means)."""
    rows, show = [], []
    shown = [m for m in methods.names() if any(m in n.frontier_methods for n in nets)]
    for net in nets:
        u = uniforms[net.network]
        ends = {"uniform4": u.iloc[0] if len(u) else None, "uniform2": u.iloc[-1] if len(u) > 1 else None}
        row = {"network": net.network, "metric": net.metric_name, "float": net.float_metric}
        for k, r in ends.items():
            row[k] = float(r["metric_mean"]) if r is not None else math.nan
            row[f"{k}_std"] = float(r["metric_std"]) if r is not None else math.nan
            row[f"{k}_baseline"] = float(net.baselines.get(k, {}).get("metric", math.nan))
        unc = (uncs or {}).get(net.network)
        cis = {"float": unc.interval(unc.float_values()) if unc else (math.nan, math.nan)}
        for k, r in ends.items():
            cis[k] = unc.interval(unc.config(UNIFORM, float(r["target"]))) if unc and r is not None \
                else (math.nan, math.nan)
        for k, (lo, hi) in cis.items():
            row[f"{k}_ci_low"], row[f"{k}_ci_high"] = lo, hi
        row["recovery_rule"], row["recovery_margin"] = recovery_rule(unc, tolerance)
        disp = {"network": net.title, "metric": net.metric_name,
                "float": f"{net.float_metric:.2f} {ci_text(*cis['float'])}",
                "uniform 4-bit": f"{_pm(row['uniform4'], row['uniform4_std'])} {ci_text(*cis['uniform4'])}",
                "uniform 2-bit": f"{_pm(row['uniform2'], row['uniform2_std'])} {ci_text(*cis['uniform2'])}",
                "4-bit (baselines step)": f"{row['uniform4_baseline']:.2f}",
                "2-bit (baselines step)": f"{row['uniform2_baseline']:.2f}",
                "recovers float if": (f"mix - float > -{row['recovery_margin']:.2f} (interval)" if unc
                                      else f"mean > float - {tolerance:g}")}
        for m in shown:
            if m not in net.frontier_methods:
                row[f"{m}_fp_at"] = row[f"{m}_fp_metric"] = disp[methods.label(m)] = "not run"
                continue
            targets = mix_targets(summaries[net.network], m)
            hit = recovery(targets, m, net.float_metric, tolerance, unc)
            row[f"{m}_fp_at"] = round(hit[0], 4) if hit else "none"
            row[f"{m}_fp_metric"] = round(hit[1], 4) if hit else "none"
            lo, hi = (hit[2], hit[3]) if hit else (math.nan, math.nan)
            row[f"{m}_fp_minus_float_ci_low"], row[f"{m}_fp_minus_float_ci_high"] = lo, hi
            if hit:
                disp[methods.label(m)] = (f"{hit[0]:.2f}x ({hit[1]:.2f}; minus float {ci_text(lo, hi)})"
                                          if unc else f"{hit[0]:.2f}x ({hit[1]:.2f})")
            else:
                disp[methods.label(m)] = "none" + _best_miss(targets, m, unc)
        rows.append(row)
        show.append(disp)
    return pd.DataFrame(rows), pd.DataFrame(show)


def recovery_rule(unc: Any, tolerance: float) -> tuple[str, float]:
    """How recovery is judged for a network: ``("interval", float's half-width)`` or ``("means", tolerance)``."""
    return ("interval", float_tolerance(unc)) if unc is not None else ("means", float(tolerance))


def _best_miss(targets: Sequence[tuple[float, float, float]], method: str, unc: Any) -> str:
    """For a method with no recovering mix: its best mix above 1.0x and that mix's interval of (mix - float)."""
    miss = best_miss(targets, method, unc)
    if miss is None:
        return ""
    x, y, lo, hi = miss
    ci = f"; minus float {ci_text(lo, hi)}" if unc else ""
    return f" (best {x:.2f}x: {y:.2f}{ci})"


def _pm(mean: float, std: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.2f} ± {std:.2f}"


def matched(nets: Sequence[NetworkResults], summaries: Mapping[str, pd.DataFrame],
            uncs: Mapping[str, Any] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """T2: each method's mean ± std at every interior target, with its bootstrap interval (``uncs``)."""
    rows, show = [], []
    for net in nets:
        s = summaries[net.network]
        unc = (uncs or {}).get(net.network)
        for t in net.interior_targets():
            at = s[np.isclose(s["target"], t)]
            row = {"network": net.network, "target": t}
            disp = {"network": net.title, "target": f"{t:.3f}x"}
            for m in net.frontier_methods:
                r = at[at.method == m]
                mean = float(r["metric_mean"].iloc[0]) if len(r) else math.nan
                std = float(r["metric_std"].iloc[0]) if len(r) else math.nan
                row[f"{m}_mean"], row[f"{m}_std"] = mean, std
                row[f"{m}_rel_throughput"] = float(r["rel_throughput"].iloc[0]) if len(r) else math.nan
                lo, hi = unc.interval(unc.config(m, t)) if unc and len(r) else (math.nan, math.nan)
                row[f"{m}_ci_low"], row[f"{m}_ci_high"] = lo, hi
                disp[methods.label(m)] = f"{_pm(mean, std)} {ci_text(lo, hi)}"
            rows.append(row)
            show.append(disp)
    return pd.DataFrame(rows), pd.DataFrame(show)


def _variant_scores(net: NetworkResults, method: str, variant: str) -> dict[str, float]:
    """``{layer: score}`` of one of ``method``'s variants, over the candidates, from its table."""
    series = methods.variant_function(method)(net.sensitivity[method], variant)
    return {layer: float(series[layer]) for layer in net.candidates}


def ablation(nets: Sequence[NetworkResults], *, start_bits: int, low_bits: int) -> pd.DataFrame:
    """T6 and F7: every variant of the methods that have variants (EAGL) and the deterministic
    controls (largest / smallest first) x cost model, each choice read through the reference's
    scores (ALPS: a training-free additive proxy of the drop)."""
    rows = []
    ref = reference_method()
    varied = [m for m in methods.METHODS.values() if m.variants]
    controls = [m for m in methods.names(role="control") if not methods.get(m).per_seed]
    for net in nets:
        n = len(net.interior_targets())
        if n == 0:
            continue
        ref_scores = net.scores(ref)
        for kind in ABLATION_COSTS:
            model = net.cost_model(kind, start_bits, low_bits)
            targets = allocate.target_grid(model[0], n + 2, reference_bits=start_bits, fixed_cost=model[1])[1:-1]
            best_sets = _allocate(net, ref_scores, kind, targets, start_bits, low_bits, model)
            choices = [(v, _allocate(net, _variant_scores(net, m.name, v), kind, targets, start_bits, low_bits,
                                     model)) for m in varied for v in m.variants] + [
                (c, _allocate(net, net.scores(c), kind, targets, start_bits, low_bits, model))
                for c in controls if c in net.sensitivity] + [(ref, best_sets)]
            for variant, sets in choices:
                for t, low, best in zip(targets, sets, best_sets):
                    rows.append({"network": net.network, "cost": kind, "target": float(t), "variant": variant,
                                 "n_low": len(low), f"{ref}_predicted_drop": math.fsum(ref_scores[l] for l in low),
                                 f"{ref}_optimal_drop": math.fsum(ref_scores[l] for l in best),
                                 f"jaccard_vs_{ref}": _jaccard(low, best)})
    return pd.DataFrame(rows)


def clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, Mapping):
        return {str(k): clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def metrics(nets: Sequence[NetworkResults], summaries: Mapping[str, pd.DataFrame],
            uniforms: Mapping[str, pd.DataFrame], facts: Mapping[str, Mapping], tolerance: float) -> dict:
    """metrics.json: the headline numbers per network (``dvc metrics show``)."""
    out = {}
    for net in nets:
        u, f = uniforms[net.network], facts[net.network]
        rec = {}
        for m in net.frontier_methods:
            hit = recovery(f["targets"][m], m, net.float_metric, tolerance, f["unc"])
            rec[m] = hit[0] if hit else None
        out[net.network] = {
            "float": net.float_metric,
            "uniform4": net.baselines.get("uniform4", {}).get("metric"),
            "uniform2": net.baselines.get("uniform2", {}).get("metric"),
            "uniform4_frontier": float(u["metric_mean"].iloc[0]) if len(u) else None,
            "uniform2_frontier": float(u["metric_mean"].iloc[-1]) if len(u) > 1 else None,
            "auc": f["auc"], "recovers_fp_at": rec,
            **dict(zip(("recovery_rule", "recovery_margin"), recovery_rule(f["unc"], tolerance))),
            "seconds": {m: float(net.costs[m]["seconds"]) for m in profiled_methods() if m in net.costs},
            "device_seconds": {m: f["device_seconds"][m] for m in profiled_methods() if m in f["device_seconds"]},
        }
    return clean(out)




def reliability(nets: Sequence[NetworkResults]) -> pd.DataFrame:
    """T9: per network and method, the Spearman correlation between two measurements of its scores.

    ``seed``: the score table's ``retest_score`` column (the method computed
    again from seed + 1, ``Experiment.retests``); ``split-half``: its
    ``score_half_a`` vs ``score_half_b`` (the loss-based score on the even- and
    odd-numbered validation images). Methods without either are left out.
    """
    rows = []
    for net in nets:
        for m in methods.names():
            t = net.sensitivity.get(m)
            if t is None:
                continue
            for kind, (a, b) in (("seed", ("score", "retest_score")), ("split-half", ("score_half_a", "score_half_b"))):
                if a in t.columns and b in t.columns:
                    x, y = t[a].astype(float), t[b].astype(float)
                    rho, p = stats.spearmanr(x, y)
                    rows.append({"network": net.network, "method": m, "retest": kind, "layers": len(t),
                                 "spearman": float(rho), "spearman_p": float(p)})
    return pd.DataFrame(rows, columns=["network", "method", "retest", "layers", "spearman", "spearman_p"])


NOISE_COLUMNS = ["network", "quantity", "estimate", "sd", "sd_images", "sd_seeds", "images", "sources", "seeds"]


def noise_budget(nets: Sequence[NetworkResults], facts: Mapping[str, Mapping]) -> pd.DataFrame:
    """T10: where the uncertainty of the comparisons comes from, per network.

    For C2's comparisons (each proposed method's frontier AUC minus the best
    baseline's or control's) and C1's (a proposed method's mix above 1.0x minus
    float: the median over those mixes of the estimate and of each spread), the
    standard deviation of the paired bootstrap replicates when both sources are
    drawn (``sd``), the test images only (``sd_images``) and the fine-tune seeds
    only (``sd_seeds``; NaN with one seed: not measurable);
    ``mpq.uncertainty.NetworkUncertainty.resampling``. A network without
    per-image results gets one row that says so.
    """
    rows = []
    for net in nets:
        f = facts[net.network]
        unc = f.get("unc")
        if unc is None:
            rows.append({"network": net.network, "quantity": "n/a (no per-image results)"})
            continue
        draws = {"sd": unc, "sd_images": unc.resampling("images"), "sd_seeds": unc.resampling("seeds")}
        one_seed = len(unc.seeds) < 2

        def spread(key: str, values: np.ndarray) -> float:
            return math.nan if key == "sd_seeds" and one_seed else float(np.nanstd(values))

        best = best_compared(f["auc"])
        common = {"network": net.network, "images": unc.images, "sources": unc.sources, "seeds": len(unc.seeds)}
        for m in proposed_with_auc(f["auc"]) if best else []:
            rows.append({**common, "quantity": f"AUC {methods.label(m)} - {methods.label(best)}",
                         "estimate": f["auc"][m] - f["auc"][best],
                         **{k: spread(k, u.auc(m) - u.auc(best)) for k, u in draws.items()}})
        mixes_ = [(m, t, y) for m in proposed_with_auc(f["auc"])
                  for x, y, t in f["targets"].get(m, []) if x > 1.0 + 1e-9]
        if mixes_:
            sds = {k: [spread(k, u.config(m, t) - u.float_values()) for m, t, _ in mixes_]
                   for k, u in draws.items()}
            rows.append({**common, "quantity": f"mix - float (median over {len(mixes_)} mixes above 1.0x)",
                         "estimate": float(np.median([y - f["float"] for *_, y in mixes_])),
                         **{k: float(np.median(v)) for k, v in sds.items()}})
    return pd.DataFrame(rows, columns=NOISE_COLUMNS)
