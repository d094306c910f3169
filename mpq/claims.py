"""The paper's claims (T4): plain functions of a small ``facts`` dictionary per network.

``network_facts`` reduces one network's results to the numbers the claims are
judged on; ``claims`` turns every network's facts into T4's rows (claim,
evidence, verdict). Which networks speak to which claim is a fact of the
network registry (``NetworkSpec.claims``); which methods are the paper's and
which are compared is the method registry's ``role``; the tolerance and the
compute threshold are settings (``report`` in ``params.yaml``). A test can
build facts where a claim holds and where it fails.

Verdicts (``_verdict3``): every item of a claim yes -> reproduced (partially if
some network was not run); yes and no mixed -> partially reproduced; all no ->
not reproduced; otherwise inconclusive at this scale. C1-C3 items come from
paired bootstrap intervals where a network has per-image results, else from
means (``_judge``); C4's from device-seconds.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from . import methods
from .networks import NETWORKS
from .results import NetworkResults
from .sensitivity import CostRecord

__all__ = ["CLAIMS", "PAPER_CHEAP_METHOD", "network_facts", "recovers_at", "recovery", "float_tolerance",
           "best_compared", "best_miss", "proposed_with_auc",
           "claim_recovery", "claim_frontier", "claim_segmentation", "claim_compute", "claims", "claim_networks",
           "mixes", "mix_targets", "title", "ratio",
           "times", "PAPER_LEADING_METHOD"]

_EPS = 1e-9

CLAIMS = {
    "C1": "A 4/2-bit mix recovers full-precision accuracy (within float's own uncertainty) at a throughput above 1.0x "
          "for ResNet-50 and ResNet-101, with EAGL or ALPS",
    "C2": "EAGL and ALPS give a better accuracy-throughput frontier than the leading layer-selection "
          "methods (Hessian/HAWQ, no-fine-tune drop/AIMET, random)",
    "C3": "Equivalent results (claims 1-2) for PSPNet semantic segmentation (mIoU)",
    "C4": "EAGL and ALPS each reach a solution with orders of magnitude less compute than the leading "
          "method (Hessian/HAWQ)",
}
# the data-free method: T3's ratios and T8's score spread are read against it
PAPER_CHEAP_METHOD = "eagl"
# C4 judges each proposed method (registry role) against this one, the leading layer-selection method
PAPER_LEADING_METHOD = "hessian"


def title(network: str) -> str:
    """Display title of a network (its name when it is not registered)."""
    return NETWORKS[network].title if network in NETWORKS else network


def claim_networks(claim: str) -> list[str]:
    """The registered networks that are evidence for ``claim`` (``NetworkSpec.claims``)."""
    return [n for n, spec in NETWORKS.items() if claim in spec.claims]


def _ours() -> list[str]:
    return methods.names(role="proposed")


def _compared() -> list[str]:
    return methods.names(role=("baseline", "control"))


def mixes(summary: pd.DataFrame, method: str) -> list[tuple[float, float]]:
    """A method's own configurations ``(rel_throughput, metric_mean)``, without the shared uniform ends."""
    return [(x, y) for x, y, _ in mix_targets(summary, method)]


def recovers_at(curve: Sequence[tuple[float, float]], float_metric: float, tolerance: float
                ) -> tuple[float, float] | None:
    """The point of highest throughput whose mean metric is within ``tolerance`` of float, or None."""
    ok = [(x, y) for x, y in curve if y >= float_metric - tolerance - _EPS]
    return max(ok) if ok else None


def network_facts(net: NetworkResults, summary: pd.DataFrame, unc: Any = None) -> dict[str, Any]:
    """The numbers the claims are judged on, as plain data.

    ``{"float", "curves": {method: [(rel_throughput, metric_mean), ...]}, "auc":
    {method: auc}, "device_seconds": {method: s}, "devices": {method: device name}}``. ``curves`` hold each
    method's own mixes (the interior targets, mean over seeds), not the uniform
    ends every method shares; ``auc`` is ``mpq.frontier.summarize``'s (ends included).
    ``unc``: the network's ``mpq.uncertainty.NetworkUncertainty`` (or None), under
    ``"unc"``: with it the verdicts come from paired bootstrap intervals.
    """
    methods = net.frontier_methods
    auc = {m: float(summary.loc[summary.method == m, "auc"].iloc[0]) for m in methods
           if (summary.method == m).any()}
    return {"float": net.float_metric, "curves": {m: mixes(summary, m) for m in methods}, "auc": auc,
            "device_seconds": {m: CostRecord(**c).device_seconds for m, c in net.costs.items()},
            "devices": {m: str(c.get("device", "")) for m, c in net.costs.items()},
            "targets": {m: mix_targets(summary, m) for m in methods}, "unc": unc}


def mix_targets(summary: pd.DataFrame, method: str) -> list[tuple[float, float, float]]:
    """A method's own mixes as ``(rel_throughput, metric_mean, target)``, by throughput."""
    part = summary[(summary.method == method) & ~summary["uniform_end"]].sort_values("rel_throughput")
    return [(float(x), float(y), float(t)) for x, y, t in zip(part["rel_throughput"], part["metric_mean"],
                                                                 part["target"])]


YES, NO, UNSURE = "yes", "no", "inconclusive"


def _verdict3(items: Sequence[str], missing: Sequence[str]) -> str:
    """Verdict from per-item interval outcomes: every item yes -> reproduced; yes and no mixed ->
    partially; no without yes and without an inconclusive item -> not reproduced; else inconclusive."""
    if not items:
        return "not testable"
    yes, no = items.count(YES), items.count(NO)
    if yes == len(items):
        return "partially reproduced" if missing else "reproduced"
    if yes:
        return "partially reproduced"
    if no == len(items):
        return "not reproduced"
    return "inconclusive"


def float_tolerance(unc: Any) -> float:
    """C1's tolerance from intervals: the half-width of float's own interval (the test set's resolution)."""
    lo, hi = unc.interval(unc.float_values())
    return (hi - lo) / 2


def recovery(targets: Sequence[tuple[float, float, float]], method: str, float_metric: float,
             tolerance: float, unc: Any = None) -> tuple[float, float, float, float] | None:
    """The mix of highest throughput that recovers float, ``(rel_throughput, metric_mean, low, high)``, or None.

    ``targets``: the method's mixes ``(rel_throughput, metric_mean, target)`` (``mix_targets``).
    With ``unc`` (``mpq.uncertainty.NetworkUncertainty``) a mix recovers float when the lower end of
    the paired interval of (mix - float) is >= minus ``float_tolerance(unc)``, and ``low, high`` is
    that interval; without it, when its mean is within ``tolerance`` of float (``recovers_at``), and
    ``low, high`` are NaN. T1, C1 and metrics.json all use this rule.
    """
    mixes_ = [p for p in targets if p[0] > 1.0 + _EPS]
    if unc is None:
        hit = recovers_at([(x, y) for x, y, _ in mixes_], float_metric, tolerance)
        return (hit[0], hit[1], math.nan, math.nan) if hit else None
    h = float_tolerance(unc)
    ok = [(x, y, *unc.diff(unc.config(method, t), unc.float_values())) for x, y, t in mixes_]
    ok = [p for p in ok if p[2] >= -h]
    return max(ok) if ok else None


def best_miss(targets: Sequence[tuple[float, float, float]], method: str, unc: Any = None
              ) -> tuple[float, float, float, float] | None:
    """A method's best mix above 1.0x ``(rel_throughput, metric_mean, low, high)``, or None: with ``unc``
    the mix whose interval of (mix - float) reaches highest (the one ``_recovery_ci`` judges), without it
    the highest mean (``low, high`` NaN). What T1 and C1 show for a method that does not recover float."""
    above = [p for p in targets if p[0] > 1.0 + _EPS]
    if not above:
        return None
    if unc is None:
        x, y, _ = max(above, key=lambda p: p[1])
        return x, y, math.nan, math.nan
    cis = [(x, y, *unc.diff(unc.config(method, t), unc.float_values())) for x, y, t in above]
    return max(cis, key=lambda c: c[3])


def _recovery_ci(f: Mapping[str, Any]) -> tuple[list[str], str]:
    """C1 per network from intervals: a proposed method's mix above 1.0x recovers float when the
    lower end of the paired interval of (mix - float) is >= -h, h = the half-width of float's own
    interval (the resolution of the test set; ``recovery``); no when every such mix's upper end is < -h."""
    unc = f["unc"]
    lo_f, hi_f = unc.interval(unc.float_values())
    h = float_tolerance(unc)
    outcomes, parts = [], []
    for m in _ours():
        mixes_ = [p for p in f["targets"].get(m, []) if p[0] > 1.0 + _EPS]
        if not mixes_:
            parts.append(f"{methods.label(m)} no mix above 1.0x")
            continue
        hit = recovery(mixes_, m, f["float"], 0.0, unc)
        if hit:
            x, y, lo, hi = hit
            outcomes.append(YES)
            parts.append(f"{methods.label(m)} {y:.2f} at {x:.2f}x (minus float: [{lo:.2f}, {hi:.2f}])")
        else:
            x, y, lo, hi = best_miss(mixes_, m, unc)
            # the best mix by the upper end: no when even its interval lies below -h
            outcomes.append(NO if hi < -h else UNSURE)
            parts.append(f"{methods.label(m)} best {y:.2f} at {x:.2f}x (minus float: [{lo:.2f}, {hi:.2f}])")
    result = YES if YES in outcomes else (UNSURE if UNSURE in outcomes else NO)
    return [result], (f"(float {f['float']:.2f} [{lo_f:.2f}, {hi_f:.2f}], tolerance = its half-width "
                      f"{h:.2f}: " + ", ".join(parts) + f" -> {dict(yes='recovered', no='not recovered').get(result, result)})")


def _compared_auc(auc: Mapping[str, float]) -> dict[str, float]:
    """The baselines' and controls' finite frontier AUCs."""
    return {m: auc[m] for m in _compared() if m in auc and math.isfinite(auc[m])}


def best_compared(auc: Mapping[str, float]) -> str | None:
    """The baseline or control with the highest frontier AUC (what C2 compares EAGL and ALPS with)."""
    base = _compared_auc(auc)
    return max(base, key=base.get) if base else None


def proposed_with_auc(auc: Mapping[str, float]) -> list[str]:
    """The proposed methods (EAGL, ALPS) that have a frontier AUC."""
    return [m for m in _ours() if m in auc and math.isfinite(auc[m])]


def _frontier_ci(f: Mapping[str, Any]) -> tuple[list[str], str]:
    """C2 per network from intervals: each proposed method's AUC minus the best baseline's or
    control's (by point AUC), paired: yes when the interval is above 0, no when below, else inconclusive."""
    unc, auc = f["unc"], f["auc"]
    base, ours, best = _compared_auc(auc), proposed_with_auc(auc), best_compared(auc)
    if not base or not ours:
        return [], f"no {'baseline' if not base else 'EAGL/ALPS'} frontier to compare"
    outcomes, parts = [], []
    for m in ours:
        lo, hi = unc.diff(unc.auc(m), unc.auc(best))
        outcomes.append(YES if lo > 0 else (NO if hi < 0 else UNSURE))
        parts.append(f"{methods.label(m)} {auc[m]:.2f} (minus {methods.label(best)}: [{lo:.2f}, {hi:.2f}], "
                     f"{outcomes[-1]})")
    return outcomes, (f"frontier AUC (mean metric over the throughput span), vs the best baseline/control "
                      f"{methods.label(best)} {base[best]:.2f}: " + ", ".join(parts))


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
        for m in _ours():
            curve = [(x, y) for x, y in f["curves"].get(m, []) if x > 1.0 + _EPS]
            if m not in f["curves"]:
                parts.append(f"{methods.label(m)} not run")
                continue
            hit = recovers_at(curve, fp, tolerance)
            if hit:
                ok_any = True
                parts.append(f"{methods.label(m)} {hit[1]:.2f} at {hit[0]:.2f}x")
            elif curve:
                best = max(curve, key=lambda p: p[1])
                parts.append(f"{methods.label(m)} none above 1.0x (best {best[1]:.2f} at {best[0]:.2f}x)")
            else:
                parts.append(f"{methods.label(m)} no point above 1.0x")
        passes.append(ok_any)
        words.append(f"{title(net)} (float {fp:.2f}, tolerance {tolerance:g}): " + ", ".join(parts)
                     + (" -> recovered" if ok_any else " -> not recovered"))
    return passes, words


def _judge(facts: Mapping[str, Mapping], networks: Sequence[str], parts: Sequence[str],
           tolerance: float = 0.0) -> tuple[str, str]:
    """A claim's verdict and evidence from its ``parts`` ("recovery", "frontier"), network by network:
    from paired intervals where the network has them (``_recovery_ci``, ``_frontier_ci``: yes / no /
    inconclusive), else from means (``_recovery_items`` within ``tolerance``, ``_frontier_items``: yes / no),
    so that each network is judged by the same rule as its T1 row (``recovery``)."""
    present = [n for n in networks if n in facts]
    missing = [n for n in networks if n not in facts]
    by_means = {"recovery": lambda n: _recovery_items(facts, [n], tolerance),
                "frontier": lambda n: _frontier_items(facts, [n])}
    by_ci = {"recovery": _recovery_ci, "frontier": _frontier_ci}
    items, words = [], []
    for n in present:
        for part in parts:
            if facts[n].get("unc") is not None:
                outcomes, text = by_ci[part](facts[n])
                items += outcomes
                words.append(f"{title(n)} {text}")
            else:
                passes, texts = by_means[part](n)
                items += [YES if ok else NO for ok in passes]
                words += texts
    return _verdict3(items, missing), _join(words, missing)


def claim_recovery(facts: Mapping[str, Mapping], *, tolerance: float,
                   networks: Sequence[str] | None = None) -> tuple[str, str]:
    """Claim 1: per network (default: those of C1), does a proposed method reach a point above 1.0x
    that recovers float? From paired intervals where a network has them (``_recovery_ci``), else from
    means within ``tolerance`` of float (``_judge``)."""
    networks = claim_networks("C1") if networks is None else networks
    return _judge(facts, networks, ["recovery"], tolerance)


def _frontier_items(facts: Mapping[str, Mapping], networks: Sequence[str]) -> tuple[list[bool], list[str]]:
    passes, words = [], []
    for net in networks:
        auc = facts[net]["auc"]
        base, best = _compared_auc(auc), best_compared(auc)
        ours = {m: auc[m] for m in proposed_with_auc(auc)}
        if not base or not ours:
            words.append(f"{title(net)}: no {'baseline' if not base else 'EAGL/ALPS'} frontier to compare")
            continue
        verdicts = [f"{methods.label(m)} {v:.2f} ({'>=' if v >= base[best] - _EPS else '<'})" for m, v in ours.items()]
        passes += [v >= base[best] - _EPS for v in ours.values()]
        words.append(f"{title(net)} frontier AUC (mean metric over the throughput span): "
                     + ", ".join(verdicts) + f" vs best baseline {methods.label(best)} {base[best]:.2f}")
    return passes, words


def claim_frontier(facts: Mapping[str, Mapping], *, networks: Sequence[str] | None = None) -> tuple[str, str]:
    """Claim 2: per network (default: those of C2), the AUC of every proposed method >= the best
    AUC of the baselines and controls."""
    networks = claim_networks("C2") if networks is None else networks
    return _judge(facts, networks, ["frontier"])


def claim_segmentation(facts: Mapping[str, Mapping], *, tolerance: float,
                       networks: Sequence[str] | None = None) -> tuple[str, str]:
    """Claim 3: claims 1 and 2 on the segmentation network(s) (default: those of C3; mIoU)."""
    networks = claim_networks("C3") if networks is None else networks
    return _judge(facts, networks, ["recovery", "frontier"], tolerance)


def claim_compute(facts: Mapping[str, Mapping], *, networks: Sequence[str] | None = None,
                  factor: float) -> tuple[str, str]:
    """Claim 4: each proposed method's device-seconds <= 1/``factor`` of the leading method's, per network.

    One item per proposed method (registry role ``proposed``: EAGL, ALPS) and
    network: ``device-seconds(PAPER_LEADING_METHOD) / device-seconds(method) >=
    factor``. EAGL can pass while ALPS fails: the verdict is then partial.
    """
    networks = list(facts) if networks is None else networks
    present = [n for n in networks if n in facts]
    lead = PAPER_LEADING_METHOD
    passes, words = [], []
    for net in present:
        s = facts[net]["device_seconds"]
        if lead not in s:
            words.append(f"{title(net)}: {methods.label(lead)}'s compute time not recorded")
            continue
        parts = [f"{methods.label(lead)} {_sec(s[lead])}"]
        for m in _ours():
            if m in s:
                r = ratio(s[lead], s[m])
                passes.append(r >= factor)
                how = f"{times(r)} less" if r >= 1 else f"{times(1 / r)} more"
                parts.append(f"{methods.label(m)} {_sec(s[m])} ({how})")
            else:
                parts.append(f"{methods.label(m)} not recorded")
        used = sorted({d for m, d in facts[net].get("devices", {}).items() if d and (m == lead or m in _ours())})
        on = f" (on {' | '.join(used)})" if used else ""
        words.append(f"{title(net)} device-seconds{on}: " + ", ".join(parts))
    words.append(f"threshold: {factor:g}x less than {methods.label(lead)}")
    return _verdict(passes, [n for n in networks if n not in facts]), "; ".join(words)


def claims(facts: Mapping[str, Mapping], *, tolerance: float, compute_factor: float, scale: str,
           networks: Sequence[str] | None = None) -> pd.DataFrame:
    """T4: one row per claim (``id, claim, evidence, verdict``), verdicts suffixed with the scale."""
    rows = [("C1", *claim_recovery(facts, tolerance=tolerance)),
            ("C2", *claim_frontier(facts)),
            ("C3", *claim_segmentation(facts, tolerance=tolerance)),
            ("C4", *claim_compute(facts, networks=networks, factor=compute_factor))]
    return pd.DataFrame([{"id": cid, "claim": CLAIMS[cid], "evidence": ev, "verdict": f"{v} at {scale} scale"}
                         for cid, v, ev in rows])


def _join(words: Sequence[str], missing: Sequence[str]) -> str:
    out = list(words)
    if missing:
        out.append("not run here: " + ", ".join(title(n) for n in missing))
    return "; ".join(out) if out else "no data"


def ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return math.inf if a > 0 else 1.0


def times(r: float) -> str:
    return "inf x" if not math.isfinite(r) else (f"{r:,.0f}x" if r >= 10 else f"{r:.2f}x")


def _sec(s: float) -> str:
    return f"{s:.3g} s"


