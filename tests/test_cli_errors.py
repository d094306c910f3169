"""Bad input and expected failures on the command line: one line each, never a traceback.

Every case runs ``mpq.cli.main`` in-process and checks the exit status and the
one line on stderr (``mpq: error: ...``, or ``mpq: interrupted: ...`` for Ctrl-C).
Models are torchvision's ``resnet18(num_classes=10)`` at 32 px, a second or so each.
"""
import re
from urllib.error import URLError

import pytest
import torch
import torchvision

import mpq
import mpq.experiment
from mpq import checkpoint, cli
from mpq.cli import main

ALLOCATE = ["allocate", "--model", "resnet18", "--budget", "1.5", "--num-classes", "10", "--input-size", "32"]


def one_line(capsys) -> str:
    """The whole of stderr, checked to be exactly one line."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.strip()


def offline(monkeypatch) -> None:
    """Make every torchvision weight download fail as it does on a machine without network."""
    def refuse(url, *args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", refuse)


def lsq_resnet18() -> torch.nn.Module:
    """A calibrated 4-bit resnet18 whose weight steps differ from their LSQ initial values."""
    q = mpq.quantize(torchvision.models.resnet18(num_classes=10), 4)
    q.eval()
    q(torch.randn(1, 3, 32, 32))
    with torch.no_grad():
        for layer in mpq.quantized.quant_layers(q).values():
            layer.wq.step.mul_(3)
    return q


@pytest.mark.parametrize("options,message", [
    (["--input-size", "0"], "--input-size must be a positive integer, got 0"),
    (["--num-classes", "0"], "--num-classes must be a positive integer, got 0"),
    (["--budget", "0.5"], "--budget is relative to every layer at --start-bits, so it must be at least 1.0, got 0.5"),
    (["--start-bits", "2", "--low-bits", "2"], "--start-bits (2) must be above --low-bits (2)"),
    (["--low-bits", "1"], "--low-bits: bits must be an integer in 2..16, got 1"),
    (["--model", "resnet9000"], "unknown torchvision model 'resnet9000'"),
])
def test_allocate_refuses_impossible_options(tmp_path, capsys, options, message):
    assert main([*ALLOCATE, *options, "--out", str(tmp_path / "b.yaml")]) == 2
    assert one_line(capsys).startswith(f"mpq: error: {message}")
    assert not (tmp_path / "b.yaml").exists()


def test_allocate_out_a_folder_is_refused(tmp_path, capsys):
    assert main([*ALLOCATE, "--out", str(tmp_path)]) == 2
    assert one_line(capsys) == f"mpq: error: --out {tmp_path} is a folder: give a file name, e.g. {tmp_path}/bits.yaml"


def _float_state(path):
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), path)


def _lsq_state(path):
    torch.save(lsq_resnet18().state_dict(), path)


def _float_checkpoint(path):
    checkpoint.save(path, torchvision.models.resnet18(num_classes=10), {"network": "resnet18", "bits": None})


def _lsq_checkpoint(path):
    q = lsq_resnet18()
    checkpoint.save(path, q, {"network": "resnet18", "bits": mpq.get_bits(q)})


@pytest.mark.parametrize("write", [_float_state, _lsq_state, _float_checkpoint, _lsq_checkpoint],
                         ids=["float-state-dict", "lsq-state-dict", "float-checkpoint", "lsq-checkpoint"])
def test_allocate_accepts_every_kind_of_weights_file(tmp_path, capsys, write):
    write(tmp_path / "w.pt")
    out = tmp_path / "b.yaml"
    assert main([*ALLOCATE, "--weights", str(tmp_path / "w.pt"), "--out", str(out)]) == 0
    assert "layers at 2 bits" in capsys.readouterr().out
    assert mpq.bitconfig.read_bits_file(out)["checkpoint"] == str(tmp_path / "w.pt")


def test_lsq_weights_keep_their_trained_steps(tmp_path):
    q = lsq_resnet18()
    torch.save(q.state_dict(), tmp_path / "w.pt")
    args = cli.build_parser().parse_args([*ALLOCATE, "--weights", str(tmp_path / "w.pt")])
    loaded = cli._quantized_model(args).state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in q.state_dict().items())


@pytest.mark.parametrize("options,message", [
    ([], "does not fit resnet18 with --num-classes 1000: 'fc.weight' has shape [10, 512] there, [1000, 512] here; "
         "pass the --model and --num-classes the weights were trained with"),
    (["--model", "resnet34", "--num-classes", "10"], "does not fit resnet18"),
])
def test_weights_for_another_model_are_one_line(tmp_path, capsys, options, message):
    _float_state(tmp_path / "w.pt")
    argv = ["allocate", "--model", "resnet18", "--budget", "1.5", "--input-size", "32", *options]
    assert main([*argv, "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "b.yaml")]) == 2
    err = one_line(capsys)
    if options:  # resnet34 has more blocks: the first key resnet18's file lacks is named
        assert err.startswith(f"mpq: error: --weights {tmp_path / 'w.pt'} does not fit resnet34 with --num-classes 10: "
                              "missing key 'layer1.2.conv1.weight' (")
    else:
        assert err == f"mpq: error: --weights {tmp_path / 'w.pt'} {message}"


def test_weights_of_an_unrelated_model_name_the_first_unexpected_key(tmp_path, capsys):
    torch.save(torch.nn.Sequential(torch.nn.Linear(2, 2)).state_dict(), tmp_path / "w.pt")
    assert main([*ALLOCATE, "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "b.yaml")]) == 2
    err = one_line(capsys)
    assert "missing key 'conv1.weight' (" in err and "unexpected key '0.weight' (2 unexpected)" in err


@pytest.mark.parametrize("content,message", [
    (b"not a torch file", "is unreadable (UnpicklingError): give a file written by "
                          "torch.save(model.state_dict(), path) or mpq.checkpoint.save"),
    ([1, 2], "holds no state dict: give a file written by torch.save(model.state_dict(), path) "
             "or mpq.checkpoint.save"),
    (None, "no such file"),
], ids=["corrupt", "no-state-dict", "missing"])
def test_corrupt_or_missing_weights_are_one_line(tmp_path, capsys, content, message):
    if isinstance(content, bytes):
        (tmp_path / "w.pt").write_bytes(content)
    elif content is not None:
        torch.save(content, tmp_path / "w.pt")
    assert main([*ALLOCATE, "--weights", str(tmp_path / "w.pt"), "--out", str(tmp_path / "b.yaml")]) == 2
    sep = ": " if content is None else " "
    assert one_line(capsys) == f"mpq: error: --weights {tmp_path / 'w.pt'}{sep}{message}"


def test_segmentation_model_without_pretrained_downloads_nothing(tmp_path, monkeypatch, capsys):
    offline(monkeypatch)
    argv = ["allocate", "--model", "lraspp_mobilenet_v3_large", "--budget", "1.5", "--num-classes", "3",
            "--input-size", "32", "--out", str(tmp_path / "b.yaml")]
    assert main(argv) == 0, capsys.readouterr().err


def test_offline_pretrained_weights_are_one_line(tmp_path, monkeypatch, capsys):
    offline(monkeypatch)
    argv = ["allocate", "--model", "resnet18", "--pretrained", "--budget", "1.5", "--out", str(tmp_path / "b.yaml")]
    assert main(argv) == 2
    err = one_line(capsys)
    assert err.startswith("mpq: error: could not download weights ([Errno -3] Temporary failure in name "
                          "resolution): go online once so that they are cached under ")


def test_diverging_training_is_one_line(monkeypatch, capsys):
    """``mpq baselines`` whose training diverges (as with float_lr 1e6): the real ``fit`` raises."""
    from torch.utils.data import DataLoader, TensorDataset

    from mpq.train import FitSettings, fit

    class Diverging:
        def __init__(self, cfg, network, progress):
            pass

        def baselines(self, out):
            data = DataLoader(TensorDataset(torch.randn(8, 2) * 1e30, torch.zeros(8).long()), batch_size=4)
            fit(torch.nn.Linear(2, 2), data, task="classification", settings=FitSettings(2, 1e30),
                progress=False, desc="float")

    monkeypatch.setattr(mpq.experiment, "Experiment", Diverging)
    assert main(["baselines", "--network", "resnet50", "--quiet"]) == 2
    assert re.fullmatch(r"mpq: error: float: loss became (nan|-?inf) at step \d+ \(read at the check of steps \d+-\d+\); lower the lr", one_line(capsys))


def test_ctrl_c_says_what_was_kept_and_how_to_resume(tmp_path, monkeypatch, capsys):
    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "_quantized_model", interrupted)
    assert main([*ALLOCATE, "--out", str(tmp_path / "b.yaml")]) == 130
    assert one_line(capsys) == ("mpq: interrupted: finished checkpoints and records are kept (every file is "
                                "written atomically); rerun the same command to resume")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("error", [KeyboardInterrupt, FloatingPointError, ValueError])
def test_mpq_traceback_shows_the_traceback(tmp_path, monkeypatch, error):
    def fail(args):
        raise error("boom")
    monkeypatch.setattr(cli, "_quantized_model", fail)
    monkeypatch.setenv("MPQ_TRACEBACK", "1")
    with pytest.raises(error):
        main([*ALLOCATE, "--out", str(tmp_path / "b.yaml")])
