"""The Hessian-trace baseline: Hutchinson traces against exact Hessians, and HAWQ scores."""
import copy
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import mpq
from mpq import hessian, networks
from mpq.hessian import _hutchinson, layer_traces, scores
from mpq.quantized import NotQuantizedError, quant_layers
from mpq.sensitivity import COLUMNS, Sensitivity


def half_sq(out, _target):
    """0.5 * ||out||^2 per sample, averaged over the batch."""
    return 0.5 * out.pow(2).flatten(1).sum(1).mean()


class OneLinear(nn.Module):
    def __init__(self, d_in=5, d_out=3):
        super().__init__()
        self.lin = nn.Linear(d_in, d_out, bias=False)

    def forward(self, x):
        return self.lin(x)


class TwoHeads(nn.Module):
    """Two bias-free linears on the same input; the loss weights their outputs a and b."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(4, 2, bias=False)
        self.b = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.a(x), self.b(x)


class Diagonal(nn.Module):
    """The output is the weight itself: a per-weight quadratic loss has a diagonal Hessian."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3, bias=False)

    def forward(self, x):
        return self.lin.weight * x


class TinyMLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(3, 4)
        self.fc2 = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


def small_cnn():
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU(),
        nn.Conv2d(4, 4, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def cnn_batches(n=2, bs=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.rand(bs, 3, 8, 8, generator=g), torch.randint(0, 3, (bs,), generator=g))
            for _ in range(n)]


def quantized_cnn(per_channel=False):
    torch.manual_seed(0)
    q = mpq.quantize(small_cnn(), 4, per_channel=per_channel)
    q.eval()
    q(torch.rand(4, 3, 8, 8))  # calibrates the activation steps
    q.train()
    return q


def test_linear_least_squares_trace_within_standard_errors():
    torch.manual_seed(0)
    model = OneLinear()
    x = torch.randn(16, 5)
    exact = 3 * x.pow(2).sum(1).mean().item()  # I_out (x) X^T X / n
    tr, se = layer_traces(model, half_sq, [(x, None)], samples=400, seed=1, return_stderr=True)
    assert list(tr) == ["lin"]
    assert se["lin"] > 0
    assert abs(tr["lin"] - exact) < 4 * se["lin"]


def test_diagonal_hessian_is_exact():
    model = Diagonal()
    c = torch.arange(1.0, 13.0).view(3, 4)
    loss = lambda out, c: 0.5 * (c * out.pow(2)).sum()  # noqa: E731
    tr, se = layer_traces(model, loss, [(torch.ones(1), c)], samples=5, return_stderr=True)
    assert tr["lin"] == pytest.approx(c.sum().item(), rel=1e-6)
    assert se["lin"] == 0.0


def test_block_traces_against_exact_hessian_of_an_mlp():
    torch.manual_seed(0)
    model = TinyMLP()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    ce = nn.CrossEntropyLoss()
    w1, w2 = model.fc1.weight, model.fc2.weight

    def loss_of(a, b):
        h = torch.tanh(x @ a.T + model.fc1.bias)
        return ce(h @ b.T + model.fc2.bias, y)

    (h11, _), (_, h22) = torch.autograd.functional.hessian(loss_of, (w1.detach(), w2.detach()))
    exact = {"fc1": torch.einsum("ijij->", h11).item(), "fc2": torch.einsum("ijij->", h22).item()}
    tr, se = layer_traces(model, ce, [(x, y)], samples=400, seed=3, return_stderr=True)
    assert list(tr) == ["fc1", "fc2"]  # model order
    for n in exact:
        assert abs(tr[n] - exact[n]) < 4 * se[n] + 1e-6, (n, tr[n], exact[n], se[n])


def test_per_layer_traces_are_separate():
    torch.manual_seed(0)
    model = TwoHeads()
    x = torch.randn(10, 4)

    def loss(scale_b):
        return lambda out, _y: half_sq(out[0], None) + scale_b * half_sq(out[1], None)

    t1 = layer_traces(model, loss(1.0), [(x, None)], samples=20, seed=0)
    t10 = layer_traces(model, loss(10.0), [(x, None)], samples=20, seed=0)
    assert t10["a"] == pytest.approx(t1["a"], rel=1e-6)
    assert t10["b"] == pytest.approx(10 * t1["b"], rel=1e-5)
    assert layer_traces(model, loss(1.0), [(x, None)], samples=20, layers=["b"]).keys() == {"b"}


def test_seed_determinism():
    torch.manual_seed(0)
    model = TinyMLP()
    data = [(torch.randn(6, 3), torch.randint(0, 2, (6,)))]
    ce = nn.CrossEntropyLoss()
    a = layer_traces(model, ce, data, samples=4, seed=7)
    assert layer_traces(model, ce, data, samples=4, seed=7) == a
    assert layer_traces(model, ce, data, samples=4, seed=8) != a


def test_batches_are_accumulated_as_the_mean_loss():
    torch.manual_seed(0)
    model = TinyMLP()
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    ce = nn.CrossEntropyLoss()
    whole = layer_traces(model, ce, [(x, y)], samples=6, seed=2)
    split = layer_traces(model, ce, iter([(x[:3], y[:3]), (x[3:], y[3:])]), samples=6, seed=2)
    for n in whole:
        assert split[n] == pytest.approx(whole[n], rel=1e-5, abs=1e-7)


def test_eval_mode_and_requires_grad_are_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 8), nn.Dropout(0.5), nn.Linear(8, 2))
    model[0].weight.requires_grad_(False)
    model[2].bias.requires_grad_(False)
    model.train()
    data = [(torch.randn(5, 3), torch.randint(0, 2, (5,)))]
    ce = nn.CrossEntropyLoss()
    a = layer_traces(model, ce, data, samples=3)
    assert layer_traces(model, ce, data, samples=3) == a  # dropout off: deterministic
    assert model.training and model[1].training
    assert [p.requires_grad for p in model.parameters()] == [False, True, True, False]


def test_errors():
    model = OneLinear()
    with pytest.raises(ValueError, match="no batches"):
        layer_traces(model, half_sq, [])
    with pytest.raises(ValueError, match="samples"):
        layer_traces(model, half_sq, [(torch.randn(2, 5), None)], samples=0)
    with pytest.raises(ValueError, match="not Conv2d/Linear"):
        layer_traces(model, half_sq, [(torch.randn(2, 5), None)], layers=["nope"])
    with pytest.raises(NotQuantizedError):
        scores(small_cnn(), cnn_batches(), loss_fn=nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="no batches"):
        scores(quantized_cnn(), [], loss_fn=nn.CrossEntropyLoss())


@pytest.mark.parametrize("per_channel", [False, True])
def test_scores_on_a_quantized_cnn(per_channel):
    q = quantized_cnn(per_channel)
    before = copy.deepcopy(q.state_dict())
    data = cnn_batches()
    sens = scores(q, data, loss_fn=nn.CrossEntropyLoss(), samples=4, seed=0)
    assert isinstance(sens, Sensitivity) and sens.method == "hessian"
    t = sens.table
    assert list(t.columns[:4]) == list(COLUMNS)
    assert {"trace", "trace_stderr", "params", "qerr_from", "qerr_to"} <= set(t.columns)
    assert list(t["layer"]) == mpq.candidate_layers(q) == ["3", "5"]
    assert (t["bits_from"] == 4).all() and (t["bits_to"] == 2).all()
    assert (t["qerr_to"] > t["qerr_from"]).all()
    assert all(math.isfinite(s) for s in t["score"])
    for r in t.itertuples():
        assert r.score == pytest.approx(r.trace / r.params * (r.qerr_to - r.qerr_from))
    # qerr_to is the error mpq.set_bits gives the layer at 2 bits; qerr_from its current one
    layers = quant_layers(q)
    for r in t.itertuples():
        w = layers[r.layer].weight.detach()
        low = copy.deepcopy(q)
        mpq.set_bits(low, {r.layer: 2})
        with torch.no_grad():
            assert r.qerr_to == pytest.approx((quant_layers(low)[r.layer].wq(w) - w).pow(2).sum().item(),
                                              rel=1e-5)
            assert r.qerr_from == pytest.approx((layers[r.layer].wq(w) - w).pow(2).sum().item(), rel=1e-5)
    # the trace is that of the float view in eval mode; the model is left untouched
    fview = copy.deepcopy(q)
    for layer in quant_layers(fview).values():
        layer.wq.bits = layer.aq.bits = None
    tr = layer_traces(fview, nn.CrossEntropyLoss(), data, samples=4, seed=0, layers=["3", "5"])
    assert list(t["trace"]) == pytest.approx(list(tr.values()), rel=1e-6)
    assert q.training and mpq.get_bits(q) == {"0": 8, "3": 4, "5": 4, "9": 8}
    assert all(torch.equal(v, before[k]) for k, v in q.state_dict().items())
    c = sens.cost
    assert c.method == "hessian" and c.seconds > 0 and c.device.startswith("cpu")
    assert c.forward_passes == 8 and c.backward_passes == 8 * 5
    assert sens.meta["samples"] == 4 and sens.meta["batches"] == 2


def test_scores_resnet50_has_one_row_per_candidate():
    torch.manual_seed(0)
    model = networks.build("resnet50", num_classes=10, width=0.0625)
    q = mpq.quantize(model, 4, keep_8bit=("conv1", "fc"))
    mpq.calibrate(q, [torch.rand(4, 3, 32, 32)])
    data = [(torch.rand(4, 3, 32, 32), torch.randint(0, 10, (4,)))]
    sens = scores(q, data, loss_fn=nn.CrossEntropyLoss(), samples=2)
    assert len(sens.table) == 52
    assert list(sens.table["layer"]) == mpq.candidate_layers(q)
    assert sens.table["score"].map(math.isfinite).all()


# --------------------------------------------------------------------------- chunks of a batch

def seg_net():
    """A tiny fully convolutional segmenter: (N, 3, H, W) -> (N, 3 classes, H, W)."""
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
                         nn.Conv2d(4, 4, 3, padding=1), nn.Tanh(), nn.Conv2d(4, 4, 1), nn.Tanh(),
                         nn.Conv2d(4, 3, 1))


def seg_batch(n=5, seed=0):
    """Masks with a different number of void (255) pixels per image; image 1 is all void."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (n, 6, 6), generator=g)
    void = torch.rand(n, 6, 6, generator=g) < torch.linspace(0.1, 0.9, n).view(n, 1, 1)
    y[void] = 255
    y[1] = 255
    return x, y


def seg_ce(out, y):
    return nn.functional.cross_entropy(out, y, ignore_index=255)


@pytest.mark.parametrize("chunk", [1, 2, 3, 6, 7, 100])
def test_chunked_traces_equal_whole_batch_classification(chunk):
    torch.manual_seed(0)
    model = small_cnn()
    data = cnn_batches(n=2, bs=7)
    ce = nn.CrossEntropyLoss()
    whole = layer_traces(model, ce, data, samples=3, seed=1, return_stderr=True)
    parts = layer_traces(model, ce, data, samples=3, seed=1, return_stderr=True, chunk_size=chunk)
    for w, p in zip(whole, parts):
        assert list(p) == list(w)
        assert list(p.values()) == pytest.approx(list(w.values()), rel=1e-5, abs=1e-8)
    if chunk >= 7:  # no chunking at all: bit-identical
        assert parts == whole


@pytest.mark.parametrize("chunk", [1, 2, 4])
def test_chunked_traces_equal_whole_batch_segmentation_with_void_pixels(chunk):
    torch.manual_seed(0)
    model = seg_net()
    x, y = seg_batch()
    data = [(x, y), (x[:3].flip(-1), y[:3].flip(-1))]
    whole = layer_traces(model, seg_ce, data, samples=3, seed=2)
    parts = layer_traces(model, seg_ce, data, samples=3, seed=2, chunk_size=chunk, ignore_index=255)
    assert all(math.isfinite(t) for t in parts.values())  # the all-void chunk is skipped, not NaN
    assert list(parts.values()) == pytest.approx(list(whole.values()), rel=1e-5, abs=1e-8)
    # weighting the chunks by images instead of valid pixels is a different (wrong) average
    by_images = layer_traces(model, seg_ce, [(x, y)], samples=3, seed=2, chunk_size=2)
    right = layer_traces(model, seg_ce, [(x, y)], samples=3, seed=2, chunk_size=2, ignore_index=255)
    assert list(by_images.values()) != pytest.approx(list(right.values()), rel=1e-3)
    # ignore_index does not change an unchunked run
    assert layer_traces(model, seg_ce, data, samples=3, seed=2, ignore_index=255) == whole


def test_all_void_batch_adds_zero_with_or_without_chunks():
    torch.manual_seed(0)
    model = seg_net()
    x, y = seg_batch(n=4)
    y[:] = 255
    whole = layer_traces(model, seg_ce, [(x, y)], samples=2)
    parts = layer_traces(model, seg_ce, [(x, y)], samples=2, chunk_size=1, ignore_index=255)
    assert set(whole.values()) == set(parts.values()) == {0.0}


def test_probes_do_not_depend_on_chunking():
    """Per probe (not only on average) the estimate is the same: every chunk of one
    sample index sees the same Rademacher vector."""
    torch.manual_seed(0)
    model = TinyMLP()
    data = [(torch.randn(9, 3), torch.randint(0, 2, (9,))), (torch.randn(4, 3), torch.randint(0, 2, (4,)))]
    ce = nn.CrossEntropyLoss()
    _, ref, _, info = _hutchinson(model, ce, data, samples=6, seed=4, layers=None, device="cpu")
    assert info == {"chunk_used": 9, "oom_retries": 0}
    for chunk in (1, 2, 5):
        _, est, images, info = _hutchinson(model, ce, data, samples=6, seed=4, layers=None,
                                           device="cpu", chunk_size=chunk)
        assert images == 13 and info["chunk_used"] == chunk
        torch.testing.assert_close(est, ref, rtol=1e-5, atol=1e-9)
    _, other, _, _ = _hutchinson(model, ce, data, samples=6, seed=5, layers=None, device="cpu",
                                 chunk_size=2)
    assert not torch.allclose(other, ref, rtol=1e-3)  # the comparison can tell probes apart


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "big", "4", [2]])
def test_invalid_chunk_sizes(bad):
    data = [(torch.randn(4, 5), None)]
    with pytest.raises(ValueError, match="chunk_size must be") as err:
        layer_traces(OneLinear(), half_sq, data, chunk_size=bad)
    assert "\n" not in str(err.value)


def test_chunking_errors_are_one_line():
    model = OneLinear()
    x = torch.randn(4, 5)
    cases = [
        (dict(ignore_index="255"), "ignore_index must be"),
        (dict(ignore_index=True), "ignore_index must be"),
        (dict(chunk_size=2, ignore_index=255), "needs tensor targets"),  # targets are None
    ]
    for kw, msg in cases:
        with pytest.raises(ValueError, match=msg) as err:
            layer_traces(model, half_sq, [(x, None)], **kw)
        assert "\n" not in str(err.value)
    with pytest.raises(ValueError, match="leading batch dimension of 4") as err:
        layer_traces(model, half_sq, [(x, torch.zeros(3))], chunk_size=2)
    assert "\n" not in str(err.value)


def test_auto_chunk_halves_on_out_of_memory_and_records_it():
    q = quantized_cnn()
    data = cnn_batches(n=2, bs=7)
    ce = nn.CrossEntropyLoss()
    seen = []

    def small_memory(out, y):  # pretends a graph of more than 2 images does not fit
        seen.append(out.shape[0])
        if out.shape[0] > 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return ce(out, y)

    ref = scores(q, data, loss_fn=ce, samples=3, seed=0)
    auto = scores(q, data, loss_fn=small_memory, samples=3, seed=0, chunk_size="auto")
    assert seen == [7, 3, 1, 1, 1, 1, 1, 1, 1] + [1] * 7  # 7 -> 3 -> 1, then 1 for the rest
    assert auto.meta["chunk_used"] == 1 and auto.meta["oom_retries"] == 2
    assert auto.meta["chunk_size"] == "auto" and auto.meta["chunk_weight"] == "samples"
    assert list(auto.table["trace"]) == pytest.approx(list(ref.table["trace"]), rel=1e-5)
    assert auto.cost.forward_passes == ref.cost.forward_passes == 14
    # a fixed chunk size does not retry: the error propagates
    with pytest.raises(torch.cuda.OutOfMemoryError):
        scores(q, data, loss_fn=small_memory, samples=3, seed=0, chunk_size=4)
    # nor does "auto" once a single image does not fit

    def no_memory(out, y):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")

    with pytest.raises(torch.cuda.OutOfMemoryError):
        scores(q, data, loss_fn=no_memory, samples=3, seed=0, chunk_size="auto")
    assert q.training  # modes restored after the failure


def test_scores_meta_only_records_chunking_when_asked():
    q = quantized_cnn()
    data = cnn_batches(n=2, bs=5)
    ce = nn.CrossEntropyLoss()
    plain = scores(q, data, loss_fn=ce, samples=3, seed=0)
    assert not {"chunk_size", "chunk_used", "oom_retries", "chunk_weight"} & set(plain.meta)
    assert "chunk" not in plain.cost.notes
    whole = scores(q, data, loss_fn=ce, samples=3, seed=0, chunk_size=64)
    assert whole.table.equals(plain.table)  # a chunk >= the batch is the unchunked path
    assert whole.meta["chunk_used"] == 5
    two = scores(q, data, loss_fn=ce, samples=3, seed=0, chunk_size=2)
    assert two.meta["chunk_used"] == 2 and two.meta["oom_retries"] == 0
    assert "chunks of at most 2 samples" in two.cost.notes
    assert list(two.table["score"]) == pytest.approx(list(plain.table["score"]), rel=1e-5)


@pytest.mark.parametrize("task", ["classification", "segmentation"])
def test_run_passes_the_chunk_setting(task):
    torch.manual_seed(0)
    if task == "segmentation":
        q = mpq.quantize(seg_net(), 4)
        x, y = seg_batch()
        batches = [(x, y)]
    else:
        q = quantized_cnn()
        batches = cnn_batches(n=1, bs=5)
        y = batches[0][1]
    q.eval()
    q(batches[0][0])
    q.train()
    exp = SimpleNamespace(
        cfg=SimpleNamespace(hessian=SimpleNamespace(batches=1, samples=3, chunk=2),
                            quant=SimpleNamespace(low_bits=2)),
        loader=lambda *a, **k: iter(batches), device="cpu",
        data=SimpleNamespace(task=task, ignore_index=255),
        loss_fn=lambda out, t: nn.functional.cross_entropy(out, t, ignore_index=255))
    got = hessian.run(exp, method="hessian", qmodel=q, teacher=None, out=None, seed=0)
    assert got.meta["chunk_size"] == 2
    assert got.meta["chunk_weight"] == ("targets != ignore_index (255)" if task == "segmentation"
                                        else "samples")
    exp.cfg.hessian.chunk = None
    ref = hessian.run(exp, method="hessian", qmodel=q, teacher=None, out=None, seed=0)
    assert "chunk_size" not in ref.meta
    assert list(got.table["trace"]) == pytest.approx(list(ref.table["trace"]), rel=1e-5)
