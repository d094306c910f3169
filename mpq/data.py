"""Data: every task as ``TaskData``, and ``make_loader`` to batch any of its splits.

The one entry point callers use (``from mpq import data``); the work lives in
one module per concern, re-exported here:

- ``mpq.taskdata``: ``TaskData`` (a task's train/val/test splits) and ``IGNORE_INDEX``.
- ``mpq.embedded``: the embedded MNIST tasks, the offline default:
  ``build_embedded`` writes the deterministic ``.npy`` files that ``data.dvc``
  pins, ``load_embedded`` reads them.
- ``mpq.folders``: the paper-scale tasks from local folders: ``load_imagenet``
  (ImageFolder layout), ``load_segmentation`` (Cityscapes or ADE20K layouts).

``dataset_digest`` (from ``mpq.taskdata``) names a split's content, which keys
results. ``sample_groups`` (here) names the source sample of every sample of a split
(the copies of one embedded test digit share it), for the bootstrap.
``make_loader`` (here) turns a split into a ``DataLoader``: seeded shuffling for
training, in order for evaluation, one shard per rank under ``torchrun``.
Every loader's samples follow the one format ``mpq.taskdata`` describes.
With ``num_workers`` > 0 (paper scale; ``default_workers`` is the automatic
count) the workers are persistent, prefetch, and are seeded reproducibly; with
0 (the embedded scale) the loader is the plain single-process one.
"""
from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from .embedded import EmbeddedDataset, build_embedded, load_embedded
from .folders import (ADE20K_LABEL_TO_TRAIN, CITYSCAPES_LABEL_TO_TRAIN, ImageFiles, SegmentationFiles,
                      decode_rgb, imagenet_transforms, load_imagenet, load_segmentation, pad_collate)
from .taskdata import IGNORE_INDEX, TaskData, dataset_digest

__all__ = ["TaskData", "IGNORE_INDEX", "dataset_digest", "make_loader", "default_workers", "sample_groups",
           "build_embedded", "load_embedded", "EmbeddedDataset",
           "load_imagenet", "load_segmentation", "ImageFiles", "SegmentationFiles", "pad_collate",
           "decode_rgb", "imagenet_transforms", "CITYSCAPES_LABEL_TO_TRAIN", "ADE20K_LABEL_TO_TRAIN"]

MAX_AUTO_WORKERS = 8


def sample_groups(dataset: Dataset) -> np.ndarray:
    """int64 ``(N,)``: the group of every sample of ``dataset`` in order, numbered 0..G-1 by first appearance.

    A dataset with a ``groups`` array (``EmbeddedDataset``: the copies of one test
    digit at several offsets share a group) gives those, through any nesting of
    ``Subset``; any other dataset has one group per sample. The bootstrap
    (``mpq.stats``) draws groups with replacement, so copies of one digit are
    never counted as independent samples.
    """
    index = np.arange(len(dataset))
    while isinstance(dataset, Subset):
        index = np.asarray(dataset.indices, dtype=np.int64)[index]
        dataset = dataset.dataset
    groups = getattr(dataset, "groups", None)
    raw = index if groups is None else np.asarray(groups, dtype=np.int64)[index]
    _, first, inverse = np.unique(raw, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))  # renumber the groups by where they first appear
    return order[inverse].astype(np.int64)


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


def default_workers(local_world_size: int = 1) -> int:
    """The automatic loader worker count per process (a ``data.workers: null`` setting).

    ``min(8, cpus // local_world_size)``, at least 1, where ``cpus`` is the
    number of CPUs this process may run on (its affinity mask, e.g. a SLURM
    allocation; ``os.cpu_count()`` where there is none) and
    ``local_world_size`` the number of processes sharing them (one per GPU
    under ``torchrun``). 0, single-process loading, when there is one CPU:
    a worker would only compete with the main process for it.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    if cpus <= 1:
        return 0
    return max(1, min(MAX_AUTO_WORKERS, cpus // max(1, local_world_size)))


def _worker_seed_generator(seed: int, rank: int) -> torch.Generator:
    """The generator DataLoader draws its worker base seed from: one per (seed, rank)."""
    state = np.random.SeedSequence([seed, rank]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def make_loader(dataset: Dataset, *, batch_size: int, train: bool, seed: int = 0, rank: int = 0,
                world_size: int = 1, num_workers: int = 0, pin_memory: bool = False,
                prefetch_factor: int | None = None, drop_last: bool | None = None) -> DataLoader:
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
    images) is used when present. ``pin_memory`` is passed through.

    ``num_workers`` 0 loads in the calling process: augmentation draws from
    torch's global RNG, so ``torch.manual_seed`` reproduces it (the embedded
    tasks). ``num_workers`` > 0 starts that many worker processes once, kept
    across epochs (``persistent_workers``), each ``prefetch_factor`` batches
    ahead (None: 2). DataLoader seeds worker ``i`` with ``base + i``, ``base``
    drawn once from the loader's generator: the shuffling generator seeded with
    ``seed`` in a single process; with ``world_size`` > 1 a generator seeded
    from ``(seed, rank)``, so ranks augment independently. A worker's RNG runs
    on across epochs and batches go to workers round-robin, so a rerun with the
    same ``seed`` and ``num_workers`` repeats every training batch; evaluation
    batches are the same for any ``num_workers``. ``prefetch_factor`` is
    ignored without workers.
    """
    drop_last = train if drop_last is None else drop_last
    kwargs = dict(batch_size=batch_size, num_workers=num_workers, drop_last=drop_last,
                  collate_fn=_collate_fn(dataset), pin_memory=pin_memory)
    if num_workers > 0:
        kwargs.update(persistent_workers=True, prefetch_factor=2 if prefetch_factor is None else prefetch_factor)
    if world_size > 1:
        sampler_cls = DistributedSampler if train else _EvalShardSampler
        sampler = sampler_cls(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed,
                              drop_last=drop_last)
        if num_workers > 0:
            kwargs["generator"] = _worker_seed_generator(seed, rank)
        return DataLoader(dataset, sampler=sampler, **kwargs)
    generator = torch.Generator().manual_seed(seed) if train else None
    return DataLoader(dataset, shuffle=train, generator=generator, **kwargs)
