"""Resumable training: what ``mpq.train.fit`` saves inside a run so that a killed one goes on.

A long fit (60 epochs of PSPNet, one ImageNet epoch per ALPS job) must not
start over when its process dies. ``fit`` writes a *training checkpoint*
(``TrainCheckpoint``) at the end of every epoch and, with
``checkpoint_steps > 0``, every that many steps; a rerun of the same fit
finds it, checks its ``key`` (the caller's hash of everything the fit depends
on: a checkpoint of another recipe is ignored and overwritten) and resumes
from the step after it. The file is removed when the fit ends.

A checkpoint holds the model's and the optimizer's state, the step, the loss
values of the current epoch, the torch RNG states (CPU and CUDA) and where
the data stand: the epoch, the batches of it already done and, for a loader
shuffled by its own generator, that generator's state at the epoch's start.
Resuming replays the epoch's order exactly (``skip_batches``: the batch
sampler is iterated, the skipped samples are never loaded), so a resumed fit
sees the same batches in the same order as an uninterrupted one; on one CPU
process without loader workers it ends with bit-identical weights
(``tests/test_train.py``). Random augmentation drawn in loader worker
processes is seeded per epoch by the loader and may differ after a resume.

Written atomically (``mpq.atomic``) by rank 0 only: under DDP the replicas
are identical, and every rank reads the same file on resume (the results
folder is shared, docs/paper_scale.md).
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from . import atomic

__all__ = ["TrainCheckpoint", "save", "load", "skip_batches", "unwrap", "FORMAT"]

FORMAT = "mpq-train-checkpoint/1"


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


@dataclass
class TrainCheckpoint:
    """The state of a fit after ``step`` optimizer steps (see the module docstring)."""

    key: str
    step: int                      # optimizer steps done
    epoch: int                     # the loader epoch the next batch comes from
    batch: int                     # batches of that epoch already done
    model: dict[str, Any]
    optimizer: dict[str, Any]
    epoch_losses: list[float]      # losses of the steps of the current epoch so far
    generator: torch.Tensor | None  # the loader's generator state at the epoch's start
    rng: torch.Tensor              # torch's CPU RNG state
    cuda_rng: list[torch.Tensor]   # every CUDA device's RNG state (empty without CUDA)


def save(path: str | Path, ck: TrainCheckpoint) -> None:
    """Write ``ck`` to ``path`` atomically (tensors moved to the CPU)."""
    payload = {"format": FORMAT, **{k: getattr(ck, k) for k in TrainCheckpoint.__dataclass_fields__}}
    payload["model"] = {k: v.detach().cpu() for k, v in ck.model.items()}
    atomic.write_with(path, lambda f: torch.save(payload, f))


def load(path: str | Path, key: str) -> TrainCheckpoint | None:
    """The checkpoint at ``path`` when it exists, reads and has ``key``; else ``None``.

    An unreadable file (killed while a non-atomic copy wrote it, another format)
    or one of another recipe counts as absent: the fit starts over and replaces it.
    """
    p = Path(path)
    if not p.is_file():
        return None
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or payload.get("key") != key:
        return None
    return TrainCheckpoint(**{k: payload[k] for k in TrainCheckpoint.__dataclass_fields__})


class _SkipBatches(Sampler):
    """A batch sampler that drops the first ``skip`` batches of ``batch_sampler``'s next pass."""

    def __init__(self, batch_sampler: Any, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self) -> Iterator[list[int]]:
        for i, batch in enumerate(self.batch_sampler):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batch_sampler) - self.skip)


def skip_batches(loader: DataLoader, skip: int) -> DataLoader:
    """A loader for the rest of ``loader``'s next epoch: the same order, its first ``skip`` batches left out.

    It shares ``loader``'s batch sampler (so the shuffle draws the same
    permutation from the same generator state), dataset, workers and collate
    function; only the indices of the kept batches are loaded.
    """
    options = dict(num_workers=loader.num_workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                   generator=loader.generator, worker_init_fn=loader.worker_init_fn)
    if loader.num_workers > 0:
        options.update(prefetch_factor=loader.prefetch_factor, persistent_workers=False)
    return DataLoader(loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip), **options)
