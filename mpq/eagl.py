"""EAGL: Entropy Approximation Guided Layer selection (data-free, training-free).

For each candidate layer, take the integer codes of its trained LSQ weights,
``clamp(round(W / s), -Q_N, Q_P)``, histogram them over the ``2^b`` levels and
compute the Shannon entropy in bits. A layer whose codes use few levels (low
entropy) uses little of its 4-bit capacity and is the cheapest to reduce, so
the entropy *is* the score (higher = more harmful to reduce).

Variants (a parameter; the paper's exact choice is not available to us):
- ``entropy`` (default): ``H_b`` of the current codes.
- ``entropy_x_params``: ``H_b * parameters``, the information the layer holds.
- ``entropy_drop``: ``H_b - H_low``, where ``H_low`` is the entropy of the same
  weights at ``low_bits`` with the LSQ initial step (what ``mpq.set_bits`` gives).

No data and no gradients: one pass over the weights.
"""
from __future__ import annotations

import time

import pandas as pd
import torch
from torch import Tensor, nn

from .quantized import candidate_layers, quant_layers
from .quantizers import lsq_codes, lsq_init_step, qrange
from .sensitivity import CostRecord, Sensitivity, device_name

__all__ = ["VARIANTS", "weight_entropy", "code_entropy", "scores", "variant_scores", "run"]

VARIANTS = ("entropy", "entropy_x_params", "entropy_drop")


def _histogram(codes: Tensor, bits: int, signed: bool) -> Tensor:
    """Counts of ``codes`` on each of the ``2^bits`` levels, lowest level first."""
    qn, _ = qrange(bits, signed)
    return torch.bincount((codes.flatten() + qn).long(), minlength=2**bits)


def _entropy(counts: Tensor) -> float:
    p = counts[counts > 0].double() / counts.sum()  # empty levels contribute 0 (0 log 0 = 0)
    return float(-(p * p.log2()).sum())


def code_entropy(codes: Tensor, *, bits: int, signed: bool = True) -> float:
    """Shannon entropy (bits) of integer ``codes`` over the ``2^bits`` levels of the grid."""
    return _entropy(_histogram(codes, bits, signed))


def _weight_histogram(weight: Tensor, step: Tensor | float, bits: int) -> Tensor:
    step = torch.as_tensor(step, dtype=weight.dtype, device=weight.device)
    return _histogram(lsq_codes(weight, step, bits=bits, signed=True), bits, True)


@torch.no_grad()
def weight_entropy(weight: Tensor, step: Tensor | float, *, bits: int) -> float:
    """Entropy in bits of ``clamp(round(weight/step), -Q_N, Q_P)`` on the signed ``bits`` grid."""
    return _entropy(_weight_histogram(weight, step, bits))


@torch.no_grad()
def scores(qmodel: nn.Module, *, variant: str = "entropy", low_bits: int = 2) -> Sensitivity:
    """EAGL scores of every candidate layer of a quantized model, from its trained LSQ steps."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown EAGL variant {variant!r}: choose one of {list(VARIANTS)}")
    t0 = time.perf_counter()
    layers = quant_layers(qmodel)
    rows = []
    for name in candidate_layers(qmodel):
        layer = layers[name]
        w, bits = layer.weight.detach(), layer.bits
        counts = _weight_histogram(w, layer.wq.step.detach(), bits)
        h = _entropy(counts)
        row = {"layer": name, "bits_from": bits, "bits_to": low_bits, "entropy": h,
               "params": w.numel(), "levels_used": int((counts > 0).sum())}
        abs_mean = w.abs().flatten(1).mean(1).view_as(layer.wq.step) if layer.wq.per_channel \
            else w.abs().mean()
        # every variant's ingredients are kept, so the report can ablate the variants
        row["entropy_low"] = _entropy(_weight_histogram(w, lsq_init_step(abs_mean, low_bits, True), low_bits))
        rows.append(row)
    table = pd.DataFrame(rows)
    table["score"] = variant_scores(table, variant).to_numpy()
    seconds = time.perf_counter() - t0
    device = next(qmodel.parameters()).device
    cost = CostRecord(method="eagl", seconds=seconds, device=device_name(device),
                      notes="data-free: one pass over the candidate layers' weights")
    return Sensitivity("eagl", table, cost, meta={"variant": variant})


def variant_scores(table: pd.DataFrame, variant: str) -> pd.Series:
    """A variant's score per layer (indexed by layer) from the ingredients an EAGL table keeps.

    ``table`` is an ``eagl.csv`` table (any ``variant``): it has ``entropy``,
    ``params`` and ``entropy_low`` for every layer, so every variant can be
    recomputed from it without the model (the report's ablation does).
    """
    need = {"entropy": ["entropy"], "entropy_x_params": ["entropy", "params"],
            "entropy_drop": ["entropy", "entropy_low"]}
    if variant not in need:
        raise ValueError(f"unknown EAGL variant {variant!r}: choose one of {list(VARIANTS)}")
    missing = [c for c in need[variant] if c not in table.columns]
    if missing:
        raise ValueError(f"the EAGL table lacks {missing} (variant {variant}): rerun `mpq sensitivity --method eagl`")
    t = table.set_index(table["layer"].astype(str))
    return {"entropy": t["entropy"], "entropy_x_params": t["entropy"] * t["params"],
            "entropy_drop": t["entropy"] - t["entropy_low"]}[variant].astype(float)


def run(exp, *, method: str, qmodel: nn.Module, teacher: nn.Module | None, out, seed: int) -> Sensitivity:
    """The pipeline's EAGL (``mpq.methods`` entry): ``scores`` with the preset's variant."""
    return scores(qmodel, variant=exp.cfg.eagl.variant, low_bits=exp.cfg.quant.low_bits)
