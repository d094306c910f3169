"""Task metrics: top-1 accuracy and mean IoU, one-shot or accumulated over batches.

Both metrics reduce to integer counts (correct/total, a confusion matrix), so
they accumulate exactly over batches and over DDP ranks: the accumulators keep
their counts in one int64 tensor, ``.counts``, that a caller can
``all_reduce`` (or call ``.all_reduce()``) before ``compute()``. The result is
then identical to evaluating the whole split in one process.

Predictions may be given as labels or as scores/logits with one more
dimension than the target (classes on dim 1): ``(N, C)`` for classification,
``(N, C, H, W)`` for segmentation; scores are reduced with ``argmax(1)``.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["confusion", "miou_from_confusion", "miou", "top1", "MeanIoU", "Accuracy", "sample_stats",
           "metric_from_sums"]


def _labels(pred: Tensor, target: Tensor) -> Tensor:
    """Predicted labels shaped like ``target``: ``argmax(1)`` of scores, labels as they are."""
    if pred.dim() == target.dim() + 1:
        pred = pred.argmax(1)
    if pred.shape != target.shape:
        raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape "
                         f"{tuple(target.shape)} (or target shape with a class dimension at dim 1)")
    return pred


def confusion(pred: Tensor, target: Tensor, *, num_classes: int, ignore_index: int = 255) -> Tensor:
    """Confusion matrix ``(num_classes, num_classes)`` int64: rows = target, cols = prediction.

    ``pred``: labels shaped like ``target`` (any shape, e.g. ``(N, H, W)``) or
    scores with classes on dim 1. Pixels whose target is ``ignore_index`` are
    dropped. One ``bincount`` over ``target * C + pred``: fast on CPU and GPU.
    """
    pred = _labels(pred, target).reshape(-1).long()
    target = target.reshape(-1).long()
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    c = num_classes
    if target.numel() and (int(target.min()) < 0 or int(target.max()) >= c):
        raise ValueError(f"target values must lie in [0, {c}) or equal ignore_index={ignore_index}")
    if pred.numel() and (int(pred.min()) < 0 or int(pred.max()) >= c):
        raise ValueError(f"predicted labels must lie in [0, {c})")
    return torch.bincount(target * c + pred, minlength=c * c).reshape(c, c)


def miou_from_confusion(conf: Tensor) -> float:
    """Mean intersection-over-union in percent (0..100) from a confusion matrix.

    IoU of class k = conf[k,k] / (row k + col k - conf[k,k]). The mean runs over
    the classes that appear in the target or in the prediction; a class absent
    from both has no defined IoU (0/0) and is left out of the mean rather than
    counted as 0 or 100. With no pixel at all the result is ``nan``.
    """
    conf = conf.double()
    inter = conf.diagonal()
    union = conf.sum(0) + conf.sum(1) - inter
    present = union > 0
    if not bool(present.any()):
        return float("nan")
    return float((inter[present] / union[present]).mean() * 100.0)


def miou(pred: Tensor, target: Tensor, *, num_classes: int, ignore_index: int = 255) -> float:
    """Mean IoU in percent of one batch (or a whole split): see ``miou_from_confusion``."""
    return miou_from_confusion(confusion(pred, target, num_classes=num_classes, ignore_index=ignore_index))


def _correct_total(logits_or_pred: Tensor, target: Tensor) -> tuple[int, int]:
    pred = _labels(logits_or_pred, target)
    return int((pred == target).sum()), target.numel()


def top1(logits_or_pred: Tensor, target: Tensor) -> float:
    """Top-1 accuracy in percent; ``logits_or_pred`` is logits ``(N, C)`` or labels ``(N,)``.

    An empty batch gives ``nan``.
    """
    correct, total = _correct_total(logits_or_pred, target)
    return 100.0 * correct / total if total else float("nan")


class _Counts:
    """Holds one int64 count tensor, ``counts``, summable across batches and ranks."""

    counts: Tensor

    def _to(self, device: torch.device) -> None:
        # Follow the data's device so ``all_reduce`` works with NCCL (GPU tensors).
        if self.counts.device != device:
            self.counts = self.counts.to(device)

    def reset(self) -> None:
        """Start a new accumulation (zero the counts)."""
        self.counts.zero_()

    def all_reduce(self) -> None:
        """Sum ``counts`` over DDP ranks in place (no-op outside ``torch.distributed``)."""
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(self.counts)


class MeanIoU(_Counts):
    """Accumulating mean IoU: ``update`` per batch, ``compute`` once.

    ``counts`` is the ``(num_classes, num_classes)`` int64 confusion matrix
    (rows = target, cols = prediction); it moves to the device of the data
    given to ``update``.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.counts = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch: ``pred`` labels ``(N, H, W)`` or scores ``(N, C, H, W)``, ``target`` ``(N, H, W)``."""
        self._to(target.device)
        self.counts += confusion(pred, target, num_classes=self.num_classes, ignore_index=self.ignore_index)

    def compute(self) -> float:
        """Mean IoU in percent over everything seen since construction or ``reset``."""
        return miou_from_confusion(self.counts)


class Accuracy(_Counts):
    """Accumulating top-1 accuracy; ``counts`` is int64 ``[correct, total]``."""

    def __init__(self):
        self.counts = torch.zeros(2, dtype=torch.int64)

    def update(self, logits_or_pred: Tensor, target: Tensor) -> None:
        """Add a batch: logits ``(N, C)`` or labels ``(N,)``, target ``(N,)``."""
        self._to(target.device)
        pred = _labels(logits_or_pred, target)
        self.counts[0] += (pred == target).sum()
        self.counts[1] += target.numel()

    def compute(self) -> float:
        """Top-1 accuracy in percent (``nan`` before any sample)."""
        correct, total = (int(v) for v in self.counts)
        return 100.0 * correct / total if total else float("nan")


# ---- per-sample statistics (what paired bootstrap intervals resample) ---------------------------

def sample_stats(pred: Tensor, target: Tensor, *, task: str, num_classes: int, ignore_index: int = 255) -> Tensor:
    """One row of int64 counts per sample, whose column sums give the metric (``metric_from_sums``).

    Classification: ``(N, 2)``, [1 where the sample is right, 1]. Segmentation:
    ``(N, 2 C)``, the sample's intersection and union pixel counts of every
    class (ignored pixels dropped). Summing rows over any multiset of samples
    gives that multiset's top-1 or mIoU exactly, so a bootstrap over images
    is a matrix product of resampling counts with these rows.
    """
    pred = _labels(pred, target)
    if task == "classification":
        right = (pred == target).long().reshape(-1, 1)
        return torch.cat([right, torch.ones_like(right)], 1)
    n, c = target.shape[0], num_classes
    t, p = target.reshape(n, -1).long(), pred.reshape(n, -1).long()
    keep = t != ignore_index
    t, p = torch.where(keep, t, 0), torch.where(keep, p, 0)
    rows = torch.arange(n, device=t.device).unsqueeze(1) * c
    def count(labels: Tensor, mask: Tensor) -> Tensor:
        return torch.bincount((rows + labels)[mask], minlength=n * c).reshape(n, c)
    inter = count(t, keep & (t == p))
    union = count(t, keep) + count(p, keep) - inter
    return torch.cat([inter, union], 1)


def metric_from_sums(sums: Tensor, task: str) -> Tensor:
    """Top-1 or mIoU (percent) from column sums of ``sample_stats`` rows: ``(..., k)`` -> ``(...)``.

    ``sums`` may hold many resamples at once (``(B, k)``). mIoU averages over
    the classes with a union (as ``miou_from_confusion``).
    """
    sums = sums.double()
    if task == "classification":
        return 100.0 * sums[..., 0] / sums[..., 1]
    c = sums.shape[-1] // 2
    inter, union = sums[..., :c], sums[..., c:]
    present = union > 0
    iou = torch.where(present, inter / union.clamp_min(1), torch.zeros_like(inter))
    return 100.0 * iou.sum(-1) / present.sum(-1)
