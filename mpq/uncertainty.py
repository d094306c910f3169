"""Bootstrap intervals of one network's frontier and baselines, for the report.

``NetworkUncertainty.load(folder, net)`` reads the per-test-sample counts the
pipeline kept (``frontier_samples.npz``, ``baselines_samples.npz``) and draws
the network's one shared resampling (``mpq.stats``): test images (the copies
of one test digit together, ``paths.SAMPLE_GROUPS``) and fine-tune seeds with
replacement. From it:

- ``config(method, target)``: replicate values of a configuration's
  seed-mean metric (``target`` of the uniform ends included);
- ``float_values()``: the float model's replicates (one model: images only);
- ``auc(method)``: replicates of the method's frontier AUC, computed exactly
  as ``mpq.frontier.summarize`` does (trapezoid over relative throughput,
  uniform ends included, divided by the span) but on every replicate;
- ``interval(values)`` / ``diff(a, b)``: percentile intervals of values and
  of paired differences;
- ``resampling("images")`` / ``resampling("seeds")``: the same numbers with
  only one source of noise drawn (the report's noise budget, T10).

Every configuration must have been run with the same seeds on the same test
images (the frontier does); a network whose sample files are missing (results
written before they existed, or a multi-rank baselines run) has no
uncertainty: ``load`` returns ``None`` and the report says "n/a".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from . import paths, stats
from .frontier import UNIFORM

__all__ = ["NetworkUncertainty", "ci_text"]


def _job(method: str, target: float, seed: int) -> str:
    """A frontier job's name (``mpq.frontier.Point.name``), the key of its samples."""
    return f"{method}-t{target:.4f}-s{seed}"


@dataclass
class NetworkUncertainty:
    task: str
    frontier: pd.DataFrame
    samples: dict[str, np.ndarray]
    baselines: dict[str, np.ndarray]
    seeds: list[int]
    draw: stats.Replicates
    groups: np.ndarray | None = None
    _cache: dict = field(default_factory=dict)

    @classmethod
    def load(cls, folder: str | Path, frontier: pd.DataFrame, task: str, *,
             reps: int = stats.REPLICATES) -> NetworkUncertainty | None:
        folder = Path(folder)
        fs, bs = folder / paths.FRONTIER_SAMPLES, folder / paths.BASELINES_SAMPLES
        if not (fs.exists() and bs.exists()):
            return None
        with np.load(fs) as z:
            samples = {k: z[k] for k in z.files}
        with np.load(bs) as z:
            baselines = {k: z[k] for k in z.files}
        groups = baselines.pop(paths.SAMPLE_GROUPS, None)  # absent: results written before groups existed
        seeds = sorted(int(s) for s in frontier["seed"].unique())
        names = [_job(r.method, float(r.target), int(r.seed)) for r in frontier.itertuples()]
        if any(n not in samples for n in names):
            return None  # samples of another frontier run
        images = {a.shape[0] for a in samples.values()} | {a.shape[0] for a in baselines.values()}
        if len(images) != 1:
            raise ValueError(f"{folder}: the sample files cover different numbers of test images {sorted(images)}; "
                             "rerun the baselines and frontier steps")
        n = images.pop()
        if groups is not None and len(groups) != n:
            raise ValueError(f"{bs}: {len(groups)} test groups for {n} test images; rerun the baselines step")
        return cls(task, frontier, samples, baselines, seeds,
                   stats.replicates(n, len(seeds), reps=reps, groups=groups), groups)

    def config(self, method: str, target: float) -> np.ndarray:
        """Replicates of the seed-mean metric of ``method`` at ``target`` (the uniform ends: ``UNIFORM``)."""
        key = (method, round(float(target), 4))
        if key not in self._cache:
            stack = np.stack([self.samples[_job(method, float(target), s)] for s in self.seeds])
            self._cache[key] = self.draw.values(stack, self.task)
        return self._cache[key]

    def float_values(self) -> np.ndarray:
        if "float" not in self._cache:
            self._cache["float"] = self.draw.values(self.baselines["float"][None], self.task)
        return self._cache["float"]

    def targets(self, method: str) -> list[tuple[float, float]]:
        """``(target, mean relative throughput)`` of the method's curve, uniform ends included, by throughput."""
        part = self.frontier[self.frontier.method.isin([method, UNIFORM])]
        g = part.groupby(["method", "target"], as_index=False)["rel_throughput"].mean()
        return sorted(((float(r.target), float(r.rel_throughput), r.method) for r in g.itertuples()),
                      key=lambda t: t[1])

    def auc(self, method: str) -> np.ndarray:
        """Replicates of the method's frontier AUC (``mpq.frontier.summarize``'s definition)."""
        key = ("auc", method)
        if key not in self._cache:
            pts = self.targets(method)
            x = np.array([p[1] for p in pts])
            y = np.stack([self.config(m, t) for t, _, m in pts], 1)  # (B, points)
            self._cache[key] = (np.trapezoid(y, x, axis=1) / (x[-1] - x[0]) if x[-1] > x[0] else y.mean(1))
        return self._cache[key]

    def resampling(self, *sources: str) -> NetworkUncertainty:
        """The same results under a draw of ``sources`` only (``mpq.stats.SOURCES``; the others
        held at their observed values): where the spread of a number comes from."""
        images, seeds = self.draw.image_weights.shape[1], self.draw.seed_weights.shape[1]
        return NetworkUncertainty(self.task, self.frontier, self.samples, self.baselines, self.seeds,
                                  stats.replicates(images, seeds, reps=self.draw.image_weights.shape[0],
                                                   resample=sources, groups=self.groups), self.groups)

    @property
    def images(self) -> int:
        """Test images per configuration."""
        return int(self.draw.image_weights.shape[1])

    @property
    def sources(self) -> int:
        """Independent test samples the bootstrap draws: source digits (or canvases, or images)."""
        return self.images if self.groups is None else int(self.groups.max()) + 1

    @staticmethod
    def interval(values: np.ndarray) -> tuple[float, float]:
        return stats.interval(values)

    @staticmethod
    def diff(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
        """The interval of the paired difference ``a - b`` (same replicates)."""
        return stats.interval(np.asarray(a) - np.asarray(b))


def ci_text(lo: float, hi: float) -> str:
    """``[lo, hi]`` with two decimals, or ``n/a``."""
    return "n/a" if not (np.isfinite(lo) and np.isfinite(hi)) else f"[{lo:.2f}, {hi:.2f}]"
