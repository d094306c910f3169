"""The one shape every sensitivity method returns: a tidy table and a cost record.

A ``Sensitivity`` holds one row per candidate layer, with the common columns
``layer, bits_from, bits_to, score`` (higher score = more harmful to reduce the
layer from ``bits_from`` to ``bits_to``) plus method-specific columns, and a
``CostRecord`` of what computing it took (wall seconds, device, passes).
The allocator and the report read only the common columns, so no method is
ever special-cased downstream.

A table computed by the pipeline also records the identity of its inputs
(``meta["inputs"]``, see ``inputs_identity``): the starting checkpoint and its
float teacher (content hashes), the checkpoint's recipe, the method's
settings and the train and validation samples. The frontier refuses a table
whose inputs are no longer today's (``check_inputs``), so a retrained
checkpoint, a changed setting or another split can never be allocated from
silently.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import platform
import socket
from dataclasses import asdict, dataclass, field
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from . import atomic, methods, paths
from .taskdata import dataset_digest

__all__ = ["COLUMNS", "CostRecord", "Sensitivity", "device_name", "allocator_table", "SCORE_FLOOR",
           "StaleSensitivity", "inputs_identity", "check_inputs"]

COLUMNS = ("layer", "bits_from", "bits_to", "score")
SCORE_FLOOR = 1e-6  # relative to the largest score: the smallest cost of reducing a layer


def allocator_table(scores: Mapping[str, float], bits_from: int, bits_to: int) -> dict[str, dict[int, float]]:
    """``{layer: {bits_from: 0, bits_to: s}}``, the allocator's sensitivity table.

    Scores below a small positive floor (``SCORE_FLOOR`` x the largest |score|)
    are raised to it. A negative score (ALPS or no-FT: the metric went *up*
    after reducing the layer; a negative Hessian trace) is measurement noise
    around "harmless", not a reward: left negative, the allocator would reduce
    every such layer whatever the budget, and every configuration would land far
    beyond its throughput target. With the floor, harmless layers are all but
    free to reduce, but only as many as the budget needs.
    """
    top = max((abs(float(v)) for v in scores.values()), default=0.0) or 1.0
    floor = SCORE_FLOOR * top
    return {l: {bits_from: 0.0, bits_to: max(float(v), floor)} for l, v in scores.items()}


def device_name(device: Any = "cpu") -> str:
    """A human-readable name of the device a method ran on (for cost records)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"cpu:{platform.processor() or platform.machine()} x{torch.get_num_threads()} threads"


@dataclass(frozen=True)
class CostRecord:
    """What computing a sensitivity took."""

    method: str
    seconds: float                 # wall time, all workers together (end - start)
    device: str                    # e.g. "cpu:x86_64 x2 threads", "NVIDIA H100 80GB HBM3"
    workers: int = 1               # processes / GPUs that shared the work
    forward_passes: int = 0        # samples through a forward pass
    backward_passes: int = 0       # samples through a backward pass
    epochs: float = 0.0            # training epochs spent (over all layer jobs)
    host: str = field(default_factory=socket.gethostname)
    notes: str = ""
    job_seconds: float | None = None  # methods made of jobs: their recorded seconds, summed (see below)

    @property
    def device_seconds(self) -> float:
        """Seconds of device time (GPU-hours at paper scale = this / 3600).

        Methods made of jobs (ALPS, no-FT) count what their jobs' records say
        they took, summed (``job_seconds``), whichever run computed them, so a
        rerun that reuses the records reports the cost that was spent, not the
        seconds of reading them; other methods: wall time x workers.
        """
        return self.job_seconds if self.job_seconds is not None else self.seconds * self.workers


@dataclass
class Sensitivity:
    """A method's per-layer scores and its cost."""

    method: str
    table: pd.DataFrame
    cost: CostRecord
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [c for c in COLUMNS if c not in self.table.columns]
        if missing:
            raise ValueError(f"a sensitivity table needs the columns {list(COLUMNS)}; missing {missing}")
        if self.table["layer"].duplicated().any():
            dup = self.table.loc[self.table["layer"].duplicated(), "layer"].iloc[0]
            raise ValueError(f"layer {dup!r} appears twice in the {self.method} table")
        self.table = self.table[list(COLUMNS) + [c for c in self.table.columns if c not in COLUMNS]]

    @property
    def scores(self) -> dict[str, float]:
        return dict(zip(self.table["layer"], self.table["score"].astype(float)))

    def for_allocator(self) -> dict[str, dict[int, float]]:
        """The allocator's sensitivity table (see ``allocator_table``)."""
        bits_from, bits_to = int(self.table["bits_from"].iloc[0]), int(self.table["bits_to"].iloc[0])
        if (self.table["bits_from"] != bits_from).any() or (self.table["bits_to"] != bits_to).any():
            raise ValueError(f"the {self.method} table mixes precisions: one bits_from/bits_to pair is expected")
        return allocator_table(self.scores, bits_from, bits_to)

    def save(self, folder: str | Path) -> None:
        """``<method>.csv`` (the table) and ``<method>_cost.json`` (cost record + meta), atomically."""
        folder = Path(folder)
        atomic.write_text(folder / f"{self.method}.csv", self.table.to_csv(index=False))
        atomic.write_json(folder / f"{self.method}_cost.json",
                          {"cost": asdict(self.cost), "meta": self.meta})

    @classmethod
    def load(cls, folder: str | Path, method: str) -> "Sensitivity":
        folder = Path(folder)
        csv, js = folder / f"{method}.csv", folder / f"{method}_cost.json"
        for p in (csv, js):
            if not p.is_file():
                raise FileNotFoundError(f"{p} not found: run `mpq sensitivity --method {method}` first")
        blob = json.loads(js.read_text())
        return cls(method, pd.read_csv(csv), CostRecord(**blob["cost"]), blob.get("meta", {}))


# --------------------------------------------------------------------------- the inputs of a table

class StaleSensitivity(ValueError):
    """A sensitivity table computed from other inputs than today's; the message says what to rerun."""


def file_hash(path: str | Path) -> str:
    """A short SHA-256 of a file's bytes, read once per version of the file.

    Every table of a step (and every check of the frontier) hashes the same two
    checkpoints; the cache key includes the file's size and modification time,
    so a rewritten checkpoint is hashed again.
    """
    st = Path(path).stat()
    return _hash_bytes(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=16)
def _hash_bytes(path: str, size: int, mtime_ns: int) -> str:
    """SHA-256 of ``path`` (read in 1 MiB chunks); ``size`` and ``mtime_ns`` only key the cache."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _setting(cfg: Any, key: str) -> Any:
    """The value of a params key (``seed``, ``alps.workers``, a whole section ``hessian``), JSON-ready."""
    value = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return asdict(value) if dataclasses.is_dataclass(value) else value


def inputs_identity(exp: Any, method: str, out: str | Path) -> dict[str, Any]:
    """What ``method``'s table for ``exp``'s network is computed from, as it stands now.

    ``exp`` is an ``mpq.experiment.Experiment`` and ``out`` its network's
    results folder. The identity has ``checkpoint`` and ``teacher`` (content
    hashes of the all-``start_bits`` checkpoint and the float checkpoint),
    ``recipe`` (``exp.recipe`` of the starting checkpoint) and ``settings``
    (the values of the params keys the method reads, ``Method.param_keys``)
    and ``data`` (``mpq.taskdata.dataset_digest`` of the train and validation
    splits): a table whose recorded identity differs from this one is stale.
    """
    out, start = Path(out), exp.cfg.quant.start_bits
    return {"checkpoint": file_hash(out / paths.uniform_ckpt(start)),
            "teacher": file_hash(out / paths.FLOAT_CKPT),
            "recipe": exp.recipe("quant", start),
            "data": {split: dataset_digest(getattr(exp.data, split)) for split in ("train", "val")},
            # through JSON, as stored: a tuple compares equal to the list it is read back as
            "settings": json.loads(json.dumps({key: _setting(exp.cfg, key)
                                               for key in methods.get(method).param_keys}, default=str))}


_WHAT = {"checkpoint": "starting checkpoint", "teacher": "float checkpoint", "recipe": "checkpoint recipe",
         "data": "train or validation samples", "settings": "method settings"}


def check_inputs(sens: Sensitivity, exp: Any, out: str | Path) -> None:
    """Refuse ``sens`` unless it was computed from today's inputs (``inputs_identity``).

    Raises ``StaleSensitivity`` with one line naming the stale table, what
    differs and the command that recomputes it.
    """
    table = Path(out) / paths.SENSITIVITY / f"{sens.method}.csv"
    rerun = f"rerun `mpq sensitivity --network {exp.network} --method {sens.method}`"
    recorded = sens.meta.get("inputs")
    if recorded is None:
        raise StaleSensitivity(f"{table} is stale: it carries no record of the inputs it was computed "
                               f"from; {rerun}")
    current = inputs_identity(exp, sens.method, out)
    changed = [_WHAT[k] for k in _WHAT if recorded.get(k) != current[k]]
    if recorded.get("settings") != current["settings"]:
        changed[-1] += f" ({', '.join(methods.get(sens.method).param_keys)})"
    if changed:
        what = " and ".join([", ".join(changed[:-1]), changed[-1]] if len(changed) > 1 else changed)
        raise StaleSensitivity(f"{table} is stale: the {what} changed since it was computed; {rerun}")
