"""Training loop: one step per network, schedule, evaluation, bad input."""
import math

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mpq
from mpq import networks
from mpq.train import FitSettings, chance_floor, evaluate, fit, lr_at, param_groups


def loader(task, n=8, size=32, classes=10, batch=4):
    torch.manual_seed(0)
    x = torch.randn(n, 3, size, size)
    y = torch.randint(0, classes, (n,) if task == "classification" else (n, size, size))
    if task == "segmentation":
        y[:, :2] = 255  # some void pixels
    return DataLoader(TensorDataset(x, y), batch_size=batch)


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "pspnet"])
@pytest.mark.parametrize("quantized", [False, True])
def test_one_batch_train_step_per_network(name, quantized):
    spec = networks.get_spec(name)
    seg = spec.task == "segmentation"
    model = networks.build(name, num_classes=11 if seg else 10, width=0.125)
    teacher = None
    if quantized:
        teacher = model
        model = mpq.quantize(model, 4, keep_8bit=spec.fixed_8bit, skip=spec.float_only)
    data = loader(spec.task, n=4, size=64 if seg else 32, classes=11 if seg else 10)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stats = fit(model, data, task=spec.task, settings=FitSettings(epochs=1, lr=0.01, distill=0.5 * quantized),
                teacher=teacher, progress=False)
    assert stats["steps"] == 1 and math.isfinite(stats["loss"])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("weight") for k in changed)
    if quantized:
        assert any(k.endswith("wq.step") for k in changed) and any(k.endswith("aq.step") for k in changed)
    metric = evaluate(model, data, task=spec.task, num_classes=11 if seg else 10)
    assert 0 <= metric <= 100


def test_fractional_epochs_and_schedule():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    stats = fit(model, loader("classification", n=16), task="classification",
                settings=FitSettings(epochs=1.5, lr=0.1), progress=False)
    assert stats["steps"] == 6  # 1.5 x 4 batches
    assert lr_at(0, 10, 2, 1.0) == 0.5 and lr_at(1, 10, 2, 1.0) == 1.0
    assert lr_at(2, 10, 2, 1.0) == 1.0 and lr_at(10, 10, 2, 1.0) == pytest.approx(0.0)
    assert fit(model, loader("classification"), task="classification",
               settings=FitSettings(epochs=0, lr=0.1), progress=False)["steps"] == 0


def test_weight_decay_only_on_weights():
    q = mpq.quantize(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                                         torch.nn.Conv2d(4, 4, 3)), 4)
    decay, no_decay = param_groups(q, 1e-4)
    assert decay["weight_decay"] == 1e-4 and len(decay["params"]) == 2  # two conv weights
    assert all(p.ndim <= 1 for p in no_decay["params"])


def test_training_learns_a_separable_problem():
    torch.manual_seed(0)
    x = torch.randn(256, 3, 4, 4)
    y = (x[:, 0, 0, 0] > 0).long()
    data = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 2))
    fit(model, data, task="classification", settings=FitSettings(epochs=5, lr=0.5), progress=False)
    assert evaluate(model, data, task="classification", num_classes=2) > 95


def test_bad_input():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="unknown task"):
        fit(model, loader("classification"), task="detection", settings=FitSettings(1, 0.1))
    empty = DataLoader(TensorDataset(torch.zeros(0, 2), torch.zeros(0).long()), batch_size=4)
    with pytest.raises(ValueError, match="no batches"):
        fit(model, empty, task="classification", settings=FitSettings(1, 0.1))
    with pytest.raises(ValueError, match="no batches"):
        evaluate(model, empty, task="classification", num_classes=2)
    with pytest.raises(FloatingPointError, match="lower the lr"):
        x = torch.randn(8, 2) * 1e30
        fit(model, DataLoader(TensorDataset(x, torch.zeros(8).long()), batch_size=4), task="classification",
            settings=FitSettings(2, 1e30), progress=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_step_matches_the_cpu_path():
    spec = networks.get_spec("resnet50")
    model = mpq.quantize(networks.build("resnet50", num_classes=10, width=0.125), 4, keep_8bit=spec.fixed_8bit)
    stats = fit(model.cuda(), loader("classification"), task="classification",
                settings=FitSettings(epochs=1, lr=0.01), device="cuda", progress=False)
    assert math.isfinite(stats["loss"])
    assert 0 <= evaluate(model, loader("classification"), task="classification", num_classes=10, device="cuda") <= 100


def test_chance_floor():
    # classification: 100 / C plus three standard errors of a guesser on the evaluation samples
    assert chance_floor("classification", 10, 500) == pytest.approx(10 + 300 * math.sqrt(0.09 / 500))
    assert chance_floor("classification", 10, 256) == pytest.approx(15.625)
    assert 10.2 <= chance_floor("classification", 10, 1000) < 23.0  # the collapsed and the real 2-bit model
    # segmentation: 100 / C, the most a predictor that ignores its input reaches
    assert chance_floor("segmentation", 11, 300) == pytest.approx(100 / 11)
    with pytest.raises(ValueError, match="unknown task"):
        chance_floor("detection", 10, 1)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        chance_floor("classification", 1, 10)
