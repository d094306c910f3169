"""Training loop: one step per network, schedule, evaluation, bad input; fp32 bit-identity, bf16, channels-last,
syncs, torch.compile."""
import math
import os

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import mpq
from mpq import networks
from mpq.quantizers import QConv2d
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
    mpq.set_bits(q, {"0": 2, "2": 4}, allow_fixed=True)  # (both are first/last layers, kept at 8 otherwise)
    assert len(param_groups(q, 1e-4)) == 2  # no multipliers: every step with the BN parameters
    decay, no_decay, steps2, steps4 = param_groups(q, 1e-4, step_lr_mult={2: 30, 4: 210})
    assert decay["weight_decay"] == 1e-4 and len(decay["params"]) == 2  # two conv weights
    assert all(p.ndim <= 1 for p in no_decay["params"]) and no_decay["params"]
    assert decay["lr_mult"] == no_decay["lr_mult"] == 1
    assert (steps2["lr_mult"], steps4["lr_mult"]) == (30, 210) and steps2["weight_decay"] == 0
    assert steps2["params"] == [q[0].wq.step] and steps4["params"] == [q[2].wq.step]
    names = {id(p): n for n, p in q.named_parameters()}
    assert any(names[id(p)].endswith(".step") for p in no_decay["params"])  # activation steps: base lr


def test_step_lr_multiplier_moves_the_steps_faster():
    """The same fit with a multiplier m for the (8-bit) layers moves their weight steps further than with 1."""
    def run(mult):
        torch.manual_seed(0)
        model = mpq.quantize(torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                                 torch.nn.Linear(8 * 6 * 6, 3)), 4)
        x = torch.randn(64, 1, 8, 8)
        mpq.calibrate(model, [x])
        start = {n: p.detach().clone() for n, p in model.named_parameters() if n.endswith(".wq.step")}
        data = DataLoader(TensorDataset(x, torch.randint(0, 3, (64,))), batch_size=16)
        fit(model, data, task="classification", settings=FitSettings(epochs=2, lr=0.05, step_lr_mult={8: mult}),
            progress=False)
        return {n: float((p.detach() - start[n]).abs().sum()) for n, p in model.named_parameters()
                if n.endswith(".wq.step")}
    slow, fast = run(1.0), run(50.0)
    assert set(slow) == set(fast) and slow
    assert all(fast[n] > 5 * slow[n] for n in slow if slow[n] > 0)


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


# ---- speed options: the fp32 default is the original arithmetic; bf16, channels-last, no per-step sync ----------

def _small_qnet(seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
                              torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
                              torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(8, 4))
    return net, mpq.quantize(net, 4)


def _reference_loss(out, y, s, teacher_out):
    """The classification loss as first written."""
    loss = torch.nn.functional.cross_entropy(out, y, label_smoothing=s.label_smoothing)
    if teacher_out is not None and s.distill > 0:
        kl = torch.nn.functional.kl_div(torch.nn.functional.log_softmax(out, 1),
                                        torch.nn.functional.log_softmax(teacher_out, 1), log_target=True,
                                        reduction="none").sum(1).mean()
        loss = (1 - s.distill) * loss + s.distill * kl
    return loss


def _reference_fit(model, loader, *, settings, teacher=None):
    """``fit`` as first written (a loss read and a finiteness check per step): the fp32 result to match."""
    from mpq.train import _batches
    total = max(1, round(settings.epochs * len(loader)))
    warmup = round(settings.warmup_epochs * len(loader))
    opt = torch.optim.SGD(param_groups(model, settings.weight_decay), lr=settings.lr,
                          momentum=settings.momentum, nesterov=settings.momentum > 0)
    if teacher is not None:
        teacher.eval()
    model.train()
    losses = []
    for step, (_, _, _, (x, y)) in enumerate(_batches(loader, total)):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, total, warmup, settings.lr)
        t_out = None
        if teacher is not None and settings.distill > 0:
            with torch.no_grad():
                t_out = teacher(x)
        loss = _reference_loss(model(x), y, settings, t_out)
        assert torch.isfinite(loss)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tail = losses[-len(loader):]
    return sum(tail) / len(tail)


@pytest.mark.parametrize("sync_every", [1, 2, 50])
def test_fp32_fit_and_evaluate_are_bit_identical_to_the_reference_loop(sync_every):
    settings = FitSettings(epochs=1.75, lr=0.05, warmup_epochs=0.5, label_smoothing=0.1, distill=0.5)
    data = loader("classification", n=16, size=8, classes=4)
    results = []
    for run in ("fit", "reference"):
        teacher, q = _small_qnet()
        mpq.calibrate(q, (x for x, _ in data))
        torch.manual_seed(1)
        if run == "fit":
            loss = fit(q, data, task="classification", settings=settings, teacher=teacher, progress=False,
                       sync_every=sync_every)["loss"]
        else:
            loss = _reference_fit(q, data, settings=settings, teacher=teacher)
        results.append((loss, q.state_dict(), evaluate(q, data, task="classification", num_classes=4)))
    (loss, state, metric), (ref_loss, ref_state, ref_metric) = results
    assert loss == ref_loss and metric == ref_metric
    assert list(state) == list(ref_state) and all(torch.equal(state[k], ref_state[k]) for k in state)


def test_fit_reads_the_losses_only_every_sync_every_steps(monkeypatch):
    _, q = _small_qnet()
    data = list(loader("classification", n=16, size=8, classes=4))  # (a DataLoader reads a CPU seed per epoch)
    mpq.calibrate(q, (x for x, _ in data))
    reads = []

    def count(name, original):
        def wrapper(self, *args, **kwargs):
            reads.append(name)
            return original(self, *args, **kwargs)
        return wrapper
    for name in ("__bool__", "__float__", "__int__", "__index__", "item", "tolist"):
        monkeypatch.setattr(torch.Tensor, name, count(name, getattr(torch.Tensor, name)))
    stats = fit(q, data, task="classification", settings=FitSettings(epochs=2.5, lr=0.05, distill=0.5),
                teacher=_small_qnet()[0], progress=False, sync_every=4)
    monkeypatch.undo()
    assert stats["steps"] == 10
    assert reads == ["tolist"] * 3  # steps 0-3, 4-7 and the last two: one read each, nothing else


def test_non_finite_loss_names_its_step_and_the_checked_range():
    model = torch.nn.Linear(2, 2)
    x = torch.randn(16, 2) * 1e30
    data = DataLoader(TensorDataset(x, torch.zeros(16).long()), batch_size=2)
    with pytest.raises(FloatingPointError,
                       match=r"lin: loss became (nan|inf) at step [0-2] \(read at the check of steps 0-2\); "
                             r"lower the lr"):
        fit(model, data, task="classification", settings=FitSettings(2, 1e30), progress=False, sync_every=3,
            desc="lin")


def test_bad_speed_options():
    model = torch.nn.Linear(2, 2)
    data = DataLoader(TensorDataset(torch.randn(4, 2), torch.zeros(4).long()), batch_size=2)
    with pytest.raises(ValueError, match="precision must be one of"):
        fit(model, data, task="classification", settings=FitSettings(1, 0.1), precision="fp16")
    with pytest.raises(ValueError, match="precision must be one of"):
        evaluate(model, data, task="classification", num_classes=2, precision="auto")
    with pytest.raises(ValueError, match="sync_every must be"):
        fit(model, data, task="classification", settings=FitSettings(1, 0.1), sync_every=0)


def _separable(n=128, size=8, seed=0):
    torch.manual_seed(seed)
    x = torch.randn(n, 3, size, size)
    y = (x[:, 0].mean((1, 2)) > 0).long() + 2 * (x[:, 1].mean((1, 2)) > 0).long()  # 4 classes
    return DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)


def test_bf16_fit_trains_a_quantized_conv_net_on_cpu():
    teacher, q = _small_qnet()
    data = _separable()
    mpq.calibrate(q, (x for x, _ in data))
    before = {k: v.clone() for k, v in q.state_dict().items()}
    losses = [fit(q, data, task="classification", settings=FitSettings(epochs=1, lr=0.3, distill=0.1),
                  teacher=teacher, progress=False, precision="bf16")["loss"] for _ in range(4)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.95 * losses[0]  # measured: 1.23 -> 1.05
    changed = [k for k, v in q.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.endswith("aq.step") for k in changed) and any(k.endswith("wq.step") for k in changed)
    assert all(p.dtype == torch.float32 for p in q.parameters())  # autocast: the parameters stay fp32
    metric = evaluate(q, data, task="classification", num_classes=4, precision="bf16")
    assert abs(metric - evaluate(q, data, task="classification", num_classes=4)) <= 5


def test_bf16_segmentation_step_and_channels_last():
    spec = networks.get_spec("pspnet")
    model = networks.build("pspnet", num_classes=11, width=0.125)
    q = mpq.quantize(model, 4, keep_8bit=spec.fixed_8bit, skip=spec.float_only)
    data = loader("segmentation", n=4, size=64, classes=11)
    mpq.calibrate(q, (x for x, _ in data))
    stats = fit(q, data, task="segmentation", settings=FitSettings(epochs=1, lr=0.01, distill=0.5), teacher=model,
                progress=False, precision="bf16", channels_last=True)
    assert math.isfinite(stats["loss"])
    conv = next(m for m in q.modules() if isinstance(m, QConv2d) and m.kernel_size != (1, 1))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert 0 <= evaluate(q, data, task="segmentation", num_classes=11, precision="bf16", channels_last=True) <= 100


def test_channels_last_fp32_matches_the_default_layout():
    data = loader("classification", n=16, size=8, classes=4)
    results = []
    for channels_last in (False, True):
        _, q = _small_qnet()
        mpq.calibrate(q, (x for x, _ in data))
        loss = fit(q, data, task="classification", settings=FitSettings(epochs=1, lr=0.05), progress=False,
                   channels_last=channels_last)["loss"]
        results.append((loss, q.state_dict()))
    (l0, s0), (l1, s1) = results
    assert l1 == pytest.approx(l0, rel=1e-4)
    assert all(torch.allclose(s0[k].float(), s1[k].float(), rtol=1e-3, atol=1e-5) for k in s0)
    assert s1["0.weight"].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", [
    "aot_eager",  # dynamo + AOTAutograd trace the LSQ Function: seconds
    pytest.param("inductor", marks=pytest.mark.skipif(os.environ.get("MPQ_HEAVY_TESTS") != "1",
                                                      reason="inductor compiles C++ for ~20 s on 2 cores: "
                                                             "set MPQ_HEAVY_TESTS=1"))])
def test_compiled_fit_matches_eager(backend, monkeypatch):
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: compile_(model, backend=backend, **kw))
    data = loader("classification", n=16, size=8, classes=4)
    results = []
    for compiled in (False, True):
        teacher, q = _small_qnet()
        mpq.calibrate(q, (x for x, _ in data))
        torch._dynamo.reset()
        torch.manual_seed(1)
        loss = fit(q, data, task="classification", settings=FitSettings(epochs=1, lr=0.05, distill=0.5),
                   teacher=teacher, progress=False, compile=compiled)["loss"]
        results.append((loss, q.state_dict()))
    torch._dynamo.reset()
    (l0, s0), (l1, s1) = results
    assert l1 == pytest.approx(l0, rel=1e-5)
    assert all(torch.allclose(s0[k].float(), s1[k].float(), rtol=1e-4, atol=1e-6) for k in s0)
