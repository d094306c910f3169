"""ALPS: Accuracy-aware Layer Precision Selection (and the no-fine-tune drop baseline).

For every candidate layer ``l`` of a quantized network at its starting point
(all candidates at 4 bits, a trained LSQ checkpoint), ALPS measures how much
the task metric suffers when ``l`` alone goes down to ``low_bits``:

1. deep-copy the starting model and set ``l`` to ``low_bits`` (``mpq.set_bits``
   re-initialises its weight and activation steps: the LSQ init);
2. fine-tune the whole network for ``settings.epochs`` (one epoch in the
   paper's recipe) with ``mpq.train.fit``, from the same seed in every job;
3. measure, on the validation split, the KL divergence from the float
   teacher's outputs to the model's, the validation loss (mean
   cross-entropy) and the metric (top-1 or mIoU).

The score of ``l`` is its job's KL minus the *reference* job's (the
validation loss when there is no teacher); higher = more harmful to reduce.
Both signals are continuous, whereas the metric moves in steps of one
validation sample (0.2 points on 500 images), which made accuracy-drop
scores mostly ties and noise (test-retest Spearman 0.15 between two seeds on
the embedded ResNet-50). The KL measures how far the quantized function
moved from the float one; the cross-entropy can even fall when a layer is
reduced (an over-confident model gets softer): on the embedded ResNet-50 the
no-FT scores had a split-half Spearman of 0.83 from the KL and 0.36 from the
loss. The metric drop and the loss increase stay columns. The reference job is the same
recipe with no layer reduced: it is fine-tuned for the same epochs too, so the
score does not mix the effect of the reduction with the effect of the extra
epoch itself (which usually raises the metric a little and would otherwise
make every layer look less harmful than it is). Every job uses the same seed,
so the data order and every random draw are the same in all of them: the only
difference between two jobs is the reduced layer.

With ``settings.epochs == 0`` there is no fine-tune at all: the score is the
plain drop of the metric when ``l`` is reduced (the AIMET-style "no-fine-tune
drop" baseline; ``method`` defaults to ``"noft"`` then).

The evaluation set of the job context (``ctx.eval_set``) must be a validation
split carved from the *training* data, never the test split: the scores choose the configuration that is later evaluated on
the test split, and selecting on the test split would leak it. Carving the
split is the caller's job (``mpq.data`` does it for every task).

The jobs run on ``mpq.jobs``: serially, in a pool of CPU processes
(``workers > 1``), or one share per rank under ``torch.distributed`` (one GPU
per rank, on one or several nodes). Each job's result is written atomically to
its own file in ``ctx.record_dir`` (``<layer>.json``, ``__reference__.json``)
the moment it exists, by the process that computed it, so that an interrupted
run loses at most the jobs in flight; a rerun with the same inputs skips the
finished jobs and returns the identical table. A record carries a key (a hash
of the starting model's and teacher's tensors, the fine-tune settings,
``low_bits``, the method version, the job's bits and seed and every other
input that changes the result, see ``run_key`` and ``mpq.records``): a record
with another key (another checkpoint, other settings) is ignored and
overwritten, and so is a corrupt or truncated one.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from . import jobs, paths
from .quantized import candidate_layers, get_bits
from .quantizers import qrange
from .records import Job, extend_key, plain_settings
from .records import record_path as job_record_path
from .sensitivity import CostRecord, Sensitivity, device_name
from .train import TASKS

__all__ = ["scores", "run", "run_key", "REFERENCE", "METHOD_VERSION", "record_path"]

REFERENCE = "__reference__"  # name (and record file stem) of the reference job
METHOD_VERSION = "alps-v3"   # part of the key: a change of the recipe invalidates old records


def record_path(record_dir: str | Path, layer: str | None) -> Path:
    """Where the record of ``layer``'s job lives (``None``: the reference job).

    Layer names are module names (``layer3.4.conv2``) and are used as they are;
    any other character becomes ``_`` and a short hash of the name is appended
    so that two sanitised names cannot collide (``mpq.records.record_path``).
    """
    return job_record_path(record_dir, REFERENCE if layer is None else layer)


def run_key(base_key: str, low_bits: int) -> str:
    """The key ALPS's job keys build on: ``base_key`` extended with ``low_bits`` and ``METHOD_VERSION``.

    ``base_key`` is the context's ``mpq.records.context_key``; the scores
    also depend on the precision the layers are reduced to and on the recipe
    itself, so a change of either gives other keys (``mpq.records.extend_key``).
    """
    return extend_key(base_key, {"low_bits": int(low_bits), "method": METHOD_VERSION})


def _nan(v: float | None) -> float:
    """A record's optional number as a float (NaN for None)."""
    return math.nan if v is None else float(v)


def _require_sized(name: str, ds: Dataset, minimum: int, fix: str) -> int:
    """``len(ds)``; a ``ValueError`` naming ``name`` for a dataset without one or with under ``minimum``."""
    try:
        n = len(ds)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name}: needs a sized Dataset (with __len__)") from None
    if n < minimum:
        raise ValueError(f"{name} has {n} samples, needs at least {minimum}: {fix}")
    return n


def scores(ctx: jobs.JobContext, *, low_bits: int = 2, seed: int = 0, layers: Sequence[str] | None = None,
           workers: int = 1, threads: int | None = None, progress: bool = True,
           method: str | None = None) -> Sensitivity:
    """ALPS sensitivity of every candidate layer of ``ctx.model`` (or of ``layers``).

    ``ctx`` (``mpq.jobs.JobContext``) holds the inputs: ``model`` is the
    starting point (all candidates at their start precision, activation steps
    calibrated; it is not modified), ``teacher`` a float model used for
    distillation when ``settings.distill > 0``, ``train`` the fine-tune data,
    ``eval_set`` a validation split carved from the training data (never the
    test split), and ``settings``, ``task``, ``num_classes``,
    ``ignore_index``, ``batch_size``, ``device`` (e.g. ``cuda:{local_rank}``),
    ``record_dir`` and ``base_key`` (``mpq.records.context_key`` of these
    inputs). One reference job (nothing reduced) and one job per layer (that
    layer at ``low_bits``), each fine-tuned with ``ctx.settings``
    (``settings.epochs`` may be fractional; ``0`` means no fine-tune: the
    no-fine-tune drop baseline) from ``torch.manual_seed(seed)`` and a loader
    shuffled with ``seed``, then evaluated on ``ctx.eval_set``.

    ``ctx.record_dir``: one JSON record per finished job, written atomically;
    a rerun with the same inputs reuses them. The jobs' keys build on
    ``run_key(ctx.base_key, low_bits)`` (``meta["key"]``), which adds
    ``low_bits`` and ``METHOD_VERSION`` to the context's key; each record's
    key adds its job's bits and seed. ``workers > 1`` (CPU only): a pool of
    spawned processes, each with ``threads`` torch threads (default: this
    process's threads / ``workers``); with ``workers == 1``, ``threads`` (when
    given) applies to this process for the duration of the call. Under
    ``torch.distributed`` (a process group is up) every rank runs the jobs
    ``[rank::world_size]`` (the reference job counted first) on
    ``ctx.device``, ``record_dir`` is required and shared, and every rank
    returns the full table. A rank waits for the others' records by polling
    the folder before the closing collective, so an unbalanced share cannot
    hit the process group's timeout; if a rank dies, its launcher (torchrun)
    must end the others.

    Returns a ``Sensitivity`` (method ``"alps"``, or ``"noft"`` when
    ``settings.epochs == 0``) whose table has the columns ``layer, bits_from,
    bits_to, score, eval_kl, reference_kl, eval_loss, reference_loss, loss_increase,
    score_half_a, score_half_b, metric_drop, metric,
    reference_metric, train_loss, seconds, worker`` (``score``: the increase
    of the KL from the teacher over the reference job's, or of the validation
    loss when ``ctx.teacher`` is None (``meta["signal"]``); ``score_half_a``/``_b``: the same on
    the even-/odd-numbered validation samples, for split-half reliability;
    ``metric_drop``: the reference
    metric minus the job's; ``train_loss``: the job's mean fine-tune loss over its last epoch, NaN
    without a fine-tune; ``seconds``: that job's wall time; ``worker``: who ran
    it), and whose cost record sums what every job's record says it took,
    computed by this call or reused (``job_seconds``; ``meta`` has ``jobs_run``
    and ``jobs_reused``), so reading finished records never erases the cost. Forward passes count the
    samples through the student (fine-tune and validation) plus through the
    teacher (when distilling, and the validation samples for the KL); backward passes count the
    fine-tune samples.

    Floats are reproducible for a fixed seed on the same kind of device and
    the same thread count (hence ``threads``); on CUDA, bit-identical reruns
    also need ``torch.use_deterministic_algorithms``, the caller's choice.
    """
    t_start = time.perf_counter()
    settings, batch_size = ctx.settings, ctx.batch_size
    if ctx.task not in TASKS:
        raise ValueError(f"unknown task {ctx.task!r}: choose one of {TASKS}")
    qrange(low_bits, True)  # validates low_bits
    candidates = candidate_layers(ctx.model)  # NotQuantizedError for a float model
    bits = get_bits(ctx.model)
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
    if REFERENCE in layers:
        raise ValueError(f"layers: {REFERENCE!r} is the reference job's name, not a layer")
    n_val = _require_sized("the validation set", ctx.eval_set, 1,
                           "carve a non-empty validation split from the training data")
    n_train = _require_sized("the training set", ctx.train,
                             batch_size if settings.epochs > 0 else 0,
                             "use a larger train split or a smaller batch_size")
    method = method or ("noft" if settings.epochs == 0 else "alps")

    # The other inputs (epochs, batch_size, workers, threads, device, distributed) are checked
    # by mpq.jobs.run before any work.
    key = run_key(ctx.base_key, low_bits)
    job_list = [Job(REFERENCE, {}, seed)] + [Job(name, {name: int(low_bits)}, seed) for name in layers]
    # every job measures the KL from the teacher when there is one: the score's signal
    records, stats = jobs.run(dataclasses.replace(ctx, base_key=key, eval_kl=ctx.teacher is not None), job_list,
                              workers=workers, threads=threads, progress=progress, desc=f"{method} jobs")
    jobs_run, jobs_reused = stats["run"], stats["reused"]

    reference = records[REFERENCE]
    ref, ref_loss = reference["metric"], reference["eval_loss"]
    # the score's signal: the KL from the teacher when the jobs measured it, else the loss
    signal = "eval_kl" if reference["eval_kl"] is not None else "eval_loss"
    table = pd.DataFrame({
        "layer": layers,
        "bits_from": [int(bits[name]) for name in layers],
        "bits_to": [int(low_bits)] * len(layers),
        "score": [records[name][signal] - reference[signal] for name in layers],
        "eval_kl": [_nan(records[name]["eval_kl"]) for name in layers],
        "reference_kl": [_nan(reference["eval_kl"])] * len(layers),
        "eval_loss": [records[name]["eval_loss"] for name in layers],
        "reference_loss": [ref_loss] * len(layers),
        "loss_increase": [records[name]["eval_loss"] - ref_loss for name in layers],
        # split-half: the score from the even- / odd-numbered validation samples only
        "score_half_a": [records[name][f"{signal}_halves"][0] - reference[f"{signal}_halves"][0] for name in layers],
        "score_half_b": [records[name][f"{signal}_halves"][1] - reference[f"{signal}_halves"][1] for name in layers],
        "metric_drop": [ref - records[name]["metric"] for name in layers],
        "metric": [records[name]["metric"] for name in layers],
        "reference_metric": [ref] * len(layers),
        "train_loss": [records[name]["train_loss"] for name in layers],
        "seconds": [records[name]["seconds"] for name in layers],
        "worker": [records[name]["worker"] for name in layers],
    })
    # the cost is what the jobs' records say they took, reused or not: re-reading records (a
    # `dvc repro` after a torchrun run) reports the compute that was spent, not the re-reading
    every = [records[job.name] for job in job_list]
    job_seconds = math.fsum(float(r["seconds"]) for r in every)
    devices = sorted({str(r["device"]) for r in every}) or [device_name(torch.device(ctx.device))]
    # processes that shared the work: this call's, or the ones named in the records (e.g. 8 ranks)
    workers = max(int(stats["workers"]) if jobs_run else 1, len({str(r["worker"]) for r in every}))
    train_samples, val_samples, teacher_samples = (sum(int(r[f]) for r in every) for f in
                                                   ("train_samples", "eval_samples", "teacher_samples"))
    wall = time.perf_counter() - t_start if jobs_reused == 0 else job_seconds / workers
    notes = (f"jobs_run={jobs_run} jobs_reused={jobs_reused} (reference + {len(layers)} layers), "
             f"{settings.epochs} epochs per job; cost summed over all {len(every)} job records (reused "
             f"ones included){'' if jobs_reused == 0 else '; seconds = their sum / workers'}; forward = "
             f"student fine-tune + validation samples + teacher samples ({teacher_samples}), backward = "
             f"fine-tune samples")
    cost = CostRecord(method=method, seconds=wall, device=" | ".join(devices), workers=workers,
                      forward_passes=train_samples + val_samples + teacher_samples,
                      backward_passes=train_samples, epochs=float(settings.epochs) * len(every), notes=notes,
                      job_seconds=job_seconds)
    meta = {"jobs_run": jobs_run, "jobs_reused": jobs_reused, "jobs_total": len(job_list),
            "reference_metric": ref, "reference_loss": ref_loss, "reference_kl": _nan(reference["eval_kl"]),
            "signal": signal, "reference_train_loss": reference["train_loss"],
            "reference_seconds": reference["seconds"],
            "reference_worker": reference["worker"], "key": key, "low_bits": low_bits,
            "seed": seed, "batch_size": batch_size, "task": ctx.task, "num_classes": ctx.num_classes,
            "settings": plain_settings(settings), "train_size": n_train, "val_size": n_val,
            "record_dir": None if ctx.record_dir is None else str(ctx.record_dir),
            "evaluated_on": "validation split carved from the training data (caller's duty)"}
    return Sensitivity(method, table, cost, meta)


def run(exp, *, method: str, qmodel: nn.Module, teacher: nn.Module | None, out, seed: int) -> Sensitivity:
    """The pipeline's ALPS and no-fine-tune drop (``mpq.methods`` entries ``alps`` and ``noft``).

    ``scores`` from ``qmodel`` on the network's validation split, fine-tuning
    each job for ``alps.epochs`` (``noft``: no fine-tune) with the quantized
    recipe, distilling from ``teacher``; one record per job under
    ``<out>/records/<method>/`` (a run from another seed than the preset's, the
    retest: ``<out>/records/<method>/seed<seed>/``).
    """
    cfg = exp.cfg
    epochs = cfg.alps.epochs if method == "alps" else 0.0
    folder = Path(out) / paths.RECORDS / method
    # the context's key covers the inputs; scores adds low_bits and METHOD_VERSION (run_key)
    ctx = jobs.experiment_context(exp, qmodel, teacher, epochs=epochs, eval_split="val",
                                  record_dir=folder if seed == cfg.seed else folder / f"seed{seed}", extra={})
    workers = exp.workers(cfg.alps.workers)
    return scores(ctx, low_bits=cfg.quant.low_bits, seed=seed, workers=workers,
                  threads=exp.threads_per_worker(workers), progress=exp.progress, method=method)
