"""Figures of the report: one style, one palette, every figure saved as PNG and PDF.

Every function here takes tidy ``pandas`` frames (built by ``mpq.report``) and
returns a ``matplotlib.figure.Figure``; ``save`` writes it. Figures are built
with the object-oriented API (``Figure``, not ``pyplot``): no global figure
state, nothing shown, and rendering goes through the Agg (PNG) and PDF
canvases whatever backend a notebook has selected. ``style()`` is the one
style every figure is drawn under (a context manager, so a notebook's own
settings are left alone afterwards).

Colours, markers and display names of the selection methods come from the
method registry (``mpq.methods``), so a method looks the same in every figure;
``REFERENCE_STYLE`` holds those of the lines that are not methods (uniform,
float).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from . import methods as registry
from .cost import COSTS

__all__ = ["REFERENCE_STYLE", "COST_LINESTYLES", "DPI", "style", "save", "label", "frontier",
           "sensitivity_profiles", "rank_scatter", "compute_time", "ablation", "additivity"]

# the lines that are not selection methods: (colour, marker, label)
REFERENCE_STYLE = {"uniform": ("#000000", "*", "Uniform"), "float": ("#404040", "", "Float")}
# one line style per cost model, in mpq.cost.COSTS order (throughput, bops, size)
COST_LINESTYLES = dict(zip(COSTS, ("-", "--", ":", "-.")))
# the ablation's extra variant colours (a method's first variant takes the method's own colour)
_VARIANT_COLOURS = ("#56b4e9", "#d55e00", "#009e73", "#f0e442")
DPI = 150


def label(method: str) -> str:
    """Display name of a method (``eagl`` -> ``EAGL``) or reference line; unknown names pass through."""
    return REFERENCE_STYLE[method][2] if method in REFERENCE_STYLE else registry.label(method)


def _color(method: str) -> str:
    return REFERENCE_STYLE[method][0] if method in REFERENCE_STYLE else registry.color(method)


@contextlib.contextmanager
def style() -> Iterator[None]:
    """The report's one style: seaborn whitegrid, ``notebook`` context, larger fonts.

    A context manager (``with plots.style(): ...``) over ``matplotlib.rc_context``:
    figures built and saved inside it share the look; nothing leaks out.
    """
    rc = {**sns.axes_style("whitegrid"), **sns.plotting_context("notebook", font_scale=1.05)}
    rc.update({"axes.titleweight": "bold", "axes.titlesize": 12, "figure.titlesize": 13,
               "legend.fontsize": 9.5, "legend.framealpha": 0.9, "axes.edgecolor": "#888888",
               "grid.color": "#e3e3e3", "savefig.dpi": DPI, "pdf.fonttype": 42, "svg.hashsalt": "mpq",
               "lines.linewidth": 1.8, "lines.markersize": 6.5, "errorbar.capsize": 3})
    with matplotlib.rc_context(rc):
        yield


def save(fig: Figure, stem: str | Path) -> Path:
    """Write ``<stem>.png`` (``DPI``) and ``<stem>.pdf``; return the PNG's path.

    The PDF carries no creation date, so an unchanged figure gives unchanged
    bytes (DVC sees no spurious change).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    png, pdf = stem.with_suffix(".png"), stem.with_suffix(".pdf")
    fig.savefig(png, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    fig.savefig(pdf, bbox_inches="tight", metadata={"CreationDate": None, "ModDate": None, "Producer": None})
    return png


# --------------------------------------------------------------------------- F1-F3


def frontier(curves: pd.DataFrame, *, float_metric: float, tolerance: float, metric_label: str,
             band_label: str | None = None,
             title: str, methods: Sequence[str]) -> Figure:
    """Metric vs relative throughput: one line per method, uniform ends, float line.

    ``curves``: one row per (method, point) with ``method, rel_throughput,
    metric_mean, metric_std, seeds``; each method's rows include the shared
    uniform ends (as ``mpq.frontier.summarize`` returns them), and the rows of
    method ``uniform`` (the ends themselves) are drawn as stars.
    """
    fig = Figure(figsize=(9.4, 5.0), layout="constrained")
    ax = fig.add_subplot()
    uni = curves[curves.method == "uniform"].sort_values("rel_throughput")
    for method in methods:
        part = curves[curves.method == method]
        if part.empty:
            continue
        part = part.sort_values("rel_throughput")
        ax.errorbar(part["rel_throughput"], part["metric_mean"], yerr=part["metric_std"],
                    color=_color(method), marker=registry.marker(method), label=label(method),
                    alpha=0.9, zorder=3)
    if not uni.empty:
        ax.errorbar(uni["rel_throughput"], uni["metric_mean"], yerr=uni["metric_std"], fmt="none",
                    ecolor="black", zorder=4)
        ax.scatter(uni["rel_throughput"], uni["metric_mean"], marker="*", s=260, color="black",
                   edgecolor="white", linewidth=0.8, zorder=5, label="Uniform 4-bit / 2-bit")
        if len(uni) == 2:
            for (x, y), name, dx, ha in zip(uni[["rel_throughput", "metric_mean"]].to_numpy(),
                                            ["all 4-bit", "all 2-bit"], [10, -10], ["left", "right"]):
                ax.annotate(name, (x, y), xytext=(dx, 9), textcoords="offset points", ha=ha, fontsize=9.5,
                            fontweight="bold")
    ax.axhline(float_metric, color=_color("float"), linestyle="--", linewidth=1.5,
               label=f"Float ({float_metric:.1f})", zorder=2)
    if tolerance > 0:
        ax.axhspan(float_metric - tolerance, float_metric, color=_color("float"), alpha=0.12, lw=0,
                   label=band_label or f"within {tolerance:g} pt of float", zorder=1)
    ax.set_xlabel("Relative throughput vs all-4-bit (x)")
    ax.set_ylabel(metric_label)
    ax.set_title(title)
    seeds = int(curves["seeds"].max()) if "seeds" in curves and len(curves) else 1
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              title=f"mean over {seeds} seeds\nerror bars: std" if seeds > 1 else "1 seed (no error bars)",
              title_fontsize=9)
    return fig


# --------------------------------------------------------------------------- F4


def sensitivity_profiles(profiles: Sequence[tuple[str, pd.DataFrame]], *, methods: Sequence[str]) -> Figure:
    """Per-layer normalised scores, one block of rows per network, one row per method.

    ``profiles``: ``(block title, frame)`` per network; the frame has one row
    per (method, layer) with ``index`` (layer position in network order),
    ``norm`` (score min-max normalised per method) and ``low`` (the layer goes
    to low bits in that method's allocation at the block's budget). Bars:
    pale = kept at 4 bits, full colour = sent to 2 bits.
    """
    n = len(profiles)
    fig = Figure(figsize=(12, 0.7 + 3.9 * n), layout="constrained")
    subfigs = np.atleast_1d(fig.subfigures(n, 1, hspace=0.03))
    for sub, (title, frame) in zip(subfigs, profiles):
        axes = sub.subplots(len(methods), 1, sharex=True)
        axes = np.atleast_1d(axes)
        for ax, method in zip(axes, methods):
            part = frame[frame.method == method].sort_values("index")
            colors = [_color(method) if low else matplotlib.colors.to_rgba(_color(method), 0.25)
                      for low in part["low"]]
            ax.bar(part["index"], part["norm"], width=0.85, color=colors, linewidth=0)
            low = part[part["low"]]  # ticks under the axis: visible even for a zero score
            ax.scatter(low["index"], np.full(len(low), -0.12), marker="^", s=14, color=_color(method),
                       linewidth=0, clip_on=False)
            ax.set_ylim(-0.2, 1.08)
            ax.set_yticks([0, 0.5, 1])
            ax.set_ylabel(label(method).split(" (")[0], rotation=0, ha="right", va="center",
                          color=_color(method), fontweight="bold")
            ax.text(1.0, 1.02, f"{int(part['low'].sum())} of {len(part)} layers at 2 bits",
                    transform=ax.transAxes, ha="right", va="bottom", fontsize=8.5, color="#444444")
            ax.grid(axis="x", visible=False)
        axes[-1].set_xlabel("Candidate layer index (network order, input to output)")
        sub.suptitle(title, fontsize=12, fontweight="bold")
    fig.suptitle("Per-layer sensitivity, min-max normalised per method (0 = least sensitive); "
                 "full colour and ^ = sent to 2 bits", fontsize=11)
    return fig


# --------------------------------------------------------------------------- F5


def rank_scatter(panels: Sequence[dict]) -> Figure:
    """Per-layer scatter of a method's score against the reference method's (ALPS), one row per network.

    ``panels``: dicts with ``row`` (network title), ``method``, ``reference``,
    ``x`` (the reference's scores), ``y`` (the method's scores), ``spearman``,
    ``kendall``, ``xlabel`` and ``ylabel``.
    """
    rows = list(dict.fromkeys(p["row"] for p in panels))
    cols = list(dict.fromkeys(p["method"] for p in panels))
    fig = Figure(figsize=(5.6 * len(cols), 4.2 * len(rows)), layout="constrained")
    axes = np.array(fig.subplots(len(rows), len(cols), squeeze=False))
    for p in panels:
        ax = axes[rows.index(p["row"]), cols.index(p["method"])]
        x, y = np.asarray(p["x"], float), np.asarray(p["y"], float)
        ax.scatter(x, y, s=30, color=_color(p["method"]), marker=registry.marker(p["method"]),
                   edgecolor="white", linewidth=0.5, alpha=0.85)
        if len(y) and np.all(y > 0) and y.max() / y.min() > 100:
            ax.set_yscale("log")
        ax.set_xlabel(p["xlabel"])
        ax.set_ylabel(p["ylabel"])
        ax.set_title(f"{p['row']}: {label(p['method'])} vs {label(p['reference'])}\n"
                     f"Spearman $\\rho$ = {_num(p['spearman'])}, Kendall $\\tau$ = {_num(p['kendall'])} "
                     f"({len(x)} layers)", fontsize=11)
    return fig


def _num(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:+.2f}"


# --------------------------------------------------------------------------- F6


def compute_time(frame: pd.DataFrame, *, methods: Sequence[str], network_titles: dict[str, str]) -> Figure:
    """Grouped bars: device-seconds per method (bars) and network (groups), log scale.

    ``frame``: ``network, method, device_seconds`` (and ``device``, named in the note). Methods that took no time
    (random selection) cannot sit on a log axis; they are named in a note.
    """
    nets = list(dict.fromkeys(frame["network"]))
    shown = [m for m in methods if (frame.loc[frame.method == m, "device_seconds"] > 0).any()]
    zero = [m for m in methods if m in set(frame.method) and m not in shown]
    fig = Figure(figsize=(max(7.5, 2.6 * len(nets) + 4.0), 4.8), layout="constrained")
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(shown))
    for i, method in enumerate(shown):
        xs, ys = [], []
        for j, net in enumerate(nets):
            v = frame.loc[(frame.network == net) & (frame.method == method), "device_seconds"]
            if len(v) and float(v.iloc[0]) > 0:
                xs.append(j + (i - (len(shown) - 1) / 2) * width)
                ys.append(float(v.iloc[0]))
        ax.bar(xs, ys, width=width * 0.92, color=_color(method), label=label(method))
        for x, y in zip(xs, ys):
            ax.annotate(_seconds(y), (x, y), xytext=(0, 2), textcoords="offset points", ha="center",
                        va="bottom", fontsize=7.5, rotation=90)
    ax.set_yscale("log")
    lo = frame.loc[frame.device_seconds > 0, "device_seconds"]
    if len(lo):
        ax.set_ylim(lo.min() / 3, lo.max() * 30)
    ax.set_xticks(range(len(nets)), [network_titles.get(n, n) for n in nets])
    ax.set_ylabel("Compute to reach a solution\n(device-seconds, log scale)")
    ax.set_title("Sensitivity compute time per method")
    note = "device-seconds: job methods, their jobs' recorded seconds summed; others, wall seconds x workers"
    if "device" in frame.columns:
        devices = sorted({str(d) for d in frame.loc[frame.device_seconds > 0, "device"] if str(d)})
        if devices:
            note += "\non " + " | ".join(devices)
    if zero:
        note += "; " + ", ".join(label(m) for m in zero) + ": 0 s (not drawable on a log axis)"
    ax.text(0.01, 0.98, note, transform=ax.transAxes, ha="left", va="top", fontsize=8.5, color="#444444")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="x", visible=False)
    return fig


def _seconds(s: float) -> str:
    if s >= 3600:
        return f"{s / 3600:.1f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    if s >= 1:
        return f"{s:.1f} s"
    return f"{s * 1000:.0f} ms" if s >= 0.01 else f"{s * 1000:.2g} ms"


# --------------------------------------------------------------------------- F7


def _variant_styles(reference: str) -> dict[str, tuple[str, str]]:
    """``{variant: (colour, label)}``: every registered method's ablation variants, then the reference.

    A method's first variant takes the method's own colour, the next ones the
    extra colours in order; the reference (the proxy's optimum) is black.
    """
    styles = {}
    for m in registry.METHODS.values():
        for i, v in enumerate(m.variants):
            colour = m.color if i == 0 else _VARIANT_COLOURS[(i - 1) % len(_VARIANT_COLOURS)]
            styles[v] = (colour, f"{m.label}: {v.replace('_', ' ')}")
    styles[reference] = ("#000000", f"{label(reference)} (optimum of the proxy)")
    return styles


def ablation(frame: pd.DataFrame, *, network_titles: dict[str, str], reference: str) -> Figure:
    """Score variants x cost models: the reference-predicted drop and overlap with the reference's choice.

    ``frame``: ``network, cost, target, variant, <reference>_predicted_drop,
    jaccard_vs_<reference>`` (``variant == reference`` rows are the reference
    method's own choice: the proxy's optimum).
    """
    ref_label = label(reference)
    styles = _variant_styles(reference)
    nets = list(dict.fromkeys(frame["network"]))
    fig = Figure(figsize=(12, 1.2 + 3.6 * len(nets)), layout="constrained")
    axes = np.array(fig.subplots(len(nets), 2, squeeze=False))
    for r, net in enumerate(nets):
        part = frame[frame.network == net]
        for (variant, kind), line in part.groupby(["variant", "cost"], sort=False):
            line = line.sort_values("target")
            colour, name = styles.get(variant, ("#333333", variant))
            kw = {"color": colour, "linestyle": COST_LINESTYLES.get(kind, "-"), "marker": "o", "markersize": 4.5,
                  "label": f"{name}, {kind}"}
            axes[r, 0].plot(line["target"], line[f"{reference}_predicted_drop"], **kw)
            if variant != reference:
                axes[r, 1].plot(line["target"], line[f"jaccard_vs_{reference}"], **kw)
        title = network_titles.get(net, net)
        axes[r, 0].set_title(f"{title}: {ref_label}-predicted drop of the choice")
        axes[r, 0].set_ylabel(f"sum of {ref_label} scores\nof 2-bit layers (points)")
        axes[r, 1].set_title(f"{title}: overlap with {ref_label}'s choice")
        axes[r, 1].set_ylabel("Jaccard of 2-bit sets")
        axes[r, 1].set_ylim(-0.03, 1.03)
        for ax in axes[r]:
            ax.set_xlabel("Relative target vs all-4-bit (x, in the cost model's units)")
    from matplotlib.lines import Line2D
    variants = [v for v in styles if v in set(frame["variant"])]
    kinds = [k for k in COST_LINESTYLES if k in set(frame["cost"])]
    handles = [Line2D([], [], color=styles[v][0], marker="o", label=styles[v][1]) for v in variants]
    handles += [Line2D([], [], color="#555555", linestyle=COST_LINESTYLES[k], label=f"cost: {k}") for k in kinds]
    fig.legend(handles=handles, loc="outside lower center", ncol=3, fontsize=9.5)
    varied = " / ".join(m.label for m in registry.METHODS.values() if m.variants)
    fig.suptitle(f"Ablation: {varied} variant x cost model ({ref_label}-predicted drop = training-free "
                 "additive proxy, lower is better)", fontsize=11.5)
    return fig


def additivity(points: pd.DataFrame, table: pd.DataFrame, *, network_titles: dict[str, str],
               metric_labels: dict[str, str]) -> Figure:
    """Knapsack additivity: summed per-layer scores of a mix's low-bit layers vs its measured drop.

    ``points``: ``network, method, selection, summed_score, measured_drop`` (one
    row per frontier configuration and scoring method); ``table``: ``network,
    method, pearson, spearman, configurations``. Rows: networks; columns: the
    scoring methods; colour and marker: the method that selected the mix.
    """
    nets = list(dict.fromkeys(points["network"]))
    cols = list(dict.fromkeys(points["method"]))
    fig = Figure(figsize=(4.9 * len(cols), 1.0 + 3.7 * len(nets)), layout="constrained")
    axes = np.array(fig.subplots(len(nets), len(cols), squeeze=False))
    stats = table.set_index(["network", "method"])
    for r, net in enumerate(nets):
        for c, method in enumerate(cols):
            ax, part = axes[r, c], points[(points.network == net) & (points.method == method)]
            for sel, g in part.groupby("selection", sort=False):
                ax.scatter(g["summed_score"], g["measured_drop"], s=90 if sel in REFERENCE_STYLE else 26,
                           color=_color(sel),
                           marker=REFERENCE_STYLE[sel][1] if sel in REFERENCE_STYLE else registry.marker(sel),
                           edgecolor="white", linewidth=0.4, alpha=0.85, label=label(sel))
            row = stats.loc[(net, method)]
            ax.set_title(f"{network_titles.get(net, net)}: {label(method)}\nr = {_num(row['pearson'])}, "
                         f"$\\rho$ = {_num(row['spearman'])} ({int(row['configurations'])} mixes)", fontsize=10)
            ax.set_xlabel(f"sum of {label(method)} scores (2-bit layers)", fontsize=10)
            ax.set_ylabel(f"measured drop ({metric_labels.get(net, 'points')})" if c == 0 else "")
    handles, names = [], []
    for ax in axes.flat:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="outside lower center", ncol=min(len(names), 6), fontsize=9.5,
               title="mix selected by")
    fig.suptitle("Knapsack additivity: does the sum of per-layer scores predict a mix's drop? "
                 "(r: Pearson, $\\rho$: Spearman)", fontsize=11.5)
    return fig
