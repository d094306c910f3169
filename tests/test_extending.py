"""The extension paths: a new method is its module + one registry entry + its params section; a new
network is one registry entry + its params section. A toy of each runs the pipeline's steps and the
report, and dvc.yaml picks them up."""
from collections import OrderedDict
from dataclasses import dataclass

import pandas as pd
import pytest
import yaml
from torch import nn

from mpq import config, frontier_run, methods, networks, pipeline, report
from mpq.errors import check
from mpq.experiment import Experiment
from mpq.quantized import candidate_layers, quant_layers
from mpq.sensitivity import CostRecord, Sensitivity
from tests.conftest import write_params


# ---- the toy method: its "module" (a settings dataclass and a compute function) ------------------
@dataclass(frozen=True)
class NormSettings:
    power: float

    def validate(self, key: str) -> None:
        check(self.power > 0, f"{key}.power", f"must be > 0, got {self.power}")


def norm_scores(exp, *, method, qmodel, teacher, out, seed) -> Sensitivity:
    """Mean |W|^power of each candidate layer (a made-up, data-free score)."""
    layers = quant_layers(qmodel)
    power = exp.cfg.weight_norm.power
    rows = [{"layer": n, "bits_from": exp.cfg.quant.start_bits, "bits_to": exp.cfg.quant.low_bits,
             "score": float(layers[n].weight.detach().abs().pow(power).mean())} for n in candidate_layers(qmodel)]
    return Sensitivity(method, pd.DataFrame(rows), CostRecord(method=method, seconds=0.001, device="cpu"))


# ---- the toy network ------------------------------------------------------------------------------
def build_toy(*, num_classes: int, width: float = 1.0, weights: str | None = None) -> nn.Module:
    c = max(4, int(16 * width))
    return nn.Sequential(OrderedDict(
        stem=nn.Conv2d(3, c, 3, stride=2, padding=1), r0=nn.ReLU(),
        conv1=nn.Conv2d(c, c, 3, padding=1), r1=nn.ReLU(), conv2=nn.Conv2d(c, c, 3, stride=2, padding=1),
        r2=nn.ReLU(), conv3=nn.Conv2d(c, c, 1), r3=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(1),
        flat=nn.Flatten(), head=nn.Linear(c, num_classes)))


@pytest.fixture
def toys():
    methods.register(methods.Method("weight_norm", "Weight norm", "#8c564b", "P", "control", norm_scores,
                                    section="weight_norm", settings=NormSettings))
    networks.register(networks.NetworkSpec("toynet", "classification", build_toy, fixed_8bit=("stem", "head"),
                                           candidate_count=3, title="Toy-Net", figure="F9", claims=("C1", "C2")))
    yield
    methods.unregister("weight_norm")
    networks.unregister("toynet")


def toy_params(tmp_path, embedded):
    net = dict(width=1.0, input_size=32, batch_size=32, train_size=128, eval_size=64, weights=None,
               float_epochs=1, float_lr=0.1, quant_epochs=0.5, quant_lr=0.01)
    path = write_params(tmp_path / "params.yaml", data__root=str(embedded[0]), networks=["toynet"],
                        alps__workers=1, hessian__samples=2, frontier__workers=1, allocate__points=2,
                        frontier__methods=[*methods.names()])
    raw = config.resolve(path)
    raw["network"] = {"toynet": net}
    raw["weight_norm"] = {"power": 2.0}   # the toy method's params section
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def test_a_toy_method_and_network_run_the_steps_and_the_report(toys, embedded, tmp_path):
    cfg = config.load(toy_params(tmp_path, embedded))
    assert cfg.weight_norm.power == 2.0
    exp = Experiment(cfg, "toynet", progress=False)
    results = tmp_path / "results"
    exp.baselines(results / "toynet")
    for name in methods.names():
        table = exp.sensitivity(name, results / "toynet").table
        assert len(table) == 3
    front = frontier_run.run(exp, results / "toynet")
    assert "weight_norm" in set(front.method)
    items = report.build(results, tmp_path / "report", ["toynet"], scale="tiny", start_bits=4, low_bits=2,
                         tolerance=cfg.report.tolerance, compute_factor=cfg.report.compute_factor,
                         cost_kind="throughput")
    assert "F9_frontier_toynet" in items          # the figure id comes from the network registry
    t2 = (tmp_path / "report" / "T2_matched_throughput.md").read_text()
    assert "Weight norm" in t2 and "Toy-Net" in t2  # the label and title come from the registries
    t4 = pd.read_csv(tmp_path / "report" / "T4_claims.csv")
    assert "Toy-Net" in t4.evidence[0]             # its claims group puts it under C1


def test_the_toy_method_reaches_config_cli_and_dvc_yaml(toys, embedded, tmp_path):
    path = toy_params(tmp_path, embedded)
    raw = path.read_text()
    path.write_text(raw.replace("power: 2.0", "power: -1"))
    with pytest.raises(config.ConfigError, match=r"^weight_norm\.power: must be > 0"):
        config.load(path)
    path.write_text(raw.replace("weight_norm:\n  power: 2.0\n", ""))
    with pytest.raises(config.ConfigError, match=r"^weight_norm: missing key: the settings of method 'weight_norm'"):
        config.load(path)
    text = pipeline.render()
    assert "results/${item}/sensitivity/weight_norm.csv" in text and "        - weight_norm\n" in text
    from mpq.cli import build_parser
    assert "weight_norm" in build_parser()._subparsers._group_actions[0].choices["sensitivity"].format_help()


def test_registry_errors_are_one_line():
    with pytest.raises(ValueError, match="unknown method 'nope': choose one of"):
        methods.get("nope")
    with pytest.raises(ValueError, match="registered already"):
        methods.register(methods.get("eagl"))
    with pytest.raises(config.ConfigError, match="role must be one of"):
        methods.Method("x", "X", "#000", "o", "leader", "mpq.eagl:run").validate()
    with pytest.raises(ValueError, match="unknown network 'vgg'"):
        networks.get_spec("vgg")
