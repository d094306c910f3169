"""Benchmark: ImageNet loader throughput vs the training step it must feed (ResNet-50).

Prints the images/s of ``mpq.data.make_loader`` over ImageNet-style JPEGs with
the training transforms (decode, RandomResizedCrop, flip, normalize) and the
evaluation transforms (decode, resize, centre crop, normalize) at each worker
count, then the images/s of one SGD step of a float torchvision ResNet-50 at
the same size on the device (bf16 autocast + channels_last on CUDA, float32
on CPU; the step's batch is the loader's on CUDA, 4 on CPU to keep the
default run short). The loader keeps the device fed when its training img/s is at
least the step's. Without ``--folder`` it times a synthetic ImageFolder of
500x375 JPEGs (ImageNet's typical size) written to a temporary folder. Loader
timings exclude the first pass (worker start-up, file cache). Run from the
repository root:

    python benchmarks/loader_speed.py [--folder ~/imagenet] [--images 64] [--size 224]
        [--workers 0 2] [--batch-size 16] [--steps 2] [--device auto] [--threads N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from mpq import data


def synthetic_folder(root: Path, images: int, classes: int = 4, seed: int = 0) -> Path:
    """``images`` smooth 500x375 (or 375x500) JPEGs in ``classes`` class folders under ``root``."""
    rng = np.random.default_rng(seed)
    for i in range(images):
        w, h = (500, 375) if i % 4 else (375, 500)
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        noise = rng.integers(-12, 13, (h, w, 3))
        img = np.asarray(Image.fromarray(small).resize((w, h), Image.BICUBIC), dtype=np.int16) + noise
        path = root / f"c{i % classes}" / f"img{i:06d}.JPEG"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img.clip(0, 255).astype(np.uint8)).save(path, quality=90)
    return root


def sample_files(folder: Path, images: int) -> list[tuple[str, int]]:
    """``images`` (path, label) pairs spread over an ImageFolder (``folder/train`` when it has one)."""
    from torchvision.datasets import ImageFolder

    root = folder / "train" if (folder / "train").is_dir() else folder
    samples = ImageFolder(str(root)).samples
    return samples[::max(1, len(samples) // images)][:images]


def loader_rate(dataset, *, batch_size: int, train: bool, workers: int, device: torch.device,
                passes: int) -> float:
    """Images/s of the loader (and the copy to ``device``), over ``passes`` passes after a warm-up pass."""
    loader = data.make_loader(dataset, batch_size=batch_size, train=train, num_workers=workers,
                              pin_memory=device.type == "cuda", drop_last=False)
    rates = []
    for p in range(passes + 1):
        t0, n = time.perf_counter(), 0
        for x, y in loader:
            x = x.to(device, non_blocking=True)
            n += len(y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if p:
            rates.append(n / (time.perf_counter() - t0))
    del loader  # stops its persistent workers
    return statistics.median(rates)


def step_rate(size: int, batch_size: int, steps: int, device: torch.device) -> float:
    """Images/s of a float ResNet-50 SGD step (median of ``steps``, after one warm-up step)."""
    from torchvision.models import resnet50

    cuda = device.type == "cuda"
    model = resnet50(weights=None).to(device)
    x = torch.randn(batch_size, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch_size,), device=device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        model, x = model.to(memory_format=torch.channels_last), x.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        if cuda:
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folder", type=Path, help="an ImageFolder (or ImageNet root with train/); default: synthetic")
    p.add_argument("--images", type=int, default=64, help="images per loader pass (default 64)")
    p.add_argument("--size", type=int, default=224, help="input size (default 224)")
    p.add_argument("--resize-size", type=int, default=None, help="eval resize (default round(size*256/224))")
    p.add_argument("--workers", type=int, nargs="+", default=None,
                   help="loader worker counts (default: 0 and mpq.data.default_workers())")
    p.add_argument("--batch-size", type=int, default=16, help="loader batch (default 16)")
    p.add_argument("--step-batch", type=int, default=None,
                   help="training-step batch (default: --batch-size on CUDA, 4 on CPU to keep the run short)")
    p.add_argument("--passes", type=int, default=2, help="timed loader passes after a warm-up pass (default 2)")
    p.add_argument("--steps", type=int, default=2, help="timed training steps after a warm-up step (default 2)")
    p.add_argument("--device", default="auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads of this process: the 0-worker loader and a CPU step (default: torch's)")
    args = p.parse_args()
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    step_batch = args.step_batch or (args.batch_size if device.type == "cuda" else 4)
    workers = args.workers if args.workers is not None else sorted({0, data.default_workers()})
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if args.folder is None:
            folder, source = synthetic_folder(Path(tmp), args.images), f"{args.images} synthetic 500x375 JPEGs"
        else:
            folder, source = args.folder.expanduser(), str(args.folder)
        samples = sample_files(folder, args.images)
        train_tf, eval_tf = data.imagenet_transforms(args.size, args.resize_size)
        splits = {"train": data.ImageFiles(samples, train_tf), "eval": data.ImageFiles(samples, eval_tf)}
        print(f"Loader vs ResNet-50 training step: {len(samples)} images from {source}, {args.size} px, "
              f"batch {args.batch_size}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads, {device}")
        print(f"{'what':<24} {'workers':>7} {'img/s':>9}")
        for name, dataset in splits.items():
            for w in workers:
                rate = loader_rate(dataset, batch_size=args.batch_size, train=name == "train", workers=w,
                                   device=device, passes=args.passes)
                print(f"{'loader, ' + name + ' transforms':<24} {w:>7} {rate:>9.1f}")
    precision = "bf16 autocast, channels_last" if device.type == "cuda" else "float32"
    rate = step_rate(args.size, step_batch, args.steps, device)
    print(f"{'step, ResNet-50 SGD':<24} {'':>7} {rate:>9.1f}   ({precision}, batch {step_batch}, {device})")
    print("The loader keeps the step fed when its training img/s (at the workers used) is >= the step's.")


if __name__ == "__main__":
    main()
