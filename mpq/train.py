"""Training and evaluation loops, one for both tasks, CPU or CUDA, DDP-ready.

``fit`` runs SGD with momentum and a linear-warm-up + cosine schedule for a
(possibly fractional) number of epochs; ``evaluate`` returns top-1 accuracy or
mIoU in percent. Both work on a plain module or one wrapped in
``DistributedDataParallel``: the loops only call ``model(x)``, and
``evaluate`` sums its counts across ranks when a process group is up.

Tasks:
- ``classification``: logits ``(N, C)``, labels ``(N,)``.
- ``segmentation``: logits ``(N, C, H, W)`` (in training PSPNet returns
  ``(main, aux)``), masks ``(N, H, W)`` with ``ignore_index`` for void pixels.

Optional distillation from a float teacher (the quantized fine-tunes use it):
``loss = (1 - distill) * CE + distill * KL(teacher || student)``.

Failed training is caught: ``fit`` stops at a non-finite loss
(``FloatingPointError``), and ``chance_floor`` is the metric below which a
model is no better than one that ignores its input (``TrainingCollapsed``).

GPU speed (all off by default; the default path is the fp32 arithmetic of
earlier versions, bit for bit):
- ``precision="bf16"``: forward and loss (and the teacher's forward) under
  ``torch.autocast(device_type, torch.bfloat16)``; the logits are cast to fp32
  before the loss, so cross-entropy and KL are computed in fp32 (the LSQ
  quantizers quantize in fp32 too: ``mpq.quantizers``). Works on CPU as well.
- ``channels_last=True``: the model (and the teacher) and 4-D inputs in
  ``torch.channels_last`` memory format; the model is left in that format.
- ``compile=True`` (``fit``): the forward runs through ``torch.compile`` of the
  module called (a DDP wrapper is compiled as a whole; the teacher runs eager).
  The LSQ Function compiles without graph breaks; the first steps pay the
  compilation (``benchmarks/quantized_step.py --compile`` measures it).
- No host synchronisation per step: the losses stay on the device and are read
  (and checked for a non-finite value) every ``sync_every`` steps and at the
  end; the progress bar shows the loss at those reads. A non-finite loss thus
  stops the run at the next read, up to ``sync_every - 1`` steps after it.
  ``evaluate`` adds no sync of its own either (``Accuracy`` counts on the
  device; ``MeanIoU`` checks its label ranges per batch).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from . import resume
from .progress import job_bar
from .quantizers import WeightQuantizer, qrange
from .metrics import Accuracy, MeanIoU, sample_stats

__all__ = ["FitSettings", "fit", "evaluate", "resolve_device", "param_groups", "lr_at", "TASKS",
           "PRECISIONS", "TrainingCollapsed", "chance_floor", "autocast", "to_channels_last"]

TASKS = ("classification", "segmentation")
PRECISIONS = ("fp32", "bf16")


class TrainingCollapsed(RuntimeError):
    """Training ended in a model at chance level (``chance_floor``) although it started above it."""


def chance_floor(task: str, num_classes: int, samples: int) -> float:
    """The metric (percent) at or below which a model is at chance level on ``samples`` evaluation samples.

    A predictor that ignores its input scores at most chance, ``100 /
    num_classes``, on a class-balanced split (its accuracy is the share of the
    class it predicts), and the same holds for mIoU over all classes on any
    split: with predicted class shares ``q_c`` independent of the target,
    ``IoU_c <= q_c`` in expectation, so ``mIoU <= 100 / num_classes``.
    Classification adds three standard errors of such a guesser's accuracy,
    ``100 * 3 * sqrt(p (1 - p) / samples)`` with ``p = 1 / num_classes`` (4.0
    points on 500 samples of 10 classes), so that a collapsed model that hits
    one class a little more often than chance still counts; segmentation adds
    nothing (its metric pools so many pixels that the guesser's noise is
    negligible).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS}")
    if num_classes < 2 or samples < 1:
        raise ValueError(f"chance_floor needs num_classes >= 2 and samples >= 1, got {num_classes}, {samples}")
    p = 1.0 / num_classes
    margin = 3 * math.sqrt(p * (1 - p) / samples) if task == "classification" else 0.0
    return 100.0 * (p + margin)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("device: cuda was asked for but no GPU is visible; set device: cpu or auto")
    return torch.device(name)


def autocast(device: torch.device | str, precision: str):
    """The context a forward (and loss) runs in: none for ``fp32``, bf16 autocast for ``bf16``."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def to_channels_last(x: Tensor) -> Tensor:
    """A 4-D tensor in ``torch.channels_last`` memory format; any other tensor as it is."""
    return x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x


@dataclass(frozen=True)
class FitSettings:
    epochs: float
    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    distill: float = 0.0
    aux_weight: float = 0.4
    ignore_index: int = 255
    step_lr_mult: Mapping[int, float] = field(default_factory=dict)  # bits -> weight-step lr multiplier


def param_groups(model: nn.Module, weight_decay: float,
                 step_lr_mult: Mapping[int, float] | None = None) -> list[dict]:
    """Weight decay on conv/linear weights only: not on BN, biases or quantizer steps.

    Each group carries an ``lr_mult`` that ``fit`` applies at every step. The
    step of a weight quantizer at ``b`` bits learns at the base rate times
    ``step_lr_mult[b]`` (bits not listed: 1), one group per multiplier. Why:
    LSQ scales a weight step's gradient by ``1/sqrt(N Q_P)``, which over a short
    fine-tune leaves 4-bit steps where they started, while 2-bit steps move at
    the plain rate and diverge at a few times it (README, "LSQ that learns",
    has the measurements). Activation steps keep the base rate.
    """
    mults = dict(step_lr_mult or {})
    weight_steps: dict[int, float] = {}  # id(step) -> its multiplier
    for module in model.modules():
        if isinstance(module, WeightQuantizer) and module.bits is not None:
            weight_steps[id(module.step)] = float(mults.get(module.bits, 1.0))
    decay, no_decay, steps = [], [], {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if weight_steps.get(id(p), 1.0) != 1.0:
            steps.setdefault(weight_steps[id(p)], []).append(p)
        elif p.ndim <= 1 or name.endswith(".step"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay, "lr_mult": 1.0},
            {"params": no_decay, "weight_decay": 0.0, "lr_mult": 1.0}] + [
        {"params": ps, "weight_decay": 0.0, "lr_mult": m} for m, ps in sorted(steps.items())]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * t))


def _loss(out, y: Tensor, task: str, s: FitSettings, teacher_out=None) -> Tensor:
    """The training loss, in fp32: the logits are cast with ``.float()`` (the identity for fp32 ones)."""
    aux = None
    if isinstance(out, tuple):
        out, aux = out
        aux = aux.float()
    out = out.float()
    if task == "classification":
        loss = F.cross_entropy(out, y, label_smoothing=s.label_smoothing)
    else:
        loss = F.cross_entropy(out, y, ignore_index=s.ignore_index)
        if aux is not None and s.aux_weight > 0:
            loss = loss + s.aux_weight * F.cross_entropy(aux, y, ignore_index=s.ignore_index)
    if teacher_out is not None and s.distill > 0:
        if isinstance(teacher_out, tuple):
            teacher_out = teacher_out[0]
        teacher_out = teacher_out.float()
        # KL over the class dim, averaged over samples (and pixels)
        kl = F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher_out, 1), log_target=True,
                      reduction="none").sum(1).mean()
        loss = (1 - s.distill) * loss + s.distill * kl
    return loss


def _batches(loader, total_steps: int, *, start: int = 0, epoch: int = 0, batch: int = 0,
             generator_state: Tensor | None = None):
    """Yield ``(epoch, index in the epoch, generator state at the epoch's start, batch)`` until
    ``total_steps`` batches have been drawn, cycling the loader (fractional epochs allowed).

    Resuming (``mpq.resume``): ``start`` steps are done and the next batch is
    batch ``batch`` of epoch ``epoch``, whose shuffle starts from the loader
    generator's ``generator_state``; the epoch's first ``batch`` batches are
    skipped without being loaded.
    """
    done = start
    gen = getattr(loader, "generator", None)
    while done < total_steps:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if gen is not None and generator_state is not None:
            gen.set_state(generator_state)
        epoch_state = gen.get_state() if gen is not None else None
        source = resume.skip_batches(loader, batch) if batch else loader
        for i, item in enumerate(source, start=batch):
            yield epoch, i, epoch_state, item
            done += 1
            if done >= total_steps:
                return
        epoch, batch, generator_state = epoch + 1, 0, None


def _check_losses(pending: list[Tensor], losses: list[float], first: int, desc: str) -> None:
    """Read the losses of steps ``first..`` (one host sync) into ``losses``; raise at a non-finite one."""
    values = torch.stack(pending).tolist()
    pending.clear()
    for i, v in enumerate(values):
        if not math.isfinite(v):
            last = first + len(values) - 1
            raise FloatingPointError(f"{desc}: loss became {v} at step {first + i} (read at the check of "
                                     f"steps {first}-{last}); lower the lr")
    losses.extend(values)


def fit(model: nn.Module, loader, *, task: str, settings: FitSettings, device: torch.device | str = "cpu",
        teacher: nn.Module | None = None, progress: bool = True, desc: str = "train",
        precision: str = "fp32", channels_last: bool = False, compile: bool = False,
        sync_every: int = 50, checkpoint: str | Path | None = None, checkpoint_key: str = "",
        checkpoint_steps: int = 0, checkpoint_writer: bool = True) -> dict:
    """Train ``model`` in place; return ``{"steps", "seconds", "loss"}`` (last-epoch mean loss).

    ``precision`` (``fp32`` | ``bf16``), ``channels_last`` and ``compile`` are
    the speed options of the module docstring; the losses are read from the
    device every ``sync_every`` steps and at the end (a non-finite one raises
    ``FloatingPointError`` naming its step). ``seconds`` includes any
    compilation.

    ``checkpoint``: a file for a resumable fit (``mpq.resume``). When it holds a
    training checkpoint with ``checkpoint_key``, the fit resumes after its
    step (``seconds`` then counts this call only); the fit writes one at the
    end of every epoch but the last and, with ``checkpoint_steps > 0``, every
    that many steps (``checkpoint_writer``: whether this process writes, e.g.
    rank 0 of a DDP run), and removes it when it ends.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS}")
    if isinstance(sync_every, bool) or not isinstance(sync_every, int) or sync_every < 1:
        raise ValueError(f"sync_every must be an integer >= 1, got {sync_every!r}")
    if len(loader) == 0:
        raise ValueError("the training loader has no batches: use a larger train split or a smaller batch_size")
    device = torch.device(device)
    amp = autocast(device, precision)  # validates precision
    total = max(1, round(settings.epochs * len(loader))) if settings.epochs > 0 else 0
    if total == 0:
        return {"steps": 0, "seconds": 0.0, "loss": float("nan")}
    warmup = round(settings.warmup_epochs * len(loader))
    opt = torch.optim.SGD(param_groups(model, settings.weight_decay, settings.step_lr_mult), lr=settings.lr,
                          momentum=settings.momentum, nesterov=settings.momentum > 0)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        if teacher is not None:
            teacher.to(memory_format=torch.channels_last)
    if teacher is not None:
        teacher.eval()
    model.train()
    forward = torch.compile(model) if compile else model
    t0, losses, pending = time.perf_counter(), [], []
    state = resume.load(checkpoint, checkpoint_key) if checkpoint is not None else None
    position: dict = {}
    if state is not None:
        resume.unwrap(model).load_state_dict(state.model)
        opt.load_state_dict(state.optimizer)
        losses = list(state.epoch_losses)
        torch.set_rng_state(state.rng)
        if state.cuda_rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state.cuda_rng)
        position = dict(start=state.step, epoch=state.epoch, batch=state.batch, generator_state=state.generator)
    first = position.get("start", 0)
    n = len(loader)
    batches = _batches(loader, total, **position)
    with job_bar(total, initial=first, desc=desc, disable=not progress, unit="step", leave=False) as bar:
        for step, (epoch, index, epoch_state, (x, y)) in enumerate(batches, start=first):
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, settings.lr) * g["lr_mult"]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if channels_last:
                x = to_channels_last(x)
            t_out = None
            with amp:
                if teacher is not None and settings.distill > 0:
                    with torch.no_grad():
                        t_out = teacher(x)
                loss = _loss(forward(x), y, task, settings, t_out)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            pending.append(loss.detach())
            epoch_end = index == n - 1
            save = checkpoint is not None and step + 1 < total and (
                epoch_end or (checkpoint_steps > 0 and (step + 1) % checkpoint_steps == 0))
            if len(pending) == sync_every or step == total - 1 or save:
                _check_losses(pending, losses, first, desc)
                first = step + 1
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if save and checkpoint_writer:
                gen = getattr(loader, "generator", None)
                resume.save(checkpoint, resume.TrainCheckpoint(
                    # the epoch and its batches done (all of them at an epoch's end: a resume then
                    # replays the sampler's whole pass, whose last draws come after the last batch)
                    key=checkpoint_key, step=step + 1, epoch=epoch, batch=index + 1,
                    model=resume.unwrap(model).state_dict(), optimizer=opt.state_dict(), epoch_losses=losses[-n:],
                    generator=epoch_state if gen is not None else None,
                    rng=torch.get_rng_state(),
                    cuda_rng=torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []))
            bar.update(1)
    if checkpoint is not None and checkpoint_writer:
        Path(checkpoint).unlink(missing_ok=True)
    tail = losses[-n:]
    return {"steps": total, "seconds": time.perf_counter() - t0, "loss": sum(tail) / len(tail)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, task: str, num_classes: int, ignore_index: int = 255,
             device: torch.device | str = "cpu", max_batches: int | None = None,
             across_ranks: bool = True, precision: str = "fp32", channels_last: bool = False,
             detail: bool = False, teacher: nn.Module | None = None) -> float | dict[str, Any]:
    """Top-1 accuracy (classification) or mIoU (segmentation), in percent.

    Under ``torch.distributed`` the counts are summed over the ranks (each rank
    evaluated its shard of one model); ``across_ranks=False`` keeps them local,
    for ranks that each evaluate a *different* model (``mpq.jobs``).
    ``precision`` and ``channels_last`` as in ``fit``.

    ``detail=True`` returns ``{"metric", "loss", "kl", "samples", "sample_loss", "sample_kl"}``
    instead: ``loss`` is the mean cross-entropy of the main output (per image,
    or per labelled pixel), a continuous signal beside the metric's steps of
    one sample; ``samples`` the per-sample counts of
    ``mpq.metrics.sample_stats`` in the loader's order (int64 numpy array), for
    paired bootstrap intervals; ``sample_loss`` per sample its summed loss and
    its labelled units (images: 1; segmentation: pixels), float64 ``(N, 2)``.
    With a ``teacher`` (the float model) also ``kl`` and ``sample_kl``: the
    KL divergence from the teacher's output distribution to the model's, mean
    and per sample (summed over labelled pixels for segmentation), i.e. how far
    the quantized function moved from the float one, whatever the labels say.
    The loss is summed over the ranks with the counts; ``samples``,
    ``sample_loss`` and ``sample_kl`` need one process (or ``across_ranks=False``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS}")
    device = torch.device(device)
    amp = autocast(device, precision)  # validates precision
    if channels_last:
        model.to(memory_format=torch.channels_last)
    was_training = model.training
    model.eval()
    meter = Accuracy() if task == "classification" else MeanIoU(num_classes, ignore_index)
    loss_sum = torch.zeros(2, dtype=torch.float64, device=device)  # summed loss, labelled units
    samples, sample_losses, sample_kls = [], [], []
    kl_sum = torch.zeros(1, dtype=torch.float64, device=device)
    if teacher is not None:
        teacher.eval()
    n = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if channels_last:
            x = to_channels_last(x)
        with amp:
            out = model(x)
        meter.update(out.argmax(1), y)
        if detail:
            per = F.cross_entropy(out.float(), y, ignore_index=ignore_index, reduction="none").double()
            units = (y != ignore_index).double()
            if per.dim() > 1:  # segmentation: one row per image, summed over its labelled pixels
                per, units = per.flatten(1).sum(1), units.flatten(1).sum(1)
            loss_sum[0] += per.sum()
            loss_sum[1] += units.sum()
            sample_losses.append(torch.stack([per, units], 1).cpu())
            if teacher is not None:
                with amp:
                    t_out = teacher(x)
                t_log, s_log = F.log_softmax(t_out.float(), 1), F.log_softmax(out.float(), 1)
                kl = (t_log.exp() * (t_log - s_log)).sum(1).double()  # per image, or per pixel
                if kl.dim() > 1:
                    kl = (kl * (y != ignore_index)).flatten(1).sum(1)
                kl_sum += kl.sum()
                sample_kls.append(torch.stack([kl, units], 1).cpu())
            samples.append(sample_stats(out.argmax(1), y, task=task, num_classes=num_classes,
                                        ignore_index=ignore_index).cpu())
        n += 1
    model.train(was_training)
    if n == 0:
        raise ValueError("the evaluation loader has no batches: check the split and batch_size")
    if across_ranks:
        meter.all_reduce()  # sums the counts over DDP ranks (no-op in one process)
        if detail and dist.is_available() and dist.is_initialized():
            dist.all_reduce(loss_sum)
            dist.all_reduce(kl_sum)
            if dist.get_world_size() > 1:
                samples, sample_losses, sample_kls = [], [], []  # each rank holds its shard's rows only
    if not detail:
        return meter.compute()
    units = loss_sum[1].clamp_min(1)
    return {"metric": meter.compute(), "loss": float(loss_sum[0] / units),
            "kl": float(kl_sum[0] / units) if teacher is not None else float("nan"),
            "samples": torch.cat(samples).numpy() if samples else None,
            "sample_loss": torch.cat(sample_losses).numpy() if sample_losses else None,
            "sample_kl": torch.cat(sample_kls).numpy() if sample_kls else None}
