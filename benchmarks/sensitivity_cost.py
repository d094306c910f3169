"""Benchmark: compute time of each sensitivity method, and the ratios EAGL : Hessian : ALPS.

Two parts, printed as tables:

1. Embedded scale, measured: the cost records the pipeline wrote
   (``results/<network>/sensitivity/<method>_cost.json``) for every network that
   has them.
2. Full-width ResNet-50 / ResNet-101 on this CPU at the paper's input size
   (224 px), with the paper preset's settings (``presets/paper.yaml``): EAGL
   measured whole; the Hessian's per-image Hessian-vector product and ALPS's
   per-image training step measured on a few images and extrapolated to
   ``hessian.samples x hessian.batches x batch`` and to ``(layers + 1) x
   alps.epochs x 1.28M ImageNet images`` (+ the validation split per job).

Run from the repository root:  python benchmarks/sensitivity_cost.py [--images 4]
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import mpq
from mpq import config, eagl, hessian, networks, paths
from mpq.quantized import float_view

IMAGENET_TRAIN = 1_281_167


def measured(results: Path) -> None:
    print("== embedded scale, measured by the pipeline (seconds) ==")
    print(f"{'network':10} {'eagl':>9} {'hessian':>9} {'noft':>9} {'alps':>9} {'hess/eagl':>10} {'alps/eagl':>10}")
    for net in networks.NETWORKS:
        folder = paths.network_dir(net, results) / paths.SENSITIVITY
        sec = {}
        for m in ("eagl", "hessian", "noft", "alps"):
            f = folder / f"{m}_cost.json"
            if f.is_file():
                c = json.loads(f.read_text())["cost"]
                sec[m] = c["seconds"] * c.get("workers", 1)  # device-seconds
        if len(sec) < 4:
            continue
        print(f"{net:10} {sec['eagl']:9.4f} {sec['hessian']:9.2f} {sec['noft']:9.1f} {sec['alps']:9.1f} "
              f"{sec['hessian'] / sec['eagl']:10.0f} {sec['alps'] / sec['eagl']:10.0f}")


def _time(fn, repeat: int = 2) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def full_width(images: int, paper: config.Config) -> None:
    print(f"\n== full width, 224 px, this CPU ({torch.get_num_threads()} threads), paper-preset settings ==")
    print(f"{'network':10} {'eagl s':>8} {'hessian s':>11} {'alps s':>12} {'hess/eagl':>10} {'alps/eagl':>11} "
          f"{'alps/hess':>10}")
    for net in ("resnet50", "resnet101"):
        spec, nc = networks.get_spec(net), paper.net(net)
        q = mpq.quantize(networks.build(net, num_classes=1000), 4, keep_8bit=spec.fixed_8bit)
        x = torch.randn(images, 3, 224, 224)
        y = torch.randint(0, 1000, (images,))
        mpq.calibrate(q, [x])
        t_eagl = _time(lambda: eagl.scores(q), repeat=3)
        # one Hutchinson sample on `images` images
        t_hvp = _time(lambda: hessian.layer_traces(
            float_view(q), lambda o, t: F.cross_entropy(o, t), [(x, y)], samples=1), repeat=1) / images
        opt = torch.optim.SGD(q.parameters(), lr=1e-3)

        def step():
            opt.zero_grad()
            F.cross_entropy(q(x), y).backward()
            opt.step()
        t_train = _time(step, repeat=1) / images
        with torch.no_grad():
            t_eval = _time(lambda: q.eval()(x), repeat=1) / images
        q.train()
        t_hess = t_hvp * paper.hessian.samples * paper.hessian.batches * nc.batch_size
        jobs = spec.candidate_count + 1
        t_alps = jobs * (paper.alps.epochs * IMAGENET_TRAIN * t_train + paper.data.val_size * t_eval)
        print(f"{net:10} {t_eagl:8.3f} {t_hess:11.0f} {t_alps:12.3g} {t_hess / t_eagl:10.0f} "
              f"{t_alps / t_eagl:11.3g} {t_alps / t_hess:10.0f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", default=str(paths.RESULTS))
    p.add_argument("--images", type=int, default=4, help="images per timed full-width step")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-full-width", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    measured(Path(args.results))
    if not args.skip_full_width:
        full_width(args.images, config.load("presets/paper.yaml"))


if __name__ == "__main__":
    main()
