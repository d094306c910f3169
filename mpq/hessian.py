"""The Hessian-trace baseline (HAWQ-V2, Dong et al. NeurIPS 2020; HAWQ-V3, Yao et al. ICML 2021).

HAWQ ranks layers by the second-order estimate of the loss increase that
quantizing a layer causes. For a perturbation ``dW_l`` of layer ``l``'s weights
at a trained minimum (zero gradient), ``dL ~= 0.5 * dW_l^T H_ll dW_l``. HAWQ-V2
replaces the block ``H_ll`` by its average eigenvalue ``Tr(H_ll) / n_l`` (``n_l``
= number of weights), which gives the sensitivity

    Omega_l = Tr(H_ll) / n_l * ||Q(W_l) - W_l||^2 .

For a precision *reduction* ``b -> b_low`` this project scores the extra error:

    score_l = Tr(H_ll) / n_l * (||Q_low(W_l) - W_l||^2 - ||Q_cur(W_l) - W_l||^2)

with ``Q_cur`` the layer's trained LSQ weight quantizer at its current bits and
``Q_low`` the LSQ quantizer at ``b_low`` with LSQ's initial step (what
``mpq.set_bits`` would give the layer before any fine-tuning).

**Trace estimator (Hutchinson).** For a random vector ``v`` with independent
entries of mean 0 and variance 1, ``E[v^T H v] = Tr(H)``. Rademacher entries
(+-1) give the smallest variance of all such distributions, ``2 * sum_{i!=j}
H_ij^2``: zero for a diagonal ``H`` (the estimate is then exact). ``H v`` costs
one extra backward pass through the graph of the gradient (Pearlmutter's
trick, "double backward"), never the Hessian itself.

**One joint vector for all layers.** Each sample draws one ``v = (v_1, ..., v_L)``
over all the layers' weights and computes the full ``H v`` in one pass. The
estimate for layer ``l`` is ``v_l . (H v)_l = v_l^T H_ll v_l + sum_{m!=l} v_l^T
H_lm v_m``; the cross terms have expectation zero because ``v_l`` and ``v_m``
are independent, so the estimate of ``Tr(H_ll)`` stays unbiased. The cross terms
add variance (reported in the standard error), in exchange for one
Hessian-vector product per sample instead of one per layer per sample (ResNet-50:
54 times cheaper).

**Memory: chunks of a batch.** The double-backward graph of a whole batch can
exceed a GPU's memory (ResNet-50, 256 ImageNet images at 224 px). With
``chunk_size=k`` each batch is split into consecutive chunks of at most ``k``
samples; each chunk gets its own forward, ``create_graph`` backward and ``H v``
products, and its graph is freed before the next. The batch loss is a mean, so
``H v`` of the batch loss is ``sum_k w_k H_k v`` with ``H_k`` the Hessian of chunk
``k``'s loss and ``w_k`` its share of the batch mean's denominator: ``n_k / n``
(samples) for a per-sample mean, or ``c_k / c`` (targets ``!= ignore_index``) for
a per-pixel mean that ignores void pixels (``F.cross_entropy(...,
ignore_index=...)`` without class weights). A chunk with no valid target has
``w_k = 0`` and is skipped (a batch with none adds 0, as it does unchunked). The
probes are re-drawn from the same seed for every chunk, so the result equals the
unchunked one up to float rounding.
``chunk_size=None`` (or ``>=`` the batch) takes the whole batch in one pass,
exactly as before; ``chunk_size="auto"`` starts with the whole batch and halves
the chunk on ``torch.cuda.OutOfMemoryError`` (redoing that batch), keeping the
reduced size for the remaining batches.

**Curvature of the float view.** HAWQ measures curvature at the trained weights
of a full-precision network; LSQ's rounding is piecewise constant (its straight
-through gradient has no meaningful second derivative), so ``scores`` takes the
Hessian of a deep copy of the quantized model with every weight and activation
quantizer switched off, in ``eval`` mode (BN running statistics, no dropout).
"""
from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import pandas as pd
import torch
from torch import Tensor, nn

from .quantized import candidate_layers, float_view, quant_layers
from .quantizers import lsq_init_step, lsq_quantize, qrange
from .sensitivity import CostRecord, Sensitivity, device_name

__all__ = ["layer_traces", "scores", "run"]

Batch = tuple[Any, Any]
LossFn = Callable[[Any, Any], Tensor]


def _to(obj: Any, device: torch.device) -> Any:
    """Move a tensor (or a tuple/list/dict of tensors) to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def _batch_size(x: Any) -> int:
    """Number of samples in one batch's input (first dim of the first tensor)."""
    if isinstance(x, Tensor):
        return int(x.shape[0]) if x.dim() > 0 else 1
    if isinstance(x, (list, tuple)) and x:
        return _batch_size(x[0])
    if isinstance(x, dict) and x:
        return _batch_size(next(iter(x.values())))
    raise TypeError(f"cannot tell the batch size of an input of type {type(x).__name__}")


def _materialise(batches: Iterable[Batch]) -> list[Batch]:
    out = list(batches)
    if not out:
        raise ValueError("no batches: the Hessian trace needs at least one (x, y) batch of data")
    for i, b in enumerate(out):
        if not isinstance(b, (tuple, list)) or len(b) != 2:
            raise ValueError(f"batch {i} is not an (x, y) pair (got {type(b).__name__})")
    return out


def _weight_layers(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    """The Conv2d/Linear modules to measure, by name, in the model's order."""
    allowed = {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    if layers is None:
        if not allowed:
            raise ValueError("the model has no Conv2d or Linear layer")
        return allowed
    if isinstance(layers, str):
        raise TypeError("layers must be a sequence of module names, not one string")
    wanted = set(layers)
    unknown = [n for n in layers if n not in allowed]
    if unknown:
        raise ValueError(f"layers names modules that are not Conv2d/Linear layers of this model: "
                         f"{unknown[:3]} ({len(unknown)} in all)")
    if not wanted:
        raise ValueError("layers is empty: name at least one Conv2d/Linear layer")
    return {n: m for n, m in allowed.items() if n in wanted}


def _same_device(a: torch.device, b: torch.device) -> bool:
    return a.type == b.type and (a.index is None or b.index is None or a.index == b.index)


def _check_chunk(chunk_size: int | str | None, ignore_index: int | None) -> None:
    ok = (chunk_size is None or (isinstance(chunk_size, str) and chunk_size == "auto")
          or (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1))
    if not ok:
        raise ValueError(f"chunk_size must be a positive integer, 'auto' or None (whole batch), "
                         f"got {chunk_size!r}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise ValueError(f"ignore_index must be an integer or None, got {ignore_index!r}")


def _slice(obj: Any, a: int, b: int, n: int, what: str) -> Any:
    """Samples ``a:b`` of a batch of ``n``: every tensor in ``obj`` is cut along dim 0."""
    if isinstance(obj, Tensor):
        if obj.dim() == 0 or obj.shape[0] != n:
            raise ValueError(f"cannot split a batch of {n} into chunks: its {what} holds a tensor of "
                             f"shape {tuple(obj.shape)} without a leading batch dimension of {n}")
        return obj[a:b]
    if isinstance(obj, (list, tuple)):
        return type(obj)(_slice(o, a, b, n, what) for o in obj)
    if isinstance(obj, dict):
        return {k: _slice(v, a, b, n, what) for k, v in obj.items()}
    return obj


def _chunks(y: Any, n: int, size: int, ignore_index: int | None) -> list[tuple[int, int, float]]:
    """``(start, stop, weight)`` of each chunk of a batch of ``n``: the weights are the
    chunks' shares of the batch loss's denominator (samples, or targets ``!= ignore_index``)."""
    bounds = [(a, min(a + size, n)) for a in range(0, n, size)]
    if ignore_index is None:
        return [(a, b, (b - a) / n) for a, b in bounds]
    if not isinstance(y, Tensor):
        raise ValueError(f"ignore_index={ignore_index} needs tensor targets to weight the chunks, "
                         f"got {type(y).__name__}")
    _slice(y, 0, n, n, "target")  # checks the leading batch dimension
    counts = [int(y[a:b].ne(ignore_index).sum()) for a, b in bounds]
    total = sum(counts)
    # No valid target in the whole batch: every chunk is skipped, so the batch adds 0,
    # as the whole batch does (cross_entropy's backward gives 0 for a 0/0 mean).
    return [(a, b, c / total if total else 0.0) for (a, b), c in zip(bounds, counts)]


def _batch_estimate(model: nn.Module, loss_fn: LossFn, x: Any, y: Any, weights: list[Tensor], *,
                    samples: int, seed: int, gen: torch.Generator, dev: torch.device,
                    chunks: list[tuple[int, int, float]] | None) -> Tensor:
    """``v_s . (H v_s)`` of one batch's loss, per sample ``s`` and layer (float64,
    ``samples x layers``). ``chunks=None``: the whole batch in one pass; otherwise the
    weighted sum over the chunks ``(start, stop, weight)``, each with its own graph."""
    acc = torch.zeros(samples, len(weights), dtype=torch.float64, device=dev)
    n = _batch_size(x)
    for a, b, w in [(0, n, 1.0)] if chunks is None else chunks:
        if w == 0:
            continue  # no valid target in this chunk: no term in the batch loss
        xc, yc = (x, y) if chunks is None else (_slice(x, a, b, n, "input"), _slice(y, a, b, n, "target"))
        out = model(_to(xc, dev))
        loss = loss_fn(out, _to(yc, dev))
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError("loss_fn must return a scalar tensor")
        grads = torch.autograd.grad(loss, weights, create_graph=True, allow_unused=True)
        # Entries of the gradient that depend on the weights (the rest have H = 0).
        live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
        # Re-seed per batch and per chunk: sample s uses the same v on every batch and
        # every chunk, so its estimate is v^T (mean H) v, the Hessian of the mean loss.
        gen.manual_seed(seed)
        for s in range(samples):
            vs = [torch.randint(0, 2, wt.shape, generator=gen, device=dev, dtype=wt.dtype)
                  .mul_(2).sub_(1) for wt in weights]
            if not live:
                continue
            hvs = torch.autograd.grad([grads[i] for i in live], weights,
                                      grad_outputs=[vs[i] for i in live],
                                      retain_graph=True, allow_unused=True)
            dots = torch.stack([
                torch.zeros((), dtype=torch.float64, device=dev) if hv is None
                else torch.dot(v.flatten(), hv.flatten()).double()
                for v, hv in zip(vs, hvs)])
            if chunks is None:
                acc[s] = dots
            else:
                acc[s] += dots * w
        del grads, loss, out
    return acc


def _hutchinson(model: nn.Module, loss_fn: LossFn, batches: list[Batch], *, samples: int,
                seed: int, layers: Sequence[str] | None, device: str | torch.device,
                chunk_size: int | str | None = None, ignore_index: int | None = None
                ) -> tuple[list[str], Tensor, int, dict[str, Any]]:
    """Per-sample, per-layer Hutchinson estimates.

    Returns ``(names, est, images, chunking)``: ``est[s, l] = v_l . (H v)_l`` for sample
    ``s`` (float64, shape ``samples x layers``), the number of images seen, and
    ``chunking`` = ``{"chunk_used": k, "oom_retries": r}`` (``k``: the chunk size in
    force at the end, at most the largest batch; ``r``: halvings of ``"auto"``).
    """
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    _check_chunk(chunk_size, ignore_index)
    dev = torch.device(device)
    chosen = _weight_layers(model, layers)
    names = list(chosen)
    weights = [m.weight for m in chosen.values()]
    for n, w in zip(names, weights):
        if not _same_device(w.device, dev):
            raise ValueError(f"layer {n!r} lives on {w.device} but device={dev}: move the model "
                             f"to {dev} first (model.to(device))")
    sizes = [_batch_size(x) for x, _ in batches]
    total = sum(sizes)
    auto = chunk_size == "auto"
    limit = max(sizes) if chunk_size is None or auto else min(int(chunk_size), max(sizes))
    retries = 0

    # Gradients only to the measured weights: other parameters (BN, biases, quantizer
    # steps) are frozen for the duration, which keeps the double-backward graph small.
    params = list(model.parameters())
    saved_grad = [p.requires_grad for p in params]
    saved_mode = [(m, m.training) for m in model.modules()]
    weight_ids = {id(w) for w in weights}
    est = torch.zeros(samples, len(weights), dtype=torch.float64, device=dev)
    gen = torch.Generator(device=dev)
    try:
        for p in params:
            p.requires_grad_(id(p) in weight_ids)
        for w in weights:  # a measured weight may not be a registered parameter of model
            w.requires_grad_(True)
        model.eval()
        with torch.enable_grad():
            for (x, y), n in zip(batches, sizes):
                while True:
                    chunks = None if limit >= n else _chunks(y, n, limit, ignore_index)
                    try:
                        acc = _batch_estimate(model, loss_fn, x, y, weights, samples=samples,
                                              seed=seed, gen=gen, dev=dev, chunks=chunks)
                        break
                    except torch.cuda.OutOfMemoryError:
                        if not auto or min(limit, n) <= 1:
                            raise
                    # Out of the except block, so the failed attempt's graph is released.
                    limit, retries = min(limit, n) // 2, retries + 1
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                est += acc * (n / total)
    finally:
        for p, r in zip(params, saved_grad):
            p.requires_grad_(r)
        for m, mode in saved_mode:
            m.training = mode
    return names, est.cpu(), total, {"chunk_used": limit, "oom_retries": retries}


def _summarise(names: list[str], est: Tensor) -> tuple[dict[str, float], dict[str, float]]:
    mean = est.mean(0)
    k = est.shape[0]
    se = est.std(0, correction=1) / math.sqrt(k) if k > 1 else torch.full_like(mean, float("nan"))
    return ({n: float(t) for n, t in zip(names, mean)}, {n: float(e) for n, e in zip(names, se)})


def layer_traces(model: nn.Module, loss_fn: LossFn, batches: Iterable[Batch], *, samples: int = 32,
                 seed: int = 0, layers: Sequence[str] | None = None, device: str | torch.device = "cpu",
                 return_stderr: bool = False, chunk_size: int | str | None = None,
                 ignore_index: int | None = None
                 ) -> dict[str, float] | tuple[dict[str, float], dict[str, float]]:
    """Hutchinson estimates of the trace of the loss Hessian w.r.t. each layer's ``.weight``.

    ``loss_fn(output, target)`` returns a scalar; the loss is the mean over ``batches``
    (a list/iterable of ``(x, y)``, materialised once), each batch weighted by its number
    of samples: with a batch-averaging ``loss_fn`` this is the loss of all the data at
    once. Hessian-vector products are accumulated batch by batch, never concatenated.

    For each of ``samples`` Rademacher vectors ``v`` (drawn from a ``torch.Generator`` on
    ``device`` seeded with ``seed``: same seed, same device type -> same result), the
    gradient ``g`` is taken once per batch with ``create_graph=True`` and ``H v`` is its
    derivative in direction ``v`` (``autograd.grad(g, weights, grad_outputs=v)``); layer
    ``l``'s estimate is ``v_l . (H v)_l``. One joint ``v`` spans all layers: the cross
    terms ``v_l^T H_lm v_m`` vanish in expectation, so each layer's estimate is unbiased
    (see the module docstring).

    ``layers``: module names of Conv2d/Linear layers (default: all of them); traces come
    back in the model's layer order. The model must already be on ``device``; it runs in
    ``eval`` mode (BN statistics fixed, no dropout) and every module's mode and every
    parameter's ``requires_grad`` are restored afterwards. With ``return_stderr`` the
    result is ``(traces, stderr)``, stderr = sample std / sqrt(samples) (NaN when
    ``samples == 1``; exactly 0 when the Hessian blocks are diagonal).

    ``chunk_size``: at most this many samples of a batch through the double backward at
    once (``None``: the whole batch, as without the keyword; ``"auto"``: the whole batch,
    halved on ``torch.cuda.OutOfMemoryError``). Each chunk's ``H v`` is weighted by its
    share of the batch loss's denominator: its number of samples, or with
    ``ignore_index`` its number of targets ``!= ignore_index`` (for a loss that averages
    over valid pixels, e.g. ``F.cross_entropy(..., ignore_index=...)``). The probes are
    the same for every chunk, so the result equals the unchunked one up to rounding.
    ``ignore_index`` only weights chunks: batches stay weighted by their sample counts.
    """
    data = _materialise(batches)
    names, est, _, _ = _hutchinson(model, loss_fn, data, samples=samples, seed=seed,
                                   layers=layers, device=device, chunk_size=chunk_size,
                                   ignore_index=ignore_index)
    traces, stderr = _summarise(names, est)
    return (traces, stderr) if return_stderr else traces


def _quant_errors(layer: nn.Module, low_bits: int) -> tuple[float, float]:
    """``(||Q_cur(W) - W||^2, ||Q_low(W) - W||^2)`` of a quantized layer's latent weights.

    ``Q_low`` uses LSQ's initial step at ``low_bits`` (per channel if the layer's
    quantizer is), exactly what ``mpq.set_bits`` sets before any fine-tuning.
    """
    w = layer.weight.detach()
    wq = layer.wq
    cur = lsq_quantize(w, wq.step.detach(), bits=wq.bits, signed=True)
    absmean = w.abs().flatten(1).mean(1).view_as(wq.step) if wq.per_channel else w.abs().mean()
    step_low = lsq_init_step(absmean, low_bits, True).to(w.device, w.dtype).clamp_min(1e-8)
    low = lsq_quantize(w, step_low, bits=low_bits, signed=True)
    wd = w.double()
    return float((cur.double() - wd).pow(2).sum()), float((low.double() - wd).pow(2).sum())


def scores(qmodel: nn.Module, batches: Iterable[Batch], *, loss_fn: LossFn, samples: int = 32,
           seed: int = 0, low_bits: int = 2, device: str | torch.device = "cpu",
           chunk_size: int | str | None = None, ignore_index: int | None = None) -> Sensitivity:
    """HAWQ sensitivity of reducing each candidate layer of ``qmodel`` to ``low_bits``.

    score = (Tr(H_ll) / n_l) x (||Q_low(W) - W||^2 - ||Q_cur(W) - W||^2), with ``W`` the
    layer's latent float weights, ``Q_cur`` its trained LSQ weight quantizer at its
    current bits, ``Q_low`` LSQ at ``low_bits`` with the initial step
    ``2 mean|W| / sqrt(Q_P)``, and ``H`` the Hessian of ``loss_fn`` on ``batches`` of the
    float view of ``qmodel`` (quantizers off, eval mode; see ``layer_traces``, also for
    ``chunk_size`` and ``ignore_index``). Higher score = more harmful to reduce.
    ``qmodel`` itself is not modified.

    The table has ``layer, bits_from, bits_to, score`` plus ``trace, trace_stderr,
    params, qerr_from, qerr_to``. Raises ``NotQuantizedError`` for a float model and
    ``ValueError`` for empty ``batches`` or a candidate not above ``low_bits``. With a
    ``chunk_size``, ``meta`` also records ``chunk_size``, ``chunk_used`` (the chunk size in
    force at the end, at most the largest batch), ``oom_retries`` and ``chunk_weight``.
    """
    t0 = time.perf_counter()
    cands = candidate_layers(qmodel)  # NotQuantizedError for a float model
    qrange(low_bits, True)
    if not cands:
        raise ValueError("the model has no candidate layer (all quantized layers are kept at 8 bits)")
    data = _materialise(batches)
    layers = quant_layers(qmodel)
    for n in cands:
        b = layers[n].bits
        if b is None or b <= low_bits:
            raise ValueError(f"candidate layer {n!r} is at {b} bits: it cannot be reduced to "
                             f"{low_bits} bits")
    fmodel = float_view(qmodel).to(device)
    names, est, images, chunking = _hutchinson(fmodel, loss_fn, data, samples=samples, seed=seed,
                                               layers=cands, device=device, chunk_size=chunk_size,
                                               ignore_index=ignore_index)
    del fmodel
    traces, stderr = _summarise(names, est)
    rows = []
    for n in names:
        layer = layers[n]
        q_from, q_to = _quant_errors(layer, low_bits)
        numel = layer.weight.numel()
        rows.append({"layer": n, "bits_from": int(layer.bits), "bits_to": int(low_bits),
                     "score": traces[n] / numel * (q_to - q_from),
                     "trace": traces[n], "trace_stderr": stderr[n], "params": numel,
                     "qerr_from": q_from, "qerr_to": q_to})
    seconds = time.perf_counter() - t0
    notes = (f"{samples} Hutchinson samples x {len(data)} batches ({images} images): one forward "
             f"and one create_graph backward per batch, then one Hessian-vector-product backward "
             f"per sample per batch")
    if chunk_size is not None:
        notes += (f"; batches split into chunks of at most {chunking['chunk_used']} samples "
                  f"(chunk_size={chunk_size!r}), the same probes for every chunk")
    cost = CostRecord(
        method="hessian", seconds=seconds, device=device_name(device),
        forward_passes=images, backward_passes=images * (1 + samples),
        notes=notes)
    meta = {"samples": samples, "seed": seed, "batches": len(data), "images": images,
            "low_bits": low_bits, "estimator": "Hutchinson, Rademacher, one joint vector over layers",
            "hessian_of": "float view (quantizers off), eval mode"}
    if chunk_size is not None:  # without chunking the meta is what it always was
        meta.update(chunking, chunk_size=chunk_size,
                    chunk_weight=("samples" if ignore_index is None
                                  else f"targets != ignore_index ({ignore_index})"))
    return Sensitivity("hessian", pd.DataFrame(rows), cost, meta)


def run(exp, *, method: str, qmodel: nn.Module, teacher: nn.Module | None, out, seed: int) -> Sensitivity:
    """The pipeline's Hessian baseline (``mpq.methods`` entry): ``scores`` on the first
    ``hessian.batches`` training batches (unshuffled, the whole split on every rank).

    ``hessian.chunk`` (null: whole batches) bounds the samples per double
    backward; segmentation chunks are weighted by their non-void pixels."""
    cfg = exp.cfg
    loader = exp.loader("train", train=False, sharded=False)
    batches = [b for _, b in zip(range(cfg.hessian.batches), loader)]
    seg = exp.data.task == "segmentation"
    return scores(qmodel, batches, loss_fn=exp.loss_fn, samples=cfg.hessian.samples, seed=seed,
                  low_bits=cfg.quant.low_bits, device=exp.device,
                  chunk_size=cfg.hessian.chunk,
                  ignore_index=exp.data.ignore_index if seg else None)
