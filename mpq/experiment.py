"""The glue between settings, data, networks, training and checkpoints.

Every step of the pipeline (baselines, sensitivity, frontier) starts from the
same objects, built here from a ``Config`` and a network name, so the steps
cannot drift apart: the task data, a float model, the all-``start_bits``
quantized model, the fine-tune settings, and the checkpoints of the float and
uniform baselines.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import alps, baselines, checkpoint, data, eagl, hessian, paths
from .config import Config, ConfigError
from .networks import build, get_spec
from .quantized import calibrate, candidate_layers, get_bits, quantize, set_bits
from .sensitivity import Sensitivity
from .train import FitSettings, evaluate, fit, resolve_device

__all__ = ["Experiment", "setup_torch", "task_data", "SENSITIVITY_METHODS"]

SENSITIVITY_METHODS = ("eagl", "alps", "hessian", "noft", "random")


def task_data(cfg: Config, network: str) -> data.TaskData:
    """The splits for ``network``'s task at the preset's scale.

    Embedded/tiny: the .npy data under ``data.root``. Paper: ImageNet or the
    segmentation folder named in ``data`` (a missing folder is a clear error).
    """
    task, net = get_spec(network).task, cfg.net(network)
    if cfg.scale != "paper":
        td = data.load_embedded(cfg.data.root, task, train_size=net.train_size)
        if td.input_size != net.input_size:
            raise ConfigError(f"network.{network}.input_size: the embedded {task} data is "
                              f"{td.input_size} px; set {td.input_size}")
        return td
    if task == "classification":
        if not cfg.data.imagenet:
            raise FileNotFoundError("data.imagenet: not set; set it in the params file to an ImageNet "
                                    "folder with train/ and val/ (ImageFolder layout)")
        return data.load_imagenet(cfg.data.imagenet, val_size=cfg.data.val_size, seed=cfg.seed,
                                  input_size=net.input_size)
    if not cfg.data.segmentation:
        raise FileNotFoundError("data.segmentation: not set; set it in the params file to a Cityscapes "
                                "or ADE20K folder (and data.segmentation_format)")
    return data.load_segmentation(cfg.data.segmentation, format=cfg.data.segmentation_format,
                                  crop_size=net.input_size, val_size=cfg.data.val_size, seed=cfg.seed)


def setup_torch(cfg: Config, seed: int | None = None) -> torch.device:
    """Seed everything and set CPU threads; return the device to use."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed if seed is None else seed)
    return resolve_device(cfg.device)


@dataclass
class Experiment:
    """One network under one preset: data, models, settings and result paths."""

    cfg: Config
    network: str
    progress: bool = True

    def __post_init__(self) -> None:
        self.spec = get_spec(self.network)
        self.net = self.cfg.net(self.network)
        self.device = setup_torch(self.cfg)
        self._data: data.TaskData | None = None

    # ---- data -------------------------------------------------------------------------------
    @property
    def data(self) -> data.TaskData:
        """The task's splits (loaded once)."""
        if self._data is None:
            self._data = task_data(self.cfg, self.network)
        return self._data

    def loader(self, split: str, *, train: bool | None = None, seed: int | None = None,
               rank: int = 0, world_size: int = 1):
        """A loader over ``split`` (train/val/test); shuffled iff ``train`` (default: split == train)."""
        ds = getattr(self.data, split)
        is_train = split == "train" if train is None else train
        return data.make_loader(ds, batch_size=self.net.batch_size, train=is_train,
                                seed=self.cfg.seed if seed is None else seed,
                                rank=rank, world_size=world_size)

    def example_input(self) -> torch.Tensor:
        """One sample's shape, batched: what the cost model measures at."""
        x, _ = self.data.test[0]
        return x.unsqueeze(0)

    # ---- models -----------------------------------------------------------------------------
    def new_float(self) -> nn.Module:
        return build(self.network, num_classes=self.data.num_classes, width=self.net.width,
                     pretrained=self.net.pretrained)

    def quantize(self, model: nn.Module, bits: int | None = None) -> nn.Module:
        """The network's quantized twin: candidates at ``bits`` (default start_bits), first/last at 8."""
        q = self.cfg.quant
        qm = quantize(model, q.start_bits if bits is None else bits, keep_8bit=self.spec.fixed_8bit,
                      skip=self.spec.float_only, per_channel=q.per_channel)
        if q.keep_bits != 8:
            set_bits(qm, {n: q.keep_bits for n in self.spec.fixed_8bit}, allow_fixed=True)
        return qm

    def meta(self, kind: str, model: nn.Module, **extra: Any) -> dict[str, Any]:
        """What a checkpoint records: enough to rebuild and to refuse a mismatch."""
        bits = get_bits(model) if kind != "float" else None
        return {"network": self.network, "width": self.net.width, "num_classes": self.data.num_classes,
                "kind": kind, "bits": bits, **extra}

    def load(self, path: str | Path, kind: str) -> tuple[nn.Module, dict[str, Any]]:
        """Rebuild a model from a checkpoint of this network (``float`` or ``quant``)."""
        state, meta = checkpoint.load(path, expect={"network": self.network, "width": self.net.width,
                                                    "num_classes": self.data.num_classes, "kind": kind})
        model = self.new_float() if not self.net.pretrained else build(
            self.network, num_classes=self.data.num_classes, width=self.net.width)
        if kind != "float":
            model = self.quantize(model)
            set_bits(model, meta["bits"], allow_fixed=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise checkpoint.CheckpointMismatch(
                f"checkpoint {path} does not fit {self.network} (width {self.net.width}): "
                f"{str(e).splitlines()[0]}; delete it and rerun") from None
        return model.to(self.device), meta

    # ---- training ---------------------------------------------------------------------------
    def fit_settings(self, kind: str, epochs: float | None = None, lr: float | None = None) -> FitSettings:
        """Fine-tune settings for ``float`` or ``quant`` training of this network."""
        t, n = self.cfg.train, self.net
        is_float = kind == "float"
        return FitSettings(
            epochs=(n.float_epochs if is_float else n.quant_epochs) if epochs is None else epochs,
            lr=(n.float_lr if is_float else n.quant_lr) if lr is None else lr,
            momentum=t.momentum, weight_decay=t.weight_decay,
            warmup_epochs=t.warmup_epochs if is_float else 0.0,
            label_smoothing=t.label_smoothing, distill=0.0 if is_float else t.distill,
            aux_weight=t.aux_weight, ignore_index=self.data.ignore_index)

    def finetune(self, qmodel: nn.Module, *, teacher: nn.Module | None, seed: int,
                 epochs: float | None = None, desc: str = "finetune", rank: int = 0,
                 world_size: int = 1) -> dict:
        """LSQ fine-tune of a quantized model (the same recipe for every method)."""
        torch.manual_seed(seed)
        qmodel.to(self.device)
        calibrate(qmodel, (x.to(self.device) for x, _ in self.loader("train", seed=seed)))
        return fit(qmodel, self.loader("train", seed=seed, rank=rank, world_size=world_size),
                   task=self.data.task, settings=self.fit_settings("quant", epochs=epochs),
                   device=self.device, teacher=teacher, progress=self.progress, desc=desc)

    def evaluate(self, model: nn.Module, split: str = "test") -> float:
        return evaluate(model, self.loader(split, train=False), task=self.data.task,
                        num_classes=self.data.num_classes, ignore_index=self.data.ignore_index,
                        device=self.device)

    # ---- the float and uniform baselines ----------------------------------------------------
    def baselines(self, outdir: str | Path | None = None) -> dict[str, dict[str, Any]]:
        """Train float, then uniform ``start_bits`` and ``low_bits`` LSQ fine-tunes from it.

        Each model is checkpointed as soon as it exists; a rerun reuses valid
        checkpoints (an interrupted run resumes at the first missing model).
        Returns (and writes to ``baselines.json``) ``{name: {"metric", "val_metric",
        "seconds", "bits"}}``: test and validation metric, training wall seconds.
        """
        out = Path(outdir) if outdir is not None else paths.network_dir(self.network)
        results: dict[str, dict[str, Any]] = {}
        float_path = out / paths.FLOAT_CKPT
        if float_path.is_file():
            fmodel, meta = self.load(float_path, "float")
            seconds = meta["seconds"]
        else:
            torch.manual_seed(self.cfg.seed)
            fmodel = self.new_float().to(self.device)
            t0 = time.perf_counter()
            fit(fmodel, self.loader("train"), task=self.data.task, settings=self.fit_settings("float"),
                device=self.device, progress=self.progress, desc=f"{self.network} float")
            seconds = time.perf_counter() - t0
            checkpoint.save(float_path, fmodel, self.meta("float", fmodel, seconds=seconds))
        results["float"] = {"metric": self.evaluate(fmodel), "val_metric": self.evaluate(fmodel, "val"),
                            "seconds": seconds, "bits": None}
        for bits in (self.cfg.quant.start_bits, self.cfg.quant.low_bits):
            name = f"uniform{bits}"
            path = out / paths.uniform_ckpt(bits)
            if path.is_file():
                qmodel, meta = self.load(path, "quant")
                seconds = meta["seconds"]
            else:
                qmodel = self.quantize(fmodel, bits)
                t0 = time.perf_counter()
                self.finetune(qmodel, teacher=fmodel, seed=self.cfg.seed, desc=f"{self.network} {name}")
                seconds = time.perf_counter() - t0
                checkpoint.save(path, qmodel, self.meta("quant", qmodel, seconds=seconds))
            results[name] = {"metric": self.evaluate(qmodel), "val_metric": self.evaluate(qmodel, "val"),
                             "seconds": seconds, "bits": bits}
        checkpoint.atomic_write_json(out / paths.BASELINES_JSON, results)
        return results

    # ---- sensitivity ------------------------------------------------------------------------
    def start_models(self, outdir: str | Path | None = None) -> tuple[nn.Module, nn.Module]:
        """The starting point every method reads: the all-``start_bits`` LSQ model and its float teacher."""
        out = Path(outdir) if outdir is not None else paths.network_dir(self.network)
        qmodel, _ = self.load(out / paths.uniform_ckpt(self.cfg.quant.start_bits), "quant")
        fmodel, _ = self.load(out / paths.FLOAT_CKPT, "float")
        return qmodel, fmodel

    def loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task loss (eval-mode output): cross-entropy, ignoring void pixels."""
        return F.cross_entropy(output, target, ignore_index=self.data.ignore_index)

    def sensitivity(self, method: str, outdir: str | Path | None = None) -> Sensitivity:
        """Score every candidate layer with ``method`` from the all-``start_bits`` checkpoint.

        Writes ``sensitivity/<method>.csv`` and ``<method>_cost.json`` under the
        network's results; ALPS and noft keep one record per layer job under
        ``records/<method>/`` so an interrupted run resumes where it stopped.
        """
        if method not in SENSITIVITY_METHODS:
            raise ValueError(f"unknown method {method!r}: choose one of {list(SENSITIVITY_METHODS)}")
        out = Path(outdir) if outdir is not None else paths.network_dir(self.network)
        qmodel, fmodel = self.start_models(out)
        low, cfg = self.cfg.quant.low_bits, self.cfg
        if method == "eagl":
            result = eagl.scores(qmodel, variant=cfg.eagl.variant, low_bits=low)
        elif method == "random":
            result = baselines.random_scores(candidate_layers(qmodel), seed=cfg.seed,
                                             bits_from=cfg.quant.start_bits, bits_to=low)
        elif method == "hessian":
            batches = [b for _, b in zip(range(cfg.hessian.batches), self.loader("train", train=False))]
            result = hessian.scores(qmodel, batches, loss_fn=self.loss_fn, samples=cfg.hessian.samples,
                                    seed=cfg.seed, low_bits=low, device=self.device)
        else:  # alps, and noft = ALPS without fine-tuning
            epochs = cfg.alps.epochs if method == "alps" else 0.0
            workers = cfg.alps.workers if self.device.type == "cpu" else 1
            result = alps.scores(
                qmodel, self.data.train, self.data.val, task=self.data.task,
                num_classes=self.data.num_classes, settings=self.fit_settings("quant", epochs=epochs),
                batch_size=self.net.batch_size, low_bits=low, teacher=fmodel, seed=cfg.seed,
                ignore_index=self.data.ignore_index, workers=workers,
                threads=max(1, (cfg.threads or torch.get_num_threads()) // workers),
                record_dir=out / paths.RECORDS / method, device=self.device, progress=self.progress,
                method=method)
        result.meta.update(network=self.network, width=self.net.width, scale=cfg.scale)
        result.save(out / paths.SENSITIVITY)
        return result
