"""Settings files: every preset loads; bad input is one line naming the key."""
from pathlib import Path

import pytest
import yaml

from mpq import config
from mpq.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
PRESETS = [ROOT / "params.yaml", *sorted((ROOT / "presets").glob("*.yaml"))]


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_presets_load(path):
    cfg = config.load(path)
    assert cfg.networks and all(n in cfg.network for n in cfg.networks)
    assert cfg.quant.low_bits < cfg.quant.start_bits


def test_presets_share_keys():
    keys = lambda d, p="": {p + k for k in d} | {x for k, v in d.items() if isinstance(v, dict) and k != "network"  # noqa
                                                  for x in keys(v, p + k + ".")}
    raw = [yaml.safe_load(p.read_text()) for p in PRESETS]
    assert all(keys(r) == keys(raw[0]) for r in raw)


def write(tmp_path, mutate):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("mutate,pattern", [
    (lambda r: r["network"]["resnet50"].update(widht=0.5), r"^network\.resnet50\.widht: unknown key"),
    (lambda r: r["network"]["resnet50"].update(width=-1), r"^network\.resnet50\.width: must be in \(0, 4\]"),
    (lambda r: r["network"]["resnet50"].pop("batch_size"), r"^network\.resnet50\.batch_size: missing key"),
    (lambda r: r["network"]["resnet50"].update(batch_size="big"), r"batch_size: must be an integer"),
    (lambda r: r.update(networks=["vgg16"]), r"^networks: unknown network 'vgg16'"),
    (lambda r: r.update(device="tpu"), r"^device: must be auto, cpu or cuda"),
    (lambda r: r["quant"].update(low_bits=4), r"^quant\.low_bits: must be below start_bits"),
    (lambda r: r.update(colour="blue"), r"^colour: unknown key"),
    (lambda r: r["data"].update(segmentation_format="voc"), r"^data\.segmentation_format: must be"),
    (lambda r: r["train"].update(distill=2), r"^train\.distill: must be in \[0, 1\]"),
])
def test_bad_values_are_one_line_naming_the_key(tmp_path, mutate, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        config.load(write(tmp_path, mutate))
    assert "\n" not in str(e.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        config.load(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("scale: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.load(bad)


def test_frozen_and_net_lookup():
    cfg = config.load(ROOT / "params.yaml")
    with pytest.raises(Exception):
        cfg.seed = 3
    with pytest.raises(ConfigError, match="'vgg' is not configured"):
        cfg.net("vgg")
    assert cfg.fingerprint("train") == config.load(ROOT / "params.yaml").fingerprint("train")
