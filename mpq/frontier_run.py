"""The frontier step: allocate every method's scores, fine-tune and evaluate each configuration.

``run(exp)`` is what notebook 04 (and ``mpq frontier``) calls for one network:
the per-layer cost model of the all-``start_bits`` model (``layers.csv``),
every method's allocations at the same targets (``mpq.frontier.plan``), one
bit-configuration file per configuration (``configs/``), one fine-tune job per
configuration and seed through ``mpq.jobs`` (resumable records under
``records/frontier/``, parallel workers or torchrun ranks), and the results
(``frontier.csv``, ``frontier_summary.csv``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import nn

from . import atomic, bitconfig, cost, frontier, jobs, methods, paths, results
from .experiment import Experiment, barrier, world
from .quantized import candidate_layers, get_bits
from .sensitivity import Sensitivity, check_inputs

__all__ = ["cost_model", "layer_table", "run"]

STEP_VERSION = "frontier-v2"   # part of every record's key: a change of the recipe invalidates old records


def cost_model(exp: Experiment, qmodel: nn.Module) -> dict[str, Any]:
    """Per-layer MACs/params and the allocator's cost table for ``allocate.cost``.

    Returns ``{"macs", "params", "table", "fixed_cost"}``: ``table`` covers the
    candidate layers at ``start_bits``/``low_bits``; ``fixed_cost`` is the cost of
    the layers kept at ``keep_bits`` (so relative values are for the whole network).
    """
    q, kind = exp.cfg.quant, exp.cfg.allocate.cost
    macs = cost.layer_macs(qmodel, exp.example_input().to(exp.device))
    params = cost.layer_params(qmodel)
    bits = get_bits(qmodel)
    cands = candidate_layers(qmodel)
    fixed = {n: b for n, b in bits.items() if n not in cands}
    return {"macs": macs, "params": params,
            "table": cost.layer_costs(kind, macs, params, cands, [q.start_bits, q.low_bits]),
            "fixed_cost": cost.total_cost(kind, fixed, macs, params)}


def layer_table(qmodel: nn.Module, cm: dict[str, Any]) -> pd.DataFrame:
    """``layers.csv``: every quantized layer's MACs, parameters, starting bits and candidate flag."""
    cands = set(candidate_layers(qmodel))
    bits = get_bits(qmodel)
    return pd.DataFrame({"layer": list(bits), "macs": [cm["macs"][n] for n in bits],
                         "params": [cm["params"][n] for n in bits], "bits": list(bits.values()),
                         "candidate": [n in cands for n in bits]})


def _scores(exp: Experiment, names: tuple[str, ...], qmodel: nn.Module, out: Path) -> dict[str, Any]:
    """Each method's allocator table: read from its sensitivity table, or drawn per seed.

    A table computed from other inputs than today's (another checkpoint, recipe
    or method settings) is refused with one line saying what to rerun
    (``mpq.sensitivity.check_inputs``).
    """
    scores: dict[str, Any] = {}
    for name in names:
        if methods.get(name).per_seed:
            compute = methods.compute_function(name)
            scores[name] = (lambda seed, name=name, compute=compute: compute(
                exp, method=name, qmodel=qmodel, teacher=None, out=out, seed=seed).for_allocator())
        else:
            sens = Sensitivity.load(out / paths.SENSITIVITY, name)
            check_inputs(sens, exp, out)
            scores[name] = sens.for_allocator()
    return scores


def run(exp: Experiment, outdir: str | Path | None = None, names: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Fine-tune every frontier configuration of ``exp``'s network and evaluate it on the test split.

    Needs the baselines and the sensitivity tables of ``frontier.methods``
    (``names`` overrides them). Writes ``layers.csv``, ``frontier.csv`` (one row
    per configuration and seed), ``frontier_summary.csv`` and one
    bit-configuration file per configuration under ``configs/``; every finished
    job is a record under ``records/frontier/``, so a rerun computes only what is
    missing. Returns the ``frontier.csv`` table.
    """
    out = Path(outdir) if outdir is not None else paths.network_dir(exp.network)
    with exp.results_lock(out):
        return _run(exp, out, exp.cfg.frontier.methods if names is None else names)


def _run(exp: Experiment, out: Path, names: tuple[str, ...]) -> pd.DataFrame:
    """``run`` with the results folder locked."""
    cfg, q = exp.cfg, exp.cfg.quant
    qmodel, fmodel = exp.start_models(out)
    cm = cost_model(exp, qmodel)
    all_start = get_bits(qmodel)
    if world()[0] == 0:
        atomic.write_text(out / paths.LAYERS_CSV, layer_table(qmodel, cm).to_csv(index=False))
    plan = frontier.plan(_scores(exp, names, qmodel, out), cm["table"], points=cfg.allocate.points,
                         seeds=cfg.frontier.seeds, start_bits=q.start_bits, low_bits=q.low_bits,
                         fixed_cost=cm["fixed_cost"], solver=cfg.allocate.solver,
                         per_seed=[n for n in names if methods.get(n).per_seed])
    ckpt = str(out / paths.uniform_ckpt(q.start_bits))
    job_list, info = [], {}
    for point in plan:
        bits = {**all_start, **point.bits}
        pred = cost.summary(bits, all_start, cm["macs"], cm["params"])
        per_seed = point.method != frontier.UNIFORM and methods.get(point.method).per_seed
        config_path = out / paths.CONFIGS / f"{point.method}-t{point.target:.4f}" \
            f"{'-s%d' % point.seeds[0] if per_seed else ''}.yaml"
        if world()[0] == 0:
            bitconfig.save_bits(config_path, bits, network=exp.network, method=point.method,
                                cost_model=cfg.allocate.cost, target=round(point.target, 6),
                                predicted={k: round(v, 6) for k, v in pred.items()}, checkpoint=ckpt)
        for seed in point.seeds:
            job = jobs.Job(point.name(seed), dict(point.bits), seed)
            job_list.append(job)
            info[job.name] = (point, seed, pred, config_path, sum(b == q.low_bits for b in point.bits.values()))
    ctx = jobs.experiment_context(exp, qmodel, fmodel, epochs=cfg.frontier.epochs, eval_split="test",
                                  record_dir=out / paths.RECORDS / "frontier", extra={"step": STEP_VERSION},
                                  keep_samples=True)
    workers = exp.workers(cfg.frontier.workers)
    records, _ = jobs.run(ctx, job_list, workers=workers, threads=exp.threads_per_worker(workers),
                          progress=exp.progress, desc=f"{exp.network} frontier")
    rows = []
    for name, (point, seed, pred, config_path, n_low) in info.items():
        rec = records[name]
        rows.append({"network": exp.network, "method": point.method, "target": point.target, "seed": seed,
                     "rel_throughput": pred["rel_throughput"], "gbops": pred["gbops"],
                     "size_mb": pred["size_mb"], "n_low": n_low, "metric": rec["metric"],
                     "seconds": rec["seconds"], "config": str(config_path)})
    table = pd.DataFrame(rows, columns=list(frontier.RESULT_COLUMNS))
    if world()[0] == 0:
        atomic.write_text(out / paths.FRONTIER_CSV, table.to_csv(index=False))
        atomic.write_with(out / paths.FRONTIER_SAMPLES, lambda f: np.savez_compressed(
            f, **{name: np.asarray(records[name]["samples"], dtype=np.int32) for name in info}))
        float_metric = json.loads((out / paths.BASELINES_JSON).read_text())["float"]["metric"]
        summary = frontier.summarize(table, float_metric)
        atomic.write_text(out / paths.FRONTIER_SUMMARY_CSV, summary.to_csv(index=False))
        atomic.write_json(out / paths.FRONTIER_INPUTS, results.frontier_inputs(
            out, [n for n in names if not methods.get(n).per_seed]))
    barrier()
    return table
