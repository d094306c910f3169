"""Settings files: every scale loads through its overlay; bad input is one line naming the key."""
from pathlib import Path

import pytest
import yaml

from mpq import config
from mpq.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]
OVERLAYS = sorted((ROOT / "presets").glob("*.yaml"))


def write(tmp_path, mutate, name="params.yaml"):
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    mutate(raw)
    p = tmp_path / name
    p.write_text(yaml.safe_dump(raw))
    return p


def with_overlays(tmp_path, scale):
    """The repository's params.yaml at ``scale``, with a copy of the presets folder beside it."""
    (tmp_path / "presets").mkdir(exist_ok=True)
    for o in OVERLAYS:
        (tmp_path / "presets" / o.name).write_text(o.read_text())
    return write(tmp_path, lambda r: r.update(scale=scale))


def test_every_scale_has_an_overlay():
    assert sorted(o.stem for o in OVERLAYS) == sorted(config.SCALES)


@pytest.mark.parametrize("scale", config.SCALES)
def test_every_scale_loads(tmp_path, scale):
    cfg = config.load(with_overlays(tmp_path, scale))
    assert cfg.scale == scale
    assert cfg.networks and all(n in cfg.network for n in cfg.networks)
    assert cfg.quant.low_bits < cfg.quant.start_bits


def test_overlay_replaces_only_what_it_names(tmp_path):
    base = config.load(ROOT / "params.yaml")
    tiny = config.load(with_overlays(tmp_path, "tiny"))
    over = yaml.safe_load((ROOT / "presets" / "tiny.yaml").read_text())
    assert tiny.net("resnet50").width == over["network"]["resnet50"]["width"] != base.net("resnet50").width
    assert tiny.net("resnet50").float_lr == base.net("resnet50").float_lr  # not in the overlay: kept
    assert tiny.hessian.samples == over["hessian"]["samples"]
    assert tiny.frontier.methods == base.frontier.methods


def test_overlays_are_small_and_never_set_scale():
    for o in OVERLAYS:
        raw = yaml.safe_load(o.read_text()) or {}
        assert "scale" not in raw
        assert len(o.read_text().splitlines()) < 70, f"{o.name} should state only what differs"


def test_overlay_errors(tmp_path):
    p = write(tmp_path, lambda r: r.update(scale="tiny"))   # no presets/ beside it
    with pytest.raises(ConfigError, match=r"overlay .*tiny\.yaml of scale 'tiny' is missing"):
        config.load(p)
    (tmp_path / "presets").mkdir()
    (tmp_path / "presets" / "tiny.yaml").write_text("network:\n  resnet50:\n    widht: 0.5\n")
    with pytest.raises(ConfigError, match=r"^network\.resnet50\.widht: unknown key"):
        config.load(p)
    (tmp_path / "presets" / "tiny.yaml").write_text("scale: paper\n")
    with pytest.raises(ConfigError, match="must not set scale"):
        config.load(p)
    with pytest.raises(ConfigError, match=r"^.*scale: must be one of"):
        config.load(write(tmp_path, lambda r: r.update(scale="huge")))


def test_merge():
    assert config.merge({"a": {"b": 1, "c": 2}, "d": [1]}, {"a": {"b": 3}, "d": [2]}) == {"a": {"b": 3, "c": 2}, "d": [2]}


def test_method_sections_come_from_the_registry():
    cfg = config.load(ROOT / "params.yaml")
    from mpq import methods
    sections = {m.section for m in methods.METHODS.values() if m.section}
    assert set(cfg.methods) == sections
    assert cfg.alps.epochs > 0 and cfg.eagl.variant
    with pytest.raises(AttributeError):
        cfg.nonexistent


@pytest.mark.parametrize("mutate,pattern", [
    (lambda r: r["network"]["resnet50"].update(widht=0.5), r"^network\.resnet50\.widht: unknown key"),
    (lambda r: r["network"]["resnet50"].update(width=-1), r"^network\.resnet50\.width: must be in \(0, 4\]"),
    (lambda r: r["network"]["resnet50"].pop("batch_size"), r"^network\.resnet50\.batch_size: missing key"),
    (lambda r: r["network"]["resnet50"].update(batch_size="big"), r"batch_size: must be an integer"),
    (lambda r: r.update(networks=["vgg16"]), r"^networks: unknown network 'vgg16'"),
    (lambda r: r.update(device="tpu"), r"^device: must be auto, cpu or cuda"),
    (lambda r: r.update(networks=[]), r"^networks: must list at least one network"),
    (lambda r: r.pop("hessian"), r"^hessian: missing key: the settings of method 'hessian'"),
    (lambda r: r["alps"].update(epochs=0), r"^alps\.epochs: must be > 0"),
    (lambda r: r["eagl"].update(variant="x"), r"^eagl\.variant: must be one of"),
    (lambda r: r["frontier"].update(methods=["eagl", "foo"]), r"^frontier\.methods: unknown method \['foo'\]"),
    (lambda r: r["report"].update(tolerance=-1), r"^report\.tolerance: must be >= 0"),
    (lambda r: r["quant"].update(low_bits=4), r"^quant\.low_bits: must be below start_bits"),
    (lambda r: r.update(colour="blue"), r"^colour: unknown key"),
    (lambda r: r["data"].update(segmentation_format="voc"), r"^data\.segmentation_format: must be"),
    (lambda r: r["train"].update(distill=2), r"^train\.distill: must be in \[0, 1\]"),
    (lambda r: r["network"]["resnet50"].update(quant_step_lr_mult={4: 0}),
     r"^network\.resnet50\.quant_step_lr_mult\.4: must be > 0"),
    (lambda r: r["network"]["resnet50"].update(quant_step_lr_mult={"four": 10}),
     r"^network\.resnet50\.quant_step_lr_mult: keys are bit widths"),
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


def test_enter_repository_finds_the_root_from_a_subfolder(tmp_path, monkeypatch):
    from mpq import paths
    monkeypatch.chdir(ROOT / "results")
    assert paths.enter_repository() == ROOT and Path.cwd() == ROOT
    with pytest.raises(FileNotFoundError, match="no repository root"):
        paths.enter_repository(tmp_path)


def test_step_lr_multiplier_is_per_network_and_optional(tmp_path, micro_params):
    """The quantized fine-tune of each network gets its own multipliers; a network without the key gets x1."""
    from mpq.experiment import Experiment
    cfg = config.load(write(tmp_path, lambda r: r["network"]["resnet101"].pop("quant_step_lr_mult")))
    assert cfg.net("resnet101").quant_step_lr_mult == {} and cfg.net("resnet50").quant_step_lr_mult
    micro = config.load(micro_params)
    exp = Experiment(micro, "resnet50", progress=False)
    assert exp.fit_settings("quant").step_lr_mult == dict(micro.net("resnet50").quant_step_lr_mult)
    assert exp.fit_settings("float").step_lr_mult == {}
