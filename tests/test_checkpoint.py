"""Checkpoints: atomic round trip, refusal of mismatches and corrupt files."""
import pytest
import torch

from mpq import atomic, checkpoint
from mpq.checkpoint import CheckpointError, CheckpointMismatch


def test_round_trip_and_no_temp_left(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = tmp_path / "sub" / "m.pt"
    checkpoint.save(path, model, {"network": "resnet50", "width": 0.25, "bits": {"a": 4}})
    state, meta = checkpoint.load(path, expect={"network": "resnet50", "width": 0.25})
    assert torch.equal(state["weight"], model.weight) and meta["bits"] == {"a": 4}
    assert [p.name for p in path.parent.iterdir()] == ["m.pt"]


def test_mismatch_is_one_line(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save(path, torch.nn.Linear(3, 2), {"network": "resnet50", "width": 0.25})
    with pytest.raises(CheckpointMismatch, match="written for network='resnet50', not 'pspnet'") as e:
        checkpoint.load(path, expect={"network": "pspnet"})
    assert "\n" not in str(e.value)


def test_corrupt_truncated_and_foreign_files(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save(path, torch.nn.Linear(30, 20), {"network": "x"})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="unreadable.*delete it"):
        checkpoint.load(path)
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(CheckpointError, match="not an mpq checkpoint"):
        checkpoint.load(path)
    with pytest.raises(CheckpointError, match="not found"):
        checkpoint.load(tmp_path / "missing.pt")


def test_interrupted_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.pt"
    checkpoint.save(path, torch.nn.Linear(3, 2), {"v": 1})

    class Boom(torch.nn.Module):
        def state_dict(self, *a, **k):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        checkpoint.save(path, Boom(), {"v": 2})
    assert checkpoint.load(path)[1]["v"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_atomic_json(tmp_path):
    atomic.write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.json").read_text().startswith('{\n  "a"')
