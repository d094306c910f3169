"""Data: every task as ``TaskData``, and ``make_loader`` to batch any of its splits.

The one entry point callers use (``from mpq import data``); the work lives in
one module per concern, re-exported here:

- ``mpq.taskdata``: ``TaskData`` (a task's train/val/test splits) and ``IGNORE_INDEX``.
- ``mpq.embedded``: the embedded MNIST tasks, the offline default:
  ``build_embedded`` writes the deterministic ``.npy`` files that ``data.dvc``
  pins, ``load_embedded`` reads them.
- ``mpq.folders``: the paper-scale tasks from local folders: ``load_imagenet``
  (ImageFolder layout), ``load_segmentation`` (Cityscapes or ADE20K layouts).

``make_loader`` (here) turns a split into a ``DataLoader``: seeded shuffling for
training, in order for evaluation, one shard per rank under ``torchrun``.
Every loader's samples follow the one format ``mpq.taskdata`` describes.
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from .embedded import EmbeddedDataset, build_embedded, load_embedded
from .folders import (ADE20K_LABEL_TO_TRAIN, CITYSCAPES_LABEL_TO_TRAIN, ImageFiles, SegmentationFiles,
                      load_imagenet, load_segmentation, pad_collate)
from .taskdata import IGNORE_INDEX, TaskData

__all__ = ["TaskData", "IGNORE_INDEX", "make_loader",
           "build_embedded", "load_embedded", "EmbeddedDataset",
           "load_imagenet", "load_segmentation", "ImageFiles", "SegmentationFiles", "pad_collate",
           "CITYSCAPES_LABEL_TO_TRAIN", "ADE20K_LABEL_TO_TRAIN"]


class _EvalShardSampler(DistributedSampler):
    """Rank ``r`` of ``R`` gets indices ``r, r+R, ...``: disjoint, no padding, no shuffle.

    ``DistributedSampler`` pads by repeating samples so every rank has the same
    count; in evaluation that would count those samples twice once the ranks'
    metric counts are summed. Evaluation needs no lock-step between ranks.
    """

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    def __len__(self) -> int:
        return len(range(self.rank, len(self.dataset), self.num_replicas))


def _collate_fn(dataset: Dataset):
    """A dataset's own ``collate_fn``, looking through ``Subset`` wrappers."""
    while dataset is not None:
        fn = getattr(dataset, "collate_fn", None)
        if fn is not None:
            return fn
        dataset = getattr(dataset, "dataset", None)
    return None


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, drop_last: bool | None = None) -> DataLoader:
    """A DataLoader for one split: shuffled (seeded) for training, in order for evaluation.

    With ``world_size`` > 1 each rank reads its own shard through a
    ``DistributedSampler(num_replicas=world_size, rank=rank, seed=seed,
    shuffle=train)``; the caller must call ``loader.sampler.set_epoch(epoch)``
    before each training epoch (when ``loader.sampler`` has it) or every epoch
    repeats the same order. Evaluation shards are disjoint and unpadded, so
    summing per-rank metric counts equals a single-process evaluation.
    Single-process shuffling uses a generator seeded with ``seed``: the epochs
    differ from one another, and a rerun repeats them. ``drop_last`` defaults
    to ``train``. A dataset's ``collate_fn`` attribute (mixed-size segmentation
    images) is used when present.
    """
    drop_last = train if drop_last is None else drop_last
    kwargs = dict(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                  collate_fn=_collate_fn(dataset))
    if world_size > 1:
        sampler_cls = DistributedSampler if train else _EvalShardSampler
        sampler = sampler_cls(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                              drop_last=drop_last)
        return DataLoader(dataset, sampler=sampler, **kwargs)
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, shuffle=train, generator=generator, **kwargs)
