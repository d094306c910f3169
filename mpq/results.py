"""One network's pipeline outputs, read back for the report.

``load_network(results, network)`` reads what the steps wrote under
``results/<network>/`` (``baselines.json``, ``sensitivity/<method>.csv`` and
``_cost.json``, ``frontier.csv``, ``layers.csv``) into a ``NetworkResults``;
a missing file is a one-line ``FileNotFoundError`` naming the step that writes
it. Per-network facts (task, metric, title) come from the network registry and
the method order from the method registry.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from . import cost, methods, paths
from .frontier import UNIFORM, summarize
from .networks import get_spec
from .sensitivity import file_hash

__all__ = ["NetworkResults", "load_network", "required_methods", "frontier_inputs", "check_frontier_inputs",
           "StaleResults"]


def required_methods() -> list[str]:
    """Methods the report needs whatever the frontier ran: those it profiles, its reference and
    those with ablation variants (registry flags)."""
    return [m.name for m in methods.METHODS.values() if m.profile or m.reference or m.variants]


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
    def spec(self):
        """The network's registry entry (task, metric, title, figure id, claims)."""
        return get_spec(self.network)

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def title(self) -> str:
        return self.spec.title

    @property
    def metric_label(self) -> str:
        return self.spec.metric_label

    @property
    def metric_name(self) -> str:
        return f"test {self.spec.metric} %"

    @property
    def candidates(self) -> list[str]:
        """Candidate layers in network order (input to output)."""
        return [str(l) for l in self.layers.loc[self.layers["candidate"].astype(bool), "layer"]]

    @property
    def frontier_methods(self) -> list[str]:
        have = set(self.frontier["method"]) - {UNIFORM}
        order = methods.names()
        return [m for m in order if m in have] + sorted(have - set(order))

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

    def summary(self, tolerance: float) -> pd.DataFrame:
        """``mpq.frontier.summarize`` at the report's tolerance, with a ``uniform_end`` flag per row."""
        s = summarize(self.frontier, self.float_metric, tolerance=tolerance)
        ends = set(self.frontier.loc[self.frontier.method == UNIFORM, "target"].astype(float))
        return s.assign(uniform_end=s["target"].astype(float).isin(ends))

    def uniform_points(self) -> pd.DataFrame:
        """The uniform ends of the frontier (mean and std over seeds), lowest throughput first."""
        g = (self.frontier[self.frontier.method == UNIFORM].groupby("target", as_index=False)
             .agg(rel_throughput=("rel_throughput", "mean"), metric_mean=("metric", "mean"),
                  metric_std=("metric", "std"), seeds=("seed", "nunique")))
        g["metric_std"] = g["metric_std"].fillna(0.0)
        return g.assign(method=UNIFORM).sort_values("rel_throughput").reset_index(drop=True)


class StaleResults(ValueError):
    """A frontier computed from other baselines or sensitivity tables than those on disk now."""


def frontier_inputs(folder: str | Path, names: list[str]) -> dict[str, Any]:
    """Content hashes of the files a network's frontier is computed from (``frontier_inputs.json``).

    ``baselines.json`` and the sensitivity table of each method in ``names``: the
    frontier step records them next to ``frontier.csv``; the report refuses a
    frontier whose inputs have changed since (``check_frontier_inputs``).
    """
    d = Path(folder)
    return {"baselines": file_hash(d / paths.BASELINES_JSON),
            "sensitivity": {m: file_hash(d / paths.SENSITIVITY / f"{m}.csv") for m in sorted(names)}}


def check_frontier_inputs(folder: str | Path, network: str) -> None:
    """One-line ``StaleResults`` unless the frontier's recorded inputs are the files on disk now."""
    d = Path(folder)
    rerun = f"rerun `mpq frontier --network {network}`"
    try:
        recorded = json.loads((d / paths.FRONTIER_INPUTS).read_text())
        names = list(recorded["sensitivity"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StaleResults(f"{d / paths.FRONTIER_CSV} carries no readable record of its inputs "
                           f"({paths.FRONTIER_INPUTS}); {rerun}") from None
    try:
        current = frontier_inputs(d, names)
    except FileNotFoundError as e:
        raise StaleResults(f"{d / paths.FRONTIER_CSV} was computed from {e.filename}, which is gone; "
                           f"{rerun}") from None
    changed = ([paths.BASELINES_JSON] if current["baselines"] != recorded["baselines"] else []) + \
        [f"{paths.SENSITIVITY}/{m}.csv" for m in names if current["sensitivity"][m] != recorded["sensitivity"][m]]
    if changed:
        raise StaleResults(f"{d / paths.FRONTIER_CSV} is stale: {', '.join(changed)} changed after it was "
                           f"computed; {rerun}")


def _need(path: Path, step: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run `{step}` first")
    return path


def load_network(results: str | Path, network: str) -> NetworkResults:
    """Read one network's result files; a missing one is a one-line FileNotFoundError naming the step."""
    get_spec(network)  # a network outside the registry: one line naming the registered ones
    d = paths.network_dir(network, results)
    base = json.loads(_need(d / paths.BASELINES_JSON, f"mpq baselines --network {network}").read_text())
    fpath = _need(d / paths.FRONTIER_CSV, f"mpq frontier --network {network}")
    lpath = _need(d / paths.LAYERS_CSV, f"mpq frontier --network {network}")
    check_frontier_inputs(d, network)
    front, layers = pd.read_csv(fpath), pd.read_csv(lpath)
    have = set(front["method"]) if "method" in front else set()
    # required: what the report itself reads and every method on the frontier; others are read when present
    required = required_methods()
    wanted = required + [m for m in methods.names() if m in have and m not in required]
    sens, costs = {}, {}
    for m in methods.names():
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
