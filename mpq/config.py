"""Settings: ``params.yaml`` loaded into frozen dataclasses, validated on load.

One file holds a whole preset (``params.yaml`` = the embedded default;
``presets/tiny.yaml`` and ``presets/paper.yaml`` are the others). Every key is
required and every unknown key is an error, so a typo never silently falls back
to a default: ``ConfigError`` gives one line naming the key and the fix.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .networks import NETWORKS

__all__ = ["ConfigError", "Config", "NetworkConfig", "load", "from_dict", "DEFAULT_PARAMS"]

DEFAULT_PARAMS = "params.yaml"


class ConfigError(ValueError):
    """A bad settings file or value; the message names the key."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ConfigError(f"{key}: {msg}")


@dataclass(frozen=True)
class DataConfig:
    root: str                    # embedded data folder (built by `mpq data build`)
    imagenet: str | None         # paper scale: ImageNet folder with train/ and val/
    segmentation: str | None     # paper scale: Cityscapes or ADE20K folder
    segmentation_format: str     # cityscapes | ade20k
    val_size: int                # paper scale: validation images carved from train

    def validate(self, key: str) -> None:
        _check(self.segmentation_format in ("cityscapes", "ade20k"), f"{key}.segmentation_format",
               f"must be 'cityscapes' or 'ade20k', got {self.segmentation_format!r}")
        _check(self.val_size > 0, f"{key}.val_size", f"must be > 0, got {self.val_size}")


@dataclass(frozen=True)
class NetworkConfig:
    width: float                 # width multiplier (1.0 = torchvision's network)
    input_size: int              # training/eval input side in pixels
    batch_size: int
    train_size: int | None       # use only the first N training samples (None: all)
    eval_size: int | None        # use only the first N validation and test samples (None: all)
    pretrained: bool             # torchvision ImageNet weights (width 1.0 only)
    float_epochs: float          # float training (0 with pretrained weights)
    float_lr: float
    quant_epochs: float          # LSQ fine-tune of the uniform baselines and the frontier
    quant_lr: float

    def validate(self, key: str) -> None:
        _check(0 < self.width <= 4, f"{key}.width", f"must be in (0, 4], got {self.width}")
        _check(self.input_size >= 16, f"{key}.input_size", f"must be >= 16, got {self.input_size}")
        _check(self.batch_size >= 2, f"{key}.batch_size", f"must be >= 2, got {self.batch_size}")
        _check(self.train_size is None or self.train_size >= self.batch_size, f"{key}.train_size",
               f"must be null or >= batch_size, got {self.train_size}")
        _check(self.eval_size is None or self.eval_size >= 1, f"{key}.eval_size",
               f"must be null or >= 1, got {self.eval_size}")
        _check(not self.pretrained or self.width == 1.0, f"{key}.pretrained",
               "pretrained weights need width 1.0")
        _check(self.float_epochs > 0 or self.pretrained, f"{key}.float_epochs",
               "must be > 0 unless pretrained is true")
        for k in ("float_epochs", "quant_epochs"):
            _check(getattr(self, k) >= 0, f"{key}.{k}", f"must be >= 0, got {getattr(self, k)}")
        for k in ("float_lr", "quant_lr"):
            _check(getattr(self, k) > 0, f"{key}.{k}", f"must be > 0, got {getattr(self, k)}")


@dataclass(frozen=True)
class TrainConfig:
    momentum: float
    weight_decay: float
    warmup_epochs: float         # linear warm-up before the cosine schedule
    distill: float               # weight of distillation from the float model (0 = off)
    aux_weight: float            # segmentation: weight of the auxiliary head's loss
    label_smoothing: float

    def validate(self, key: str) -> None:
        _check(0 <= self.momentum < 1, f"{key}.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be >= 0")
        _check(0 <= self.distill <= 1, f"{key}.distill", f"must be in [0, 1], got {self.distill}")
        _check(self.aux_weight >= 0, f"{key}.aux_weight", "must be >= 0")
        _check(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", "must be in [0, 1)")


@dataclass(frozen=True)
class QuantConfig:
    start_bits: int              # every candidate layer's precision at the starting point
    low_bits: int                # the precision a selected layer is reduced to
    keep_bits: int               # first conv and classifier
    per_channel: bool

    def validate(self, key: str) -> None:
        for k in ("start_bits", "low_bits", "keep_bits"):
            v = getattr(self, k)
            _check(2 <= v <= 16, f"{key}.{k}", f"must be in 2..16, got {v}")
        _check(self.low_bits < self.start_bits, f"{key}.low_bits", "must be below start_bits")


@dataclass(frozen=True)
class EaglConfig:
    variant: str                 # entropy | entropy_x_params | entropy_drop

    def validate(self, key: str) -> None:
        choices = ("entropy", "entropy_x_params", "entropy_drop")
        _check(self.variant in choices, f"{key}.variant", f"must be one of {list(choices)}, got {self.variant!r}")


@dataclass(frozen=True)
class AlpsConfig:
    epochs: float                # fine-tune per layer job (1 = one epoch of the training split)
    workers: int                 # parallel CPU worker processes (GPUs: one torchrun rank each)

    def validate(self, key: str) -> None:
        _check(self.epochs > 0, f"{key}.epochs", f"must be > 0, got {self.epochs} (epochs 0 is the noft baseline)")
        _check(self.workers >= 1, f"{key}.workers", f"must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class HessianConfig:
    samples: int                 # Hutchinson probe vectors
    batches: int                 # training batches the loss is averaged over

    def validate(self, key: str) -> None:
        _check(self.samples >= 2, f"{key}.samples", f"must be >= 2, got {self.samples}")
        _check(self.batches >= 1, f"{key}.batches", f"must be >= 1, got {self.batches}")


@dataclass(frozen=True)
class AllocateConfig:
    cost: str                    # throughput | bops | size
    points: int                  # budgets between all-start_bits (1.0x) and all-low_bits
    solver: str                  # milp | greedy

    def validate(self, key: str) -> None:
        _check(self.cost in ("throughput", "bops", "size"), f"{key}.cost",
               f"must be throughput, bops or size, got {self.cost!r}")
        _check(self.points >= 2, f"{key}.points", f"must be >= 2, got {self.points}")
        _check(self.solver in ("milp", "greedy"), f"{key}.solver", f"must be milp or greedy, got {self.solver!r}")


@dataclass(frozen=True)
class FrontierConfig:
    methods: tuple[str, ...]     # selection methods compared on the frontier
    epochs: float                # LSQ fine-tune of every configuration (same for every method)
    seeds: tuple[int, ...]       # fine-tune seeds (error bars); random selection uses the same seed
    workers: int

    def validate(self, key: str) -> None:
        choices = ("eagl", "alps", "hessian", "noft", "random")
        bad = [m for m in self.methods if m not in choices]
        _check(not bad, f"{key}.methods", f"unknown method {bad[:1]}; choose from {list(choices)}")
        _check(self.epochs >= 0, f"{key}.epochs", "must be >= 0")
        _check(len(self.seeds) >= 1, f"{key}.seeds", "needs at least one seed")
        _check(self.workers >= 1, f"{key}.workers", f"must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class Config:
    scale: str                   # embedded | paper (a label for reports)
    seed: int
    device: str                  # auto | cpu | cuda
    threads: int                 # torch CPU threads per process (0: torch's default)
    networks: tuple[str, ...]    # the networks the pipeline runs
    data: DataConfig
    train: TrainConfig
    quant: QuantConfig
    network: dict[str, NetworkConfig]
    eagl: EaglConfig
    alps: AlpsConfig
    hessian: HessianConfig
    allocate: AllocateConfig
    frontier: FrontierConfig
    source: str = field(default="", compare=False)

    def validate(self, key: str = "") -> None:
        _check(self.scale in ("tiny", "embedded", "paper"), "scale",
               f"must be tiny, embedded or paper, got {self.scale!r}")
        _check(self.device in ("auto", "cpu", "cuda"), "device",
               f"must be auto, cpu or cuda, got {self.device!r}")
        _check(self.threads >= 0, "threads", "must be >= 0")
        for n in self.networks:
            _check(n in NETWORKS, "networks", f"unknown network {n!r}; choose from {sorted(NETWORKS)}")
            _check(n in self.network, f"network.{n}", "missing: every listed network needs settings")
        for n, nc in self.network.items():
            _check(n in NETWORKS, f"network.{n}", f"unknown network; choose from {sorted(NETWORKS)}")
            nc.validate(f"network.{n}")
        for name in ("data", "train", "quant", "eagl", "alps", "hessian", "allocate", "frontier"):
            getattr(self, name).validate(name)

    def net(self, name: str) -> NetworkConfig:
        """Settings of network ``name``; a clear error for one this preset does not configure."""
        if name not in self.network:
            raise ConfigError(f"network: {name!r} is not configured in {self.source or 'the params'}; "
                              f"choose one of {sorted(self.network)}")
        return self.network[name]

    def fingerprint(self, *parts: str) -> str:
        """A short hash of some top-level sections, to tie results to the settings they used."""
        d = dataclasses.asdict(self)
        blob = json.dumps({p: d[p] for p in parts}, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (ints accepted for floats)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _coerce(inner[0], value, key)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if origin is tuple:
        _check(isinstance(value, list | tuple), key, f"must be a list, got {value!r}")
        return tuple(_coerce(typing.get_args(tp)[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        _check(isinstance(value, dict), key, f"must be a mapping, got {value!r}")
        vt = typing.get_args(tp)[1]
        return {k: _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        _check(isinstance(value, int | float) and not isinstance(value, bool), key,
               f"must be a number, got {value!r}")
        return float(value)
    if tp is int:
        _check(isinstance(value, int) and not isinstance(value, bool), key,
               f"must be an integer, got {value!r}")
        return value
    if tp is bool:
        _check(isinstance(value, bool), key, f"must be true or false, got {value!r}")
        return value
    if tp is str:
        _check(isinstance(value, str), key, f"must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} at {key}")


def from_dict(cls: type, data: Any, key: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping: every field required, no unknown key."""
    where = key or "params"
    _check(isinstance(data, dict), where, f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.name != "source"}
    for k in data:
        _check(k in fields, f"{key}.{k}" if key else k,
               f"unknown key; expected one of {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in data:
            _check(f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING,
                   sub, "missing key")
            continue
        values[name] = _coerce(hints[name], data[name], sub)
    return cls(**values)


def load(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Load and validate a preset file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: settings file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    _check(isinstance(raw, dict), str(p), "must hold a mapping of settings")
    cfg = dataclasses.replace(from_dict(Config, raw), source=str(p))
    cfg.validate()
    return cfg
