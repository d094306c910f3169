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
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from .metrics import Accuracy, MeanIoU

__all__ = ["FitSettings", "fit", "evaluate", "resolve_device", "param_groups", "lr_at", "TASKS",
           "TrainingCollapsed", "chance_floor"]

TASKS = ("classification", "segmentation")


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


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv/linear weights only: not on BN, biases or quantizer steps."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".step"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to zero at ``total``."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return 0.5 * base * (1 + math.cos(math.pi * t))


def _loss(out, y: Tensor, task: str, s: FitSettings, teacher_out=None) -> Tensor:
    aux = None
    if isinstance(out, tuple):
        out, aux = out
    if task == "classification":
        loss = F.cross_entropy(out, y, label_smoothing=s.label_smoothing)
    else:
        loss = F.cross_entropy(out, y, ignore_index=s.ignore_index)
        if aux is not None and s.aux_weight > 0:
            loss = loss + s.aux_weight * F.cross_entropy(aux, y, ignore_index=s.ignore_index)
    if teacher_out is not None and s.distill > 0:
        if isinstance(teacher_out, tuple):
            teacher_out = teacher_out[0]
        # KL over the class dim, averaged over samples (and pixels)
        kl = F.kl_div(F.log_softmax(out, 1), F.log_softmax(teacher_out, 1), log_target=True,
                      reduction="none").sum(1).mean()
        loss = (1 - s.distill) * loss + s.distill * kl
    return loss


def _batches(loader, total_steps: int):
    """Yield ``total_steps`` batches, cycling the loader (fractional epochs allowed)."""
    epoch, done = 0, 0
    while done < total_steps:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        for batch in loader:
            yield batch
            done += 1
            if done >= total_steps:
                return
        epoch += 1


def fit(model: nn.Module, loader, *, task: str, settings: FitSettings, device: torch.device | str = "cpu",
        teacher: nn.Module | None = None, progress: bool = True, desc: str = "train") -> dict:
    """Train ``model`` in place; return ``{"steps", "seconds", "loss"}`` (last-epoch mean loss)."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS}")
    if len(loader) == 0:
        raise ValueError("the training loader has no batches: use a larger train split or a smaller batch_size")
    device = torch.device(device)
    total = max(1, round(settings.epochs * len(loader))) if settings.epochs > 0 else 0
    if total == 0:
        return {"steps": 0, "seconds": 0.0, "loss": float("nan")}
    warmup = round(settings.warmup_epochs * len(loader))
    opt = torch.optim.SGD(param_groups(model, settings.weight_decay), lr=settings.lr,
                          momentum=settings.momentum, nesterov=settings.momentum > 0)
    if teacher is not None:
        teacher.eval()
    model.train()
    t0, losses = time.perf_counter(), []
    bar = tqdm(_batches(loader, total), total=total, desc=desc, disable=not progress, leave=False)
    for step, (x, y) in enumerate(bar):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup, settings.lr)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        t_out = None
        if teacher is not None and settings.distill > 0:
            with torch.no_grad():
                t_out = teacher(x)
        loss = _loss(model(x), y, task, settings, t_out)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{desc}: loss became {loss.item()} at step {step}; lower the lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if step % 10 == 0:
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    tail = losses[-len(loader):]
    return {"steps": total, "seconds": time.perf_counter() - t0, "loss": sum(tail) / len(tail)}


@torch.no_grad()
def evaluate(model: nn.Module, loader, *, task: str, num_classes: int, ignore_index: int = 255,
             device: torch.device | str = "cpu", max_batches: int | None = None,
             across_ranks: bool = True) -> float:
    """Top-1 accuracy (classification) or mIoU (segmentation), in percent.

    Under ``torch.distributed`` the counts are summed over the ranks (each rank
    evaluated its shard of one model); ``across_ranks=False`` keeps them local,
    for ranks that each evaluate a *different* model (``mpq.jobs``).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}: choose one of {TASKS}")
    device = torch.device(device)
    was_training = model.training
    model.eval()
    meter = Accuracy() if task == "classification" else MeanIoU(num_classes, ignore_index)
    n = 0
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        out = model(x.to(device, non_blocking=True))
        meter.update(out.argmax(1), y.to(device, non_blocking=True))
        n += 1
    model.train(was_training)
    if n == 0:
        raise ValueError("the evaluation loader has no batches: check the split and batch_size")
    if across_ranks:
        meter.all_reduce()  # sums the counts over DDP ranks (no-op in one process)
    return meter.compute()
