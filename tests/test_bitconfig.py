"""Bit-configuration files: round trip (float layers included), mismatched networks, bad files and bits."""
import pytest
import torch

import mpq
from mpq.bitconfig import read_bits_file


def model():
    return mpq.quantize(torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3),
                                            torch.nn.Conv2d(4, 4, 3), torch.nn.Flatten(),
                                            torch.nn.Linear(4 * 2 * 2, 2)), 4)


def test_round_trip_and_apply(tmp_path):
    q = model()
    bits = {**mpq.get_bits(q), "1": 2}
    path = mpq.save_bits(tmp_path / "c.yaml", bits, network="toy", method="eagl", target=1.5,
                         predicted={"rel_throughput": 1.52})
    assert mpq.load_bits(path, model=q) == bits
    body = read_bits_file(path)
    assert body["network"] == "toy" and body["predicted"]["rel_throughput"] == 1.52
    mpq.set_bits(q, mpq.load_bits(path, model=q), allow_fixed=True)
    assert mpq.get_bits(q) == bits
    assert path.read_text().startswith("format: mpq-bits/1\n")


def test_file_for_another_network_is_refused(tmp_path):
    import torchvision

    other = mpq.quantize(torchvision.models.resnet18(num_classes=2), 4)
    path = mpq.save_bits(tmp_path / "r18.yaml", mpq.get_bits(other), network="resnet18")
    with pytest.raises(ValueError, match="written for network 'resnet18'.*do not match") as e:
        mpq.load_bits(path, model=model())
    assert "\n" not in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        mpq.load_bits(tmp_path / "none.yaml")
    (tmp_path / "x.yaml").write_text("bits: [1, 2]\n")
    with pytest.raises(ValueError, match="not an mpq bit-configuration file"):
        mpq.load_bits(tmp_path / "x.yaml")
    (tmp_path / "y.yaml").write_text("format: [\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        mpq.load_bits(tmp_path / "y.yaml")


def test_float_layers_round_trip_as_null(tmp_path):
    q = model()
    mpq.quantized.quant_layers(q)["1"].set_bits(None)  # quantizer disabled: a float layer
    bits = mpq.get_bits(q)
    path = mpq.save_bits(tmp_path / "c.yaml", bits)
    assert "  '1': null\n" in path.read_text()
    loaded = mpq.load_bits(path, model=q)
    assert loaded == {k: v for k, v in bits.items() if k != "1"}
    mpq.set_bits(q, loaded, allow_fixed=True)
    assert mpq.get_bits(q) == bits


@pytest.mark.parametrize("value", ["4.7", "'4'", "true", "1", "17"])
def test_bits_that_are_not_whole_numbers_in_range_are_refused(tmp_path, value):
    path = tmp_path / "c.yaml"
    path.write_text(f"format: mpq-bits/1\nbits:\n  '0': 8\n  '1': {value}\n")
    with pytest.raises(ValueError, match=r"c.yaml: layer '1' has bits .*: bits must be an integer in 2\.\.16 "
                                         r"\(null for a float layer\)$"):
        mpq.load_bits(path)


def test_save_refuses_fractional_bits(tmp_path):
    with pytest.raises(ValueError, match="layer '1' has bits 4.7: bits must be an integer"):
        mpq.save_bits(tmp_path / "c.yaml", {**mpq.get_bits(model()), "1": 4.7})
    assert not (tmp_path / "c.yaml").exists()


def test_a_missing_layer_is_named(tmp_path):
    q = model()
    bits = mpq.get_bits(q)
    del bits["2"]
    path = mpq.save_bits(tmp_path / "c.yaml", bits, network="toy")
    with pytest.raises(ValueError, match=r"c.yaml has no bits for layer '2' of this model \(1 missing\): "
                                         r"add them to its 'bits' \(null for a float layer\)$"):
        mpq.load_bits(path, model=q)
