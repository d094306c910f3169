"""The selection-method registry: one entry per method, read by everything else.

An entry says how a method is computed (a function ``module:name``, imported
only when the method runs), how it is drawn (label, colour, marker), its role
in the study and which settings it reads. The CLI, the settings loader, the
notebooks, the report, the figures, ``dvc.yaml`` and the tests all take their
method lists from here, so adding a method takes its module, one ``register``
call and its section in ``params.yaml`` (see ``docs/extending.md``).

Roles:
- ``proposed``: the paper's methods (EAGL, ALPS); claims C1-C3 are about them.
- ``baseline``: leading selection methods they are compared with (Hessian/HAWQ,
  no-fine-tune drop/AIMET).
- ``control``: selections that carry no information about sensitivity
  (random); compared too, so a method is read against "no knowledge".

A method's ``compute`` function is called as ``fn(exp, method=..., qmodel=...,
teacher=..., out=..., seed=...)`` with the ``mpq.experiment.Experiment`` of one
network, the method's name (one function may serve several entries: ALPS and
the no-fine-tune drop), the all-``start_bits`` quantized model, its float
teacher, the network's results folder and a seed, and returns a
``mpq.sensitivity.Sensitivity`` named ``method``. Nothing downstream looks
at a method's name: it reads the common columns of that table and this entry.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .errors import check
from .registry import Registry

__all__ = ["Method", "METHODS", "ROLES", "STEPS", "register", "unregister", "get", "names", "label",
           "color", "marker", "compute_function", "module_of", "EaglSettings", "AlpsSettings",
           "HessianSettings"]

ROLES = ("proposed", "baseline", "control")
STEPS = ("sensitivity", "alps")   # the pipeline steps (notebooks 02 and 03) that compute methods


@dataclass(frozen=True)
class Method:
    """One selection method."""

    name: str                       # identifier: file names, params, CLI (``--method``)
    label: str                      # display name in figures and tables
    color: str                      # one colour in every figure
    marker: str                     # matplotlib marker in every figure
    role: str                       # proposed | baseline | control
    compute: str | Callable[..., Any]   # "module:function" (imported when run) or a function
    step: str = "sensitivity"       # the pipeline step that computes it (notebook 02 or 03)
    section: str | None = None      # its own section of params.yaml, if any
    settings: type | None = None    # the dataclass that section is parsed into (has ``validate(key)``)
    params: tuple[str, ...] = ()    # every params key it reads (DVC tracks them); default: (section,)
    records: bool = False           # made of resumable jobs: one record per job under records/<name>/
    per_seed: bool = False          # the frontier draws a new selection per fine-tune seed
    profile: bool = False           # drawn in the per-layer profiles (F4) and against the reference (F5)
    reference: bool = False         # the measured reference other scores are read against (ALPS)
    score_label: str = ""           # axis label of its score
    variants: tuple[str, ...] = ()  # score variants for the ablation (T6/F7), computed by ``variant_scores``
    variant_scores: str | Callable[..., Any] | None = None  # fn(table, variant) -> pandas Series by layer
    description: str = field(default="", compare=False)

    def validate(self) -> None:
        where = f"method {self.name!r}"
        check(bool(self.name) and self.name.replace("_", "").isalnum() and self.name.islower(), where,
              "the name must be lower-case letters, digits and underscores")
        check(self.role in ROLES, where, f"role must be one of {list(ROLES)}, got {self.role!r}")
        check(self.step in STEPS, where, f"step must be one of {list(STEPS)}, got {self.step!r}")
        check((self.section is None) == (self.settings is None), where,
              "a params section needs a settings dataclass, and a settings dataclass a section")
        check(not self.variants or self.variant_scores is not None, where,
              "variants need a variant_scores function")

    @property
    def param_keys(self) -> tuple[str, ...]:
        """The params keys this method's computation reads (what DVC tracks for it)."""
        return self.params or ((self.section,) if self.section else ())


def _resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


def module_of(ref: str | Callable[..., Any]) -> str:
    """The module a ``compute``/``variant_scores`` reference lives in (``mpq.eagl``)."""
    return ref.__module__ if callable(ref) else ref.partition(":")[0]


# --------------------------------------------------------------------------- settings sections


@dataclass(frozen=True)
class EaglSettings:
    variant: str                 # entropy | entropy_x_params | entropy_drop

    def validate(self, key: str) -> None:
        choices = ("entropy", "entropy_x_params", "entropy_drop")
        check(self.variant in choices, f"{key}.variant", f"must be one of {list(choices)}, got {self.variant!r}")


@dataclass(frozen=True)
class AlpsSettings:
    epochs: float                # fine-tune per layer job (1 = one epoch of the training split)
    workers: int                 # parallel CPU worker processes (GPUs: one torchrun rank each)
    retest: bool                 # run the jobs again from seed + 1: test-retest reliability (T9)

    def validate(self, key: str) -> None:
        check(self.epochs > 0, f"{key}.epochs", f"must be > 0, got {self.epochs} (epochs 0 is the noft baseline)")
        check(self.workers >= 1, f"{key}.workers", f"must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class HessianSettings:
    samples: int                 # Hutchinson probe vectors
    batches: int                 # training batches the loss is averaged over
    chunk: int | str | None      # images per second-order pass: null (whole batch) | N | auto (halve on OOM)
    retest: bool                 # a second set of probe vectors from seed + 1: test-retest reliability (T9)

    def validate(self, key: str) -> None:
        check(self.samples >= 2, f"{key}.samples", f"must be >= 2, got {self.samples}")
        check(self.batches >= 1, f"{key}.batches", f"must be >= 1, got {self.batches}")
        check(self.chunk is None or self.chunk == "auto" or (isinstance(self.chunk, int) and self.chunk >= 1),
              f"{key}.chunk", f"must be null (whole batch), a positive integer or auto, got {self.chunk!r}")


# --------------------------------------------------------------------------- the registry

METHODS: Registry[Method] = Registry("method")
unregister = METHODS.remove
get = METHODS.lookup   # the entry of a name; a one-line error naming the registered methods otherwise


def register(method: Method, *, replace: bool = False) -> Method:
    """Add ``method`` to the registry (display order = registration order)."""
    method.validate()
    return METHODS.add(method, replace=replace)


def names(*, step: str | None = None, role: str | tuple[str, ...] | None = None) -> list[str]:
    """Registered method names in display order, optionally those of one ``step`` or ``role``(s)."""
    roles = (role,) if isinstance(role, str) else role
    return [m.name for m in METHODS.values()
            if (step is None or m.step == step) and (roles is None or m.role in roles)]


def label(name: str) -> str:
    """Display name (``eagl`` -> ``EAGL``); names outside the registry pass through."""
    return METHODS[name].label if name in METHODS else name


def color(name: str) -> str:
    return METHODS[name].color if name in METHODS else "#333333"


def marker(name: str) -> str:
    return METHODS[name].marker if name in METHODS else "o"


def compute_function(name: str) -> Callable[..., Any]:
    """The function that computes method ``name`` (imported now)."""
    return _resolve(get(name).compute)


def variant_function(name: str) -> Callable[..., Any]:
    """``fn(table, variant) -> Series`` of method ``name``'s ablation variants."""
    m = get(name)
    if m.variant_scores is None:
        raise ValueError(f"method {name!r} has no score variants")
    return _resolve(m.variant_scores)


# Colours: seaborn's colour-blind palette, one per method, the same in every figure.
register(Method(
    "eagl", "EAGL", "#0173b2", "o", "proposed", "mpq.eagl:run", section="eagl", settings=EaglSettings,
    profile=True, score_label="EAGL score (entropy of 4-bit codes, bits)",
    variants=("entropy", "entropy_x_params", "entropy_drop"), variant_scores="mpq.eagl:variant_scores",
    description="entropy of each layer's trained low-precision weight codes; no data, no gradients"))
register(Method(
    "alps", "ALPS", "#de8f05", "s", "proposed", "mpq.alps:run", step="alps", section="alps",
    settings=AlpsSettings, records=True, profile=True, reference=True, score_label="ALPS score (KL increase from the float model)",
    description="lower one layer, fine-tune, increase of the KL from the float teacher on the validation split"))
register(Method(
    "hessian", "Hessian (HAWQ)", "#029e73", "^", "baseline", "mpq.hessian:run", section="hessian",
    settings=HessianSettings, params=("hessian", "seed"), profile=True,
    score_label="Hessian score (trace x extra 2-bit error)",
    description="Hutchinson trace of each layer's Hessian block x the extra weight error of the low precision"))
register(Method(
    "noft", "No-FT drop (AIMET)", "#cc78bc", "D", "baseline", "mpq.alps:run", params=("alps.workers",),
    records=True,
    score_label="No-FT score (KL increase from the float model)",
    description="lower one layer, no fine-tune, increase of the KL from the float teacher on the validation split"))
register(Method(
    "random", "Random", "#949494", "v", "control", "mpq.controls:run_random", params=("seed",),
    per_seed=True, score_label="random score",
    description="random scores from a seed: a random mix under the same budget and cost model"))
register(Method(
    "largest", "Largest first", "#ca9161", "P", "control", "mpq.controls:run_largest",
    score_label="constant score",
    description="the same score for every layer: the knapsack lowers the fewest layers, the largest savings first"))
register(Method(
    "smallest", "Smallest first", "#56b4e9", "X", "control", "mpq.controls:run_smallest",
    score_label="layer parameters",
    description="score = the layer's parameter count: the knapsack lowers small layers first"))
