"""EAGL: entropy closed forms, invariances, variants, speed-independent correctness."""
import math

import pytest
import torch

import mpq
from mpq import eagl, networks
from mpq.quantized import NotQuantizedError, quant_layers
from mpq.sensitivity import COLUMNS


@pytest.mark.parametrize("bits", [2, 4])
def test_all_codes_equal_is_zero_bits(bits):
    assert eagl.code_entropy(torch.full((100,), 1), bits=bits) == 0.0
    assert eagl.weight_entropy(torch.full((50,), 0.3), 0.1, bits=bits) == 0.0


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_uniform_codes_give_bits(bits):
    qn, qp = 2 ** (bits - 1), 2 ** (bits - 1) - 1
    codes = torch.arange(-qn, qp + 1).repeat(7)
    assert eagl.code_entropy(codes, bits=bits) == pytest.approx(bits)
    # weights exactly on every grid level, step 0.5
    assert eagl.weight_entropy(codes.float() * 0.5, 0.5, bits=bits) == pytest.approx(bits)


def test_two_levels_half_half_is_one_bit_and_clamping_counts():
    assert eagl.code_entropy(torch.tensor([0, 1] * 10), bits=4) == pytest.approx(1.0)
    # everything beyond the range clamps onto the two end levels
    w = torch.tensor([-100.0, 100.0] * 5)
    assert eagl.weight_entropy(w, 1.0, bits=4) == pytest.approx(1.0)


def test_permutation_invariance():
    torch.manual_seed(0)
    w = torch.randn(64, 32, 3, 3)
    perm = w.flatten()[torch.randperm(w.numel())].view_as(w)
    assert eagl.weight_entropy(w, 0.2, bits=4) == eagl.weight_entropy(perm, 0.2, bits=4)


def test_entropy_bounds_and_known_value():
    p = torch.tensor([0.5, 0.25, 0.25])
    codes = torch.tensor([0, 0, 1, 2])
    assert eagl.code_entropy(codes, bits=4) == pytest.approx(float(-(p * p.log2()).sum()))
    torch.manual_seed(1)
    h = eagl.weight_entropy(torch.randn(10000), 0.3, bits=4)
    assert 0 < h <= 4


@pytest.fixture(scope="module")
def qresnet():
    torch.manual_seed(0)
    spec = networks.get_spec("resnet50")
    q = mpq.quantize(networks.build("resnet50", num_classes=10, width=0.0625), 4, keep_8bit=spec.fixed_8bit)
    q.eval()
    q(torch.randn(2, 3, 32, 32))
    return q


@pytest.mark.parametrize("variant", eagl.VARIANTS)
def test_scores_table(qresnet, variant):
    s = eagl.scores(qresnet, variant=variant)
    t = s.table
    assert list(t.columns[:4]) == list(COLUMNS) and len(t) == 52 and s.method == "eagl"
    assert (t.bits_from == 4).all() and (t.bits_to == 2).all()
    assert t.entropy.between(0, 4).all() and t.levels_used.between(1, 16).all()
    if variant == "entropy":
        assert (t.score == t.entropy).all()
    if variant == "entropy_x_params":
        assert (t.score == t.entropy * t.params).all()
    if variant == "entropy_drop":
        assert (t.score == t.entropy - t.entropy_low).all()
    assert t.entropy_low.between(0, 2).all()
    assert s.cost.seconds >= 0 and s.cost.forward_passes == 0 and s.meta["variant"] == variant


def test_scores_read_each_layers_trained_step(qresnet):
    name = "layer2.1.conv2"
    layer = quant_layers(qresnet)[name]
    before = eagl.scores(qresnet).scores[name]
    old = layer.wq.step.detach().clone()
    with torch.no_grad():
        layer.wq.step.mul_(1000)  # every weight rounds to 0: one level used
    try:
        assert eagl.scores(qresnet).scores[name] == 0.0 != before
    finally:
        with torch.no_grad():
            layer.wq.step.copy_(old)


def test_bad_input(qresnet):
    with pytest.raises(ValueError, match="unknown EAGL variant 'ent'"):
        eagl.scores(qresnet, variant="ent")
    with pytest.raises(NotQuantizedError):
        eagl.scores(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_entropy_needs_no_gradients(qresnet):
    for p in qresnet.parameters():
        p.grad = None
    eagl.scores(qresnet)
    assert all(p.grad is None for p in qresnet.parameters())
    assert math.isfinite(sum(eagl.scores(qresnet).scores.values()))
