"""Paired bootstrap intervals over test images and fine-tune seeds.

Every frontier job and baseline model keeps its per-test-sample counts
(``mpq.metrics.sample_stats``): rows whose column sums give the metric. A
bootstrap replicate draws the test images with replacement (one count per
image, ``image_weights``; the copies of one source digit are drawn as one,
``groups``) and the fine-tune seeds with replacement (``seed_weights``); a
configuration's replicate value is the seed-weighted mean of its metric over
the drawn images. Comparisons are *paired*: every
configuration of a network is evaluated under the same replicates (the same
drawn images and the same drawn seeds), so the interval of a difference
holds what is common to both sides fixed, as a paired test does.

Intervals are percentile intervals (``level`` two-sided) of the replicate
values; a difference is "clearly above" zero when its whole interval is.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from .metrics import metric_from_sums

__all__ = ["Replicates", "replicates", "interval", "LEVEL", "REPLICATES", "SOURCES"]

SOURCES = ("images", "seeds")  # what a replicate resamples: the test images, the fine-tune seeds
LEVEL = 0.95         # two-sided coverage of every interval
REPLICATES = 2000    # bootstrap replicates per network


@dataclass(frozen=True)
class Replicates:
    """The shared resampling of one network: ``image_weights`` ``(B, N)``, ``seed_weights`` ``(B, S)``."""

    image_weights: np.ndarray
    seed_weights: np.ndarray

    @classmethod
    def draw(cls, images: int, seeds: int, *, reps: int = REPLICATES, seed: int = 0,
             resample: tuple[str, ...] = SOURCES, groups: np.ndarray | None = None) -> Replicates:
        """``reps`` replicates over ``images`` test samples and ``seeds`` fine-tune seeds
        (multinomial counts; one seed: its weight is always 1).

        ``groups`` (``(images,)`` ints 0..G-1, ``mpq.data.sample_groups``): samples
        that are copies of one source (a test digit at several offsets) are drawn
        together: the G groups are drawn with replacement and every sample gets its
        group's count. None: every sample is its own group.

        ``resample`` names the sources drawn (``SOURCES``); one left out keeps its
        observed values (every weight 1), so a draw of ``("images",)`` alone gives the
        spread that comes from the test images only
        (``mpq.uncertainty.NetworkUncertainty.resampling``, report T10).
        """
        if images < 1 or seeds < 1 or reps < 1:
            raise ValueError(f"need at least one image, seed and replicate, got {images}, {seeds}, {reps}")
        unknown = set(resample) - set(SOURCES)
        if unknown or not resample:
            raise ValueError(f"resample: choose one or more of {SOURCES}, got {tuple(resample)}")
        rng = np.random.default_rng(seed)
        if groups is None:
            w = rng.multinomial(images, np.full(images, 1.0 / images), size=reps).astype(np.float64)
        else:
            groups = np.asarray(groups, dtype=np.int64)
            n_groups = int(groups.max()) + 1 if groups.shape == (images,) else 0
            if n_groups == 0 or groups.min() < 0 or np.unique(groups).size != n_groups:
                raise ValueError(f"groups must number each of the {images} images' group 0..G-1, every group used")
            counts = rng.multinomial(n_groups, np.full(n_groups, 1.0 / n_groups), size=reps)
            w = counts[:, groups].astype(np.float64)
        v = rng.multinomial(seeds, np.full(seeds, 1.0 / seeds), size=reps).astype(np.float64)
        return cls(w if "images" in resample else np.ones_like(w), v if "seeds" in resample else np.ones_like(v))

    def values(self, samples: np.ndarray | Sequence[np.ndarray], task: str) -> np.ndarray:
        """Replicate values ``(B,)`` of one configuration: ``samples`` ``(S, N, k)``, one row block per seed.

        A configuration with one model (float) passes ``S = 1``; it then ignores
        the seed draw. Raises ``ValueError`` when ``N`` or ``S`` do not match
        the draw.
        """
        x = np.asarray(samples, dtype=np.float64)
        if x.ndim == 2:
            x = x[None]
        s, n, _ = x.shape
        if n != self.image_weights.shape[1]:
            raise ValueError(f"{n} samples per seed, the draw has {self.image_weights.shape[1]} images")
        # (B, S, k): every seed's column sums under every replicate's image counts
        sums = np.einsum("bn,snk->bsk", self.image_weights, x)
        metric = metric_from_sums(torch.from_numpy(sums), task).numpy()  # (B, S)
        if s == 1:
            return metric[:, 0]
        if s != self.seed_weights.shape[1]:
            raise ValueError(f"{s} seeds, the draw has {self.seed_weights.shape[1]}")
        return (metric * self.seed_weights).sum(1) / self.seed_weights.sum(1)


def replicates(images: int, seeds: int, *, reps: int = REPLICATES, seed: int = 0,
               resample: tuple[str, ...] = SOURCES, groups: np.ndarray | None = None) -> Replicates:
    """``Replicates.draw``: the one resampling every comparison of a network shares."""
    return Replicates.draw(images, seeds, reps=reps, seed=seed, resample=resample, groups=groups)


def interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The two-sided percentile interval of replicate values (NaN-free), ``(low, high)``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(v, [a, 1.0 - a])
    return float(lo), float(hi)
