"""The README's "your own model" route (``mpq allocate``) on every torchvision builder.

Each classification and segmentation model is built with ``weights=None`` (and
``weights_backbone=None``), run through the CLI, and its bits file is checked
against an independent recount of the same forward pass by torch's
``FlopCounterMode`` on the float model:

- coverage: every convolution and matrix product of the float forward pass
  belongs to a layer in the bits file (nothing computes with float weights in
  silence), and every layer in the bits file is one the recount sees;
- cost: the predicted relative throughput equals the one recomputed from the
  recounted MACs and the bits in the file, with the documented speed-ups
  (8 bits 1x, 4 bits 2x, 2 bits 4x).

A model whose attention reads its projections' weights directly (Swin's
``ShiftedWindowAttention``) must fail with one line naming that module.

By default each *family* of builders (the same builder code at other depths or
widths: ``vgg11 ... vgg19``, ``convnext_tiny ... convnext_large``, ``regnet_y_16gf``
and ``regnet_y_32gf`` ...; ``family``) runs through its smallest member, by the
parameter count torchvision's weights metadata lists; a family's larger members
(``SIBLINGS``, ~3 min on 2 cores) and the four builders of over 300 M parameters
(``HEAVY``, ~2 min) run when ``MPQ_HEAVY_TESTS=1`` is set.
"""
from __future__ import annotations

import os
import re

import pytest
import torch
import torchvision
import yaml
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mpq.cli import main
from mpq.quantized import is_quantized

MODELS = sorted(torchvision.models.list_models(module=torchvision.models)
                + torchvision.models.list_models(module=torchvision.models.segmentation))
UNSUPPORTED = {"swin_t", "swin_s", "swin_b", "swin_v2_t", "swin_v2_s", "swin_v2_b"}
HEAVY = {"vit_h_14", "regnet_y_128gf", "vit_l_16", "vit_l_32"}  # 304-645 M parameters: 14-44 s each


def family(name: str) -> str:
    """The builder family: the name with its depth, width and size tags (digits, tiny/small/base/large,
    a closing one-letter size) replaced, e.g. ``vgg#_bn``, ``regnet_y_#gf``, ``convnext_#``, ``vit_#_#``."""
    name = re.sub(r"\d+|tiny|small|base|large", "#", name)
    return re.sub(r"_[tsbmlh](?=_|$)", "_#", name)


def _params(name: str) -> float:
    """The parameter count torchvision's weights metadata lists (infinite when it lists none)."""
    try:
        return float(next(iter(torchvision.models.get_model_weights(name))).meta["num_params"])
    except (ValueError, KeyError, StopIteration):
        return float("inf")


_SMALLEST = {}
for _m in sorted(MODELS, key=lambda m: (_params(m), m)):
    _SMALLEST.setdefault(family(_m), _m)
SIBLINGS = {m for m in MODELS if _SMALLEST[family(m)] != m} - HEAVY  # a smaller member of the family runs
SPEEDUP = {8: 1, 4: 2, 2: 4}  # docs/methods.md, cost model "throughput"
WEIGHT_OPS = {"aten.convolution", "aten._convolution", "aten.mm", "aten.addmm"}
LAYERS = (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)


def _size(name: str) -> int:
    """The smallest square input the model accepts in this test (small: the suite is on 2 cores)."""
    if name.startswith("vit_") or name == "maxvit_t":
        return 224  # fixed image size
    return 96 if name == "inception_v3" else 64


@torch.no_grad()
def _recount(model: nn.Module, size: int) -> tuple[dict[str, float], float]:
    """Per-layer MACs from FlopCounterMode, and the MACs of every weight op in the forward pass."""
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)  # the fused kernel hides the projections
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.randn(1, 3, size, size))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
    counts = counter.get_flop_counts()
    root = type(model).__name__ + "."

    def macs(ops) -> float:
        return sum(v for op, v in ops.items() if str(op) in WEIGHT_OPS) / 2

    layers = {}
    for fqn, ops in counts.items():
        if fqn.startswith(root):
            module = model.get_submodule(fqn[len(root):])
            if isinstance(module, LAYERS):
                layers[fqn[len(root):]] = macs(ops)
    return layers, macs(counts["Global"])


def _skip(m: str) -> str | None:
    if os.environ.get("MPQ_HEAVY_TESTS") == "1":
        return None
    if m in HEAVY:
        return "over 300 M parameters: set MPQ_HEAVY_TESTS=1"
    if m in SIBLINGS:
        return f"family {family(m)} runs through {_SMALLEST[family(m)]}: set MPQ_HEAVY_TESTS=1"
    return None


@pytest.mark.parametrize("name", [
    pytest.param(m, marks=pytest.mark.skipif(_skip(m) is not None, reason=str(_skip(m))))
    for m in MODELS])
def test_allocate_route_on_torchvision_model(name, tmp_path, capsys, monkeypatch):
    out = tmp_path / "bits.yaml"
    size = _size(name)
    built = []  # the float model the CLI builds (it quantizes a copy): recounted below, not built twice
    get_model = torchvision.models.get_model
    monkeypatch.setattr(torchvision.models, "get_model", lambda *a, **k: built.append(get_model(*a, **k)) or built[-1])
    code = main(["allocate", "--model", name, "--num-classes", "10", "--input-size", str(size),
                 "--budget", "1.3", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    if name in UNSUPPORTED:
        assert code != 0 and len(err) == 1 and "ShiftedWindowAttention" in err[0], err
        return
    assert code == 0, err
    doc = yaml.safe_load(out.read_text())
    bits, unused = doc["bits"], set(doc.get("not_run_in_eval", []))

    [model] = built
    assert not is_quantized(model)  # the CLI quantized a copy
    layers, total = _recount(model.eval(), size)
    # MultiheadAttention: the recount sees in_proj + out_proj under the attention module;
    # in self-attention (every torchvision model) the packed q/k/v projection is 3/4 of it
    for mha in [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]:
        layers[f"{mha}.out_proj"], layers[mha] = layers[mha] / 4, layers[mha] * 3 / 4
    ran = {n for n, v in layers.items() if v > 0}
    assert sum(layers.values()) == pytest.approx(total, rel=1e-9), "a weight op outside every layer"
    assert ran <= set(bits), f"float weight ops in {sorted(ran - set(bits))[:3]}"
    assert set(bits) - ran == unused, "layers that never ran must be the ones listed as not_run_in_eval"

    def time(assignment):
        return sum(layers[n] / SPEEDUP[b] for n, b in assignment.items() if n in ran)

    reference = {n: 8 if b == 8 else 4 for n, b in bits.items()}
    assert time(reference) / time(bits) == pytest.approx(doc["predicted"]["rel_throughput"], rel=1e-5)
    assert doc["predicted"]["rel_throughput"] >= 1.3 - 1e-6
    assert any(b == 2 for b in bits.values())
