"""Fine-tune-and-evaluate jobs: keyed, resumable records, run serially, in a process pool or on ranks.

A *job* starts from a quantized model, changes some layer precisions, fine-tunes
the whole network and measures the task metric on an evaluation split:

1. deep-copy the starting model and apply ``job.bits`` with ``mpq.set_bits``
   (a layer whose precision changes gets its steps re-initialised: the LSQ
   init; a layer named at the precision it already has is left as it is);
2. ``torch.manual_seed(job.seed)``, then fine-tune for ``settings.epochs``
   (``0``: no fine-tune) with ``mpq.train.fit`` on a loader shuffled with
   ``job.seed``, distilling from the teacher when ``settings.distill > 0``;
3. measure the metric (top-1 or mIoU) on ``eval_set``.

Two users share this machinery: ALPS (one job per candidate layer with that
layer reduced, plus a reference job with nothing changed, evaluated on a
validation split carved from the training data) and the accuracy-throughput
frontier (one job per selected configuration, a full bits assignment,
evaluated on the test split).

Jobs are independent, so they run in parallel: in a pool of spawned CPU
processes (``workers > 1``), or one share per rank under ``torch.distributed``
(one device per rank, on one or several nodes). Each job's result is written
atomically to its own JSON file in ``record_dir`` the moment it exists, by the
process that computed it, so that an interrupted run loses at most the jobs in
flight; a rerun with the same inputs skips the finished jobs and returns the
identical records. A record carries a key: the hash of everything its result
depends on (the starting model's and teacher's tensors and precisions, the
fine-tune settings and the other inputs, see ``context_key``, plus the job's
bits and seed, see ``job_key``). A record with another key (another checkpoint,
other settings, another seed, other bits under the same name) is ignored and
overwritten, and so is a corrupt or truncated one.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import pickle
import re
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from . import atomic
from .data import make_loader
from .quantized import candidate_layers, get_bits, set_bits
from .quantizers import qrange
from .sensitivity import device_name
from .train import TASKS, FitSettings, evaluate, fit

__all__ = ["Job", "JobContext", "RECORD_FORMAT", "context_key", "job_key", "record_path", "read_record",
           "run_job", "run"]

RECORD_FORMAT = "mpq-job-record/1"  # part of every key: a format change invalidates old records
_POLL_SECONDS = 2.0                 # distributed mode: how often a rank looks for the others' records
_MAX_STEM = 150                     # longer record names are cut (and hashed) to stay a valid file name
# every field a record must have to be reused (besides format, key, name, bits and seed)
_FIELDS = ("metric", "train_loss", "seconds", "worker", "device", "steps", "train_samples", "eval_samples",
           "teacher_samples")


# ---- jobs and their context ------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One fine-tune-and-evaluate job.

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


@dataclass
class JobContext:
    """Everything the jobs of one run share; sent once to each worker process.

    ``model``: the quantized starting model (never modified). ``teacher``: a
    float model for distillation (used when ``settings.distill > 0``) or
    ``None``. ``eval_set``: where the metric is measured (ALPS: the validation
    split carved from the training data; the frontier: the test split).
    ``settings.epochs == 0``: no fine-tune, ``train`` is not read.
    ``base_key``: ``context_key(...)`` of these inputs. ``worker``: the name
    written to the records this process computes (pool workers are
    ``proc<i>``, ranks ``rank<r>``).
    """

    model: nn.Module
    teacher: nn.Module | None
    train: Dataset
    eval_set: Dataset
    settings: FitSettings
    task: str
    num_classes: int
    ignore_index: int
    batch_size: int
    device: str
    record_dir: str | None
    base_key: str
    worker: str = "main"


# ---- keys and records ------------------------------------------------------------------------

def _hash_state(h: "hashlib._Hash", module: nn.Module) -> None:
    """Feed every tensor of ``module``'s state dict (name, dtype, shape, bytes) to ``h``."""
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _settings_blob(settings: FitSettings) -> dict[str, Any] | str:
    """``settings`` as plain JSON-able data (for keys and metadata)."""
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else repr(settings)


def context_key(model: nn.Module, *, teacher: nn.Module | None, settings: FitSettings, batch_size: int,
                task: str, num_classes: int, ignore_index: int, train_size: int, eval_size: int,
                extra: Mapping[str, Any] | None = None) -> str:
    """The hash of every input shared by the jobs of a run (the ``base_key`` of ``JobContext``).

    The starting model's tensors and its layers' precisions (which are not in
    the state dict), the teacher's tensors when there is one, the fine-tune
    settings, the batch size, the task, the number of classes,
    ``ignore_index``, the sizes of the train and evaluation sets, the record
    format and ``extra`` (anything else the caller's results depend on, e.g.
    ALPS's ``low_bits`` and method version; JSON-able values). The device is
    left out on purpose: a run may resume on another machine.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": RECORD_FORMAT, "model": type(model).__qualname__,
                         "bits": get_bits(model), "settings": _settings_blob(settings),
                         "batch_size": batch_size, "task": task, "num_classes": num_classes,
                         "ignore_index": ignore_index, "train_size": train_size, "eval_size": eval_size,
                         "teacher": None if teacher is None else type(teacher).__qualname__,
                         "extra": dict(extra or {})},
                        sort_keys=True, default=str).encode())
    _hash_state(h, model)
    if teacher is not None:
        h.update(b"|teacher|")
        _hash_state(h, teacher)
    return h.hexdigest()


def _plain_bits(bits: Mapping[str, int]) -> dict[str, int]:
    return {str(name): int(b) for name, b in bits.items()}


def job_key(base_key: str, job: Job) -> str:
    """The key of ``job``'s record: ``base_key`` plus the job's bits (sorted) and seed.

    A record is reused only for the same job: the same name (checked by
    ``read_record``), bits and seed on the same inputs.
    """
    blob = {"base": base_key, "bits": sorted(_plain_bits(job.bits).items()), "seed": int(job.seed)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()


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


def read_record(record_dir: str | Path, job: Job, base_key: str) -> dict[str, Any] | None:
    """``job``'s record if it exists, parses, is complete and has its key and name; else ``None``."""
    path = record_path(record_dir, job.name)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):  # missing, truncated, not JSON
        return None
    if (not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT
            or rec.get("key") != job_key(base_key, job) or rec.get("name") != job.name
            or any(f not in rec for f in _FIELDS)
            or not isinstance(rec["metric"], (int, float)) or isinstance(rec["metric"], bool)):
        return None
    return rec


# ---- one job ---------------------------------------------------------------------------------

def run_job(ctx: JobContext, job: Job) -> dict[str, Any]:
    """Apply ``job.bits``, seed, fine-tune, evaluate on ``ctx.eval_set``; return the record (no I/O).

    The record: ``format, key, name, bits, seed, metric, train_loss`` (mean
    loss of the last fine-tune epoch, NaN without one), ``seconds`` (this
    job's wall time), ``worker, device, steps`` and the sample counts
    ``train_samples`` (through the student in the fine-tune, = backward
    passes), ``eval_samples`` and ``teacher_samples`` (through the teacher).
    """
    t0 = time.perf_counter()
    device = torch.device(ctx.device)
    model = copy.deepcopy(ctx.model).to(device)
    if job.bits:
        set_bits(model, dict(job.bits))
    torch.manual_seed(job.seed)
    steps, loss = 0, float("nan")
    if ctx.settings.epochs > 0:
        loader = make_loader(ctx.train, batch_size=ctx.batch_size, train=True, seed=job.seed)
        stats = fit(model, loader, task=ctx.task, settings=ctx.settings, teacher=ctx.teacher,
                    device=device, progress=False)
        steps, loss = int(stats["steps"]), float(stats["loss"])
    # each rank evaluates its own job's model: its counts must not be summed with the others'
    metric = evaluate(model, make_loader(ctx.eval_set, batch_size=ctx.batch_size, train=False), task=ctx.task,
                      num_classes=ctx.num_classes, ignore_index=ctx.ignore_index, device=device,
                      across_ranks=False)
    train_samples = steps * ctx.batch_size  # training loaders drop the last partial batch
    distilled = ctx.teacher is not None and ctx.settings.distill > 0
    return {"format": RECORD_FORMAT, "key": job_key(ctx.base_key, job), "name": job.name,
            "bits": _plain_bits(job.bits), "seed": int(job.seed), "metric": float(metric),
            "train_loss": loss, "seconds": time.perf_counter() - t0, "worker": ctx.worker,
            "device": device_name(device), "steps": steps, "train_samples": train_samples,
            "eval_samples": len(ctx.eval_set),  # type: ignore[arg-type]
            "teacher_samples": train_samples if distilled else 0}


def _do_job(ctx: JobContext, job: Job) -> dict[str, Any]:
    """Run one job and write its record at once (atomically) when there is a record folder."""
    rec = run_job(ctx, job)  # looked up at call time: tests may wrap it
    if ctx.record_dir is not None:
        atomic.write_json(record_path(ctx.record_dir, job.name), rec)
    return rec


# ---- worker processes ------------------------------------------------------------------------

_WORKER_CTX: JobContext | None = None


def _init_worker(blob: bytes, threads: int, counter: Any) -> None:
    """Pool initializer: set the thread count, keep the context (sent once per worker)."""
    global _WORKER_CTX
    torch.set_num_threads(threads)
    ctx = pickle.loads(blob)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    ctx.worker = f"proc{index}"
    _WORKER_CTX = ctx


def _worker_job(job: Job) -> dict[str, Any]:
    assert _WORKER_CTX is not None, "the pool initializer did not run"
    return _do_job(_WORKER_CTX, job)


def _run_pool(ctx: JobContext, pending: list[Job], workers: int, threads: int, bar) -> list[dict]:
    """Run ``pending`` jobs in ``workers`` spawned processes; return their records.

    The context goes to each worker once, as plain pickled bytes: handing the
    model itself to torch's multiprocessing pickler would move the caller's
    tensors into shared memory and pass one file descriptor per tensor.
    """
    mp = torch.multiprocessing.get_context("spawn")
    counter = mp.Value("i", 0)
    blob = pickle.dumps(ctx, protocol=pickle.HIGHEST_PROTOCOL)
    out: list[dict] = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp,
                               initializer=_init_worker, initargs=(blob, threads, counter))
    try:
        futures = {pool.submit(_worker_job, job) for job in pending}
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for f in done:
                rec = f.result()
                out.append(rec)
                bar.set_postfix(last=f"{rec['seconds']:.1f}s")
                bar.update(1)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out


# ---- the entry point -------------------------------------------------------------------------

def _on_device(module: nn.Module | None, device: torch.device) -> nn.Module | None:
    """``module`` itself if it already lives on ``device``, else a copy there (the caller's stays put)."""
    if module is None:
        return None
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device == device for t in tensors):
        return module
    return copy.deepcopy(module).to(device)


def _size(ds: Dataset, name: str) -> int:
    try:
        return len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}: needs a sized Dataset (with __len__)") from None


def _check_jobs(model: nn.Module, jobs: Sequence[Job]) -> None:
    """Fail before any work: duplicate names, unknown layers, fixed layers changed, bad precisions."""
    names = [job.name for job in jobs]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise ValueError(f"jobs: the name {dup!r} is used twice (names must be unique: one record each)")
    layers = get_bits(model)  # NotQuantizedError for a float model
    candidates = set(candidate_layers(model))
    for job in jobs:
        for name, b in job.bits.items():
            if name not in layers:
                raise KeyError(f"job {job.name!r}: no quantized layer named {name!r} in this model; "
                               "see mpq.candidate_layers(model)")
            if name not in candidates and b != layers[name]:
                raise ValueError(f"job {job.name!r}: layer {name!r} is kept at {layers[name]} bits "
                                 "(first/last layer): it is not a candidate")
            try:
                qrange(int(b), True)
            except (ValueError, TypeError) as e:
                raise ValueError(f"job {job.name!r}: layer {name!r}: bad precision {b!r} ({e})") from None


def run(ctx: JobContext, jobs: Sequence[Job], *, workers: int = 1, threads: int | None = None,
        progress: bool = True, desc: str = "jobs") -> tuple[dict[str, dict], dict[str, Any]]:
    """Run ``jobs`` on ``ctx`` (reusing valid records); return ``(records, stats)``.

    ``records``: ``{job.name: record}`` for every job, reused or computed
    (see ``run_job`` for the fields). ``ctx`` is not modified; names must be
    unique (``ValueError``) and every job's bits are checked before any work.

    ``ctx.record_dir``: one JSON record per finished job, written atomically
    by the process that computed it; a rerun reuses every record whose key
    matches (``job_key``) and recomputes the others. ``workers > 1`` (CPU
    only): a pool of spawned processes, each with ``threads`` torch threads
    (default: this process's threads / ``workers``); with ``workers == 1``,
    ``threads`` (when given) applies to this process for the duration of the
    call. Under ``torch.distributed`` (a process group is up) every rank runs
    the jobs ``[rank::world_size]`` on ``ctx.device`` (e.g.
    ``cuda:{local_rank}``), ``record_dir`` is required and shared, and every
    rank returns all the records. A rank waits for the others' records by
    polling the folder before the closing collective, so an unbalanced share
    cannot hit the process group's timeout; if a rank dies, its launcher
    (torchrun) must end the others.

    ``stats``: ``run`` (jobs computed by this call, all ranks together),
    ``reused`` (the others), ``workers`` (processes used, or the world size),
    ``seconds`` (this call's wall time), ``train_samples``, ``eval_samples``,
    ``teacher_samples`` (sums over the computed jobs, all ranks together) and
    ``devices`` (the sorted device names of the jobs computed by this process
    or its pool; empty when none).

    Floats are reproducible for a fixed seed on the same kind of device and
    the same thread count (hence ``threads``); on CUDA, bit-identical reruns
    also need ``torch.use_deterministic_algorithms``, the caller's choice.
    """
    t_start = time.perf_counter()
    jobs = list(jobs)
    if ctx.task not in TASKS:
        raise ValueError(f"unknown task {ctx.task!r}: choose one of {TASKS}")
    if ctx.settings.epochs < 0 or not math.isfinite(ctx.settings.epochs):
        raise ValueError(f"settings.epochs must be >= 0, got {ctx.settings.epochs}")
    if ctx.batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {ctx.batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if ctx.settings.epochs > 0 and _size(ctx.train, "train") < ctx.batch_size:
        raise ValueError(f"the training set has {_size(ctx.train, 'train')} samples, fewer than one batch "
                         f"({ctx.batch_size}): use a larger train split or a smaller batch_size")
    if _size(ctx.eval_set, "eval_set") < 1:
        raise ValueError("the evaluation set is empty")
    _check_jobs(ctx.model, jobs)

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if distributed and ctx.record_dir is None:
        raise ValueError("record_dir: required under torch.distributed (the ranks share their "
                         "results through it); pass a folder every rank can read and write")
    if distributed and workers > 1:
        raise ValueError("workers > 1 is for one CPU process; under torch.distributed each rank "
                         "runs its share itself: use one rank per device instead")
    dev = torch.device(ctx.device)
    if workers > 1 and dev.type != "cpu":
        raise ValueError(f"workers > 1 runs CPU processes, not {dev}: for GPUs use torch.distributed "
                         "with one rank per GPU")

    record_dir = None if ctx.record_dir is None else str(ctx.record_dir)
    if record_dir is not None:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    ctx = dataclasses.replace(ctx, device=str(dev), record_dir=record_dir,
                              worker=f"rank{rank}" if distributed else ctx.worker)
    base_key = ctx.base_key

    mine = jobs[rank::world]
    records: dict[str, dict[str, Any]] = {}
    if record_dir is not None:
        for job in mine:
            rec = read_record(record_dir, job, base_key)
            if rec is not None:
                records[job.name] = rec
    pending = [job for job in mine if job.name not in records]
    computed: list[dict[str, Any]] = []
    used_workers = 1
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=desc,
               disable=not progress or rank != 0)
    try:
        if workers > 1 and pending:
            per_worker = threads or max(1, torch.get_num_threads() // workers)
            used_workers = min(workers, len(pending))
            cpu = torch.device("cpu")
            cpu_ctx = dataclasses.replace(ctx, model=_on_device(ctx.model, cpu),
                                          teacher=_on_device(ctx.teacher, cpu))
            computed = _run_pool(cpu_ctx, pending, used_workers, per_worker, bar)
        elif pending:
            ctx.model = _on_device(ctx.model, dev)
            ctx.teacher = _on_device(ctx.teacher, dev)
            old_threads = torch.get_num_threads()
            if threads is not None:
                torch.set_num_threads(threads)
            try:
                for job in pending:
                    rec = _do_job(ctx, job)
                    computed.append(rec)
                    bar.set_postfix(last=f"{rec['seconds']:.1f}s")
                    bar.update(1)
            finally:
                torch.set_num_threads(old_threads)
    finally:
        bar.close()
    for rec in computed:
        records[rec["name"]] = rec

    counts = [len(computed)] + [sum(r[f] for r in computed)
                                for f in ("train_samples", "eval_samples", "teacher_samples")]
    if distributed:
        assert record_dir is not None
        others = [job for job in jobs if job.name not in records]
        while others:
            others = [job for job in others if read_record(record_dir, job, base_key) is None]
            if others:
                time.sleep(_POLL_SECONDS)
        # The closing collective is the barrier and sums what every rank computed.
        total = torch.tensor(counts, dtype=torch.int64, device=dev)
        dist.all_reduce(total)
        counts = [int(v) for v in total.cpu()]
        for job in jobs:
            if job.name not in records:
                rec = read_record(record_dir, job, base_key)
                if rec is None:
                    raise RuntimeError(f"{record_path(record_dir, job.name)} changed while the ranks "
                                       "were reading it: is another run writing to the same folder?")
                records[job.name] = rec
    n_run, train_samples, eval_samples, teacher_samples = counts
    stats = {"run": n_run, "reused": len(jobs) - n_run, "workers": world if distributed else used_workers,
             "seconds": time.perf_counter() - t_start, "train_samples": train_samples,
             "eval_samples": eval_samples, "teacher_samples": teacher_samples,
             "devices": sorted({r["device"] for r in computed})}
    return {job.name: records[job.name] for job in jobs}, stats
