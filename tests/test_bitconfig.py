"""Bit-configuration files: round trip, mismatched networks, bad files."""
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
