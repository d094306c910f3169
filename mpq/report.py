"""The report: every figure and table, from the pipeline's result files.

``build(results, out, networks, scale=...)`` reads, per network, what the
steps wrote under ``results/<network>/`` (``mpq.results``) and writes into
``out``:

======================  =============================================================
F1/F2/F3                metric vs relative throughput per method (one per network;
                        the id is the network registry's ``figure``)
F4                      per-layer scores of the profiled methods + their 2-bit layers
F5 / T5                 every method's scores vs the reference's (ALPS), Spearman and Kendall
F6 / T3                 compute time per method (device-seconds, log scale)
T1                      FP, uniform 4/2-bit, cheapest mix per method that recovers float
T2                      metric at matched throughput per method
T4                      the paper's claims, measured evidence and a computed verdict
T6 / F7                 ablation: EAGL variant x cost model (training-free proxy)
T7 / F8                 knapsack additivity: summed per-layer scores vs measured drop
T8                      LSQ step diagnostic: trained/initial step ratios, EAGL spread
T9                      test-retest reliability of the sensitivity scores
T10                     noise budget: test images vs fine-tune seeds
metrics.json            headline numbers per network (``dvc metrics show``)
frontier_points.csv     every network's frontier summary (``dvc plots show``)
index.md                all tables and figures on one page
======================  =============================================================

The frames come from ``mpq.report_items``, the claims from ``mpq.claims``;
figures are PNG + PDF (``mpq.plots``), tables CSV + Markdown (``mpq.tables``).
Nothing here trains or evaluates a model: the frontier summaries are
recomputed from ``frontier.csv`` with ``mpq.frontier.summarize`` at the
report's ``tolerance``; T1, T4's C1 and metrics.json judge recovery with one
rule (``mpq.claims.recovery``), so they agree with one another.
The method definitions and every rule used here are in ``docs/methods.md``.
"""
from __future__ import annotations

import itertools
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from . import atomic, claims, methods, paths, plots, report_items, stats, tables
from .results import NetworkResults, load_network
from .uncertainty import NetworkUncertainty

__all__ = ["build", "assess"]


def assess(results: str | Path, networks: list[str], *, scale: str, tolerance: float,
           compute_factor: float) -> pd.DataFrame:
    """T4 alone (no figures): the claims, their evidence and verdicts from the result files."""
    nets = [load_network(results, n) for n in networks]
    facts = {n.network: claims.network_facts(n, n.summary(tolerance), _uncertainty(results, n)) for n in nets}
    return claims.claims(facts, tolerance=tolerance, compute_factor=compute_factor, scale=scale,
                         networks=[n.network for n in nets])


def build(results: str | Path, out: str | Path, networks: list[str], *, scale: str, start_bits: int,
          low_bits: int, tolerance: float, compute_factor: float, cost_kind: str) -> dict[str, Path]:
    """Write every figure and table of the report into ``out``; return ``{item id: path}``.

    Figures map to their PNG (a PDF of the same name sits beside it), tables
    to their CSV (with a Markdown twin), plus ``metrics`` (metrics.json),
    ``frontier_points`` (CSV) and ``index`` (index.md). Every network's inputs
    are checked before anything is written: a missing file is a one-line
    FileNotFoundError naming it and the step that writes it. ``scale`` labels
    titles and verdicts (``tiny``, ``embedded``, ``paper``); ``cost_kind`` is the
    cost model the frontier was planned with; ``tolerance`` and
    ``compute_factor`` are the claims' settings (``report`` in ``params.yaml``).
    """
    if not networks:
        raise ValueError("build needs at least one network")
    nets = [load_network(results, n) for n in networks]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summaries = {n.network: n.summary(tolerance) for n in nets}
    uniforms = {n.network: n.uniform_points() for n in nets}
    uncs = {n.network: _uncertainty(results, n) for n in nets}
    facts = {n.network: claims.network_facts(n, summaries[n.network], uncs[n.network]) for n in nets}
    report = _Report(out)
    titles = {n.network: n.title for n in nets}
    ref = report_items.reference_method()
    profiled = report_items.profiled_methods()
    compared = " and ".join(methods.label(m) for m in profiled if m != ref)
    varied = " / ".join(m.label for m in methods.METHODS.values() if m.variants)
    cheap = claims.PAPER_CHEAP_METHOD

    with plots.style():
        for net in nets:
            rule, margin = report_items.recovery_rule(uncs[net.network], tolerance)
            band = f"C1 margin: float's interval half-width ({margin:.2f})" if rule == "interval" else None
            report.figure(_frontier_figure(net, summaries[net.network], uniforms[net.network], tolerance=margin,
                                           band_label=band, scale=scale), f"{net.spec.figure}_frontier_{net.network}",
                          f"{net.title}: {net.metric_name} vs relative throughput (all-4-bit = 1.0x), "
                          "per selection method; stars: uniform 4/2-bit; dashed: float; band: the margin below "
                          "float within which a mix recovers it (C1).")
        report.figure(plots.sensitivity_profiles(
            report_items.profiles(nets, cost_kind=cost_kind, start_bits=start_bits, low_bits=low_bits),
            methods=profiled), "F4_sensitivity_profiles",
            "Per-layer scores (min-max normalised per method); full-colour bars: layers sent to "
            f"{low_bits} bits at the middle frontier target, recomputed with the exact allocator.")

        corr, panels = report_items.rank_correlations(nets)
        report.figure(plots.rank_scatter(panels), "F5_rank_correlation",
                      f"{compared} scores vs {methods.label(ref)} scores per layer, with rank correlations.")
        report.table(corr, "T5_rank_correlation",
                     f"T5. Rank correlation of each method's scores with {methods.label(ref)}'s",
                     "Per network, over the candidate layers: Spearman rho and Kendall tau of the method's score "
                     f"against the {methods.label(ref)} score (positive = the method ranks layers like "
                     f"{methods.label(ref)}), with p-values.",
                     formats={"spearman_p": _p, "kendall_p": _p, "method": methods.label})

        comp = report_items.compute_table(nets)
        report.figure(plots.compute_time(comp, methods=methods.names(), network_titles=titles), "F6_compute_time",
                      "Compute to reach a solution per method (device-seconds: the summed seconds of a job "
                      "method's job records, else wall seconds x workers), log scale.")
        report.table(comp, "T3_compute_time", "T3. Compute time per method",
                     "Wall seconds of each sensitivity method; device-seconds = for a method made of jobs (ALPS, "
                     "no-FT) the seconds its job records say each job took, summed (reused records included), for "
                     "the others seconds x workers; the device; passes and epochs spent; and the ratio of "
                     f"device-seconds to {methods.label(cheap)}'s. At paper scale GPU-hours = device_seconds / 3600. "
                     "Random selection costs nothing.",
                     formats={"method": methods.label, f"ratio_to_{cheap}": lambda r: claims.times(float(r))})

        abl = report_items.ablation(nets, start_bits=start_bits, low_bits=low_bits)
        if len(abl):
            report.figure(plots.ablation(abl, network_titles=titles, reference=ref), "F7_ablation",
                          f"{varied} variants x cost models: {methods.label(ref)}-predicted drop (sum of per-layer "
                          f"{methods.label(ref)} scores of the 2-bit layers, a training-free proxy) and overlap "
                          f"with {methods.label(ref)}'s own choice.")
        report.table(abl, "T6_ablation", f"T6. Ablation: {varied} variant x cost model",
                     "For each network, cost model and relative target (the frontier's number of interior "
                     f"targets, spaced in that cost's own units), the exact allocator's choice with each {varied} "
                     f"variant's scores. {ref}_predicted_drop = sum of the {methods.label(ref)} scores of the "
                     f"layers sent to {low_bits} bits: a training-free additive proxy of the metric drop, not a "
                     f"fine-tuned measurement (lower is better; {ref}_optimal_drop is {methods.label(ref)}'s own "
                     f"choice, the proxy's optimum). jaccard_vs_{ref} = overlap of the 2-bit set with "
                     f"{methods.label(ref)}'s choice at the same target and cost.")

        steps = report_items.step_diagnostic(nets, results, start_bits=start_bits, low_bits=low_bits)
        report.table(steps, "T8_step_diagnostic", "T8. Step diagnostic: does LSQ learn its steps?",
                     f"Per network and uniform LSQ checkpoint (fine-tuned from float): the candidate layers' "
                     "trained / initial weight-step ratio (initial = LSQ's 2 mean|w| / sqrt(Q_P) of the float "
                     "weights; 1.0 = the step never moved), min / median / max and the share of layers moved by "
                     f"more than 1 %; on the {start_bits}-bit row, the spread of the {methods.label(cheap)} scores "
                     "over the candidates (min, max, coefficient of variation in %).",
                     formats={"moved_over_1pct": lambda v: f"{100 * float(v):.0f} %",
                              **{f"step_ratio_{k}": lambda v: f"{float(v):.3f}" for k in ("min", "median", "max")}})

        add, add_points = report_items.additivity(nets, results, low_bits=low_bits)
        if len(add_points):
            report.figure(plots.additivity(add_points, add, network_titles=titles,
                                           metric_labels={n.network: f"{n.spec.metric} points" for n in nets}),
                          "F8_additivity",
                          f"Knapsack additivity: for every frontier mix, the sum of each method's per-layer scores "
                          f"over the mix's {low_bits}-bit layers against the mix's measured drop from uniform "
                          f"{start_bits}-bit (same seeds), with Pearson and Spearman correlations.")
        report.table(add, "T7_additivity", "T7. Knapsack additivity: summed scores vs measured drop",
                     "Per network and method with a score table: the correlation, over every frontier "
                     f"configuration (all selection methods, the uniform {low_bits}-bit end included), between the "
                     f"sum of the method's per-layer scores over the configuration's {low_bits}-bit layers (the "
                     "value the knapsack adds up) and the configuration's measured drop from uniform "
                     f"{start_bits}-bit, paired by seed and averaged over seeds. The reference row "
                     f"'{report_items.LAYER_COUNT}' predicts with the number of {low_bits}-bit layers alone: a "
                     "method's per-layer scores support the knapsack's additivity where its correlation clearly "
                     "exceeds that row's.",
                     formats={"pearson_p": _p, "spearman_p": _p, "method": methods.label})

    rel = report_items.reliability(nets)
    report.table(rel, "T9_reliability", "T9. Test-retest reliability of the sensitivity scores",
                 "Per network and method, Spearman rank correlation over the candidate layers between two "
                 "independent measurements of the same scores: 'seed' = the method run again from seed + 1 "
                 "(ALPS: every fine-tune job; Hessian: a second set of Hutchinson probe vectors), 'split-half' "
                 "= the score (the KL from the float teacher) measured on the even- vs the odd-numbered "
                 "validation images (ALPS, no-FT). A score whose retest correlation is low ranks layers by noise.",
                 formats={"method": methods.label})
    noise = report_items.noise_budget(nets, facts)
    report.table(noise, "T10_noise_budget", "T10. Noise budget: where the uncertainty comes from",
                 "Per network: C2's comparisons (frontier AUC of EAGL and ALPS minus the best baseline's or "
                 "control's) and C1's (a mix of EAGL or ALPS above 1.0x minus float; the median over those mixes "
                 "of the estimate and of each spread), with the standard deviation of their paired bootstrap "
                 "replicates when the test images and the fine-tune seeds are both drawn (sd), only the test "
                 "images (sd_images, seeds held at their results) and only the seeds (sd_seeds, on the whole "
                 "test set; n/a with one seed). Both partial spreads hold the images x seeds interaction, so "
                 "they do not add up to sd. 'images': test images per configuration; 'sources': the independent "
                 "samples the bootstrap draws (test digits, each with its copies at other offsets, or canvases). k times "
                 "more sources divide sd_images by about sqrt(k), k "
                 "times more seeds divide sd_seeds by about sqrt(k); with S seeds the bootstrap spread of a "
                 "seed mean is sqrt((S-1)/S) of its usual standard error (0.87 at 4 seeds), and so are the "
                 "intervals of T1, T2 and T4.", formats={"quantity": str})
    ci = (f"{100 * stats.LEVEL:.0f} % paired bootstrap interval over test images (a digit with its copies at "
          f"other offsets drawn as one) and seeds ({stats.REPLICATES} replicates)")
    head, head_show = report_items.headline(nets, summaries, uniforms, tolerance, uncs)
    report.table(head, "T1_headline", "T1. Headline per network",
                 f"Float, uniform 4-bit and 2-bit ({' / '.join(sorted({n.metric_name for n in nets}))}). Uniform "
                 "columns: the frontier's uniform points (same fine-tune recipe as the mixes; mean ± std over "
                 "seeds); '(baselines step)': the uniform models of `mpq baselines`. Per method: its cheapest own "
                 "mix (highest relative throughput; uniform ends excluded) that recovers float by C1's rule (the "
                 "interval of mix - float stays above minus the half-width of float's own interval; without "
                 f"per-sample results: mean within {tolerance:g} point(s) of float), as 'throughput (metric; minus "
                 f"float [interval])', or none. In brackets: the {ci}.",
                 display=head_show)
    t2, t2_show = report_items.matched(nets, summaries, uncs)
    report.table(t2, "T2_matched_throughput", "T2. Metric at matched throughput",
                 "Mean ± std over seeds of each method's configuration at each interior relative-throughput "
                 "target (every method is allocated the same budget; achieved throughput >= target), and in "
                 f"brackets the {ci}.", display=t2_show)
    t4 = claims.claims(facts, tolerance=tolerance, compute_factor=compute_factor, scale=scale,
                       networks=[n.network for n in nets])
    report.table(t4, "T4_claims", "T4. The paper's claims: measured evidence and verdicts",
                 f"Verdicts computed from the data above (mpq.claims) at {scale} scale. C1-C3 from {ci}s: a "
                 "mix recovers float when the interval of (mix - float) stays above minus the half-width of "
                 "float's own interval; a frontier is better when the interval of its AUC minus the best "
                 "baseline's or control's is above 0, worse when below, otherwise inconclusive. Without "
                 f"per-sample results: means, tolerance {tolerance:g} point(s) of float. C4: device-seconds, "
                 f"threshold {compute_factor:g}x, per proposed method.")

    items = report.items
    metrics = out / "metrics.json"
    atomic.write_text(metrics, json.dumps(report_items.metrics(nets, summaries, uniforms, facts, tolerance),
                                          indent=2, sort_keys=True, allow_nan=False) + "\n")
    items["metrics"] = metrics
    points = pd.concat([summaries[n.network].assign(network=n.network) for n in nets], ignore_index=True)
    points = points[["network", "method", "target", "rel_throughput", "metric_mean", "metric_std", "seeds"]]
    fp = out / "frontier_points.csv"
    atomic.write_text(fp, points.to_csv(index=False))
    items["frontier_points"] = fp
    items["index"] = _index(out, items, report.captions, scale)
    return items


def _uncertainty(results: str | Path, net: NetworkResults) -> NetworkUncertainty | None:
    """The network's bootstrap resampling (``mpq.uncertainty``), or None without per-sample results."""
    return NetworkUncertainty.load(paths.network_dir(net.network, results), net.frontier, net.task)


class _Report:
    """Where the items go: figures (PNG + PDF, with a caption for index.md) and tables (CSV + Markdown)."""

    def __init__(self, out: Path):
        self.out = out
        self.items: dict[str, Path] = {}
        self.captions: dict[str, str] = {}

    def figure(self, fig: Any, stem: str, caption: str) -> None:
        self.items[stem] = plots.save(fig, self.out / stem)
        self.captions[stem] = caption

    def table(self, frame: pd.DataFrame, stem: str, title: str, caption: str, **kw: Any) -> None:
        self.items[stem] = tables.write(frame, self.out / stem, title=title, caption=caption, **kw)


def _p(v: object) -> str:
    v = float(v)  # type: ignore[arg-type]
    return "n/a" if not math.isfinite(v) else (f"{v:.2g}" if v >= 1e-3 else f"{v:.1e}")


def _item_order(key: str) -> tuple[bool, int, str]:
    """Tables before figures, then by number: T1, T2, ..., T9, T10."""
    digits = "".join(itertools.takewhile(str.isdigit, key[1:]))
    return key[0] != "T", int(digits) if digits else 0, key


def _index(out: Path, items: Mapping[str, Path], captions: Mapping[str, str], scale: str) -> Path:
    """index.md: every table (its Markdown) and figure (PNG link + caption) in report order."""
    text = [f"# mpq report ({scale} scale)\n", "Regenerated by `mpq.report.build`; figures also as PDF, "
            "tables also as CSV.\n"]
    for key in sorted((k for k in items if k[:1] in "FT"), key=_item_order):
        p = items[key]
        if p.suffix == ".png":
            text.append(f"## {key}\n\n{captions.get(key, '')}\n\n![{key}]({p.name})\n")
        else:
            text.append(p.with_suffix(".md").read_text())
    path = out / "index.md"
    atomic.write_text(path, "\n".join(text))
    return path


def _frontier_figure(net: NetworkResults, summary: pd.DataFrame, uniform: pd.DataFrame, *, tolerance: float,
                     scale: str, band_label: str | None = None) -> Any:
    curves = pd.concat([summary[["method", "rel_throughput", "metric_mean", "metric_std", "seeds"]],
                        uniform[["method", "rel_throughput", "metric_mean", "metric_std", "seeds"]]])
    fig = plots.frontier(curves, float_metric=net.float_metric, tolerance=tolerance, band_label=band_label,
                         metric_label=net.metric_label, methods=net.frontier_methods,
                         title=f"{net.title}: {net.metric_name.split()[1]} vs throughput ({scale} scale)")
    return fig
