"""Does LSQ learn its steps, and how should a 2-bit step start? The measurements behind
``network.<name>.quant_step_lr_mult`` and the LSQ initialisation (README, "LSQ that learns").

From a network's trained float checkpoint (``results/<network>/float.pt``, made by the
baselines step), with the preset's quantized fine-tune recipe:

1. the uniform ``start_bits`` fine-tune with each 4-bit step learning-rate multiplier of
   ``--mults``: test metric, trained / initial step ratios (min-max), share of layers
   whose step moved by more than 1 %, and the EAGL scores' coefficient of variation;
2. 2-bit step initialisation, data-free: per candidate layer, the step that minimises the
   2-bit weight MSE (a grid of 0.2x-3x the LSQ init) against LSQ's init;
3. unless ``--no-init-finetune``: the uniform ``low_bits`` fine-tune from LSQ's init and from
   the MSE-optimal steps.

    python benchmarks/lsq_steps.py --network resnet50 --mults 1,10,100,300

A multiplier that makes the fine-tune diverge is reported as such, not raised.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import time

import numpy as np
import torch

from mpq import checkpoint, config, diagnostics, eagl, paths
from mpq.experiment import Experiment
from mpq.quantized import candidate_layers
from mpq.quantizers import WeightQuantizer, lsq_init_step, qrange

GRID = np.linspace(0.2, 3.0, 281)  # multiples of the LSQ init step searched for the MSE optimum


def mse_optimal_step(weight: torch.Tensor, bits: int) -> tuple[float, float, float]:
    """``(optimal step, its MSE, LSQ-init MSE)`` of ``weight`` at ``bits`` over ``GRID`` x the LSQ init."""
    qn, qp = qrange(bits, True)
    s0 = float(lsq_init_step(weight.abs().mean(), bits, True))
    def mse(s: float) -> float:
        return float(((weight / s).round().clamp(-qn, qp) * s - weight).pow(2).mean())
    errs = [mse(s0 * g) for g in GRID]
    i = int(np.argmin(errs))
    return s0 * float(GRID[i]), errs[i], mse(s0)


def _finetuned(exp: Experiment, fstate: dict, bits: int, *, mse_init: bool = False) -> tuple[torch.nn.Module, str]:
    f = exp.new_float()
    f.load_state_dict(fstate)
    q = exp.quantize(f, bits)
    if mse_init:
        weights = dict(q.named_parameters())
        for name, m in q.named_modules():
            if isinstance(m, WeightQuantizer) and m.bits == bits:
                m.step.data.fill_(mse_optimal_step(weights[name.rsplit(".", 1)[0] + ".weight"].detach(), bits)[0])
    try:
        exp.finetune(q, teacher=f, seed=exp.cfg.seed)
    except FloatingPointError as e:
        return q, f"diverged ({str(e).split(':')[-1].strip()})"
    return q, f"{exp.evaluate(q):.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default=str(config.DEFAULT_PARAMS))
    ap.add_argument("--network", default="resnet50")
    ap.add_argument("--results", default=str(paths.RESULTS), help="folder with <network>/float.pt")
    ap.add_argument("--mults", default="1,10,100,300", help="4-bit step lr multipliers, comma-separated")
    ap.add_argument("--no-init-finetune", action="store_true", help="skip part 3 (the 2-bit fine-tunes)")
    a = ap.parse_args()
    cfg = config.load(a.params)
    q = cfg.quant
    fstate, _ = checkpoint.load(paths.network_dir(a.network, a.results) / paths.FLOAT_CKPT)
    print(f"# {a.network}, {cfg.scale} preset, float checkpoint under {a.results}")
    print(f"\n## 1. uniform {q.start_bits}-bit fine-tune by step lr multiplier")
    print("| multiplier | test metric | step ratio min-max | moved > 1 % | EAGL CV % | seconds |")
    print("|---|---|---|---|---|---|")
    for mult in (float(m) for m in a.mults.split(",")):
        net = dataclasses.replace(cfg.net(a.network), quant_step_lr_mult={q.start_bits: mult})
        c = dataclasses.replace(cfg, network={**cfg.network, a.network: net})
        exp = Experiment(c, a.network, progress=False)
        t0 = time.perf_counter()
        model, metric = _finetuned(exp, fstate, q.start_bits)
        seconds = time.perf_counter() - t0
        if metric.startswith("diverged"):
            print(f"| {mult:g} | {metric} | | | | {seconds:.0f} |")
            continue
        layers = candidate_layers(model)
        r = diagnostics.step_ratios(fstate, model.state_dict(), dict.fromkeys(layers, q.start_bits), layers)
        d = diagnostics.step_diagnostic(r, eagl.scores(model, low_bits=q.low_bits).table["score"].to_numpy())
        print(f"| {mult:g} | {metric} | {d['step_ratio_min']:.2f}-{d['step_ratio_max']:.2f} | "
              f"{100 * d['moved_over_1pct']:.0f} % | {d['score_cv_pct']:.2f} | {seconds:.0f} |")

    print(f"\n## 2. {q.low_bits}-bit step init, data-free (candidate layers of the float model)")
    exp = Experiment(cfg, a.network, progress=False)
    probe = exp.quantize(exp.new_float(), q.start_bits)  # only for the candidates' names
    ratios, gains = [], []
    for layer in candidate_layers(probe):
        w = fstate[f"{layer}.weight"].float()
        best, best_mse, init_mse = mse_optimal_step(w, q.low_bits)
        ratios.append(best / float(lsq_init_step(w.abs().mean(), q.low_bits, True)))
        gains.append(init_mse / best_mse if best_mse > 0 else math.inf)
    r, g = np.array(ratios), np.array(gains)
    print(f"MSE-optimal / LSQ-init step: median {np.median(r):.2f} (range {r.min():.2f}-{r.max():.2f}); "
          f"LSQ-init MSE / optimal MSE: median {np.median(g):.2f}x (range {g.min():.2f}-{g.max():.2f}), "
          f"{len(r)} layers")
    if not a.no_init_finetune:
        print(f"\n## 3. uniform {q.low_bits}-bit fine-tune by step init")
        print("| init | test metric |\n|---|---|")
        for name, mse_init in (("LSQ", False), ("MSE-optimal", True)):
            print(f"| {name} | {_finetuned(exp, fstate, q.low_bits, mse_init=mse_init)[1]} |")


if __name__ == "__main__":
    main()
