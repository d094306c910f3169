"""Jobs and their records: what identifies a job, the record's key, its file, reading and writing it.

A ``Job`` (a name, layer precisions and a seed) is run by ``mpq.jobs``; when
it finishes it leaves one JSON record in a record folder,
``record_path(record_dir, job.name)``, written atomically (``write_record``).
A record carries a key: the hash of everything its result depends on, in two
layers. ``context_key`` hashes the inputs every job of a run shares (the
starting model's and teacher's tensors and precisions, the fine-tune settings,
the train and evaluation sets' sizes and contents, ...); a user whose results
depend on more (ALPS: ``low_bits`` and its method version) folds that in with
``extend_key``. ``job_key`` adds
one job's bits and seed and the torch thread count the job ran with: the
thread count changes the order of floating-point sums, so a record made with
another count is recomputed, not mixed with the others. ``read_record`` returns a record only when it parses,
is complete and has the expected key and name: a record of other inputs, or a
corrupt, truncated or edited one (its ``checksum``, the hash of its other fields,
no longer matches) counts as missing and is recomputed and overwritten. The checksum
catches edits and damage, not a forger who recomputes it.
``valid_records`` and ``wait_for_records`` do the same for a list of jobs.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from . import atomic
from .quantized import get_bits
from .taskdata import dataset_digest
from .train import FitSettings

__all__ = ["Job", "RECORD_FORMAT", "plain_bits", "plain_settings", "context_key", "extend_key", "job_key",
           "record_path", "partial_path", "read_record", "write_record", "valid_records", "wait_for_records"]

RECORD_FORMAT = "mpq-job-record/4"  # part of every key: a format change invalidates old records
# every field a record must have to be reused (besides format, key, name, bits and seed)
_FIELDS = ("metric", "eval_loss", "eval_loss_halves", "eval_kl", "eval_kl_halves", "train_loss", "seconds", "worker", "device", "threads", "steps", "train_samples",
           "eval_samples", "teacher_samples")
_MAX_STEM = 150  # longer record names are cut (and hashed) to stay a valid file name


# ---- jobs ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One fine-tune-and-evaluate job (run by ``mpq.jobs``).

    ``name``: unique within one run; its record is ``record_path(record_dir, name)``.
    ``bits``: layer precisions applied with ``mpq.set_bits`` to a deep copy of
    the starting model (``{}``: none; a full assignment is fine, layers already
    at the given precision are left as they are). ``seed``: given to
    ``torch.manual_seed`` before the fine-tune and to the train loader's
    shuffle, so two jobs with the same seed see the same data order.
    """

    name: str
    bits: Mapping[str, int]
    seed: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"Job.name must be a non-empty string, got {self.name!r}")

    def __hash__(self) -> int:  # bits is usually a dict: hash its items instead
        return hash((self.name, tuple(sorted(self.bits.items())), self.seed))


# ---- plain data ------------------------------------------------------------------------------

def plain_bits(bits: Mapping[str, int]) -> dict[str, int]:
    """``bits`` as a plain ``{str: int}`` dict (as stored in a record and hashed in its key)."""
    return {str(name): int(b) for name, b in bits.items()}


def plain_settings(settings: FitSettings) -> dict[str, Any] | str:
    """``settings`` as plain JSON-able data (hashed in keys, stored in metadata)."""
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else repr(settings)


# ---- keys ------------------------------------------------------------------------------------

def _hash_state(h: "hashlib._Hash", module: nn.Module) -> None:
    """Feed every tensor of ``module``'s state dict (name, dtype, shape, bytes) to ``h``."""
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _split_identity(dataset: Any) -> dict[str, Any]:
    return {"size": len(dataset), "digest": dataset_digest(dataset)}


def context_key(model: nn.Module, *, teacher: nn.Module | None, settings: FitSettings, batch_size: int,
                task: str, num_classes: int, ignore_index: int, train_set: Dataset, eval_set: Dataset,
                extra: Mapping[str, Any] | None = None) -> str:
    """The hash of every input shared by the jobs of a run (the ``base_key`` of ``mpq.jobs.JobContext``).

    The starting model's tensors and its layers' precisions (which are not in
    the state dict), the teacher's tensors when there is one, the fine-tune
    settings, the batch size, the task, the number of classes,
    ``ignore_index``, the size and content (``mpq.taskdata.dataset_digest``) of
    the train and evaluation sets, the record format and ``extra`` (anything
    else the caller's results depend on, e.g. the step that runs the jobs;
    JSON-able values). The device is left out on purpose: a run may resume on
    another machine.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": RECORD_FORMAT, "model": type(model).__qualname__,
                         "bits": get_bits(model), "settings": plain_settings(settings),
                         "batch_size": batch_size, "task": task, "num_classes": num_classes,
                         "ignore_index": ignore_index, "train": _split_identity(train_set),
                         "eval": _split_identity(eval_set),
                         "teacher": None if teacher is None else type(teacher).__qualname__,
                         "extra": dict(extra or {})},
                        sort_keys=True, default=str).encode())
    _hash_state(h, model)
    if teacher is not None:
        h.update(b"|teacher|")
        _hash_state(h, teacher)
    return h.hexdigest()


def extend_key(base_key: str, extra: Mapping[str, Any]) -> str:
    """A context key that also covers ``extra`` (JSON-able values) on top of ``base_key``.

    For a user of a ready-made context whose results depend on more than its
    inputs (ALPS: ``low_bits`` and its method version): a change of ``base_key``
    or of any value in ``extra`` gives another key.
    """
    blob = {"base": base_key, "extra": dict(extra)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def job_key(base_key: str, job: Job, *, threads: int) -> str:
    """The key of ``job``'s record: ``base_key`` plus the job's bits (sorted), seed and ``threads``.

    A record is reused only for the same job: the same name (checked by
    ``read_record``), bits and seed on the same inputs, computed with the same
    torch thread count (``threads``).
    """
    blob = {"base": base_key, "bits": sorted(plain_bits(job.bits).items()), "seed": int(job.seed),
            "threads": int(threads)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


# ---- record files ----------------------------------------------------------------------------

def record_path(record_dir: str | Path, name: str) -> Path:
    """Where the record of the job named ``name`` lives: ``<record_dir>/<name>.json``.

    Module-like names (``layer3.4.conv2``, ``eagl-b0.50-s1``) are used as they
    are; otherwise (other characters, a leading dot, a very long name) they are
    sanitised (``_``; cut) and a short hash of the name is appended so that two
    names cannot share a file.
    """
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", name)
    if stem != name or not stem or stem.startswith(".") or len(stem) > _MAX_STEM:
        stem = f"{stem[:_MAX_STEM]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
    return Path(record_dir) / f"{stem}.json"


def partial_path(record_dir: str | Path, name: str) -> Path:
    """The resumable training checkpoint of the job ``name`` while it runs: ``<record>.partial``."""
    return record_path(record_dir, name).with_suffix(".partial")


def _checksum(record: Mapping[str, Any]) -> str:
    """The hash of every field of ``record`` but ``checksum`` itself."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def read_record(record_dir: str | Path, job: Job, base_key: str, *, threads: int) -> dict[str, Any] | None:
    """``job``'s record if it exists, parses, is complete and has its key (for ``threads``) and name; else ``None``."""
    path = record_path(record_dir, job.name)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):  # missing, truncated, not JSON
        return None
    if (not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT
            or rec.get("key") != job_key(base_key, job, threads=threads) or rec.get("name") != job.name
            or any(f not in rec for f in _FIELDS) or rec.get("checksum") != _checksum(rec)
            or not isinstance(rec["metric"], (int, float)) or isinstance(rec["metric"], bool)):
        return None
    del rec["checksum"]  # a storage detail: the record is what was computed
    return rec


def write_record(record_dir: str | Path, record: Mapping[str, Any]) -> Path:
    """Write ``record`` with its checksum atomically to ``record_path(record_dir, record["name"])``; return that path."""
    record = {k: v for k, v in record.items() if k != "checksum"}
    return atomic.write_json(record_path(record_dir, record["name"]), {**record, "checksum": _checksum(record)})


def valid_records(record_dir: str | Path, jobs: Sequence[Job], base_key: str, *,
                  threads: int) -> dict[str, dict[str, Any]]:
    """``{job.name: record}`` for those of ``jobs`` whose record is valid (``read_record``), in order."""
    found = {job.name: read_record(record_dir, job, base_key, threads=threads) for job in jobs}
    return {name: rec for name, rec in found.items() if rec is not None}


def wait_for_records(record_dir: str | Path, jobs: Sequence[Job], base_key: str, *, threads: int,
                     poll_seconds: float) -> None:
    """Return once every one of ``jobs`` has a valid record (for ``threads``), looking every ``poll_seconds``."""
    waiting = list(jobs)
    while waiting:
        waiting = [job for job in waiting if read_record(record_dir, job, base_key, threads=threads) is None]
        if waiting:
            time.sleep(poll_seconds)
