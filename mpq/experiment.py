"""The glue between settings, data, networks, training and checkpoints.

Every step of the pipeline (baselines, sensitivity, frontier) starts from the
same objects, built here from a ``Config`` and a network name, so the steps
cannot drift apart: the task data, a float model, the all-``start_bits``
quantized model, the fine-tune settings, and the checkpoints of the float and
uniform baselines.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Subset

from . import atomic, checkpoint, data, diagnostics, eagl, methods, paths
from .config import Config, ConfigError
from .lock import folder_lock
from .networks import build, eval_resize, get_spec
from .quantized import calibrate, candidate_layers, get_bits, quantize, set_bits
from .sensitivity import Sensitivity, device_name, inputs_identity
from .train import FitSettings, TrainingCollapsed, chance_floor, evaluate, fit, resolve_device

__all__ = ["Experiment", "setup_torch", "task_data", "world", "barrier"]


def task_data(cfg: Config, network: str) -> data.TaskData:
    """The splits for ``network``'s task at the preset's scale, cut to ``train_size``/``eval_size``.

    Embedded/tiny: the .npy data under ``data.root``. Paper: ImageNet or the
    segmentation folder named in ``data`` (a missing folder is a clear error),
    each with its own ``data.val_size.<dataset>``; ImageNet is evaluated at the
    resize of the network's weights (``mpq.networks.eval_resize``).
    """
    task, net = get_spec(network).task, cfg.net(network)
    if cfg.scale != "paper":
        td = data.load_embedded(cfg.data.root, task)
        if td.input_size != net.input_size:
            raise ConfigError(f"network.{network}.input_size: the embedded {task} data is "
                              f"{td.input_size} px; set {td.input_size}")
    elif task == "classification":
        if not cfg.data.imagenet:
            raise FileNotFoundError("data.imagenet: not set; set it in the params file to an ImageNet "
                                    "folder with train/ and val/ (ImageFolder layout)")
        td = data.load_imagenet(cfg.data.imagenet, val_size=cfg.data.val_size["imagenet"], seed=cfg.seed,
                                input_size=net.input_size, resize_size=eval_resize(net.weights, net.input_size),
                                param="data.imagenet")
    else:
        if not cfg.data.segmentation:
            raise FileNotFoundError("data.segmentation: not set; set it in the params file to a Cityscapes "
                                    "or ADE20K folder (and data.segmentation_format)")
        fmt = cfg.data.segmentation_format
        td = data.load_segmentation(cfg.data.segmentation, format=fmt, crop_size=net.input_size,
                                    val_size=cfg.data.val_size[fmt], seed=cfg.seed)
    return _limit(td, net.train_size, net.eval_size)


def _limit(td: data.TaskData, train_size: int | None, eval_size: int | None) -> data.TaskData:
    """The first ``train_size`` training and ``eval_size`` validation/test samples (smaller presets)."""
    def cut(ds, n):
        return ds if n is None else Subset(ds, range(min(n, len(ds))))
    return dataclasses.replace(td, train=cut(td.train, train_size), val=cut(td.val, eval_size),
                               test=cut(td.test, eval_size))


def setup_torch(cfg: Config) -> torch.device:
    """Seed everything and set CPU threads; return the device to use.

    Under ``torchrun`` (a process group is up) each rank uses its own GPU,
    ``cuda:LOCAL_RANK``, when the device is CUDA; on CUDA ``speed.cudnn_benchmark``
    sets ``torch.backends.cudnn.benchmark``.
    """
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    if device.type == "cuda" and world()[1] > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = cfg.speed.cudnn_benchmark
        if device.index is not None:
            torch.cuda.set_device(device)
    return device


def world() -> tuple[int, int]:
    """``(rank, world_size)`` of the running process group, ``(0, 1)`` without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    """Wait for every rank (a no-op without a process group)."""
    if world()[1] > 1:
        dist.barrier()


def _partial(path: Path) -> Path:
    """Where the resumable training checkpoint of the model saved at ``path`` lives while it trains."""
    return path.with_name(path.name + ".partial")


def _revert_sync_batchnorm(module: nn.Module) -> None:
    """Turn the ``SyncBatchNorm`` layers ``convert_sync_batchnorm`` made back into ``BatchNorm2d``, in place."""
    for name, child in module.named_children():
        if isinstance(child, nn.SyncBatchNorm):
            bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                child.track_running_stats, device=child.weight.device if child.affine else None)
            bn.load_state_dict(child.state_dict())
            bn.train(child.training)
            setattr(module, name, bn)
        else:
            _revert_sync_batchnorm(child)


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
        self._digests: dict[str, Any] = {}  # "of": the TaskData digested, then split -> digest

    # ---- data -------------------------------------------------------------------------------
    @property
    def data(self) -> data.TaskData:
        """The task's splits (loaded once)."""
        if self._data is None:
            self._data = task_data(self.cfg, self.network)
        return self._data

    def loader(self, split: str, *, train: bool | None = None, seed: int | None = None,
               sharded: bool = True):
        """A loader over ``split`` (train/val/test); shuffled iff ``train`` (default: split == train).

        Under ``torchrun`` it is this rank's shard with this rank's part of the
        global batch, ``batch_size / world size`` (``sharded=False``: the whole
        split in global batches). Worker processes, prefetch and pinned memory
        follow ``data.workers``, ``data.prefetch`` and the device.
        """
        ds = getattr(self.data, split)
        is_train = split == "train" if train is None else train
        rank, size = world() if sharded else (0, 1)
        return data.make_loader(ds, batch_size=self.rank_batch_size(size), train=is_train,
                                seed=self.cfg.seed if seed is None else seed, rank=rank, world_size=size,
                                **self.loader_options())

    def rank_batch_size(self, world_size: int) -> int:
        """Each of ``world_size`` ranks' share of the global ``batch_size`` (a one-line error if it does not divide)."""
        b = self.net.batch_size
        if b % world_size:
            raise ConfigError(f"network.{self.network}.batch_size: the global batch {b} does not split over "
                              f"{world_size} ranks; set a multiple of {world_size}")
        return b // world_size

    def loader_options(self) -> dict[str, Any]:
        """``make_loader``'s worker settings: ``data.workers`` (null: ``data.default_workers``), prefetch, pinning."""
        workers = self.cfg.data.workers
        if workers is None:
            workers = data.default_workers(int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        return {"num_workers": workers, "prefetch_factor": self.cfg.data.prefetch if workers > 0 else None,
                "pin_memory": self.device.type == "cuda"}

    def speed_options(self) -> dict[str, Any]:
        """``fit``/``evaluate``'s speed settings on this device (``speed``): precision, channels-last."""
        cuda = self.device.type == "cuda"
        return {"precision": self.cfg.speed.resolved_precision(self.device),
                "channels_last": cuda and self.cfg.speed.channels_last}

    def example_input(self) -> torch.Tensor:
        """One sample's shape, batched: what the cost model measures at."""
        x, _ = self.data.test[0]
        return x.unsqueeze(0)

    # ---- models -----------------------------------------------------------------------------
    def new_float(self) -> nn.Module:
        """The float network with its starting weights (``network.<name>.weights``; null: random init)."""
        return build(self.network, num_classes=self.data.num_classes, width=self.net.width,
                     weights=self.net.weights)

    def quantize(self, model: nn.Module, bits: int | None = None) -> nn.Module:
        """The network's quantized twin: candidates at ``bits`` (default start_bits), first/last at 8."""
        q = self.cfg.quant
        qm = quantize(model, q.start_bits if bits is None else bits, keep_8bit=self.spec.fixed_8bit,
                      skip=self.spec.float_only, per_channel=q.per_channel)
        if q.keep_bits != 8:
            set_bits(qm, {n: q.keep_bits for n in self.spec.fixed_8bit}, allow_fixed=True)
        return qm

    def meta(self, kind: str, model: nn.Module, **extra: Any) -> dict[str, Any]:
        """What a checkpoint records: enough to rebuild, to refuse a mismatch and to spot a stale one."""
        bits = get_bits(model) if kind != "float" else None
        uniform = None if bits is None else bits[candidate_layers(model)[0]]
        return {"network": self.network, "width": self.net.width, "num_classes": self.data.num_classes,
                "kind": kind, "bits": bits, "recipe": self.recipe(kind, uniform), "world_size": world()[1],
                "train_digest": self.digest("train"), "device": device_name(self.device), **extra}

    def digest(self, split: str) -> str | None:
        """``mpq.data.dataset_digest`` of the split ``split`` (computed once per experiment)."""
        if self._digests.get("of") is not self.data:  # another TaskData: digest it afresh
            self._digests = {"of": self.data}
        if split not in self._digests:
            self._digests[split] = data.dataset_digest(getattr(self.data, split))
        return self._digests[split]

    def fit_key(self, kind: str, bits: int | None = None) -> str:
        """The key a fit's training checkpoint (``mpq.resume``) must carry to be resumed: recipe and train samples."""
        return f"{self.recipe(kind, bits)}|{self.digest('train')}"

    def _made_here(self, meta: dict[str, Any], kind: str, bits: int | None = None) -> bool:
        """Whether a checkpoint's ``meta`` is of today's recipe and train samples.

        A checkpoint written before its meta recorded ``train_digest`` is judged by
        its recipe alone (which has the train split's size, not its samples).
        """
        return (meta.get("recipe") == self.recipe(kind, bits)
                and meta.get("train_digest", self.digest("train")) == self.digest("train"))

    def load(self, path: str | Path, kind: str) -> tuple[nn.Module, dict[str, Any]]:
        """Rebuild a model from a checkpoint of this network (``float`` or ``quant``)."""
        state, meta = checkpoint.load(path, expect={"network": self.network, "width": self.net.width,
                                                    "num_classes": self.data.num_classes, "kind": kind})
        model = build(self.network, num_classes=self.data.num_classes, width=self.net.width)
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
    def fit_settings(self, kind: str, epochs: float | None = None) -> FitSettings:
        """Fine-tune settings for ``float`` or ``quant`` training of this network."""
        t, n = self.cfg.train, self.net
        is_float = kind == "float"
        return FitSettings(
            epochs=(n.float_epochs if is_float else n.quant_epochs) if epochs is None else epochs,
            lr=n.float_lr if is_float else n.quant_lr,
            momentum=t.momentum, weight_decay=t.weight_decay,
            warmup_epochs=t.warmup_epochs if is_float else 0.0,
            label_smoothing=t.label_smoothing, distill=0.0 if is_float else t.distill,
            aux_weight=t.aux_weight, ignore_index=self.data.ignore_index,
            step_lr_mult={} if is_float else dict(n.quant_step_lr_mult))

    def _train(self, model: nn.Module, settings: FitSettings, *, teacher: nn.Module | None, seed: int,
               desc: str, checkpoint: Path | None = None, checkpoint_key: str = "") -> dict:
        """``fit`` on this rank's shard; wrapped in DistributedDataParallel under ``torchrun``.

        Under DDP on GPUs a segmentation network's BatchNorm layers become
        ``SyncBatchNorm`` for the fit (a few images per GPU give no usable batch
        statistics), and back to ``BatchNorm`` after it, so checkpoints and the
        later steps see the plain network. ``checkpoint``: the fit's resumable
        training checkpoint (``mpq.resume``; ``train.checkpoint_steps``), written by rank 0.
        """
        model.to(self.device)
        wrapped, synced = model, False
        if world()[1] > 1:
            if self.data.task == "segmentation" and self.device.type == "cuda":  # torch's SyncBN needs GPUs
                synced = True
                nn.SyncBatchNorm.convert_sync_batchnorm(model)
            ids = [self.device.index] if self.device.type == "cuda" else None
            wrapped = DistributedDataParallel(model, device_ids=ids)
        try:
            return fit(wrapped, self.loader("train", seed=seed), task=self.data.task, settings=settings,
                       device=self.device, teacher=teacher, progress=self.progress and world()[0] == 0,
                       desc=desc, compile=self.cfg.speed.compile, checkpoint=checkpoint,
                       checkpoint_key=checkpoint_key, checkpoint_steps=self.cfg.train.checkpoint_steps,
                       checkpoint_writer=world()[0] == 0, **self.speed_options())
        finally:
            if synced:
                _revert_sync_batchnorm(model)

    def finetune(self, qmodel: nn.Module, *, teacher: nn.Module | None, seed: int,
                 epochs: float | None = None, desc: str = "finetune", checkpoint: Path | None = None,
                 checkpoint_key: str = "") -> dict:
        """LSQ fine-tune of a quantized model (the same recipe for every method); ``checkpoint`` as in ``_train``."""
        torch.manual_seed(seed)
        qmodel.to(self.device)
        # the same first batch on every rank, so that every replica starts from the same steps
        calibrate(qmodel, (x.to(self.device) for x, _ in self.loader("train", seed=seed, sharded=False)))
        return self._train(qmodel, self.fit_settings("quant", epochs=epochs), teacher=teacher, seed=seed,
                           desc=desc,
                           checkpoint=checkpoint, checkpoint_key=checkpoint_key)

    def evaluate(self, model: nn.Module, split: str = "test", *, detail: bool = False) -> float | dict[str, Any]:
        """``mpq.train.evaluate`` of ``model`` on ``split`` (``detail``: with loss and per-sample counts)."""
        return evaluate(model, self.loader(split, train=False), task=self.data.task,
                        num_classes=self.data.num_classes, ignore_index=self.data.ignore_index,
                        device=self.device, detail=detail, **self.speed_options())

    # ---- the float and uniform baselines ----------------------------------------------------
    def baselines(self, outdir: str | Path | None = None) -> dict[str, dict[str, Any]]:
        """Train float, then uniform ``start_bits`` and ``low_bits`` LSQ fine-tunes from it.

        Each model is checkpointed as soon as it exists and has passed the
        collapse check (``_check_collapse``); a rerun reuses valid checkpoints
        (an interrupted run resumes at the first missing model) and retrains
        stale ones (another recipe of this network). A checkpoint written for
        another network, width or number of classes is refused (one line),
        never replaced. A failed training (non-finite loss, collapse) leaves
        the checkpoint already there untouched. The models' per-test-sample counts
        (``mpq.metrics.sample_stats``) go to ``baselines_samples.npz`` for the
        report's bootstrap intervals, with each test sample's source digit
        (``paths.SAMPLE_GROUPS``, ``mpq.data.sample_groups``). A fit that is killed resumes
        from its training checkpoint ``<checkpoint>.partial`` (``mpq.resume``:
        written at every epoch's end and every ``train.checkpoint_steps`` steps,
        removed when the fit ends). The results folder is locked
        for the run (``results_lock``). Returns (and writes to
        ``baselines.json``) ``{name: {"metric", "val_metric", "seconds",
        "bits"}}``: test and validation metric, training wall seconds.
        """
        out = Path(outdir) if outdir is not None else paths.network_dir(self.network)
        results: dict[str, dict[str, Any]] = {}
        with self.results_lock(out):
            float_path = out / paths.FLOAT_CKPT
            found = self._reusable(float_path, "float")
            if found:
                fmodel, seconds = found
            else:
                torch.manual_seed(self.cfg.seed)
                fmodel = self.new_float().to(self.device)
                t0 = time.perf_counter()
                self._train(fmodel, self.fit_settings("float"), teacher=None, seed=self.cfg.seed,
                            desc=f"{self.network} float", checkpoint=_partial(float_path),
                            checkpoint_key=self.fit_key("float"))
                seconds = time.perf_counter() - t0
                self._save(float_path, fmodel, self.meta("float", fmodel, seconds=seconds))
            samples = {}
            test = self.evaluate(fmodel, detail=True)
            samples["float"] = test["samples"]
            results["float"] = {"metric": test["metric"], "val_metric": self.evaluate(fmodel, "val"),
                                "seconds": seconds, "bits": None}
            for bits in (self.cfg.quant.start_bits, self.cfg.quant.low_bits):
                name = f"uniform{bits}"
                path = out / paths.uniform_ckpt(bits)
                found = self._reusable(path, "quant", bits)
                if found:
                    qmodel, seconds = found
                else:
                    qmodel = self.quantize(fmodel, bits)
                    start_val_metric = self._start_val_metric(qmodel)
                    t0 = time.perf_counter()
                    self.finetune(qmodel, teacher=fmodel, seed=self.cfg.seed, desc=f"{self.network} {name}",
                                  checkpoint=_partial(path), checkpoint_key=self.fit_key("quant", bits))
                    seconds = time.perf_counter() - t0
                test = self.evaluate(qmodel, detail=True)
                samples[name] = test["samples"]
                results[name] = {"metric": test["metric"], "val_metric": self.evaluate(qmodel, "val"),
                                 "seconds": seconds, "bits": bits}
                if not found:
                    self._check_collapse(name, path, start_val_metric, results[name]["val_metric"])
                    self._save(path, qmodel, self.meta("quant", qmodel, seconds=seconds))
            if world()[0] == 0:
                atomic.write_json(out / paths.BASELINES_JSON, results)
                atomic.write_json(out / paths.STEP_DIAGNOSTIC, self.step_diagnostic(out))
                if all(v is not None for v in samples.values()):  # one process evaluated the whole split
                    groups = {paths.SAMPLE_GROUPS: data.sample_groups(self.data.test).astype(np.int32)}
                    atomic.write_with(out / paths.BASELINES_SAMPLES, lambda f: np.savez_compressed(
                        f, **{k: v.astype(np.int32) for k, v in samples.items()}, **groups))
        return results

    def step_diagnostic(self, out: str | Path) -> dict[str, dict[str, Any]]:
        """Per uniform checkpoint under ``out``: does LSQ move its steps (``mpq.diagnostics``), and on
        the ``start_bits`` one the spread of EAGL's scores (the entropy variant)."""
        out = Path(out)
        fstate, _ = checkpoint.load(out / paths.FLOAT_CKPT)
        result = {}
        for bits in (self.cfg.quant.start_bits, self.cfg.quant.low_bits):
            name = paths.uniform_ckpt(bits)
            qmodel, meta = self.load(out / name, "quant")
            layers = candidate_layers(qmodel)
            scores = None
            if bits == self.cfg.quant.start_bits:
                scores = eagl.scores(qmodel, low_bits=self.cfg.quant.low_bits).table["score"].to_numpy()
            result[name] = diagnostics.step_diagnostic(
                diagnostics.step_ratios(fstate, qmodel.state_dict(), meta["bits"], layers), scores)
        return result

    def results_lock(self, out: str | Path) -> contextlib.AbstractContextManager:
        """The lock of the results folder ``out`` (``mpq.lock.folder_lock``), taken by rank 0 only.

        Every step that writes under ``out`` holds it while it runs, so a second
        concurrent run on the same folder is refused with one line naming the
        holder's pid; under ``torchrun`` the ranks of one run share it.
        """
        return folder_lock(out) if world()[0] == 0 else contextlib.nullcontext()

    def _start_val_metric(self, qmodel: nn.Module) -> float:
        """The validation metric of ``qmodel`` where its fine-tune starts: calibrated as ``finetune`` does it.

        Measured on a copy, before ``finetune`` seeds torch, so nothing the
        fine-tune computes changes.
        """
        start = copy.deepcopy(qmodel).to(self.device)
        calibrate(start, (x.to(self.device) for x, _ in self.loader("train", seed=self.cfg.seed, sharded=False)))
        return self.evaluate(start, "val")

    def _check_collapse(self, name: str, path: Path, start_val_metric: float, val_metric: float) -> None:
        """Refuse a fine-tune that took the validation metric from above chance level to chance level.

        Chance level is ``mpq.train.chance_floor`` on the validation split;
        ``start_val_metric`` is ``_start_val_metric`` (the calibrated model
        before any step). Such a fine-tune destroyed what it started from
        (e.g. a far too large ``quant_lr``). A model that starts at chance and
        stays there is not refused: small presets legitimately leave some
        there (the tiny preset's uniform 2-bit ResNet-101), and so is a float
        model, which starts from a random initialisation; a diverging one is
        stopped by ``fit`` (non-finite loss). Raises ``TrainingCollapsed``
        before ``path`` is written, so the checkpoint already there stays.
        """
        floor = chance_floor(self.data.task, self.data.num_classes, len(self.data.val))
        if val_metric <= floor < start_val_metric:
            raise TrainingCollapsed(
                f"{self.network} {name}: the fine-tune took the validation metric from {start_val_metric:.1f} % "
                f"to {val_metric:.1f} %, chance level (<= {floor:.1f} %): it collapsed (lower "
                f"network.{self.network}.quant_lr?); {path} was left as it was")

    def recipe(self, kind: str, bits: int | None = None) -> str:
        """A hash of everything that makes a ``float`` or uniform ``bits``-bit checkpoint what it is.

        A checkpoint whose recipe differs (other epochs, lr, width, data size, seed,
        precision, ...) or whose ``train_digest`` (in its meta) is another split's is
        stale: ``baselines`` retrains it, the later steps refuse it.
        ``batch_size`` is the global batch, so the recipe is the same on any number
        of ranks: a baseline trained by ``torchrun`` on 8 GPUs is reused by the
        notebooks' single process (the checkpoint's meta records the world size
        it was trained with, ``world_size``).
        """
        net = {k: v for k, v in dataclasses.asdict(self.net).items() if not k.startswith("quant_")}
        blob: dict[str, Any] = {"network": self.network, "net": net, "seed": self.cfg.seed,
                                "float": dataclasses.asdict(self.fit_settings("float")),
                                "train": len(self.data.train), "scale": self.cfg.scale}
        precision = self.speed_options()["precision"]
        if precision != "fp32":  # bf16 makes another model (fp32 stays out: the embedded hashes keep)
            blob.update(precision=precision)
        if kind != "float":
            blob.update(quant=dataclasses.asdict(self.cfg.quant), bits=bits,
                        finetune=dataclasses.asdict(self.fit_settings("quant")))
        return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def _reusable(self, path: Path, kind: str, bits: int | None = None) -> tuple[nn.Module, float] | None:
        """``(model, training seconds)`` of a checkpoint made with today's recipe, else ``None``.

        A checkpoint of this network made with another recipe is stale and will
        be retrained (``None``); one written for another network, width, number
        of classes or kind is refused (``CheckpointMismatch``, one line: it is
        not ours to replace); an unreadable one is an error (it says to delete it).
        """
        if not path.is_file():
            return None
        model, meta = self.load(path, kind)
        if not self._made_here(meta, kind, bits):
            return None
        return model, meta["seconds"]

    def _save(self, path: Path, model: nn.Module, meta: dict[str, Any]) -> None:
        """Rank 0 writes the checkpoint; every rank waits for it (replicas are identical under DDP)."""
        if world()[0] == 0:
            checkpoint.save(path, model, meta)
        barrier()

    # ---- sensitivity ------------------------------------------------------------------------
    def start_models(self, outdir: str | Path | None = None) -> tuple[nn.Module, nn.Module]:
        """The starting point every method reads: the all-``start_bits`` LSQ model and its float teacher."""
        out = Path(outdir) if outdir is not None else paths.network_dir(self.network)
        start = self.cfg.quant.start_bits
        models = []
        for path, kind, bits in ((out / paths.uniform_ckpt(start), "quant", start), (out / paths.FLOAT_CKPT, "float", None)):
            model, meta = self.load(path, kind)
            if not self._made_here(meta, kind, bits):
                raise checkpoint.CheckpointMismatch(f"checkpoint {path} was trained with other settings or "
                                                    f"train samples than {self.cfg.source or 'the params'}: "
                                                    "rerun `mpq baselines`")
            models.append(model)
        return models[0], models[1]

    def loss_fn(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task loss (eval-mode output): cross-entropy, ignoring void pixels."""
        return F.cross_entropy(output, target, ignore_index=self.data.ignore_index)

    def sensitivity(self, method: str, outdir: str | Path | None = None) -> Sensitivity:
        """Score every candidate layer with ``method`` from the all-``start_bits`` checkpoint.

        ``method`` is a name in the method registry (``mpq.methods``), whose
        entry says how it is computed. Writes ``sensitivity/<method>.csv`` and
        ``<method>_cost.json`` under the network's results (rank 0); methods made
        of jobs (ALPS, noft) keep one record per job under ``records/<method>/``
        so an interrupted run resumes where it stopped. A method whose settings
        say ``retest: true`` is computed twice (``retests``).
        """
        compute = methods.compute_function(method)
        out = Path(outdir) if outdir is not None else paths.network_dir(self.network)
        with self.results_lock(out):
            qmodel, fmodel = self.start_models(out)
            result = compute(self, method=method, qmodel=qmodel, teacher=fmodel, out=out, seed=self.cfg.seed)
            if result.method != method:
                raise ValueError(f"method {method!r} computed a table named {result.method!r}; its registry "
                                 "entry's compute function must return a Sensitivity named after the method")
            if self.retests(method):
                again = compute(self, method=method, qmodel=qmodel, teacher=fmodel, out=out, seed=self.cfg.seed + 1)
                result.table["retest_score"] = result.table["layer"].map(again.table.set_index("layer")["score"])
                result.meta["retest"] = {"seed": self.cfg.seed + 1, "device_seconds": again.cost.device_seconds,
                                         "spearman": float(result.table["score"].corr(
                                             result.table["retest_score"], method="spearman"))}
            result.meta.update(network=self.network, width=self.net.width, scale=self.cfg.scale,
                               inputs=inputs_identity(self, method, out))
            if world()[0] == 0:
                result.save(out / paths.SENSITIVITY)
            barrier()
        return result

    def retests(self, method: str) -> bool:
        """Whether ``method``'s settings ask for a retest (``<section>.retest``): the step computes it a
        second time from ``seed + 1`` and keeps those scores as the ``retest_score`` column (its
        cost in ``meta["retest"]``, apart from the method's own cost record)."""
        section = methods.get(method).section
        return bool(section and getattr(getattr(self.cfg, section), "retest", False))

    def workers(self, configured: int) -> int:
        """Worker processes for job-parallel steps: ``configured`` on one CPU process, else 1
        (on GPUs and under torchrun the ranks share the jobs instead)."""
        return configured if self.device.type == "cpu" and world()[1] == 1 else 1

    def threads_per_worker(self, workers: int) -> int:
        """Torch threads each of ``workers`` worker processes gets (the preset's threads shared)."""
        return max(1, (self.cfg.threads or torch.get_num_threads()) // workers)
