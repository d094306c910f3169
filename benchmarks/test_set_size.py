"""Benchmark: how much a larger test set of digit variants narrows the paired intervals.

The embedded classification test split has 1,000 real digits, and there are no
more real digits to draw. A larger test set from the same digits is K variants
of each one (a seeded random transform per variant); the variants of one digit
are correlated, so the bootstrap has to draw digits (clusters), not images, and
K variants are worth less than K times the digits. This measures how much less.

On the committed checkpoints of one classification network (float, uniform
4-bit) and two mixes fine-tuned here from the committed 4-bit model (the EAGL
and ALPS configurations at the lowest committed throughput target, seed 0,
the frontier's recipe; ``--mixes``), it prints, per variant family and K:

- the test top-1 of each model on the variants;
- per model pair, the standard error of the paired difference in top-1 when the
  digits are drawn (the variants of a digit averaged first), and the
  *effective size multiplier*: (SE on the 1,000 original digits / SE on the
  variants)^2, i.e. how many times more independent digits the variants are worth;
- the seconds to evaluate 1,000 test images with the 4-bit model.

Families: ``drawn`` (the test split's own construction: K distinct offsets per
digit drawn from the 25 within the train augmentation's +-2 px, with the split's
seed, so K = 5 is the committed test split itself), ``grid`` (the digit at every
integer offset within +-2 px, 25 variants, the original first), ``shift``
(random integer translations within +-2 px, with repeats), ``affine`` (rotation
+-15 deg, scale 0.9-1.1, translation +-2 px, bilinear). Run from the repository
root after ``dvc repro`` (or with the committed results):

    python benchmarks/test_set_size.py [--network resnet50] [--variants 10] [--families drawn grid shift affine]
                                       [--results results] [--mixes eagl alps] [--digits N]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset
from torchvision.transforms.v2 import functional as TF

import mpq
from mpq import bitconfig, config, embedded
from mpq.experiment import Experiment
from mpq.quantized import set_bits
from mpq.train import evaluate


# ``grid``: every integer offset within the train augmentation's +-2 px: the original, the 4 axis
# offsets of 2 px, the 4 diagonal ones (those 9 are {-2, 0, 2}^2), then the other 16
GRID = [(0, 0), (-2, 0), (2, 0), (0, -2), (0, 2), (-2, -2), (-2, 2), (2, -2), (2, 2)]
GRID += [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if (dy, dx) not in GRID]
SUBSETS = {"drawn": (1, 2, 5, 10, 25), "grid": (1, 5, 9, 25), "shift": (1, 2, 5, 10), "affine": (1, 2, 5, 10)}
FULL = {"drawn": 25, "grid": 25}  # the other families take --variants


def variants(images: torch.Tensor, k: int, family: str, seed: int = 0) -> torch.Tensor:
    """``(N, k, H, W)`` uint8: ``k`` transforms of each ``(H, W)`` image (``seed``; ``grid``: the first k
    offsets; ``drawn``: the test split's own draw and seed)."""
    g = torch.Generator().manual_seed(seed)
    n = len(images)
    if family in ("grid", "drawn"):  # copy-major from mpq.embedded, made digit-major
        if family == "grid":
            offsets = np.repeat(np.array(GRID[:k])[None], n, axis=0)
        else:  # the test split's seed: the first 5 copies are the split's
            offsets = embedded.draw_offsets(n, k, embedded.EMBEDDED_TRAIN_SHIFT["classification"],
                                            [embedded.EMBEDDED_SEED, embedded.EVAL_SEED_OFFSET["test"]])
        copies, _, _ = embedded.offset_copies(images, torch.zeros(n), offsets)
        return copies.reshape((k, n) + images.shape[1:]).transpose(0, 1)
    out = torch.empty((n, k) + images.shape[1:], dtype=torch.uint8)
    for j in range(k):
        dy, dx = (torch.randint(-2, 3, (2, n), generator=g)).tolist()
        if family == "affine":
            angle = ((torch.rand(n, generator=g) * 2 - 1) * 15).tolist()
            scale = (0.9 + 0.2 * torch.rand(n, generator=g)).tolist()
        for i in range(n):
            img = images[i]
            if family == "shift":
                out[i, j] = embedded._translate(img, dy[i], dx[i], 0)
            else:
                out[i, j] = TF.affine(img[None], angle=angle[i], translate=[dx[i], dy[i]], scale=scale[i],
                                      shear=[0.0, 0.0], interpolation=TF.InterpolationMode.BILINEAR)[0]
    return out


def correct(exp: Experiment, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Per image 1 if ``model`` classifies it right (images uint8 ``(M, H, W)``)."""
    x = torch.stack([embedded._normalize_gray(im) for im in images])
    loader = torch.utils.data.DataLoader(TensorDataset(x, labels), batch_size=500)
    d = evaluate(model, loader, task="classification", num_classes=10, device=exp.device, detail=True)
    return d["samples"][:, 0].astype(np.float64)  # sample_stats: (correct, 1) per image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--network", default="resnet50")
    p.add_argument("--variants", type=int, default=10)
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--results", default="results", help="folder with <network>/float.pt, uniform4.pt, configs/")
    p.add_argument("--mixes", nargs="*", default=["eagl", "alps"],
                   help="methods whose mix at the lowest target is fine-tuned and compared (none: float and 4-bit only)")
    p.add_argument("--digits", type=int, help="use the first N test digits (default: all)")
    p.add_argument("--families", nargs="+", default=["drawn", "grid", "shift", "affine"], choices=sorted(SUBSETS))
    args = p.parse_args()
    cfg = config.load(args.params)
    exp = Experiment(cfg, args.network, progress=False)
    res = Path(args.results) / args.network
    fmodel, _ = exp.load(res / "float.pt", "float")
    u4, _ = exp.load(res / "uniform4.pt", "quant")
    models = {"float": fmodel, "4-bit": u4}
    pairs = [("float", "4-bit")]
    if args.mixes:
        target = sorted(f.name.split("-t")[1][:-5] for f in (res / "configs").glob(f"{args.mixes[0]}-t*.yaml"))[0]
        for method in args.mixes:
            q, _ = exp.load(res / "uniform4.pt", "quant")
            set_bits(q, bitconfig.load_bits(res / "configs" / f"{method}-t{target}.yaml", q))
            t0 = time.perf_counter()
            exp.finetune(q, teacher=fmodel, seed=0, epochs=cfg.frontier.epochs, desc=method)
            print(f"fine-tuned the {method} mix at {target}x in {time.perf_counter() - t0:.0f} s")
            models[f"{method} {target}x"] = q
        first = f"{args.mixes[0]} {target}x"
        pairs += [("float", first)] + [(first, f"{m} {target}x") for m in args.mixes[1:]]
    # the original test digits, as the data files hold them (centred, before the split's offsets)
    folder = Path(cfg.data.root) / "classification"
    images = torch.from_numpy(np.load(folder / "test_images.npy"))
    labels = torch.from_numpy(np.load(folder / "test_labels.npy")).long()
    n = len(labels) if args.digits is None else args.digits
    images, labels = images[:n], labels[:n]
    base = {m: correct(exp, mod, images, labels) for m, mod in models.items()}
    se0 = {pr: np.std(base[pr[0]] - base[pr[1]], ddof=1) / np.sqrt(len(labels)) for pr in pairs}
    print(f"{args.network}, {len(labels)} test digits; original: "
          + ", ".join(f"{m} {100 * c.mean():.2f}" for m, c in base.items()))
    print("pair SE (points) on the original digits: "
          + ", ".join(f"{a} - {b}: {100 * s:.3f}" for (a, b), s in se0.items()))
    for family in args.families:
        k = FULL.get(family, args.variants)
        v = variants(images, k, family)
        flat, lab = v.reshape((-1,) + images.shape[1:]), labels.repeat_interleave(k)
        t0 = time.perf_counter()
        c = {m: correct(exp, mod, flat, lab).reshape(len(labels), k) for m, mod in models.items()}
        secs = (time.perf_counter() - t0) / len(models) / (len(flat) / 1000)
        print(f"\n{family}: {k} variants per digit, {secs:.2f} s per 1,000 images per model; top-1 "
              + ", ".join(f"{m} {100 * x.mean():.2f}" for m, x in c.items()))
        print(f"{'K':>3} " + " ".join(f"{a + ' - ' + b:>30}" for a, b in pairs))
        for kk in sorted({j for j in SUBSETS[family][:-1] if j < k} | {k}):
            cells = []
            for a, b in pairs:
                d = (c[a][:, :kk] - c[b][:, :kk]).mean(1)
                se = np.std(d, ddof=1) / np.sqrt(len(d))
                cells.append(f"{100 * d.mean():+.2f} se {100 * se:.3f} x{(se0[(a, b)] / se) ** 2:.1f}")
            print(f"{kk:>3} " + " ".join(f"{s:>30}" for s in cells))


if __name__ == "__main__":
    torch.set_num_threads(2)
    main()
