"""GPU-hour estimates of every paper-scale step, from images processed and a throughput per GPU.

Counts the images each step pushes through a network (training steps, teacher
forwards of the distillation, evaluations) from the paper preset
(``presets/paper.yaml`` over ``params.yaml``: epochs, ALPS jobs = candidate
layers + 1 reference, frontier = methods x budgets x seeds) and the datasets'
sizes, and divides by a throughput per GPU. The default throughputs are
*documented* figures for one A100 with bf16 and channels-last (see
``THROUGHPUT``), times the LSQ overhead target (a quantized step at most 1.3x
a float step, issue 9); ``benchmarks/gpu_check.sh`` measures the real ones on
a GPU, which you pass back with ``--img-per-s``. Run from the repository root:

    python benchmarks/gpu_hours.py [--gpus 8] [--img-per-s resnet50=1900 ...] [--segmentation ade20k]
"""
from __future__ import annotations

import argparse

from mpq import config
from mpq.networks import get_spec

# Training images/s of the float network on one A100 (bf16 autocast, channels-last):
# ResNet-50 at 224 px ~2,600 (NVIDIA DeepLearningExamples, ResNet-50 v1.5 AMP training on
# DGX A100), ResNet-101 about 0.6 of it (FLOPs 7.8 vs 4.1 G), PSPNet-ResNet-50 (dilated,
# output stride 8) at 512 px crops ~18 (MMSegmentation's PSPNet R50-D8 training times,
# V100 -> A100 ~2.5x). Evaluation runs ~3x the training rate (forward only); segmentation
# evaluates full 2048x1024 / ~512x683 images (pixels over the crop's).
THROUGHPUT = {"resnet50": 2600.0, "resnet101": 1560.0, "pspnet": 18.0}
LSQ_OVERHEAD = 1.3           # quantized step / float step (the target gpu_check.sh verifies)
EVAL_SPEEDUP = 3.0           # forward-only vs a training step
DATASETS = {                 # training images, test images, test pixels per crop pixel
    "imagenet": (1_281_167, 50_000, 1.0),
    "cityscapes": (2_975, 500, 2048 * 1024 / 512 ** 2),
    "ade20k": (20_210, 2_000, 512 * 683 / 512 ** 2),
}


def estimate(cfg: config.Config, network: str, img_per_s: float, segmentation: str) -> dict[str, float]:
    """GPU-hours of baselines, ALPS, no-FT, Hessian and frontier for ``network``."""
    spec, net = get_spec(network), cfg.net(network)
    dataset = "imagenet" if spec.task == "classification" else segmentation
    n_train_all, n_test, eval_pixels = DATASETS[dataset]
    n_val = cfg.data.val_size[dataset]
    n_train = n_train_all - n_val
    quant = img_per_s / LSQ_OVERHEAD
    distill = 1.0 + (1.0 / EVAL_SPEEDUP if cfg.train.distill > 0 else 0.0)  # + the teacher's forward

    def train_h(epochs: float, rate: float, teacher: bool = True) -> float:
        return epochs * n_train * (distill if teacher else 1.0) / rate / 3600

    def eval_h(images: float, rate: float) -> float:
        return images * eval_pixels / (rate * EVAL_SPEEDUP) / 3600

    jobs = spec.candidate_count + 1  # + the reference job
    fr = cfg.frontier
    configs = len(fr.methods) * cfg.allocate.points * len(fr.seeds)
    return {
        "baselines": (train_h(net.float_epochs, img_per_s, teacher=False) + train_h(2 * net.quant_epochs, quant)
                      + eval_h(3 * (n_val + n_test), quant)),
        "alps": jobs * (train_h(cfg.alps.epochs, quant) + eval_h(n_val, quant)),
        "noft": jobs * eval_h(n_val, quant),
        # Hutchinson: per probe one double backward over hessian.batches batches (~3 training steps each)
        "hessian": cfg.hessian.samples * cfg.hessian.batches * net.batch_size * 3 / quant / 3600,
        "frontier": configs * (train_h(fr.epochs, quant) + eval_h(n_test, quant)),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--gpus", type=int, default=8)
    p.add_argument("--segmentation", choices=("cityscapes", "ade20k"), default="cityscapes")
    p.add_argument("--img-per-s", nargs="*", default=[], metavar="NET=RATE",
                   help="measured float training img/s per GPU, e.g. resnet50=1900")
    args = p.parse_args()
    raw = config.resolve(args.params)
    raw["scale"] = "paper"
    cfg = config.config_from_dict(config.merge(raw, config._read_yaml(config.overlay_path(args.params, "paper"))))
    rates = dict(THROUGHPUT)
    for item in args.img_per_s:
        name, _, value = item.partition("=")
        rates[name] = float(value)
    steps = ("baselines", "alps", "noft", "hessian", "frontier")
    print(f"GPU-hours per step (paper preset, {args.segmentation} for PSPNet); wall hours on {args.gpus} GPUs "
          f"in brackets. Float training img/s per GPU: "
          + ", ".join(f"{n} {rates[n]:g}" for n in cfg.networks) + f"; LSQ step {LSQ_OVERHEAD}x slower.")
    print(f"{'network':<10}" + "".join(f"{s:>18}" for s in steps) + f"{'total':>18}")
    for n in cfg.networks:
        est = estimate(cfg, n, rates[n], args.segmentation)
        cells = [f"{est[s]:8.2f} ({est[s] / args.gpus:6.2f})" for s in steps]
        total = sum(est.values())
        print(f"{n:<10}" + "".join(f"{c:>18}" for c in cells) + f"{f'{total:8.1f} ({total / args.gpus:6.1f})':>18}")


if __name__ == "__main__":
    main()
