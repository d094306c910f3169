"""Fine-tune-and-evaluate jobs: keyed, resumable records, run serially, in a process pool or on ranks.

A *job* starts from a quantized model, changes some layer precisions, fine-tunes
the whole network and measures the task metric on an evaluation split:

1. copy the starting model (``_working_copy``) and apply ``job.bits`` with ``mpq.set_bits``
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

``run`` runs a list of independent jobs: serially, in a pool of spawned CPU
processes (``workers > 1``, ``mpq.pool``), or one share per rank under
``torch.distributed`` (one device per rank, on one or several nodes). Each
job's record is written atomically to ``record_dir`` the moment it exists, by
the process that computed it, so an interrupted run loses at most the jobs in
flight and a rerun with the same inputs returns the identical records. The
records, their keys and files are ``mpq.records``; its ``Job`` and
``context_key`` are re-exported here: with ``JobContext`` and ``run``, all a
caller needs to build and run jobs.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset

from .data import make_loader
from .pool import run_pool
from .progress import Bar, job_bar
from .quantized import candidate_layers, get_bits, quant_layers, set_bits
from .quantizers import qrange
from .records import (RECORD_FORMAT, Job, context_key, job_key, partial_path, plain_bits, record_path,
                      valid_records, wait_for_records, write_record)
from .sensitivity import device_name
from .train import TASKS, FitSettings, evaluate, fit

__all__ = ["Job", "JobContext", "context_key", "experiment_context", "run_job", "run"]  # Job, context_key: from mpq.records

_POLL_SECONDS = 2.0  # distributed mode: how often a rank looks for the others' records
_COUNTED = ("train_samples", "eval_samples", "teacher_samples")  # record fields summed in the stats
# per process: the module each starting model's jobs reuse (``_working_copy``), with its layout
_WORKING: weakref.WeakKeyDictionary[nn.Module, tuple[Any, nn.Module]] = weakref.WeakKeyDictionary()


def _layout(model: nn.Module, device: torch.device) -> tuple:
    """What a reset by ``load_state_dict`` cannot carry over: the device, each tensor's name, shape,
    dtype and strides (memory format), and each quantized layer's fixed flag and whether it is quantized."""
    tensors = tuple((k, tuple(v.shape), v.dtype, v.stride()) for k, v in model.state_dict().items())
    layers = tuple((n, m.fixed, m.bits is None) for n, m in quant_layers(model).items())
    return str(device), tensors, layers


def _working_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """A module in ``model``'s exact state on ``device``, reused by this process job after job.

    Deep-copied when this process has none for ``model`` or when the one it has
    no longer has ``model``'s layout (``_layout``: e.g. a fine-tune left it
    channels-last); otherwise reset to ``model``'s bits (``set_bits`` first, as
    it re-initialises the steps of changed layers), parameters and buffers
    (``load_state_dict``, which also refreshes the activation quantizers' cached
    flags) and train/eval mode, its last gradients dropped. The same floats as a
    fresh deep copy, without its cost (at the tiny preset it took as long as the
    evaluation itself). ``run`` drops the copy when its jobs are done.
    """
    layout = _layout(model, device)
    held = _WORKING.get(model)
    if held is None or held[0] != layout or _layout(held[1], device) != layout:
        work = copy.deepcopy(model).to(device)
        _WORKING[model] = (layout, work)
        return work
    work = held[1]
    # a layer without a quantizer (bits None) is so in both (``_layout``): set_bits takes ints only
    set_bits(work, {n: b for n, b in get_bits(model).items() if b is not None}, allow_fixed=True)
    work.load_state_dict(model.state_dict())
    work.train(model.training)
    for param in work.parameters():
        param.grad = None
    return work


# ---- the context of a run --------------------------------------------------------------------

@dataclass
class JobContext:
    """Everything the jobs of one run share; sent once to each worker process.

    ``model``: the quantized starting model (never modified). ``teacher``: a
    float model for distillation (used when ``settings.distill > 0``) or
    ``None``. ``eval_set``: where the metric is measured (ALPS: the validation
    split carved from the training data; the frontier: the test split).
    ``settings.epochs == 0``: no fine-tune, ``train`` is not read.
    ``base_key``: ``context_key(...)`` of these inputs (a user whose results
    depend on more extends it: ``mpq.records.extend_key``). ``worker``: the name
    written to the records this process computes (pool workers are
    ``proc<i>``, ranks ``rank<r>``). ``fit_options``: keywords of ``fit`` and
    ``evaluate`` (``precision``, ``channels_last``; ``compile`` and
    ``checkpoint_steps`` for ``fit`` only); ``loader_options``: keywords of ``make_loader`` (``num_workers``,
    ``prefetch_factor``, ``pin_memory``). A precision other than fp32 belongs in
    the key (``experiment_context`` puts it there). ``keep_samples``: each
    record also holds ``samples``, the evaluation's per-sample counts
    (``mpq.metrics.sample_stats``), which paired bootstrap intervals resample.
    ``eval_kl``: the evaluation also measures the KL divergence from ``teacher``
    (``eval_kl``, ``eval_kl_halves`` in the records; None otherwise).
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
    fit_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # fit/evaluate: precision, ...
    loader_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)  # make_loader: workers, ...
    keep_samples: bool = False  # records carry the per-sample counts of the evaluation (bootstrap)
    eval_kl: bool = False       # records carry the KL from the teacher on the evaluation set (ALPS, no-FT)


def experiment_context(exp: Any, qmodel: nn.Module, teacher: nn.Module | None, *, epochs: float,
                       eval_split: str, record_dir: str | Path, extra: Mapping[str, Any],
                       keep_samples: bool = False, eval_kl: bool = False) -> JobContext:
    """A context over the data of ``exp`` (an ``mpq.experiment.Experiment``) with its quantized recipe.

    Fine-tunes of ``epochs`` with ``exp.fit_settings("quant")``, the metric
    measured on the split ``eval_split`` (``"val"`` or ``"test"``), records in
    ``record_dir``; ``extra`` goes into the key (``context_key``).
    """
    settings = exp.fit_settings("quant", epochs=epochs)
    data, batch_size = exp.data, exp.net.batch_size  # one job runs on one device: the global batch
    train, eval_set = data.train, getattr(data, eval_split)
    speed = exp.speed_options()
    if speed["precision"] != "fp32":  # bf16 gives other numbers; fp32 adds nothing to the key
        extra = {**extra, "precision": speed["precision"]}
    key = context_key(qmodel, teacher=teacher, settings=settings, batch_size=batch_size, task=data.task,
                      num_classes=data.num_classes, ignore_index=data.ignore_index, train_set=train,
                      eval_set=eval_set, extra=extra)
    return JobContext(model=qmodel, teacher=teacher, train=train, eval_set=eval_set, settings=settings,
                      task=data.task, num_classes=data.num_classes, ignore_index=data.ignore_index,
                      batch_size=batch_size, device=str(exp.device), record_dir=str(record_dir), base_key=key,
                      fit_options={**speed, "compile": exp.cfg.speed.compile,
                                   "checkpoint_steps": exp.cfg.train.checkpoint_steps},
                      loader_options=exp.loader_options(), keep_samples=keep_samples,
                      eval_kl=eval_kl and teacher is not None)


# ---- one job ---------------------------------------------------------------------------------

def run_job(ctx: JobContext, job: Job) -> dict[str, Any]:
    """Apply ``job.bits``, seed, fine-tune, evaluate on ``ctx.eval_set``; return the record (no I/O).

    The record: ``format, key, name, bits, seed, metric, eval_loss`` (mean
    cross-entropy on ``ctx.eval_set``: a continuous signal beside the metric),
    ``eval_loss_halves`` (the same over the even- and the odd-numbered samples:
    split-half reliability), ``eval_kl`` and ``eval_kl_halves`` (the KL from the
    teacher, with ``ctx.eval_kl``; None otherwise),
    ``train_loss`` (mean loss of the last fine-tune epoch, NaN without one),
    ``samples`` (per-sample counts when ``ctx.keep_samples``, else absent), ``seconds`` (this
    job's wall time), ``worker, device, threads`` (this process's torch
    thread count, part of the key), ``steps`` and the sample counts
    ``train_samples`` (through the student in the fine-tune, = backward
    passes), ``eval_samples`` and ``teacher_samples`` (through the teacher).
    """
    t0, threads = time.perf_counter(), torch.get_num_threads()
    device = torch.device(ctx.device)
    model = _working_copy(ctx.model, device)
    if job.bits:
        set_bits(model, dict(job.bits))
    torch.manual_seed(job.seed)
    steps, loss = 0, float("nan")
    eval_options = {k: v for k, v in ctx.fit_options.items() if k not in ("compile", "checkpoint_steps")}
    key = job_key(ctx.base_key, job, threads=threads)
    if ctx.settings.epochs > 0:
        loader = make_loader(ctx.train, batch_size=ctx.batch_size, train=True, seed=job.seed, **ctx.loader_options)
        # a killed job resumes from its training checkpoint, beside its record-to-be
        partial = None if ctx.record_dir is None else partial_path(ctx.record_dir, job.name)
        stats = fit(model, loader, task=ctx.task, settings=ctx.settings, teacher=ctx.teacher,
                    device=device, progress=False, checkpoint=partial, checkpoint_key=key, **ctx.fit_options)
        steps, loss = int(stats["steps"]), float(stats["loss"])
    # each rank evaluates its own job's model: its counts must not be summed with the others'
    result = evaluate(model, make_loader(ctx.eval_set, batch_size=ctx.batch_size, train=False, **ctx.loader_options),
                      task=ctx.task, num_classes=ctx.num_classes, ignore_index=ctx.ignore_index, device=device,
                      across_ranks=False, detail=True,
                      teacher=ctx.teacher if ctx.eval_kl else None, **eval_options)
    train_samples = steps * ctx.batch_size  # training loaders drop the last partial batch
    distilled = ctx.teacher is not None and ctx.settings.distill > 0
    extra = {"samples": result["samples"].tolist()} if ctx.keep_samples else {}
    def halves(rows):  # the mean over the even- and over the odd-numbered samples
        if rows is None:
            return None
        return [float(rows[h::2, 0].sum() / max(rows[h::2, 1].sum(), 1.0)) for h in (0, 1)]
    return {"format": RECORD_FORMAT, "key": key, "name": job.name,
            "bits": plain_bits(job.bits), "seed": int(job.seed), "metric": float(result["metric"]),
            "eval_loss": result["loss"], "eval_loss_halves": halves(result["sample_loss"]),
            "eval_kl": result["kl"] if ctx.eval_kl else None, "eval_kl_halves": halves(result["sample_kl"]),
            **extra, "train_loss": loss, "seconds": time.perf_counter() - t0, "worker": ctx.worker,
            "device": device_name(device), "threads": threads, "steps": steps, "train_samples": train_samples,
            "eval_samples": len(ctx.eval_set),  # type: ignore[arg-type]
            # through the teacher: the distilled fine-tune's samples, and the evaluation's for the KL
            "teacher_samples": (train_samples if distilled else 0) + (len(ctx.eval_set) if ctx.eval_kl else 0)}


def _do_job(ctx: JobContext, job: Job) -> dict[str, Any]:
    """Run one job and write its record at once (atomically) when there is a record folder."""
    rec = run_job(ctx, job)  # looked up at call time: tests may wrap it
    if ctx.record_dir is not None:
        write_record(ctx.record_dir, rec)
    return rec


# ---- checks --------------------------------------------------------------------------------

def _size(ds: Dataset, name: str) -> int:
    """``len(ds)``; a ``ValueError`` naming ``name`` for a dataset without one."""
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


def _check_inputs(ctx: JobContext, jobs: Sequence[Job], *, workers: int, threads: int | None,
                  distributed: bool) -> None:
    """Fail before any work: the context, the jobs (``_check_jobs``), the parallelism asked for."""
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


# ---- the phases of a run ---------------------------------------------------------------------

def _prepared(ctx: JobContext, worker: str) -> JobContext:
    """A copy of ``ctx`` with a canonical device, ``record_dir`` as a string (created) and ``worker``."""
    record_dir = None if ctx.record_dir is None else str(ctx.record_dir)
    if record_dir is not None:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    return dataclasses.replace(ctx, device=str(torch.device(ctx.device)), record_dir=record_dir, worker=worker)


def _on_device(module: nn.Module | None, device: torch.device) -> nn.Module | None:
    """``module`` itself if it already lives on ``device``, else a copy there (the caller's stays put)."""
    if module is None:
        return None
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device == device for t in tensors):
        return module
    return copy.deepcopy(module).to(device)


def _advance(bar: Bar, rec: dict[str, Any]) -> None:
    """Count one finished job on the progress bar, showing its wall time."""
    bar.set_postfix(last=f"{rec['seconds']:.1f}s")
    bar.update(1)


def _run_serial(ctx: JobContext, pending: Sequence[Job], threads: int, bar: Bar) -> list[dict]:
    """Run ``pending`` jobs one by one in this process on ``ctx.device``; return their records.

    ``threads`` is this process's torch thread count for the duration of the
    jobs; the previous count is restored afterwards.
    """
    dev = torch.device(ctx.device)
    ctx = dataclasses.replace(ctx, model=_on_device(ctx.model, dev), teacher=_on_device(ctx.teacher, dev))
    old_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    out: list[dict] = []
    try:
        for job in pending:
            out.append(_do_job(ctx, job))
            _advance(bar, out[-1])
    finally:
        torch.set_num_threads(old_threads)
        _WORKING.pop(ctx.model, None)  # the working copy goes with the run
    return out


def _name_pool_process(ctx: JobContext, index: int) -> JobContext:
    """The context of pool process ``index``: its records name it ``proc<index>``."""
    return dataclasses.replace(ctx, worker=f"proc{index}")


def _run_pending(ctx: JobContext, pending: Sequence[Job], *, workers: int, threads: int,
                 bar: Bar) -> tuple[list[dict], int]:
    """Compute ``pending`` jobs, each on ``threads`` torch threads; return their records and the processes used.

    ``workers > 1``: a pool of ``min(workers, len(pending))`` CPU processes;
    else serially in this process.
    """
    if not pending:
        return [], 1
    if workers == 1:
        return _run_serial(ctx, pending, threads, bar), 1
    used = min(workers, len(pending))
    cpu = torch.device("cpu")
    # pool processes may not fork loader workers of their own (and the CPU is already shared out)
    cpu_ctx = dataclasses.replace(ctx, model=_on_device(ctx.model, cpu), teacher=_on_device(ctx.teacher, cpu),
                                  loader_options={**ctx.loader_options, "num_workers": 0, "prefetch_factor": None})
    return run_pool(_do_job, cpu_ctx, pending, workers=used, threads=threads, setup=_name_pool_process,
                    on_result=lambda rec: _advance(bar, rec)), used


def _join_other_ranks(ctx: JobContext, others: Sequence[Job], counts: list[int],
                      threads: int) -> tuple[dict[str, dict[str, Any]], list[int]]:
    """Under ``torch.distributed``: the records of ``others`` (the other ranks' jobs) and ``counts`` summed.

    Polls ``ctx.record_dir`` until every one of ``others`` has a valid record
    before the closing collective (the sum of ``counts``, which is also the
    barrier), so that an unbalanced share cannot hit the process group's
    timeout; then reads them, failing if one changed since.
    """
    assert ctx.record_dir is not None, "checked by _check_inputs"
    wait_for_records(ctx.record_dir, others, ctx.base_key, threads=threads, poll_seconds=_POLL_SECONDS)
    total = torch.tensor(counts, dtype=torch.int64, device=torch.device(ctx.device))
    dist.all_reduce(total)
    found = valid_records(ctx.record_dir, others, ctx.base_key, threads=threads)
    changed = [job for job in others if job.name not in found]
    if changed:
        raise RuntimeError(f"{record_path(ctx.record_dir, changed[0].name)} changed while the ranks "
                           "were reading it: is another run writing to the same folder?")
    return found, [int(v) for v in total.cpu()]


def _stats(counts: Sequence[int], *, jobs: int, workers: int, seconds: float,
           computed: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stats of a run (see ``run``) from ``counts`` = (jobs run, then the ``_COUNTED`` sums)."""
    n_run, train_samples, eval_samples, teacher_samples = counts
    return {"run": n_run, "reused": jobs - n_run, "workers": workers, "seconds": seconds,
            "train_samples": train_samples, "eval_samples": eval_samples, "teacher_samples": teacher_samples,
            "devices": sorted({r["device"] for r in computed})}


# ---- the entry point -------------------------------------------------------------------------

def run(ctx: JobContext, jobs: Sequence[Job], *, workers: int = 1, threads: int | None = None,
        progress: bool = True, desc: str = "jobs") -> tuple[dict[str, dict], dict[str, Any]]:
    """Run ``jobs`` on ``ctx`` (reusing valid records); return ``(records, stats)``.

    ``records``: ``{job.name: record}`` for every job, reused or computed
    (see ``run_job`` for the fields). ``ctx`` is not modified; names must be
    unique (``ValueError``) and every job's bits are checked before any work.

    ``ctx.record_dir``: one JSON record per finished job, written atomically
    by the process that computed it; a rerun reuses every record whose key
    matches (``job_key``) and recomputes the others. Each job runs on
    ``threads`` torch threads (default: this process's threads / ``workers``):
    ``workers > 1`` (CPU only) in a pool of spawned processes, else in this
    process for the duration of the call. Under ``torch.distributed`` (a process group is up) every rank runs
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

    Same seed, same numbers: a job gives the identical record (all but
    ``seconds``, ``worker``) again for the same inputs (the context key),
    bits and seed, on the same kind of device (CPU or GPU model, torch build)
    with the same threads per job, however the jobs are spread (serial, pool,
    ranks). The threads per job are in every key, so a change of ``workers``
    or ``threads`` recomputes instead of mixing (every rank must use the same
    count). On CUDA, bit-identical reruns also need
    ``torch.use_deterministic_algorithms``, the caller's choice.
    """
    t_start = time.perf_counter()
    jobs = list(jobs)
    distributed = dist.is_available() and dist.is_initialized()
    _check_inputs(ctx, jobs, workers=workers, threads=threads, distributed=distributed)
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    ctx = _prepared(ctx, worker=f"rank{rank}" if distributed else ctx.worker)

    per_job = threads or max(1, torch.get_num_threads() // workers)
    mine = jobs[rank::world]  # this process's share: reuse its valid records, compute the others
    records = {} if ctx.record_dir is None else valid_records(ctx.record_dir, mine, ctx.base_key, threads=per_job)
    pending = [job for job in mine if job.name not in records]
    with job_bar(len(mine), initial=len(mine) - len(pending), desc=desc,
                 disable=not progress or rank != 0) as bar:
        computed, used_workers = _run_pending(ctx, pending, workers=workers, threads=per_job, bar=bar)
    records.update((rec["name"], rec) for rec in computed)

    counts = [len(computed)] + [sum(r[f] for r in computed) for f in _COUNTED]
    if distributed:
        others, counts = _join_other_ranks(ctx, [j for j in jobs if j.name not in records], counts, per_job)
        records.update(others)
    stats = _stats(counts, jobs=len(jobs), workers=world if distributed else used_workers,
                   seconds=time.perf_counter() - t_start, computed=computed)
    return {job.name: records[job.name] for job in jobs}, stats
