"""The report: every figure and table of DESIGN.md section 3, from the pipeline's result files.

``build(results, out, networks, scale=...)`` reads, per network, what the
steps wrote under ``results/<network>/`` (``baselines.json``,
``sensitivity/<method>.csv`` and ``_cost.json``, ``frontier.csv``,
``layers.csv``) and writes into ``out``:

======================  =============================================================
F1/F2/F3                metric vs relative throughput per method (one per network)
F4                      per-layer scores of EAGL, ALPS, Hessian + their 2-bit layers
F5 / T5                 EAGL and Hessian vs ALPS per layer, Spearman and Kendall
F6 / T3                 compute time per method (device-seconds, log scale)
T1                      FP, uniform 4/2-bit, cheapest mix per method within tolerance
T2                      metric at matched throughput per method
T4                      the paper's claims, measured evidence and a computed verdict
T6 / F7                 ablation: EAGL variant x cost model (training-free proxy)
metrics.json            headline numbers per network (``dvc metrics show``)
frontier_points.csv     every network's frontier summary (``dvc plots show``)
index.md                all tables and figures on one page
======================  =============================================================

Figures are PNG + PDF (``mpq.plots``), tables CSV + Markdown (``mpq.tables``).
Nothing here trains or evaluates a model: the frontier summaries are
recomputed from ``frontier.csv`` with ``mpq.frontier.summarize`` at the
report's ``tolerance`` (so T1, T4 and metrics.json agree with one another),
and the allocations of F4 and the ablation are recomputed from the score
tables and ``layers.csv`` with ``mpq.allocate.sweep`` (the same exact MILP
the frontier used), which needs no bit-configuration files.

The claim verdicts (T4) are plain functions of a small ``facts`` dictionary
(``network_facts``), so a test can build facts where a claim holds and where
it fails.
"""
from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from . import allocate, cost, paths, plots, tables
from . import atomic
from .frontier import UNIFORM, summarize
from .sensitivity import allocator_table

__all__ = ["NetworkResults", "load_network", "build", "assess", "recovers_at", "network_facts",
           "claim_recovery", "claim_frontier", "claim_segmentation", "claim_compute", "claims",
           "METHODS", "NETWORK_TITLES", "CLAIMS", "ORDERS_OF_MAGNITUDE"]

METHODS = ("eagl", "alps", "hessian", "noft", "random")    # display order everywhere
PROFILE_METHODS = ("eagl", "alps", "hessian")               # F4
REQUIRED_SENSITIVITY = ("eagl", "alps", "hessian")          # needed whatever the frontier ran
OURS = ("eagl", "alps")                                     # the paper's methods
BASELINE_METHODS = ("hessian", "noft", "random")            # the "leading selection methods"
CLASSIFICATION = ("resnet50", "resnet101")                  # claims 1-2
SEGMENTATION = ("pspnet",)                                  # claim 3
NETWORK_TITLES = {"resnet50": "ResNet-50", "resnet101": "ResNet-101", "pspnet": "PSPNet"}
FRONTIER_IDS = {"resnet50": "F1", "resnet101": "F2", "pspnet": "F3"}
EAGL_VARIANTS = ("entropy", "entropy_x_params", "entropy_drop")
ABLATION_COSTS = ("throughput", "bops")
ORDERS_OF_MAGNITUDE = 100.0    # claim 4: EAGL needs <= 1/100 of the compute of Hessian and of ALPS
_EPS = 1e-9

CLAIMS = {
    "C1": "A 4/2-bit mix recovers full-precision accuracy (within tolerance) at a throughput above 1.0x "
          "for ResNet-50 and ResNet-101, with EAGL or ALPS",
    "C2": "EAGL and ALPS give a better accuracy-throughput frontier than the leading layer-selection "
          "methods (Hessian/HAWQ, no-fine-tune drop/AIMET, random)",
    "C3": "Equivalent results (claims 1-2) for PSPNet semantic segmentation (mIoU)",
    "C4": "EAGL reaches a solution with orders of magnitude less compute than Hessian and ALPS",
}


def _title(network: str) -> str:
    return NETWORK_TITLES.get(network, network)


# --------------------------------------------------------------------------- inputs


@dataclass
class NetworkResults:
    """What the pipeline wrote for one network, as frames and dicts."""

    network: str
    baselines: dict[str, dict[str, Any]]
    sensitivity: dict[str, pd.DataFrame]    # method -> layer, bits_from, bits_to, score, ...
    costs: dict[str, dict[str, Any]]        # method -> cost record (seconds, device, workers, ...)
    frontier: pd.DataFrame                  # mpq.frontier.RESULT_COLUMNS
    layers: pd.DataFrame                    # layer, macs, params, bits, candidate

    @property
    def float_metric(self) -> float:
        return float(self.baselines["float"]["metric"])

    @property
    def task(self) -> str:
        try:
            from .networks import get_spec
            return get_spec(self.network).task
        except ValueError:  # a network outside the registry: guess from its name
            return "segmentation" if "psp" in self.network or "seg" in self.network else "classification"

    @property
    def metric_label(self) -> str:
        return "mIoU (%)" if self.task == "segmentation" else "Top-1 accuracy (%)"

    @property
    def metric_name(self) -> str:
        return "test mIoU %" if self.task == "segmentation" else "test top-1 %"

    @property
    def candidates(self) -> list[str]:
        """Candidate layers in network order (input to output)."""
        return [str(l) for l in self.layers.loc[self.layers["candidate"].astype(bool), "layer"]]

    @property
    def frontier_methods(self) -> list[str]:
        have = set(self.frontier["method"]) - {UNIFORM}
        return [m for m in METHODS if m in have] + sorted(have - set(METHODS))

    def interior_targets(self) -> list[float]:
        """The frontier's targets between the uniform ends (sorted)."""
        return sorted(float(t) for t in self.frontier.loc[self.frontier.method != UNIFORM, "target"].unique())

    def cost_model(self, kind: str, start_bits: int, low_bits: int) -> tuple[dict[str, dict[int, float]], float]:
        """``(table, fixed_cost)`` of the candidates under cost ``kind``, from ``layers.csv``."""
        macs = dict(zip(self.layers["layer"].astype(str), self.layers["macs"].astype(int)))
        params = dict(zip(self.layers["layer"].astype(str), self.layers["params"].astype(int)))
        cands = self.candidates
        table = cost.layer_costs(kind, macs, params, cands, [start_bits, low_bits])
        fixed = {str(r.layer): (None if pd.isna(r.bits) else int(r.bits))
                 for r in self.layers.itertuples() if not bool(r.candidate)}
        return table, float(cost.total_cost(kind, fixed, macs, params))

    def scores(self, method: str, column: str = "score") -> dict[str, float]:
        """``{layer: score}`` of a method (``column`` of its table) over the candidates."""
        t = self.sensitivity[method]
        got = dict(zip(t["layer"].astype(str), t[column].astype(float)))
        missing = [l for l in self.candidates if l not in got]
        if missing:
            raise ValueError(f"{self.network}: layer {missing[0]!r} of {paths.LAYERS_CSV} has no score in "
                             f"{paths.SENSITIVITY}/{method}.csv; rerun `mpq sensitivity --network "
                             f"{self.network} --method {method}`")
        return {l: got[l] for l in self.candidates}


def _need(path: Path, step: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `{step}` first")
    return path


def load_network(results: str | Path, network: str) -> NetworkResults:
    """Read one network's result files; a missing one is a one-line FileNotFoundError naming the step."""
    d = paths.network_dir(network, results)
    base = json.loads(_need(d / paths.BASELINES_JSON, f"mpq baselines --network {network}").read_text())
    fpath = _need(d / paths.FRONTIER_CSV, f"mpq frontier --network {network}")
    lpath = _need(d / paths.LAYERS_CSV, f"mpq frontier --network {network}")
    front, layers = pd.read_csv(fpath), pd.read_csv(lpath)
    have = set(front["method"]) if "method" in front else set()
    # random's frontier draws its own scores per seed, so its table is optional
    wanted = list(REQUIRED_SENSITIVITY) + [m for m in METHODS if m in have and m not in REQUIRED_SENSITIVITY]
    sens, costs = {}, {}
    for m in METHODS:
        csv, js = d / paths.SENSITIVITY / f"{m}.csv", d / paths.SENSITIVITY / f"{m}_cost.json"
        if m in wanted or (csv.is_file() and js.is_file()):
            step = f"mpq sensitivity --network {network} --method {m}"
            sens[m] = pd.read_csv(_need(csv, step))
            costs[m] = json.loads(_need(js, step).read_text())["cost"]
    for name, frame, cols in ((paths.FRONTIER_CSV, front, ("method", "target", "seed", "rel_throughput", "metric")),
                              (paths.LAYERS_CSV, layers, ("layer", "macs", "params", "bits", "candidate"))):
        missing = [c for c in cols if c not in frame.columns]
        if missing:
            raise ValueError(f"{d / name} lacks the columns {missing}: rerun `mpq frontier --network {network}`")
    if "float" not in base:
        raise ValueError(f"{d / paths.BASELINES_JSON} has no float entry: rerun `mpq baselines --network {network}`")
    return NetworkResults(network, base, sens, costs, front, layers)


# --------------------------------------------------------------------------- facts and claims


def _mixes(summary: pd.DataFrame, method: str) -> list[tuple[float, float]]:
    """A method's own configurations ``(rel_throughput, metric_mean)``, without the shared uniform ends."""
    part = summary[(summary.method == method) & ~summary["uniform_end"]].sort_values("rel_throughput")
    return [(float(x), float(y)) for x, y in zip(part["rel_throughput"], part["metric_mean"])]


def _summarize(net: NetworkResults, tolerance: float) -> pd.DataFrame:
    """``mpq.frontier.summarize`` at the report's tolerance, with a ``uniform_end`` flag per row."""
    s = summarize(net.frontier, net.float_metric, tolerance=tolerance)
    ends = set(net.frontier.loc[net.frontier.method == UNIFORM, "target"].astype(float))
    return s.assign(uniform_end=s["target"].astype(float).isin(ends))


def recovers_at(curve: Sequence[tuple[float, float]], float_metric: float, tolerance: float
                ) -> tuple[float, float] | None:
    """The point of highest throughput whose mean metric is within ``tolerance`` of float, or None."""
    ok = [(x, y) for x, y in curve if y >= float_metric - tolerance - _EPS]
    return max(ok) if ok else None


def network_facts(net: NetworkResults, summary: pd.DataFrame) -> dict[str, Any]:
    """The numbers the claims are judged on, as plain data.

    ``{"float", "curves": {method: [(rel_throughput, metric_mean), ...]}, "auc":
    {method: auc}, "device_seconds": {method: s}}``. ``curves`` hold each
    method's own mixes (the interior targets, mean over seeds), not the uniform
    ends every method shares; ``auc`` is ``mpq.frontier.summarize``'s (ends included).
    """
    methods = net.frontier_methods
    auc = {m: float(summary.loc[summary.method == m, "auc"].iloc[0]) for m in methods
           if (summary.method == m).any()}
    return {"float": net.float_metric, "curves": {m: _mixes(summary, m) for m in methods}, "auc": auc,
            "device_seconds": {m: float(c["seconds"]) * int(c.get("workers", 1) or 1) for m, c in net.costs.items()}}


def _verdict(passes: Sequence[bool], missing: Sequence[str]) -> str:
    """All items hold -> reproduced (partially if some were not testable); some -> partially; none -> not."""
    if not passes:
        return "not testable"
    if all(passes):
        return "partially reproduced" if missing else "reproduced"
    return "partially reproduced" if any(passes) else "not reproduced"


def _recovery_items(facts: Mapping[str, Mapping], networks: Sequence[str], tolerance: float
                    ) -> tuple[list[bool], list[str]]:
    passes, words = [], []
    for net in networks:
        f = facts[net]
        fp = f["float"]
        parts = []
        ok_any = False
        for m in OURS:
            curve = [(x, y) for x, y in f["curves"].get(m, []) if x > 1.0 + _EPS]
            if m not in f["curves"]:
                parts.append(f"{plots.label(m)} not run")
                continue
            hit = recovers_at(curve, fp, tolerance)
            if hit:
                ok_any = True
                parts.append(f"{plots.label(m)} {hit[1]:.2f} at {hit[0]:.2f}x")
            elif curve:
                best = max(curve, key=lambda p: p[1])
                parts.append(f"{plots.label(m)} none above 1.0x (best {best[1]:.2f} at {best[0]:.2f}x)")
            else:
                parts.append(f"{plots.label(m)} no point above 1.0x")
        passes.append(ok_any)
        words.append(f"{_title(net)} (float {fp:.2f}, tolerance {tolerance:g}): " + ", ".join(parts)
                     + (" -> recovered" if ok_any else " -> not recovered"))
    return passes, words


def claim_recovery(facts: Mapping[str, Mapping], *, tolerance: float,
                   networks: Sequence[str] = CLASSIFICATION) -> tuple[str, str]:
    """Claim 1: per network, does EAGL or ALPS reach a point above 1.0x within ``tolerance`` of float?"""
    present = [n for n in networks if n in facts]
    missing = [n for n in networks if n not in facts]
    passes, words = _recovery_items(facts, present, tolerance)
    return _verdict(passes, missing), _join(words, missing)


def _frontier_items(facts: Mapping[str, Mapping], networks: Sequence[str]) -> tuple[list[bool], list[str]]:
    passes, words = [], []
    for net in networks:
        auc = facts[net]["auc"]
        base = {m: auc[m] for m in BASELINE_METHODS if m in auc and math.isfinite(auc[m])}
        ours = {m: auc[m] for m in OURS if m in auc and math.isfinite(auc[m])}
        if not base or not ours:
            words.append(f"{_title(net)}: no {'baseline' if not base else 'EAGL/ALPS'} frontier to compare")
            continue
        best = max(base, key=base.get)
        verdicts = [f"{plots.label(m)} {v:.2f} ({'>=' if v >= base[best] - _EPS else '<'})" for m, v in ours.items()]
        passes += [v >= base[best] - _EPS for v in ours.values()]
        words.append(f"{_title(net)} frontier AUC (mean metric over the throughput span): "
                     + ", ".join(verdicts) + f" vs best baseline {plots.label(best)} {base[best]:.2f}")
    return passes, words


def claim_frontier(facts: Mapping[str, Mapping], *, networks: Sequence[str] = CLASSIFICATION) -> tuple[str, str]:
    """Claim 2: per network, AUC of EAGL and of ALPS >= the best AUC of Hessian / no-FT / random."""
    present = [n for n in networks if n in facts]
    missing = [n for n in networks if n not in facts]
    passes, words = _frontier_items(facts, present)
    return _verdict(passes, missing), _join(words, missing)


def claim_segmentation(facts: Mapping[str, Mapping], *, tolerance: float,
                       networks: Sequence[str] = SEGMENTATION) -> tuple[str, str]:
    """Claim 3: claims 1 and 2 on the segmentation network(s) (mIoU)."""
    present = [n for n in networks if n in facts]
    missing = [n for n in networks if n not in facts]
    p1, w1 = _recovery_items(facts, present, tolerance)
    p2, w2 = _frontier_items(facts, present)
    return _verdict(p1 + p2, missing), _join(w1 + w2, missing)


def claim_compute(facts: Mapping[str, Mapping], *, networks: Sequence[str] | None = None,
                  factor: float = ORDERS_OF_MAGNITUDE) -> tuple[str, str]:
    """Claim 4: EAGL's device-seconds <= 1/``factor`` of Hessian's and of ALPS's, per network."""
    networks = list(facts) if networks is None else networks
    present = [n for n in networks if n in facts]
    passes, words = [], []
    for net in present:
        s = facts[net]["device_seconds"]
        if "eagl" not in s:
            words.append(f"{_title(net)}: EAGL's compute time not recorded")
            continue
        e = s["eagl"]
        parts = [f"EAGL {_sec(e)}"]
        for m in ("hessian", "alps"):
            if m in s:
                r = _ratio(s[m], e)
                passes.append(r >= factor)
                parts.append(f"{plots.label(m)} {_sec(s[m])} ({_times(r)} EAGL)")
        if "hessian" in s and "alps" in s:
            parts.append(f"ALPS/Hessian {_times(_ratio(s['alps'], s['hessian']))}")
        words.append(f"{_title(net)} device-seconds: " + ", ".join(parts))
    words.append(f"threshold: {factor:g}x")
    return _verdict(passes, [n for n in networks if n not in facts]), "; ".join(words)


def claims(facts: Mapping[str, Mapping], *, tolerance: float, scale: str,
           networks: Sequence[str] | None = None) -> pd.DataFrame:
    """T4: one row per claim (``id, claim, evidence, verdict``), verdicts suffixed with the scale."""
    rows = [("C1", *claim_recovery(facts, tolerance=tolerance)),
            ("C2", *claim_frontier(facts)),
            ("C3", *claim_segmentation(facts, tolerance=tolerance)),
            ("C4", *claim_compute(facts, networks=networks))]
    return pd.DataFrame([{"id": cid, "claim": CLAIMS[cid], "evidence": ev, "verdict": f"{v} at {scale} scale"}
                         for cid, v, ev in rows])


def _join(words: Sequence[str], missing: Sequence[str]) -> str:
    out = list(words)
    if missing:
        out.append("not run here: " + ", ".join(_title(n) for n in missing))
    return "; ".join(out) if out else "no data"


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return math.inf if a > 0 else 1.0


def _times(r: float) -> str:
    return "inf x" if not math.isfinite(r) else (f"{r:,.0f}x" if r >= 10 else f"{r:.2f}x")


def _sec(s: float) -> str:
    return f"{s:.3g} s"


# --------------------------------------------------------------------------- allocations


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


def _variant_scores(net: NetworkResults, variant: str) -> dict[str, float]:
    t = net.sensitivity["eagl"].set_index(net.sensitivity["eagl"]["layer"].astype(str))
    need = {"entropy": ["entropy"], "entropy_x_params": ["entropy", "params"],
            "entropy_drop": ["entropy", "entropy_low"]}[variant]
    missing = [c for c in need if c not in t.columns]
    if missing:
        raise ValueError(f"{net.network}: {paths.SENSITIVITY}/eagl.csv lacks {missing} (EAGL variant "
                         f"{variant}); rerun `mpq sensitivity --network {net.network} --method eagl`")
    t = t.loc[net.candidates]
    v = {"entropy": t["entropy"], "entropy_x_params": t["entropy"] * t["params"],
         "entropy_drop": t["entropy"] - t["entropy_low"]}[variant]
    return {str(k): float(x) for k, x in v.items()}


def _jaccard(a: set[str], b: set[str]) -> float:
    return 1.0 if not a and not b else len(a & b) / len(a | b)


# --------------------------------------------------------------------------- items


def _frontier_figure(net: NetworkResults, summary: pd.DataFrame, uniform: pd.DataFrame, *, tolerance: float,
                     scale: str, out: Path) -> Path:
    curves = pd.concat([summary[["method", "rel_throughput", "metric_mean", "metric_std", "seeds"]],
                        uniform[["method", "rel_throughput", "metric_mean", "metric_std", "seeds"]]])
    fig = plots.frontier(curves, float_metric=net.float_metric, tolerance=tolerance,
                         metric_label=net.metric_label, methods=net.frontier_methods,
                         title=f"{_title(net.network)}: {net.metric_name.split()[1]} vs throughput ({scale} scale)")
    fid = FRONTIER_IDS.get(net.network, "F")
    return plots.save(fig, out / f"{fid}_frontier_{net.network}")


def _uniform_points(net: NetworkResults) -> pd.DataFrame:
    g = (net.frontier[net.frontier.method == UNIFORM].groupby("target", as_index=False)
         .agg(rel_throughput=("rel_throughput", "mean"), metric_mean=("metric", "mean"),
              metric_std=("metric", "std"), seeds=("seed", "nunique")))
    g["metric_std"] = g["metric_std"].fillna(0.0)
    return g.assign(method=UNIFORM).sort_values("rel_throughput").reset_index(drop=True)


def _profiles(nets: Sequence[NetworkResults], *, cost_kind: str, start_bits: int, low_bits: int
              ) -> list[tuple[str, pd.DataFrame]]:
    out = []
    for net in nets:
        targets = net.interior_targets()
        target = targets[len(targets) // 2] if targets else None
        model = net.cost_model(cost_kind, start_bits, low_bits)
        rows = []
        for m in PROFILE_METHODS:
            s = net.scores(m)
            low = _allocate(net, s, cost_kind, [target], start_bits, low_bits, model)[0] if target else set()
            v = np.array(list(s.values()))
            span = v.max() - v.min()
            norm = (v - v.min()) / span if span > 0 else np.zeros_like(v)
            rows += [{"method": m, "layer": l, "index": i, "score": s[l], "norm": float(n), "low": l in low}
                     for i, (l, n) in enumerate(zip(s, norm))]
        where = f"at the {target:.2f}x {cost_kind} target (middle of the frontier)" if target else "(no target)"
        out.append((f"{_title(net.network)}: layers each method sends to {low_bits} bits {where}",
                    pd.DataFrame(rows)))
    return out


def _rank_correlations(nets: Sequence[NetworkResults]) -> tuple[pd.DataFrame, list[dict]]:
    rows, panels = [], []
    ylabels = {"eagl": "EAGL score (entropy of 4-bit codes, bits)",
               "hessian": "Hessian score (trace x extra 2-bit error)",
               "noft": "No-FT drop (points)", "random": "random score"}
    for net in nets:
        alps = net.scores("alps")
        for m in [m for m in METHODS if m != "alps" and m in net.sensitivity]:
            s = net.scores(m)
            x = np.array([alps[l] for l in s])
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
            if m in ("eagl", "hessian"):
                panels.append({"row": _title(net.network), "method": m, "x": x, "y": y,
                               "spearman": row["spearman"], "kendall": row["kendall"],
                               "ylabel": ylabels.get(m, f"{plots.label(m)} score")})
    return pd.DataFrame(rows), panels


def _compute_table(nets: Sequence[NetworkResults]) -> pd.DataFrame:
    rows = []
    for net in nets:
        eagl = net.costs.get("eagl")
        e = float(eagl["seconds"]) * int(eagl.get("workers", 1) or 1) if eagl else math.nan
        for m in [m for m in METHODS if m in net.costs]:
            c = net.costs[m]
            workers = int(c.get("workers", 1) or 1)
            ds = float(c["seconds"]) * workers
            rows.append({"network": net.network, "method": m, "seconds": float(c["seconds"]), "device_seconds": ds,
                         "device": str(c.get("device", "")), "workers": workers,
                         "forward_passes": int(c.get("forward_passes", 0) or 0),
                         "backward_passes": int(c.get("backward_passes", 0) or 0),
                         "epochs": float(c.get("epochs", 0.0) or 0.0),
                         "ratio_to_eagl": _ratio(ds, e) if math.isfinite(e) else math.nan,
                         "units": "seconds (CPU here; GPU-hours at paper scale = device_seconds/3600)"})
    return pd.DataFrame(rows)


def _headline(nets: Sequence[NetworkResults], summaries: Mapping[str, pd.DataFrame],
              uniforms: Mapping[str, pd.DataFrame], tolerance: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, show = [], []
    methods = [m for m in METHODS if any(m in n.frontier_methods for n in nets)]
    for net in nets:
        u = uniforms[net.network]
        ends = {"uniform4": u.iloc[0] if len(u) else None, "uniform2": u.iloc[-1] if len(u) > 1 else None}
        row = {"network": net.network, "metric": net.metric_name, "float": net.float_metric}
        for k, r in ends.items():
            row[k] = float(r["metric_mean"]) if r is not None else math.nan
            row[f"{k}_std"] = float(r["metric_std"]) if r is not None else math.nan
            row[f"{k}_baseline"] = float(net.baselines.get(k, {}).get("metric", math.nan))
        disp = {"network": _title(net.network), "metric": net.metric_name, "float": f"{net.float_metric:.2f}",
                "uniform 4-bit": _pm(row["uniform4"], row["uniform4_std"]),
                "uniform 2-bit": _pm(row["uniform2"], row["uniform2_std"]),
                "4-bit (baselines step)": f"{row['uniform4_baseline']:.2f}",
                "2-bit (baselines step)": f"{row['uniform2_baseline']:.2f}"}
        for m in methods:
            if m not in net.frontier_methods:
                row[f"{m}_fp_at"] = row[f"{m}_fp_metric"] = disp[plots.label(m)] = "not run"
                continue
            hit = recovers_at(_mixes(summaries[net.network], m), net.float_metric, tolerance)
            row[f"{m}_fp_at"] = round(hit[0], 4) if hit else "none"
            row[f"{m}_fp_metric"] = round(hit[1], 4) if hit else "none"
            disp[plots.label(m)] = f"{hit[0]:.2f}x ({hit[1]:.2f})" if hit else "none"
        rows.append(row)
        show.append(disp)
    return pd.DataFrame(rows), pd.DataFrame(show)


def _pm(mean: float, std: float) -> str:
    return "n/a" if not math.isfinite(mean) else f"{mean:.2f} ± {std:.2f}"


def _matched(nets: Sequence[NetworkResults], summaries: Mapping[str, pd.DataFrame]
             ) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows, show = [], []
    for net in nets:
        s = summaries[net.network]
        for t in net.interior_targets():
            at = s[np.isclose(s["target"], t)]
            row = {"network": net.network, "target": t}
            disp = {"network": _title(net.network), "target": f"{t:.3f}x"}
            for m in net.frontier_methods:
                r = at[at.method == m]
                mean = float(r["metric_mean"].iloc[0]) if len(r) else math.nan
                std = float(r["metric_std"].iloc[0]) if len(r) else math.nan
                row[f"{m}_mean"], row[f"{m}_std"] = mean, std
                row[f"{m}_rel_throughput"] = float(r["rel_throughput"].iloc[0]) if len(r) else math.nan
                disp[plots.label(m)] = _pm(mean, std)
            rows.append(row)
            show.append(disp)
    return pd.DataFrame(rows), pd.DataFrame(show)


def _ablation(nets: Sequence[NetworkResults], *, start_bits: int, low_bits: int) -> pd.DataFrame:
    rows = []
    for net in nets:
        n = len(net.interior_targets())
        if n == 0:
            continue
        alps = net.scores("alps")
        for kind in ABLATION_COSTS:
            model = net.cost_model(kind, start_bits, low_bits)
            targets = allocate.target_grid(model[0], n + 2, reference_bits=start_bits, fixed_cost=model[1])[1:-1]
            ref = _allocate(net, alps, kind, targets, start_bits, low_bits, model)
            for variant in (*EAGL_VARIANTS, "alps"):
                sets = ref if variant == "alps" else _allocate(net, _variant_scores(net, variant), kind, targets,
                                                               start_bits, low_bits, model)
                for t, low, best in zip(targets, sets, ref):
                    rows.append({"network": net.network, "cost": kind, "target": float(t), "variant": variant,
                                 "n_low": len(low), "alps_predicted_drop": float(sum(alps[l] for l in low)),
                                 "alps_optimal_drop": float(sum(alps[l] for l in best)),
                                 "jaccard_vs_alps": _jaccard(low, best)})
    return pd.DataFrame(rows)


def _clean(v: Any) -> Any:
    """JSON-safe: NaN/inf -> None, numpy scalars -> Python."""
    if isinstance(v, Mapping):
        return {str(k): _clean(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_clean(x) for x in v]
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def _metrics(nets: Sequence[NetworkResults], summaries: Mapping[str, pd.DataFrame],
             uniforms: Mapping[str, pd.DataFrame], facts: Mapping[str, Mapping], tolerance: float) -> dict:
    out = {}
    for net in nets:
        u, f = uniforms[net.network], facts[net.network]
        rec = {}
        for m in net.frontier_methods:
            hit = recovers_at(f["curves"][m], net.float_metric, tolerance)
            rec[m] = hit[0] if hit else None
        out[net.network] = {
            "float": net.float_metric,
            "uniform4": net.baselines.get("uniform4", {}).get("metric"),
            "uniform2": net.baselines.get("uniform2", {}).get("metric"),
            "uniform4_frontier": float(u["metric_mean"].iloc[0]) if len(u) else None,
            "uniform2_frontier": float(u["metric_mean"].iloc[-1]) if len(u) > 1 else None,
            "auc": f["auc"], "recovers_fp_at": rec,
            "seconds": {m: float(net.costs[m]["seconds"]) for m in PROFILE_METHODS if m in net.costs},
            "device_seconds": {m: f["device_seconds"][m] for m in PROFILE_METHODS if m in f["device_seconds"]},
        }
    return _clean(out)


# --------------------------------------------------------------------------- build


def assess(results: str | Path, networks: Sequence[str], *, scale: str, tolerance: float = 0.1) -> pd.DataFrame:
    """T4 alone (no figures): the claims, their evidence and verdicts from the result files."""
    nets = [load_network(results, n) for n in networks]
    facts = {n.network: network_facts(n, _summarize(n, tolerance)) for n in nets}
    return claims(facts, tolerance=tolerance, scale=scale, networks=[n.network for n in nets])


def build(results: str | Path, out: str | Path, networks: Sequence[str], *, scale: str, start_bits: int = 4,
          low_bits: int = 2, tolerance: float = 0.1, cost_kind: str = "throughput") -> dict[str, Path]:
    """Write every figure and table of the report into ``out``; return ``{item id: path}``.

    Figures map to their PNG (a PDF of the same name sits beside it), tables
    to their CSV (with a Markdown twin), plus ``metrics`` (metrics.json),
    ``frontier_points`` (CSV) and ``index`` (index.md). Every network's inputs
    are checked before anything is written: a missing file is a one-line
    FileNotFoundError naming it and the step that writes it. ``scale`` labels
    titles and verdicts (``tiny``, ``embedded``, ``paper``); ``cost_kind`` is the
    cost model the frontier was planned with.
    """
    if not networks:
        raise ValueError("build needs at least one network")
    nets = [load_network(results, n) for n in networks]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {n.network: _summarize(n, tolerance) for n in nets}
    uniforms = {n.network: _uniform_points(n) for n in nets}
    facts = {n.network: network_facts(n, summaries[n.network]) for n in nets}
    items: dict[str, Path] = {}
    captions: dict[str, str] = {}
    titles = {n.network: _title(n.network) for n in nets}

    with plots.style():
        for net in nets:
            p = _frontier_figure(net, summaries[net.network], uniforms[net.network], tolerance=tolerance,
                                 scale=scale, out=out)
            items[p.stem] = p
            captions[p.stem] = (f"{_title(net.network)}: {net.metric_name} vs relative throughput (all-4-bit = 1.0x), "
                                f"per selection method; stars: uniform 4/2-bit; dashed: float.")

        p = plots.save(plots.sensitivity_profiles(
            _profiles(nets, cost_kind=cost_kind, start_bits=start_bits, low_bits=low_bits),
            methods=PROFILE_METHODS), out / "F4_sensitivity_profiles")
        items[p.stem] = p
        captions[p.stem] = ("Per-layer scores (min-max normalised per method); full-colour bars: layers sent to "
                            f"{low_bits} bits at the middle frontier target, recomputed with the exact allocator.")

        corr, panels = _rank_correlations(nets)
        p = plots.save(plots.rank_scatter(panels), out / "F5_rank_correlation")
        items[p.stem] = p
        captions[p.stem] = "EAGL and Hessian scores vs ALPS scores per layer, with rank correlations."
        items["T5_rank_correlation"] = tables.write(
            corr, out / "T5_rank_correlation", title="T5. Rank correlation of each method's scores with ALPS's",
            caption="Per network, over the candidate layers: Spearman rho and Kendall tau of the method's score "
                    "against the ALPS score (positive = the method ranks layers like ALPS), with p-values.",
            formats={"spearman_p": _p, "kendall_p": _p, "method": plots.label})

        comp = _compute_table(nets)
        p = plots.save(plots.compute_time(comp, methods=METHODS, network_titles=titles), out / "F6_compute_time")
        items[p.stem] = p
        captions[p.stem] = ("Compute to reach a solution per method (device-seconds = wall seconds x workers), "
                            "log scale.")
        items["T3_compute_time"] = tables.write(
            comp, out / "T3_compute_time", title="T3. Compute time per method",
            caption="Wall seconds of each sensitivity method, device-seconds = seconds x workers, passes and "
                    "epochs spent, and the ratio of device-seconds to EAGL's. At paper scale GPU-hours = "
                    "device_seconds / 3600. Random selection costs nothing.",
            formats={"method": plots.label, "ratio_to_eagl": lambda r: _times(float(r))})

        abl = _ablation(nets, start_bits=start_bits, low_bits=low_bits)
        if len(abl):
            p = plots.save(plots.ablation(abl, network_titles=titles), out / "F7_ablation")
            items[p.stem] = p
            captions[p.stem] = ("EAGL variants x cost models: ALPS-predicted drop (sum of per-layer ALPS scores of "
                                "the 2-bit layers, a training-free proxy) and overlap with ALPS's own choice.")
        items["T6_ablation"] = tables.write(
            abl, out / "T6_ablation", title="T6. Ablation: EAGL variant x cost model",
            caption="For each network, cost model and relative target (the frontier's number of interior "
                    "targets, spaced in that cost's own units), the exact allocator's choice with each EAGL "
                    "variant's scores. alps_predicted_drop = sum of the ALPS scores of the layers sent to "
                    f"{low_bits} bits: a training-free additive proxy of the metric drop, not a fine-tuned "
                    "measurement (lower is better; alps_optimal_drop is ALPS's own choice, the proxy's optimum). "
                    "jaccard_vs_alps = overlap of the 2-bit set with ALPS's choice at the same target and cost.")

    head, head_show = _headline(nets, summaries, uniforms, tolerance)
    items["T1_headline"] = tables.write(
        head, out / "T1_headline", title="T1. Headline per network", display=head_show,
        caption=f"Float, uniform 4-bit and 2-bit ({' / '.join(sorted({n.metric_name for n in nets}))}). Uniform "
                "columns: the frontier's uniform points (same fine-tune recipe as the mixes; mean ± std over "
                "seeds); '(baselines step)': the uniform models of `mpq baselines`. Per method: its cheapest own "
                "mix (highest relative throughput; uniform ends excluded) whose mean metric is within "
                f"{tolerance:g} point(s) "
                "of float, as 'throughput (metric)', or none.")
    t2, t2_show = _matched(nets, summaries)
    items["T2_matched_throughput"] = tables.write(
        t2, out / "T2_matched_throughput", title="T2. Metric at matched throughput", display=t2_show,
        caption="Mean ± std over seeds of each method's configuration at each interior relative-throughput "
                "target (every method is allocated the same budget; achieved throughput >= target).")
    t4 = claims(facts, tolerance=tolerance, scale=scale, networks=[n.network for n in nets])
    items["T4_claims"] = tables.write(
        t4, out / "T4_claims", title="T4. The paper's claims: measured evidence and verdicts",
        caption=f"Verdicts computed from the data above (mpq.report.claims) at {scale} scale; tolerance "
                f"{tolerance:g} point(s) of float; compute threshold {ORDERS_OF_MAGNITUDE:g}x.")

    metrics = out / "metrics.json"
    atomic.write_text(metrics, json.dumps(_metrics(nets, summaries, uniforms, facts, tolerance),
                                                  indent=2, sort_keys=True, allow_nan=False) + "\n")
    items["metrics"] = metrics
    points = pd.concat([summaries[n.network].assign(network=n.network) for n in nets], ignore_index=True)
    points = points[["network", "method", "target", "rel_throughput", "metric_mean", "metric_std", "seeds"]]
    fp = out / "frontier_points.csv"
    atomic.write_text(fp, points.to_csv(index=False))
    items["frontier_points"] = fp
    items["index"] = _index(out, items, captions, scale)
    return items


def _p(v: object) -> str:
    v = float(v)  # type: ignore[arg-type]
    return "n/a" if not math.isfinite(v) else (f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}")


def _index(out: Path, items: Mapping[str, Path], captions: Mapping[str, str], scale: str) -> Path:
    """index.md: every table (its Markdown) and figure (PNG link + caption) in report order."""
    text = [f"# mpq report ({scale} scale)\n", "Regenerated by `mpq.report.build`; figures also as PDF, "
            "tables also as CSV.\n"]
    for key in sorted((k for k in items if k[:1] in "FT"), key=lambda k: (k[0] != "T", k)):
        p = items[key]
        if p.suffix == ".png":
            text.append(f"## {key}\n\n{captions.get(key, '')}\n\n![{key}]({p.name})\n")
        else:
            text.append(p.with_suffix(".md").read_text())
    path = out / "index.md"
    atomic.write_text(path, "\n".join(text))
    return path
