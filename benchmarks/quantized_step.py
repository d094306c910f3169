"""Benchmark: LSQ-quantized vs float training step (ResNet-50).

Prints the median time and throughput of a forward+backward+SGD step for the
float network and its all-4-bit LSQ twin (first conv and classifier at 8 bits),
per width, and their ratio LSQ / float step time. The step is ``mpq.train.fit``'s:
forward and loss under ``--precision`` (bf16: autocast, logits cast to fp32 for
the loss), model and images in ``--channels-last`` format, the model called
through ``torch.compile`` with ``--compile`` (the first, compiling step is timed
apart). The issue's target is a ratio <= 1.3 for ResNet-50 at 224 px on a GPU.
Run from the repository root:

    python benchmarks/quantized_step.py [--threads 2] [--steps 8]    # CPU: 32 px, batch 64, widths 0.25 and 1.0
    python benchmarks/quantized_step.py --device cuda --precision bf16 --channels-last [--compile]
                                       # GPU: 224 px, batch 128, 1000 classes, width 1.0

The defaults depend on the device (``auto``: CUDA when present); every one can
be given.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mpq
from mpq import networks
from mpq.train import PRECISIONS, autocast, resolve_device, to_channels_last

# per device type: size, batch, classes, widths, steps
DEFAULTS = {"cpu": (32, 64, 10, [0.25, 1.0], 8), "cuda": (224, 128, 1000, [1.0], 20)}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, *, precision: str = "fp32",
              compile: bool = False, warmup: int = 2) -> tuple[float, float]:
    """``(median seconds of one SGD step after warm-up, seconds of the first step)``."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    forward = torch.compile(model) if compile else model
    amp = autocast(x.device, precision)
    times = []
    for i in range(steps + warmup):
        _sync(x.device)
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        with amp:
            loss = loss_fn(forward(x).float(), y)
        loss.backward()
        opt.step()
        _sync(x.device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[warmup:]), times[0]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (cuda when present), cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=2, help="CPU threads")
    p.add_argument("--steps", type=int, help="timed steps (default: 8 on CPU, 20 on CUDA)")
    p.add_argument("--batch", type=int, help="images per step (default: 64 on CPU, 128 on CUDA)")
    p.add_argument("--size", type=int, help="image side in px (default: 32 on CPU, 224 on CUDA)")
    p.add_argument("--classes", type=int, help="classifier outputs (default: 10 on CPU, 1000 on CUDA)")
    p.add_argument("--widths", type=float, nargs="+", help="width multipliers (default: 0.25 1.0 on CPU, 1.0 on CUDA)")
    p.add_argument("--precision", choices=PRECISIONS, default="fp32")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--compile", action="store_true")
    args = p.parse_args()
    dev = resolve_device(args.device)
    size, batch, classes, widths, steps = DEFAULTS.get(dev.type, DEFAULTS["cpu"])
    size, batch, classes = args.size or size, args.batch or batch, args.classes or classes
    widths, steps = args.widths or widths, args.steps or steps
    torch.set_num_threads(args.threads)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    spec = networks.get_spec("resnet50")
    x = torch.randn(batch, 3, size, size, device=dev)
    y = torch.randint(0, classes, (batch,), device=dev)
    options = [args.precision] + ["channels-last"] * args.channels_last + ["compile"] * args.compile
    where = f"{args.threads} threads, cpu" if dev.type == "cpu" else torch.cuda.get_device_name(dev)
    print(f"ResNet-50, {size} px, batch {batch}, {classes} classes, {', '.join(options)}, {where}")
    head = f"{'width':>6} {'float ms':>9} {'img/s':>7} {'LSQ 4-bit ms':>13} {'img/s':>7} {'ratio':>6}"
    print(head + (f" {'1st step s (float, LSQ)':>24}" if args.compile else ""))
    for w in widths:
        model = networks.build("resnet50", num_classes=classes, width=w).to(dev)
        qmodel = mpq.quantize(model, 4, keep_8bit=spec.fixed_8bit).to(dev)
        mpq.calibrate(qmodel, [x])
        xs = x
        if args.channels_last:
            model.to(memory_format=torch.channels_last)
            qmodel.to(memory_format=torch.channels_last)
            xs = to_channels_last(x)
        kw = dict(precision=args.precision, compile=args.compile, warmup=3 if args.compile else 2)
        tf, ff = step_time(model, xs, y, steps, **kw)
        tq, fq = step_time(qmodel, xs, y, steps, **kw)
        row = f"{w:>6} {tf * 1e3:>9.1f} {batch / tf:>7.0f} {tq * 1e3:>13.1f} {batch / tq:>7.0f} {tq / tf:>6.2f}"
        print(row + (f" {ff:>11.1f} {fq:>12.1f}" if args.compile else ""))


if __name__ == "__main__":
    main()
