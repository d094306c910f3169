"""Benchmark: LSQ-quantized vs float training step (ResNet-50, 32 px, batch 64).

Prints the median time of a forward+backward+SGD step for the float network
and its all-4-bit LSQ twin, at width x0.25 and x1.0, and their ratio. The
issue's target is a ratio <= 1.2 at full width. Run from the repository root:

    python benchmarks/quantized_step.py [--threads 2] [--steps 8]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import mpq
from mpq import networks


def step_time(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Median seconds of one SGD step, after two warm-up steps."""
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--widths", type=float, nargs="+", default=[0.25, 1.0])
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dev = torch.device(args.device)
    spec = networks.get_spec("resnet50")
    x = torch.randn(args.batch, 3, 32, 32, device=dev)
    y = torch.randint(0, 10, (args.batch,), device=dev)
    print(f"ResNet-50, 32 px, batch {args.batch}, {args.threads} threads, {dev}")
    print(f"{'width':>6} {'float ms':>9} {'LSQ 4-bit ms':>13} {'ratio':>6}")
    for w in args.widths:
        model = networks.build("resnet50", num_classes=10, width=w).to(dev)
        qmodel = mpq.quantize(model, 4, keep_8bit=spec.fixed_8bit).to(dev)
        mpq.calibrate(qmodel, [x])
        tf = step_time(model, x, y, args.steps)
        tq = step_time(qmodel, x, y, args.steps)
        print(f"{w:>6} {tf * 1e3:>9.1f} {tq * 1e3:>13.1f} {tq / tf:>6.2f}")


if __name__ == "__main__":
    main()
