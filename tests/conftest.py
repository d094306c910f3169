"""Shared fixtures: the embedded data built once per session, a shrunken tiny preset."""
from pathlib import Path

import pytest
import yaml

from mpq.data import build_embedded

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def embedded(tmp_path_factory):
    """``(root, paths)`` of a fresh embedded-data build."""
    root = tmp_path_factory.mktemp("embedded")
    return root, build_embedded(root)


def write_params(path: Path, base: str = "presets/tiny.yaml", **overrides) -> Path:
    """Write a params file: ``base`` with dotted-key overrides (``network.resnet50.width=0.125``)."""
    raw = yaml.safe_load((ROOT / base).read_text() if not Path(base).is_absolute() else Path(base).read_text())
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
    """The tiny preset shrunk further (64 samples, width 1/16) for fast unit tests."""
    root, _ = embedded
    p = tmp_path_factory.mktemp("params") / "micro.yaml"
    over = {"data__root": str(root), "alps__workers": 1, "hessian__samples": 2}
    for net in ("resnet50", "resnet101", "pspnet"):
        seg = net == "pspnet"
        over.update({f"network__{net}__width": 0.0625, f"network__{net}__train_size": 32 if seg else 64,
                     f"network__{net}__batch_size": 16 if seg else 32,
                     f"network__{net}__float_epochs": 1, f"network__{net}__quant_epochs": 0.5})
    return write_params(p, **over)
