"""Shared fixtures: the embedded data built once per session, a shrunken tiny preset."""
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from mpq import config
from mpq.data import build_embedded

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """``(root, paths)`` of a fresh embedded-data build."""
    root = tmp_path_factory.mktemp("embedded")
    return root, build_embedded(root)


def write_params(path: Path, scale: str = "tiny", base: Path | None = None, **overrides) -> Path:
    """Write a complete params file: the repository's params at ``scale`` (or the params
    file ``base``, resolved) with overrides.

    Overrides use ``__`` for nesting (``network__resnet50__width=0.125``). The file
    holds every setting already (``mpq.config.resolve``), so its overlay beside it,
    ``presets/<scale>.yaml``, is written empty.
    """
    if base is not None:
        raw = config.resolve(base)
        scale = raw["scale"]
    else:
        raw = config.resolve(ROOT / "params.yaml")
        raw["scale"] = scale
        overlay = config.overlay_path(ROOT / "params.yaml", scale)
        raw = config.merge(raw, yaml.safe_load(overlay.read_text()) or {})
    overlay = config.overlay_path(path, scale)
    overlay.parent.mkdir(parents=True, exist_ok=True)
    overlay.write_text("{}\n")
    for key, value in overrides.items():
        *parents, last = key.split("__")
        node = raw
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def micro_params(embedded, tmp_path_factory):
    """The tiny preset shrunk further (64 training and validation samples, width 1/16) for fast unit tests."""
    root, _ = embedded
    p = tmp_path_factory.mktemp("params") / "micro.yaml"
    over = {"data__root": str(root), "alps__workers": 1, "hessian__samples": 2}
    for net in ("resnet50", "resnet101", "pspnet"):
        seg = net == "pspnet"
        over.update({f"network__{net}__width": 0.0625, f"network__{net}__train_size": 32 if seg else 64,
                     f"network__{net}__eval_size": 16 if seg else 64,
                     f"network__{net}__batch_size": 16 if seg else 32,
                     f"network__{net}__float_epochs": 1, f"network__{net}__quant_epochs": 0.5})
    return write_params(p, **over)


def tiny_net() -> nn.Module:
    """A small conv net with a named block: enough layers for job and ALPS tests, seconds to train."""
    block = nn.Sequential(OrderedDict(conv1=nn.Conv2d(8, 8, 3, padding=1), r1=nn.ReLU(),
                                      conv2=nn.Conv2d(8, 8, 3, padding=1), r2=nn.ReLU()))
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, 8, 3, padding=1), r0=nn.ReLU(), block=block,
        conv3=nn.Conv2d(8, 8, 3, stride=2, padding=1), r3=nn.ReLU(),
        flat=nn.Flatten(), fc=nn.Linear(128, 4)))


@contextmanager
def one_thread():
    """Run torch on one thread (as a worker does): equal thread counts give equal floats."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
