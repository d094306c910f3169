"""Resumable training (mpq.resume via fit's checkpoint): a killed fit goes on where it stopped."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

import mpq
from mpq import resume
from mpq.data import make_loader
from mpq.train import FitSettings, fit

SETTINGS = FitSettings(epochs=2.5, lr=0.05, momentum=0.9, warmup_epochs=0.5, distill=0.5)


def data(n=40):
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, 4, (n,), generator=g))


def model(seed=0):
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3),
                        nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(8, 4))
    return mpq.quantize(net, 4, keep_8bit=())


class Killed(Exception):
    pass


def run(path, *, kill_at=None, checkpoint_steps=0, teacher=None):
    """fit on a fresh model and loader (seeded as the pipeline does); optionally killed after a step."""
    q = model()
    q(data()[:4][0])  # calibrate the activation steps
    loader = make_loader(data(), batch_size=8, train=True, seed=3)
    torch.manual_seed(7)
    if kill_at is not None:
        real = torch.optim.SGD.step
        calls = {"n": 0}

        def step(self, *a, **k):
            out = real(self, *a, **k)
            calls["n"] += 1
            if calls["n"] == kill_at:
                raise Killed
            return out
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(torch.optim.SGD, "step", step)
            with pytest.raises(Killed):
                fit(q, loader, task="classification", settings=SETTINGS, teacher=teacher, progress=False,
                    checkpoint=path, checkpoint_key="k", checkpoint_steps=checkpoint_steps)
        return None
    stats = fit(q, loader, task="classification", settings=SETTINGS, teacher=teacher, progress=False,
                checkpoint=path, checkpoint_key="k", checkpoint_steps=checkpoint_steps)
    return q, stats


@pytest.mark.parametrize("kill_at,checkpoint_steps", [(7, 0), (9, 0), (8, 3), (4, 3)])
def test_a_killed_fit_resumes_to_the_same_weights(tmp_path, kill_at, checkpoint_steps):
    """5 batches per epoch, 12 steps: killed after step 7 or 9 (epoch checkpoints at 5 and 10) or with
    checkpoints every 3 steps; the resumed fit ends bit-identical to an uninterrupted one."""
    teacher = model(seed=1).eval()
    ref, ref_stats = run(None, teacher=teacher)
    path = tmp_path / "fit.partial.pt"
    run(path, kill_at=kill_at, checkpoint_steps=checkpoint_steps, teacher=teacher)
    assert path.is_file()
    saved = resume.load(path, "k")
    expected = {(7, 0): 5, (9, 0): 5, (8, 3): 6, (4, 3): 3}[(kill_at, checkpoint_steps)]
    assert saved.step == expected and (saved.epoch, saved.batch) == ((expected - 1) // 5, (expected - 1) % 5 + 1)
    resumed, stats = run(path, checkpoint_steps=checkpoint_steps, teacher=teacher)
    assert not path.exists()  # removed when the fit ended
    for (k, a), b in zip(ref.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    assert stats["steps"] == ref_stats["steps"] == 12 and stats["loss"] == ref_stats["loss"]


def test_a_checkpoint_of_another_key_or_a_damaged_one_is_ignored(tmp_path):
    path = tmp_path / "fit.partial.pt"
    run(path, kill_at=7)
    assert resume.load(path, "other") is None
    ref, _ = run(None)
    path.write_bytes(path.read_bytes()[:100])  # truncated
    assert resume.load(path, "k") is None
    fresh, _ = run(path)  # starts over
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), fresh.state_dict().values()))


def test_no_checkpoint_file_without_a_path_or_within_one_epoch(tmp_path):
    q = model()
    q(data()[:4][0])
    loader = make_loader(data(), batch_size=8, train=True, seed=3)
    fit(q, loader, task="classification", settings=FitSettings(epochs=0.8, lr=0.01), progress=False,
        checkpoint=tmp_path / "x.pt", checkpoint_key="k")
    assert list(tmp_path.iterdir()) == []


def test_skip_batches_replays_the_rest_of_the_epoch():
    loader = make_loader(data(), batch_size=8, train=True, seed=5)
    state = loader.generator.get_state()
    full = [y.tolist() for _, y in loader]
    loader.generator.set_state(state)
    rest = [y.tolist() for _, y in resume.skip_batches(loader, 2)]
    assert rest == full[2:]
    # and the next epoch of the original loader is the one it would have been
    loader.generator.set_state(state)
    list(loader)
    after_full = [y.tolist() for _, y in loader]
    loader.generator.set_state(state)
    list(resume.skip_batches(loader, 2))
    assert [y.tolist() for _, y in loader] == after_full


def test_unwrap_looks_through_wrappers():
    inner = nn.Linear(2, 2)
    outer = nn.Module()
    outer.module = inner
    assert resume.unwrap(outer) is inner and resume.unwrap(inner) is inner
