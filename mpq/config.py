"""Settings: ``params.yaml`` plus its scale's overlay, loaded into frozen dataclasses.

``params.yaml`` holds every setting of the embedded default. Its ``scale`` key
names a preset: ``presets/<scale>.yaml`` (beside the params file) is a small
overlay whose values replace the matching ones (mappings merge key by key,
everything else is replaced), so ``tiny`` and ``paper`` state only what differs
and switching scale is one key: ``dvc exp run -S scale=tiny``. Every key is
required and every unknown key is an error, so a typo never silently falls back
to a default: ``ConfigError`` gives one line naming the key and the fix.

Each selection method with settings has its own top-level section, declared in
its registry entry (``mpq.methods``): ``cfg.eagl``, ``cfg.alps``, ... are those
sections, parsed into the entry's dataclass.
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

from . import methods
from .cost import COSTS
from .errors import ConfigError
from .errors import check as _check
from .networks import NETWORKS, TORCHVISION_WEIGHTS, check_weights

__all__ = ["ConfigError", "Config", "NetworkConfig", "ReportConfig", "load", "from_dict", "merge",
           "DEFAULT_PARAMS", "PRESETS", "SCALES", "VAL_DATASETS", "TORCHVISION_WEIGHTS", "PRECISIONS"]

DEFAULT_PARAMS = "params.yaml"
PRESETS = "presets"              # overlay folder, beside the params file
SCALES = ("tiny", "embedded", "paper")
VAL_DATASETS = ("imagenet", "cityscapes", "ade20k")  # the keys of data.val_size
PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class DataConfig:
    root: str                    # embedded data folder (built by `mpq data build`)
    imagenet: str | None         # paper scale: ImageNet folder with train/ and val/
    segmentation: str | None     # paper scale: Cityscapes or ADE20K folder
    segmentation_format: str     # cityscapes | ade20k
    val_size: dict[str, int]     # paper scale, per dataset: validation images carved from its training set
    workers: int | None          # loader worker processes per rank (null: auto, mpq.data.default_workers)
    prefetch: int                # batches each loader worker prepares ahead

    def validate(self, key: str) -> None:
        _check(self.segmentation_format in VAL_DATASETS[1:], f"{key}.segmentation_format",
               f"must be 'cityscapes' or 'ade20k', got {self.segmentation_format!r}")
        for name in VAL_DATASETS:
            _check(name in self.val_size, f"{key}.val_size.{name}", "missing: every paper-scale dataset "
                   f"needs its validation size ({', '.join(VAL_DATASETS)})")
        for name, n in self.val_size.items():
            _check(name in VAL_DATASETS, f"{key}.val_size.{name}", f"unknown dataset; expected {list(VAL_DATASETS)}")
            _check(n > 0, f"{key}.val_size.{name}", f"must be > 0, got {n}")
        _check(self.workers is None or self.workers >= 0, f"{key}.workers",
               f"must be null (auto) or >= 0, got {self.workers}")
        _check(self.prefetch >= 1, f"{key}.prefetch", f"must be >= 1, got {self.prefetch}")


@dataclass(frozen=True)
class NetworkConfig:
    width: float                 # width multiplier (1.0 = torchvision's network)
    input_size: int              # training/eval input side in pixels
    batch_size: int              # the global batch: split over the ranks under torchrun
    train_size: int | None       # use only the first N training samples (None: all)
    eval_size: int | None        # use only the first N validation and test samples (None: all)
    weights: str | None          # null (train from scratch), IMAGENET1K_V1, IMAGENET1K_V2 or a local file
    float_epochs: float          # float training (0 with pretrained weights)
    float_lr: float
    quant_epochs: float          # LSQ fine-tune of the uniform baselines and the frontier
    quant_lr: float
    # quantized fine-tunes: bits -> a b-bit layer's LSQ weight step learns at quant_lr x this (absent: x1)
    quant_step_lr_mult: dict[int, float] = field(default_factory=dict)

    def validate(self, key: str) -> None:
        _check(0 < self.width <= 4, f"{key}.width", f"must be in (0, 4], got {self.width}")
        _check(self.input_size >= 16, f"{key}.input_size", f"must be >= 16, got {self.input_size}")
        _check(self.batch_size >= 2, f"{key}.batch_size", f"must be >= 2, got {self.batch_size}")
        _check(self.train_size is None or self.train_size >= self.batch_size, f"{key}.train_size",
               f"must be null or >= batch_size, got {self.train_size}")
        _check(self.eval_size is None or self.eval_size >= 1, f"{key}.eval_size",
               f"must be null or >= 1, got {self.eval_size}")
        try:
            check_weights(self.weights, f"{key}.weights")
        except ValueError as e:
            raise ConfigError(str(e)) from None
        _check(self.weights is None or self.width == 1.0, f"{key}.weights",
               "pretrained weights need width 1.0")
        _check(self.float_epochs > 0 or self.weights is not None, f"{key}.float_epochs",
               "must be > 0 unless weights are set")
        for k in ("float_epochs", "quant_epochs"):
            _check(getattr(self, k) >= 0, f"{key}.{k}", f"must be >= 0, got {getattr(self, k)}")
        for k in ("float_lr", "quant_lr"):
            _check(getattr(self, k) > 0, f"{key}.{k}", f"must be > 0, got {getattr(self, k)}")
        for bits, mult in self.quant_step_lr_mult.items():
            _check(isinstance(bits, int) and 1 < bits <= 16, f"{key}.quant_step_lr_mult",
                   f"keys are bit widths (2..16), got {bits!r}")
            _check(isinstance(mult, int | float) and mult > 0, f"{key}.quant_step_lr_mult.{bits}",
                   f"must be > 0 (1: the weights' lr), got {mult}")


@dataclass(frozen=True)
class TrainConfig:
    momentum: float
    weight_decay: float
    warmup_epochs: float         # linear warm-up before the cosine schedule
    distill: float               # weight of distillation from the float model (0 = off)
    aux_weight: float            # segmentation: weight of the auxiliary head's loss
    label_smoothing: float
    checkpoint_steps: int        # mid-training checkpoint every this many steps (0: at epoch ends only)

    def validate(self, key: str) -> None:
        _check(self.checkpoint_steps >= 0, f"{key}.checkpoint_steps",
               f"must be >= 0 (0: checkpoint at epoch ends only), got {self.checkpoint_steps}")
        _check(0 <= self.momentum < 1, f"{key}.momentum", f"must be in [0, 1), got {self.momentum}")
        _check(self.weight_decay >= 0, f"{key}.weight_decay", "must be >= 0")
        _check(self.warmup_epochs >= 0, f"{key}.warmup_epochs", "must be >= 0")
        _check(0 <= self.distill <= 1, f"{key}.distill", f"must be in [0, 1], got {self.distill}")
        _check(self.aux_weight >= 0, f"{key}.aux_weight", "must be >= 0")
        _check(0 <= self.label_smoothing < 1, f"{key}.label_smoothing", "must be in [0, 1)")


@dataclass(frozen=True)
class SpeedConfig:
    """How a GPU runs the same recipe; on a CPU only ``precision: bf16`` changes anything."""

    precision: str               # auto (bf16 autocast on CUDA, fp32 on CPU) | fp32 | bf16
    channels_last: bool          # CUDA: models and images in channels-last memory format
    cudnn_benchmark: bool        # CUDA: let cuDNN pick the fastest kernels per shape
    compile: bool                # torch.compile the trained model (see docs/paper_scale.md)

    def validate(self, key: str) -> None:
        _check(self.precision in PRECISIONS, f"{key}.precision",
               f"must be one of {list(PRECISIONS)}, got {self.precision!r}")

    def resolved_precision(self, device: Any) -> str:
        """``fp32`` or ``bf16`` on ``device``: ``auto`` is bf16 on CUDA, fp32 elsewhere."""
        if self.precision != "auto":
            return self.precision
        return "bf16" if str(device).startswith("cuda") else "fp32"


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
class AllocateConfig:
    cost: str                    # throughput | bops | size
    points: int                  # budgets between all-start_bits (1.0x) and all-low_bits
    solver: str                  # milp | greedy

    def validate(self, key: str) -> None:
        _check(self.cost in COSTS, f"{key}.cost", f"must be one of {list(COSTS)}, got {self.cost!r}")
        _check(self.points >= 2, f"{key}.points", f"must be >= 2, got {self.points}")
        _check(self.solver in ("milp", "greedy"), f"{key}.solver", f"must be milp or greedy, got {self.solver!r}")


@dataclass(frozen=True)
class FrontierConfig:
    methods: tuple[str, ...]     # selection methods compared on the frontier
    epochs: float                # LSQ fine-tune of every configuration (same for every method)
    seeds: tuple[int, ...]       # fine-tune seeds (error bars); random selection uses the same seed
    workers: int

    def validate(self, key: str) -> None:
        bad = [m for m in self.methods if m not in methods.METHODS]
        _check(not bad, f"{key}.methods", f"unknown method {bad[:1]}; choose from {methods.names()}")
        _check(len(set(self.methods)) == len(self.methods), f"{key}.methods", "a method is listed twice")
        _check(self.epochs >= 0, f"{key}.epochs", "must be >= 0")
        _check(len(self.seeds) >= 1, f"{key}.seeds", "needs at least one seed")
        _check(self.workers >= 1, f"{key}.workers", f"must be >= 1, got {self.workers}")


@dataclass(frozen=True)
class ReportConfig:
    tolerance: float             # C1/C3 without per-sample results: "recovers float" = within this many points
    compute_factor: float        # C4 "orders of magnitude less compute": at least this ratio

    def validate(self, key: str) -> None:
        _check(self.tolerance >= 0, f"{key}.tolerance", f"must be >= 0, got {self.tolerance}")
        _check(self.compute_factor > 1, f"{key}.compute_factor", f"must be > 1, got {self.compute_factor}")


@dataclass(frozen=True)
class Config:
    scale: str                   # tiny | embedded | paper: names the overlay presets/<scale>.yaml
    seed: int
    device: str                  # auto | cpu | cuda
    threads: int                 # torch CPU threads per process (0: torch's default)
    networks: tuple[str, ...]    # the networks the pipeline runs
    data: DataConfig
    speed: SpeedConfig
    train: TrainConfig
    quant: QuantConfig
    network: dict[str, NetworkConfig]
    allocate: AllocateConfig
    frontier: FrontierConfig
    report: ReportConfig
    methods: dict[str, Any] = field(default_factory=dict, metadata={"from_file": False})  # method sections
    source: str = field(default="", compare=False, metadata={"from_file": False})

    def __getattr__(self, name: str) -> Any:
        """A method's section as an attribute: ``cfg.alps.epochs``."""
        sections = self.__dict__.get("methods") or {}
        if name in sections:
            return sections[name]
        raise AttributeError(f"Config has no setting {name!r}")

    def validate(self, key: str = "") -> None:
        _check(self.scale in SCALES, "scale", f"must be one of {list(SCALES)}, got {self.scale!r}")
        _check(len(self.networks) >= 1, "networks", "must list at least one network")
        _check(self.device in ("auto", "cpu", "cuda"), "device",
               f"must be auto, cpu or cuda, got {self.device!r}")
        _check(self.threads >= 0, "threads", "must be >= 0")
        for n in self.networks:
            _check(n in NETWORKS, "networks", f"unknown network {n!r}; choose from {sorted(NETWORKS)}")
            _check(n in self.network, f"network.{n}", "missing: every listed network needs settings")
        for n, nc in self.network.items():
            _check(n in NETWORKS, f"network.{n}", f"unknown network; choose from {sorted(NETWORKS)}")
            nc.validate(f"network.{n}")
        for name in ("data", "speed", "train", "quant", "allocate", "frontier", "report"):
            getattr(self, name).validate(name)
        for name, section in self.methods.items():
            section.validate(name)

    def net(self, name: str) -> NetworkConfig:
        """Settings of network ``name``; a clear error for one this preset does not configure."""
        if name not in self.network:
            raise ConfigError(f"network: {name!r} is not configured in {self.source or 'the params'}; "
                              f"choose one of {sorted(self.network)}")
        return self.network[name]

    def fingerprint(self, *parts: str) -> str:
        """A short hash of some top-level sections, to tie results to the settings they used."""
        d = dataclasses.asdict(self)
        d.update(d.pop("methods"))
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
        for tp_i in inner[:-1]:  # the first member type that accepts the value
            try:
                return _coerce(tp_i, value, key)
            except ConfigError:
                pass
        return _coerce(inner[-1], value, key)
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
    """Build dataclass ``cls`` from a mapping: every field required, no unknown key.

    Fields with ``metadata={"from_file": False}`` are not read from the mapping.
    """
    where = key or "params"
    _check(isinstance(data, dict), where, f"must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init and f.metadata.get("from_file", True)}
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


def config_from_dict(raw: Any, source: str = "") -> Config:
    """A validated ``Config`` from a complete settings mapping (overlay already applied).

    The sections of the registered methods (``mpq.methods``) are parsed into
    their entries' dataclasses; every other key is a field of ``Config``.
    """
    _check(isinstance(raw, dict), source or "params", "must hold a mapping of settings")
    raw = dict(raw)
    sections: dict[str, Any] = {}
    for m in methods.METHODS.values():
        if m.section is None or m.section in sections:
            continue
        _check(m.section in raw, m.section, f"missing key: the settings of method {m.name!r}")
        sections[m.section] = from_dict(m.settings, raw.pop(m.section), m.section)
    cfg = dataclasses.replace(from_dict(Config, raw), methods=sections, source=source)
    cfg.validate()
    return cfg


def merge(base: Any, overlay: Any) -> Any:
    """``overlay`` on ``base``: mappings merge key by key (recursively); any other value replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        out = dict(base)
        for k, v in overlay.items():
            out[k] = merge(base[k], v) if k in base else v
        return out
    return overlay


def _read_yaml(p: Path) -> Any:
    try:
        return yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None


def overlay_path(params: str | Path, scale: str) -> Path:
    """Where the overlay of ``scale`` lives for a params file: ``<its folder>/presets/<scale>.yaml``."""
    return Path(params).parent / PRESETS / f"{scale}.yaml"


def resolve(path: str | Path = DEFAULT_PARAMS) -> dict[str, Any]:
    """The settings mapping of a params file with its scale's overlay applied (not validated)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: settings file not found; run from the repository root or pass --params")
    raw = _read_yaml(p)
    _check(isinstance(raw, dict), str(p), "must hold a mapping of settings")
    scale = raw.get("scale")
    _check(scale in SCALES, f"{p}: scale", f"must be one of {list(SCALES)}, got {scale!r}")
    over = overlay_path(p, scale)
    if not over.is_file():
        # the embedded default is params.yaml itself; its overlay file may be absent
        _check(scale == "embedded", f"{p}: scale", f"the overlay {over} of scale {scale!r} is missing: "
               f"keep the {PRESETS}/ folder beside the params file")
        return raw
    layer = _read_yaml(over)
    layer = {} if layer is None else layer
    _check(isinstance(layer, dict), str(over), "must hold a mapping of settings")
    _check("scale" not in layer, f"{over}: scale", "an overlay must not set scale (its file name is the scale)")
    return merge(raw, layer)  # a key the base lacks stays, and validation names it as unknown


def load(path: str | Path = DEFAULT_PARAMS) -> Config:
    """Load a params file, apply its scale's overlay, validate."""
    return config_from_dict(resolve(path), source=str(path))
