"""Cost model: MACs by hooks against hand counts, and the three costs."""
import pytest
import torch

from mpq import cost


def test_layer_macs_hand_computed():
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1),             # 8x8 out: 8*8*8 * 3*3*3
        torch.nn.Conv2d(8, 8, 3, stride=2, padding=1),   # 4x4 out: 8*4*4 * 8*3*3
        torch.nn.Conv2d(8, 8, 3, padding=1, groups=4),   # 4x4 out: 8*4*4 * 2*3*3
        torch.nn.Flatten(), torch.nn.Linear(8 * 16, 5))  # 5 * 128
    macs = cost.layer_macs(model, torch.rand(4, 3, 8, 8))  # per sample, whatever the batch
    assert macs == {"0": 512 * 27, "1": 128 * 72, "2": 128 * 18, "4": 640}
    assert cost.layer_params(model) == {"0": 216, "1": 576, "2": 144, "4": 640}


def test_dilated_conv_macs():
    conv = torch.nn.Conv2d(2, 2, 3, padding=2, dilation=2)
    assert cost.layer_macs(torch.nn.Sequential(conv), torch.rand(1, 2, 5, 5)) == {"0": 2 * 25 * 18}


MACS = {"a": 1000, "b": 3000, "c": 100}
PARAMS = {"a": 10, "b": 20, "c": 5}
ALL4 = {"a": 4, "b": 4, "c": 8}


def test_throughput_relative_to_all_4_bits():
    assert cost.relative("throughput", ALL4, ALL4, MACS, PARAMS) == 1.0
    all2 = {"a": 2, "b": 2, "c": 8}
    # time: 4-bit = (1000 + 3000)/2 + 100/1 = 2100; 2-bit = 4000/4 + 100 = 1100
    assert cost.relative("throughput", all2, ALL4, MACS, PARAMS) == pytest.approx(2100 / 1100)


def test_bops_and_size():
    assert cost.total_cost("bops", ALL4, MACS, PARAMS) == 1000 * 16 + 3000 * 16 + 100 * 64
    assert cost.total_cost("size", ALL4, MACS, PARAMS) == 10 * 4 + 20 * 4 + 5 * 8
    s = cost.summary({"a": 2, "b": 4, "c": 8}, ALL4, MACS, PARAMS)
    assert s["gbops"] == pytest.approx((1000 * 4 + 3000 * 16 + 6400) / 1e9)


def test_layer_costs_and_latency_table():
    table = cost.layer_costs("throughput", MACS, PARAMS, ["a", "b"], [4, 2])
    assert table == {"a": {4: 500.0, 2: 250.0}, "b": {4: 1500.0, 2: 750.0}}
    lat = {"a": {4: 1.0, 2: 0.7}, "b": {4: 2.0, 2: 1.5}}
    assert cost.layer_costs("throughput", MACS, PARAMS, ["a", "b"], [4, 2], latency_table=lat) == lat
    with pytest.raises(ValueError, match="latency_table lacks 'b'"):
        cost.layer_costs("throughput", MACS, PARAMS, ["a", "b"], [4, 2], latency_table={"a": lat["a"]})
    with pytest.raises(ValueError, match="unknown cost 'flops'"):
        cost.layer_costs("flops", MACS, PARAMS, ["a"], [4])
