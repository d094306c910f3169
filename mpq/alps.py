"""ALPS: Accuracy-aware Layer Precision Selection (and the no-fine-tune drop baseline).

For every candidate layer ``l`` of a quantized network at its starting point
(all candidates at 4 bits, a trained LSQ checkpoint), ALPS measures how much
the task metric suffers when ``l`` alone goes down to ``low_bits``:

1. deep-copy the starting model and set ``l`` to ``low_bits`` (``mpq.set_bits``
   re-initialises its weight and activation steps: the LSQ init);
2. fine-tune the whole network for ``settings.epochs`` (one epoch in the
   paper's recipe) with ``mpq.train.fit``, from the same seed in every job;
3. measure the metric (top-1 or mIoU) on ``val``.

The score of ``l`` is the metric of the *reference* job minus the metric with
``l`` reduced; higher = more harmful to reduce. The reference job is the same
recipe with no layer reduced: it is fine-tuned for the same epochs too, so the
score does not mix the effect of the reduction with the effect of the extra
epoch itself (which usually raises the metric a little and would otherwise
make every layer look less harmful than it is). Every job uses the same seed,
so the data order and every random draw are the same in all of them: the only
difference between two jobs is the reduced layer.

With ``settings.epochs == 0`` there is no fine-tune at all: the score is the
plain drop of the metric when ``l`` is reduced (the AIMET-style "no-fine-tune
drop" baseline; ``method`` defaults to ``"noft"`` then).

``val`` must be a validation split carved from the *training* data, never the
test split: the scores choose the configuration that is later evaluated on
the test split, and selecting on the test split would leak it. Carving the
split is the caller's job (``mpq.data`` does it for every task).

Jobs are independent, so they run in parallel: in a pool of CPU processes
(``workers > 1``), or one share per rank under ``torch.distributed`` (one GPU
per rank, on one or several nodes). Each job's result is written atomically to
its own file in ``record_dir`` the moment it exists, by the process that
computed it, so that an interrupted run loses at most the jobs in flight; a
rerun with the same inputs skips the finished jobs and returns the identical
table. A record carries a key (a hash of the starting model's and teacher's
tensors, the fine-tune settings and every other input that changes the
result): a record with another key (another checkpoint, other settings) is
ignored and overwritten, and so is a corrupt or truncated one.
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
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from .checkpoint import atomic_write_json
from .data import make_loader
from .metrics import Accuracy, MeanIoU
from .quantized import candidate_layers, get_bits, set_bits
from .quantizers import qrange
from .sensitivity import CostRecord, Sensitivity, device_name
from .train import TASKS, FitSettings, fit

__all__ = ["scores", "REFERENCE", "RECORD_FORMAT", "record_path", "job_key"]

REFERENCE = "__reference__"          # file stem of the reference job's record
RECORD_FORMAT = "mpq-alps-record/1"  # part of every key: a format change invalidates old records
_POLL_SECONDS = 2.0                  # distributed mode: how often a rank looks for the others' records


# ---- keys and records ------------------------------------------------------------------------

def _hash_state(h: "hashlib._Hash", module: nn.Module) -> None:
    """Feed every tensor of ``module``'s state dict (name, dtype, shape, bytes) to ``h``."""
    for name, t in module.state_dict().items():
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())


def _settings_blob(settings: FitSettings) -> dict[str, Any] | str:
    return dataclasses.asdict(settings) if dataclasses.is_dataclass(settings) else repr(settings)


def job_key(qmodel: nn.Module, *, teacher: nn.Module | None, settings: FitSettings, batch_size: int,
            low_bits: int, seed: int, task: str, num_classes: int, ignore_index: int,
            train_size: int, val_size: int) -> str:
    """The hash that ties a record to everything its result depends on.

    The starting model's tensors (and its layers' precisions, which are not in
    the state dict), the teacher's tensors when there is one, the fine-tune
    settings, the batch size, ``low_bits``, the seed, the task, the number of
    classes, ``ignore_index`` and the sizes of the train and validation sets.
    The device is left out on purpose: a run may resume on another machine.
    """
    h = hashlib.sha256()
    h.update(json.dumps({"format": RECORD_FORMAT, "model": type(qmodel).__qualname__,
                         "bits": get_bits(qmodel), "settings": _settings_blob(settings),
                         "batch_size": batch_size, "low_bits": low_bits, "seed": seed, "task": task,
                         "num_classes": num_classes,
                         "ignore_index": ignore_index, "train_size": train_size, "val_size": val_size,
                         "teacher": None if teacher is None else type(teacher).__qualname__},
                        sort_keys=True, default=str).encode())
    _hash_state(h, qmodel)
    if teacher is not None:
        h.update(b"|teacher|")
        _hash_state(h, teacher)
    return h.hexdigest()


def record_path(record_dir: str | Path, layer: str | None) -> Path:
    """Where the record of ``layer``'s job lives (``None``: the reference job).

    Layer names are module names (``layer3.4.conv2``) and are used as they are;
    any other character becomes ``_`` and a short hash of the name is appended
    so that two sanitised names cannot collide.
    """
    if layer is None:
        return Path(record_dir) / f"{REFERENCE}.json"
    stem = re.sub(r"[^A-Za-z0-9_.\-]", "_", layer)
    if stem != layer or stem.startswith(".") or stem == REFERENCE:
        stem = f"{stem}-{hashlib.sha256(layer.encode()).hexdigest()[:8]}"
    return Path(record_dir) / f"{stem}.json"


def _read_record(record_dir: str | Path, layer: str | None, key: str) -> dict[str, Any] | None:
    """The record of ``layer``'s job if it exists, parses and has this key; else ``None``."""
    path = record_path(record_dir, layer)
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):  # missing, truncated, not JSON
        return None
    fields = ("metric", "train_loss", "seconds", "worker", "train_samples", "val_samples", "teacher_samples")
    if (not isinstance(rec, dict) or rec.get("key") != key or rec.get("layer", "") != layer
            or any(f not in rec for f in fields) or not isinstance(rec["metric"], (int, float))):
        return None
    return rec


# ---- one job ---------------------------------------------------------------------------------

@dataclass
class _Context:
    """Everything a job needs; sent once to each worker process."""

    model: nn.Module
    teacher: nn.Module | None
    train: Dataset
    val: Dataset
    settings: FitSettings
    task: str
    num_classes: int
    ignore_index: int
    batch_size: int
    low_bits: int
    seed: int
    device: str
    key: str
    record_dir: str | None
    worker: str = "main"


@torch.no_grad()
def _evaluate(model: nn.Module, loader, ctx: _Context) -> float:
    """The metric of ``model`` on ``loader``, computed in this process only.

    The same loop as ``mpq.train.evaluate`` without its sum over ranks: under
    ``torch.distributed`` every rank evaluates a *different* model (its own
    job), so the counts must not be summed across ranks.
    """
    device = torch.device(ctx.device)
    model.eval()
    meter = Accuracy() if ctx.task == "classification" else MeanIoU(ctx.num_classes, ctx.ignore_index)
    for x, y in loader:
        out = model(x.to(device, non_blocking=True))
        meter.update(out.argmax(1), y.to(device, non_blocking=True))
    return meter.compute()


def _run_job(ctx: _Context, layer: str | None) -> dict[str, Any]:
    """Reduce ``layer`` (``None``: nothing), fine-tune, evaluate; return the record (no I/O)."""
    t0 = time.perf_counter()
    device = torch.device(ctx.device)
    model = copy.deepcopy(ctx.model).to(device)
    if layer is not None:
        set_bits(model, {layer: ctx.low_bits})
    torch.manual_seed(ctx.seed)
    steps, loss = 0, float("nan")
    if ctx.settings.epochs > 0:
        loader = make_loader(ctx.train, batch_size=ctx.batch_size, train=True, seed=ctx.seed)
        stats = fit(model, loader, task=ctx.task, settings=ctx.settings, teacher=ctx.teacher,
                    device=device, progress=False)
        steps, loss = stats["steps"], float(stats["loss"])
    metric = _evaluate(model, make_loader(ctx.val, batch_size=ctx.batch_size, train=False), ctx)
    train_samples = steps * ctx.batch_size  # training loaders drop the last partial batch
    distilled = ctx.teacher is not None and ctx.settings.distill > 0
    return {"format": RECORD_FORMAT, "key": ctx.key, "layer": layer, "metric": float(metric),
            "train_loss": loss, "seconds": time.perf_counter() - t0, "worker": ctx.worker,
            "device": device_name(device), "steps": steps, "train_samples": train_samples,
            "val_samples": len(ctx.val),
            "teacher_samples": train_samples if distilled else 0}


def _do_job(ctx: _Context, layer: str | None) -> dict[str, Any]:
    """Run one job and write its record at once (atomically) when there is a record folder."""
    rec = _run_job(ctx, layer)
    if ctx.record_dir is not None:
        atomic_write_json(record_path(ctx.record_dir, layer), rec)
    return rec


# ---- worker processes ------------------------------------------------------------------------

_WORKER_CTX: _Context | None = None


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


def _worker_job(layer: str | None) -> dict[str, Any]:
    assert _WORKER_CTX is not None, "the pool initializer did not run"
    return _do_job(_WORKER_CTX, layer)


def _run_pool(ctx: _Context, pending: list[str | None], workers: int, threads: int, bar) -> list[dict]:
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
        futures = {pool.submit(_worker_job, layer) for layer in pending}
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

def _require_sized(name: str, ds: Dataset, minimum: int, fix: str) -> int:
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}: needs a sized Dataset (with __len__)") from None
    if n < minimum:
        raise ValueError(f"{name} has {n} samples, needs at least {minimum}: {fix}")
    return n


def _on_device(module: nn.Module | None, device: torch.device) -> nn.Module | None:
    """``module`` itself if it already lives on ``device``, else a copy there (the caller's stays put)."""
    if module is None:
        return None
    tensors = list(module.parameters()) + list(module.buffers())
    if all(t.device == device for t in tensors):
        return module
    return copy.deepcopy(module).to(device)


def scores(qmodel: nn.Module, train: Dataset, val: Dataset, *, task: str, num_classes: int,
           settings: FitSettings, batch_size: int, low_bits: int = 2, layers: Sequence[str] | None = None,
           teacher: nn.Module | None = None, seed: int = 0, ignore_index: int = 255, workers: int = 1,
           threads: int | None = None, record_dir: str | Path | None = None,
           device: str | torch.device = "cpu", progress: bool = True,
           method: str | None = None) -> Sensitivity:
    """ALPS sensitivity of every candidate layer of ``qmodel`` (or of ``layers``).

    ``qmodel`` is the starting point (all candidates at their start precision,
    activation steps calibrated); it is not modified. ``val`` must be a
    validation split carved from the training data, never the test split.
    One reference job (nothing reduced) and one job per layer (that layer at
    ``low_bits``), each fine-tuned with ``settings`` (``settings.epochs`` may
    be fractional; ``0`` means no fine-tune: the no-fine-tune drop baseline)
    from ``torch.manual_seed(seed)`` and a loader shuffled with ``seed``, then
    evaluated on ``val``. ``teacher`` (a float model) is used for distillation
    when ``settings.distill > 0``.

    ``record_dir``: one JSON record per finished job, written atomically;
    a rerun with the same inputs reuses them (see ``job_key``).
    ``workers > 1`` (CPU only): a pool of spawned processes, each with
    ``threads`` torch threads (default: this process's threads / ``workers``);
    with ``workers == 1``, ``threads`` (when given) applies to this process
    for the duration of the call. Under ``torch.distributed`` (a process group
    is up) every rank runs the jobs ``[rank::world_size]`` (the reference job
    counted first) on ``device`` (e.g. ``cuda:{local_rank}``), ``record_dir``
    is required and shared, and every rank returns the full table. A rank waits
    for the others' records by polling the folder before the closing
    collective, so an unbalanced share cannot hit the process group's timeout;
    if a rank dies, its launcher (torchrun) must end the others.

    Returns a ``Sensitivity`` (method ``"alps"``, or ``"noft"`` when
    ``settings.epochs == 0``) whose table has the columns ``layer, bits_from,
    bits_to, score, metric, reference_metric, train_loss, seconds, worker``
    (``train_loss``: the job's mean fine-tune loss over its last epoch, NaN
    without a fine-tune; ``seconds``: that job's wall time; ``worker``: who ran
    it), and whose cost record counts only the jobs computed by this call
    (``meta`` has ``jobs_run`` and ``jobs_reused``). Forward passes count the
    samples through the student (fine-tune and validation) plus through the
    teacher when distilling; backward passes count the fine-tune samples.

    Floats are reproducible for a fixed seed on the same kind of device and
    the same thread count (hence ``threads``); on CUDA, bit-identical reruns
    also need ``torch.use_deterministic_algorithms``, the caller's choice.
    """
    t_start = time.perf_counter()
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS}")
    qrange(low_bits, True)  # validates low_bits
    if settings.epochs < 0 or not math.isfinite(settings.epochs):
        raise ValueError(f"settings.epochs must be >= 0, got {settings.epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    candidates = candidate_layers(qmodel)  # NotQuantizedError for a float model
    bits = get_bits(qmodel)
    layers = list(candidates if layers is None else layers)
    unknown = [name for name in layers if name not in bits]
    if unknown:
        raise KeyError(f"no quantized layer named {unknown[0]!r} in this model; "
                       "see mpq.candidate_layers(model)")
    fixed = [name for name in layers if name not in candidates]
    if fixed:
        raise ValueError(f"layer {fixed[0]!r} is kept at {bits[fixed[0]]} bits (first/last layer): "
                         "it is not a candidate; see mpq.candidate_layers(model)")
    too_low = [name for name in layers if bits[name] is None or bits[name] <= low_bits]
    if too_low:
        raise ValueError(f"layer {too_low[0]!r} is at {bits[too_low[0]]} bits, not above low_bits="
                         f"{low_bits}: start from the all-start-bits checkpoint")
    if len(set(layers)) != len(layers):
        raise ValueError("layers: a layer is named twice")
    n_val = _require_sized("the validation set", val, 1,
                           "carve a non-empty validation split from the training data")
    n_train = _require_sized("the training set", train, batch_size if settings.epochs > 0 else 0,
                             "use a larger train split or a smaller batch_size")
    method = method or ("noft" if settings.epochs == 0 else "alps")

    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    if distributed and record_dir is None:
        raise ValueError("record_dir: required under torch.distributed (the ranks share their "
                         "results through it); pass a folder every rank can read and write")
    if distributed and workers > 1:
        raise ValueError("workers > 1 is for one CPU process; under torch.distributed each rank "
                         "runs its share itself: use one rank per device instead")
    dev = torch.device(device)
    if workers > 1 and dev.type != "cpu":
        raise ValueError(f"workers > 1 runs CPU processes, not {dev}: for GPUs use torch.distributed "
                         "with one rank per GPU")

    key = job_key(qmodel, teacher=teacher, settings=settings, batch_size=batch_size, low_bits=low_bits,
                  seed=seed, task=task, num_classes=num_classes, ignore_index=ignore_index,
                  train_size=n_train, val_size=n_val)
    record_dir = None if record_dir is None else str(record_dir)
    if record_dir is not None:
        Path(record_dir).mkdir(parents=True, exist_ok=True)
    ctx = _Context(model=qmodel, teacher=teacher, train=train, val=val, settings=settings, task=task,
                   num_classes=num_classes, ignore_index=ignore_index, batch_size=batch_size,
                   low_bits=low_bits, seed=seed, device=str(dev), key=key, record_dir=record_dir,
                   worker=f"rank{rank}" if distributed else "main")

    jobs: list[str | None] = [None, *layers]
    mine = jobs[rank::world]
    records: dict[str | None, dict[str, Any]] = {}
    if record_dir is not None:
        for job in mine:
            rec = _read_record(record_dir, job, key)
            if rec is not None:
                records[job] = rec
    pending = [job for job in mine if job not in records]
    computed: list[dict[str, Any]] = []
    used_workers = 1
    bar = tqdm(total=len(mine), initial=len(mine) - len(pending), desc=f"{method} jobs",
               disable=not progress or rank != 0)
    try:
        if workers > 1 and pending:
            per_worker = threads or max(1, torch.get_num_threads() // workers)
            used_workers = min(workers, len(pending))
            cpu_ctx = dataclasses.replace(ctx, model=_on_device(qmodel, torch.device("cpu")),
                                          teacher=_on_device(teacher, torch.device("cpu")))
            computed = _run_pool(cpu_ctx, pending, used_workers, per_worker, bar)
        else:
            ctx.model = _on_device(qmodel, dev)
            ctx.teacher = _on_device(teacher, dev)
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
        records[rec["layer"]] = rec

    counts = [len(computed)] + [sum(r[f] for r in computed)
                                for f in ("train_samples", "val_samples", "teacher_samples")]
    if distributed:
        assert record_dir is not None
        others = [job for job in jobs if job not in records]
        while others:
            others = [job for job in others if _read_record(record_dir, job, key) is None]
            if others:
                time.sleep(_POLL_SECONDS)
        # The closing collective is the barrier and sums what every rank computed.
        total = torch.tensor(counts, dtype=torch.int64, device=dev)
        dist.all_reduce(total)
        counts = [int(v) for v in total.cpu()]
        for job in jobs:
            if job not in records:
                rec = _read_record(record_dir, job, key)
                if rec is None:
                    raise RuntimeError(f"{record_path(record_dir, job)} changed while the ranks "
                                       "were reading it: is another run writing to the same folder?")
                records[job] = rec
    jobs_run, train_samples, val_samples, teacher_samples = counts
    jobs_reused = len(jobs) - jobs_run

    ref = records[None]["metric"]
    table = pd.DataFrame({
        "layer": layers,
        "bits_from": [int(bits[name]) for name in layers],
        "bits_to": [int(low_bits)] * len(layers),
        "score": [ref - records[name]["metric"] for name in layers],
        "metric": [records[name]["metric"] for name in layers],
        "reference_metric": [ref] * len(layers),
        "train_loss": [records[name]["train_loss"] for name in layers],
        "seconds": [records[name]["seconds"] for name in layers],
        "worker": [records[name]["worker"] for name in layers],
    })
    devices = sorted({r["device"] for r in computed}) or [device_name(dev)]
    epochs = float(settings.epochs) * jobs_run
    notes = (f"jobs_run={jobs_run} jobs_reused={jobs_reused} (reference + {len(layers)} layers), "
             f"{settings.epochs} epochs per job; forward = student fine-tune + validation samples"
             f" + teacher samples ({teacher_samples}), backward = fine-tune samples")
    cost = CostRecord(method=method, seconds=time.perf_counter() - t_start, device=" | ".join(devices),
                      workers=world if distributed else used_workers,
                      forward_passes=train_samples + val_samples + teacher_samples,
                      backward_passes=train_samples, epochs=epochs, notes=notes)
    meta = {"jobs_run": jobs_run, "jobs_reused": jobs_reused, "jobs_total": len(jobs),
            "reference_metric": ref, "reference_train_loss": records[None]["train_loss"],
            "reference_seconds": records[None]["seconds"],
            "reference_worker": records[None]["worker"], "key": key, "low_bits": low_bits,
            "seed": seed, "batch_size": batch_size, "task": task, "num_classes": num_classes,
            "settings": _settings_blob(settings), "train_size": n_train, "val_size": n_val,
            "record_dir": record_dir,
            "evaluated_on": "validation split carved from the training data (caller's duty)"}
    return Sensitivity(method, table, cost, meta)
