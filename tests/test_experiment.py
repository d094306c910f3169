"""Experiment glue and the baselines step: checkpoints, resume, mismatches, CLI errors."""
import dataclasses
import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import Subset

from mpq import checkpoint, config
from mpq.cli import main
from mpq.experiment import Experiment
from mpq.train import TrainingCollapsed, chance_floor
from tests.conftest import write_params


def test_baselines_write_each_test_images_digit(micro_params, tmp_path):
    """A test split longer than its 1,000 digits (their copies at other offsets follow them): the baselines'
    per-image results carry each image's digit, and the bootstrap draws digits, not images."""
    from mpq import stats
    from tests.conftest import write_params
    params = write_params(tmp_path / "params.yaml", base=micro_params, network__resnet50__eval_size=1200)
    exp = Experiment(config.load(params), "resnet50", progress=False)
    exp.baselines(tmp_path / "out")
    with np.load(tmp_path / "out" / "baselines_samples.npz") as z:
        groups, rows = z["test_groups"], z["float"]
    assert len(groups) == len(rows) == 1200
    assert np.array_equal(groups, np.concatenate([np.arange(1000), np.arange(200)]))  # 200 copies of digits 0-199
    w = stats.replicates(1200, 1, reps=20, groups=groups).image_weights
    assert (w[:, 1000:] == w[:, :200]).all()


def test_baselines_train_checkpoint_and_resume(micro_params, tmp_path):
    cfg = config.load(micro_params)
    exp = Experiment(cfg, "resnet50", progress=False)
    res = exp.baselines(tmp_path)
    assert set(res) == {"float", "uniform4", "uniform2"}
    assert all(0 <= r["metric"] <= 100 for r in res.values())
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir()}
    assert set(files) == {"float.pt", "uniform4.pt", "uniform2.pt", "baselines.json", "baselines_samples.npz",
                          "step_diagnostic.json"}
    with np.load(tmp_path / "baselines_samples.npz") as z:  # per test image: [right, 1]
        assert set(z.files) == set(res) | {"test_groups"} and all(
            100 * z[k][:, 0].mean() == pytest.approx(res[k]["metric"]) for k in res)
        # each test image's digit: the micro preset's prefix of the test split holds original digits only
        assert np.array_equal(z["test_groups"], np.arange(len(z["float"])))
    diag = json.loads((tmp_path / "step_diagnostic.json").read_text())
    assert set(diag) == {"uniform4.pt", "uniform2.pt"} and "score_cv_pct" in diag["uniform4.pt"]
    _, meta = checkpoint.load(tmp_path / "uniform2.pt")
    cands = [n for n, b in meta["bits"].items() if n not in ("conv1", "fc")]
    assert {meta["bits"][n] for n in cands} == {2} and meta["bits"]["fc"] == 8
    # a rerun reuses every checkpoint and reproduces the numbers
    again = Experiment(cfg, "resnet50", progress=False).baselines(tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.iterdir() if p.suffix == ".pt"} == \
        {k: v for k, v in files.items() if k.endswith(".pt")}
    assert again == res


def test_resume_after_interruption_trains_only_what_is_missing(micro_params, tmp_path):
    cfg = config.load(micro_params)
    Experiment(cfg, "resnet50", progress=False).baselines(tmp_path)
    (tmp_path / "uniform2.pt").unlink()
    kept = {n: (tmp_path / n).stat().st_mtime_ns for n in ("float.pt", "uniform4.pt")}
    Experiment(cfg, "resnet50", progress=False).baselines(tmp_path)
    assert {n: (tmp_path / n).stat().st_mtime_ns for n in kept} == kept
    assert (tmp_path / "uniform2.pt").is_file()


@pytest.mark.parametrize("wrong, message", [({"width": 0.5}, "width=0.5, not 0.0625"),
                                            ({"network": "resnet101"}, "network='resnet101', not 'resnet50'"),
                                            ({"num_classes": 11}, "num_classes=11, not 10")])
def test_checkpoint_of_another_network_is_refused_by_baselines_not_replaced(micro_params, tmp_path, capsys,
                                                                            wrong, message):
    exp = Experiment(config.load(micro_params), "resnet50", progress=False)
    model, folder = exp.new_float(), tmp_path / "resnet50"  # --out DIR: the results go to DIR/<network>
    checkpoint.save(folder / "float.pt", model, exp.meta("float", model) | wrong)
    before = (folder / "float.pt").read_bytes()
    with pytest.raises(checkpoint.CheckpointMismatch, match=message):
        exp.load(folder / "float.pt", "float")
    assert main(["--params", str(micro_params), "baselines", "--network", "resnet50", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mpq: error: checkpoint") and message in err and "delete it" in err and "\n" not in err
    assert (folder / "float.pt").read_bytes() == before and not (folder / "uniform4.pt").exists()


def test_collapsed_or_diverged_training_fails_and_keeps_the_good_checkpoints(micro_params, tmp_path, monkeypatch):
    Experiment(config.load(micro_params), "resnet50", progress=False).baselines(tmp_path)
    names = ("float.pt", "uniform4.pt", "uniform2.pt", "baselines.json")
    before = {n: (tmp_path / n).read_bytes() for n in names}
    # a new recipe whose fine-tune ends at chance level from a start above it (the micro preset's models
    # are at chance anyway: the start is set to 90 %): refused before anything is written
    exp = Experiment(config.load(write_params(tmp_path / "p.yaml", base=micro_params,
                                              network__resnet50__quant_lr=0.02)), "resnet50", progress=False)
    monkeypatch.setattr(exp, "_start_val_metric", lambda qmodel: 90.0)
    floor = chance_floor("classification", 10, len(exp.data.val))  # 21.3 % on the micro preset's 64 samples
    with pytest.raises(TrainingCollapsed,
                       match=r"resnet50 uniform4: the fine-tune took the validation metric from 90.0 % to .* "
                             rf"chance level \(<= {floor:.1f} %\).*uniform4.pt was left as it was"):
        exp.baselines(tmp_path)
    # a diverging float training (non-finite loss)
    exp = Experiment(config.load(write_params(tmp_path / "p.yaml", base=micro_params,
                                              network__resnet50__float_lr=1e30)), "resnet50", progress=False)
    with pytest.raises(FloatingPointError, match="resnet50 float: loss became .* lower the lr"):
        exp.baselines(tmp_path)
    assert {n: (tmp_path / n).read_bytes() for n in names} == before


def test_changed_recipe_retrains_and_later_steps_refuse_stale_checkpoints(micro_params, tmp_path):
    cfg = config.load(micro_params)
    Experiment(cfg, "resnet50", progress=False).baselines(tmp_path)
    before = {n: (tmp_path / n).stat().st_mtime_ns for n in ("float.pt", "uniform4.pt", "uniform2.pt")}
    changed = write_params(tmp_path / "p.yaml", base=micro_params, network__resnet50__quant_lr=0.02)
    exp = Experiment(config.load(changed), "resnet50", progress=False)
    with pytest.raises(checkpoint.CheckpointMismatch, match="other settings.*rerun `mpq baselines`"):
        exp.sensitivity("eagl", tmp_path)
    exp.baselines(tmp_path)
    after = {n: (tmp_path / n).stat().st_mtime_ns for n in before}
    assert after["float.pt"] == before["float.pt"]  # the float recipe did not change
    assert after["uniform4.pt"] != before["uniform4.pt"] and after["uniform2.pt"] != before["uniform2.pt"]
    exp.sensitivity("eagl", tmp_path)


def test_checkpoints_of_other_train_samples_are_stale_and_legacy_ones_kept(micro_params, tmp_path):
    cfg = config.load(micro_params)
    exp = Experiment(cfg, "resnet50", progress=False)
    exp.baselines(tmp_path)
    state, meta = checkpoint.load(tmp_path / "uniform4.pt")
    assert meta["train_digest"] == exp.digest("train") is not None
    # the same recipe (train size included), other train samples: refused by the later steps
    other = Experiment(cfg, "resnet50", progress=False)
    train = other.data.train
    other._data = dataclasses.replace(other.data, train=Subset(train, list(range(len(train)))[::-1]))
    assert other.recipe("quant", 4) == exp.recipe("quant", 4) and other.digest("train") != exp.digest("train")
    assert other.fit_key("quant", 4) != exp.fit_key("quant", 4)
    with pytest.raises(checkpoint.CheckpointMismatch, match="other settings or train samples"):
        other.start_models(tmp_path)
    # checkpoints written before meta had train_digest are judged by their recipe alone
    for name, kind in (("float.pt", "float"), ("uniform4.pt", "quant")):
        model, meta = exp.load(tmp_path / name, kind)
        del meta["train_digest"]
        checkpoint.save(tmp_path / name, model, meta)
    exp.start_models(tmp_path)
    other.start_models(tmp_path)


def test_corrupt_checkpoint_is_a_one_line_error(micro_params, tmp_path):
    exp = Experiment(config.load(micro_params), "resnet50", progress=False)
    (tmp_path / "float.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="unreadable.*delete it"):
        exp.baselines(tmp_path)


def test_quantized_model_round_trips_through_a_checkpoint(micro_params, tmp_path):
    exp = Experiment(config.load(micro_params), "pspnet", progress=False)
    q = exp.quantize(exp.new_float())
    x = exp.example_input()
    q.eval()
    q(x)  # calibrate
    checkpoint.save(tmp_path / "q.pt", q, exp.meta("quant", q))
    q2, meta = exp.load(tmp_path / "q.pt", "quant")
    q2.eval()
    assert torch.equal(q(x), q2(x)) and meta["kind"] == "quant"


def test_cli_errors_are_one_line(micro_params, tmp_path, capsys):
    bad = write_params(tmp_path / "bad.yaml", network__resnet50__input_size=48, data__root=str(tmp_path / "nodata"))
    assert main(["--params", str(bad), "baselines", "--network", "resnet50", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mpq: error: embedded data not found") and "\n" not in err
    assert main(["--params", str(micro_params), "baselines", "--network", "vgg", "--out", str(tmp_path)]) == 2
    assert "unknown network 'vgg'" in capsys.readouterr().err


def test_input_size_must_match_embedded_data(embedded, tmp_path):
    p = write_params(tmp_path / "p.yaml", data__root=str(embedded[0]), network__resnet50__input_size=48)
    exp = Experiment(config.load(p), "resnet50", progress=False)
    with pytest.raises(config.ConfigError, match="input_size: the embedded classification data is 32 px"):
        exp.data


# ALPS/noft evaluate every layer job on the whole validation split: on PSPNet (300
# canvases) that is the slow part, so PSPNet runs the cheap methods here and the
# tiny pipeline test runs all of them.
@pytest.mark.parametrize("network,methods", [("resnet50", ("eagl", "alps", "hessian", "noft", "random")),
                                             ("pspnet", ("eagl", "hessian", "random"))])
def test_every_sensitivity_method_writes_the_common_table(micro_params, tmp_path, network, methods):
    from mpq.sensitivity import COLUMNS, Sensitivity

    # the embedded default's retests (the tiny preset leaves ALPS's out to keep CI short)
    params = write_params(tmp_path / "retest.yaml", base=micro_params, alps__retest=True, hessian__retest=True)
    exp = Experiment(config.load(params), network, progress=False)
    exp.baselines(tmp_path)
    n = exp.spec.candidate_count
    for method in methods:
        s = exp.sensitivity(method, tmp_path)
        back = Sensitivity.load(tmp_path / "sensitivity", method)
        assert list(back.table.columns[:4]) == list(COLUMNS) and len(back.table) == n
        assert back.table["score"].notna().all() and back.cost.seconds == s.cost.seconds
        assert back.meta["network"] == network
        if exp.retests(method):  # computed again from seed + 1: the retest column and its cost
            assert back.table["retest_score"].notna().all()
            assert back.meta["retest"]["seed"] == exp.cfg.seed + 1 and back.meta["retest"]["device_seconds"] >= 0
            assert -1 <= back.meta["retest"]["spearman"] <= 1 or np.isnan(back.meta["retest"]["spearman"])
    assert {m for m in methods if exp.retests(m)} == {"alps", "hessian"} & set(methods)
    if "alps" in methods:  # ALPS keeps one record per job, the retest's in their own folder: a rerun reuses them all
        assert len(list((tmp_path / "records" / "alps" / f"seed{exp.cfg.seed + 1}").glob("*.json"))) == n + 1
        first = Sensitivity.load(tmp_path / "sensitivity", "alps")
        assert not (first.table["score"] == first.table["retest_score"]).all()  # another seed, other fine-tunes
        again = exp.sensitivity("alps", tmp_path)
        assert again.meta["jobs_run"] == 0 and again.meta["jobs_reused"] == n + 1
        assert again.meta["retest"]["spearman"] == first.meta["retest"]["spearman"]
    with pytest.raises(ValueError, match="unknown method 'hawq'"):
        exp.sensitivity("hawq", tmp_path)


def test_sensitivity_before_baselines_says_what_to_run(micro_params, tmp_path):
    exp = Experiment(config.load(micro_params), "resnet50", progress=False)
    with pytest.raises(checkpoint.CheckpointError, match="not found: run the stage"):
        exp.sensitivity("eagl", tmp_path)


def test_cli_allocate_writes_a_config_for_a_torchvision_model(tmp_path, capsys):
    out = tmp_path / "bits.yaml"
    assert main(["allocate", "--model", "resnet18", "--budget", "1.5", "--num-classes", "10",
                 "--input-size", "64", "--out", str(out)]) == 0
    assert "layers at 2 bits" in capsys.readouterr().out
    import torchvision

    import mpq
    q = mpq.quantize(torchvision.models.resnet18(num_classes=10), 4)
    bits = mpq.load_bits(out, model=q)
    assert bits["conv1"] == 8 and bits["fc"] == 8 and 2 in bits.values()
    assert main(["allocate", "--model", "resnet18", "--budget", "9", "--out", str(out)]) == 2
    assert "beyond reach" in capsys.readouterr().err


def test_frontier_runs_resumes_and_summarises(micro_params, tmp_path):
    import pandas as pd

    import mpq
    from mpq import frontier, frontier_run

    cfg = config.load(micro_params)
    exp = Experiment(cfg, "resnet50", progress=False)
    exp.baselines(tmp_path)
    for m in ("eagl", "hessian"):
        exp.sensitivity(m, tmp_path)
    table = frontier_run.run(exp, tmp_path, names=("eagl", "hessian", "random"))
    pts = cfg.allocate.points
    seeds = len(cfg.frontier.seeds)
    # uniform ends + eagl/hessian at each interior target for each seed + random per seed
    assert len(table) == (2 + 3 * pts) * seeds
    assert list(table.columns) == list(frontier.RESULT_COLUMNS) and table["metric"].notna().all()
    uni = table[table.method == "uniform"].sort_values("rel_throughput")
    assert uni.rel_throughput.iloc[0] == pytest.approx(1.0) and uni.n_low.iloc[-1] == exp.spec.candidate_count
    inner = table[table.method != "uniform"]
    assert ((inner.rel_throughput >= inner.target - 1e-9) & (inner.n_low > 0)).all()
    # every configuration file applies to the network
    q, _ = exp.start_models(tmp_path)
    for path in table.config.unique():
        mpq.load_bits(path, model=q)
    summary = pd.read_csv(tmp_path / "frontier_summary.csv")
    assert {"auc", "recovers_fp_at", "metric_mean", "metric_std"} <= set(summary.columns)
    # a rerun computes nothing and gives the same table
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "records" / "frontier").iterdir()}
    again = frontier_run.run(exp, tmp_path, names=("eagl", "hessian", "random"))
    pd.testing.assert_frame_equal(again, table)
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "records" / "frontier").iterdir()} == mtimes


def test_paper_scale_path_on_a_fake_imagenet_folder(tmp_path):
    """The paper preset's code path (ImageFolder data, the same steps) at a microscopic size."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("val", 4)):
        for c in ("n01", "n02"):
            (tmp_path / "imagenet" / split / c).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(
                    tmp_path / "imagenet" / split / c / f"{i}.png")
    over = {"device": "cpu", "threads": 1, "data__imagenet": str(tmp_path / "imagenet"),
            "data__val_size__imagenet": 4, "data__workers": 0}
    over.update({f"network__resnet50__{k}": v for k, v in dict(
        width=0.0625, input_size=32, batch_size=4, weights=None, float_epochs=1, quant_epochs=0.5,
        train_size=None, eval_size=None).items()})
    params = write_params(tmp_path / "paper.yaml", scale="paper", **over)
    exp = Experiment(config.load(params), "resnet50", progress=False)
    assert (len(exp.data.train), len(exp.data.val), len(exp.data.test), exp.data.num_classes) == (20, 4, 8, 2)
    res = exp.baselines(tmp_path / "res")
    assert set(res) == {"float", "uniform4", "uniform2"}
    assert exp.sensitivity("eagl", tmp_path / "res").table.shape[0] == 52
    missing = write_params(tmp_path / "p2.yaml", base=params, data__imagenet=str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="data.imagenet"):
        Experiment(config.load(missing), "resnet50", progress=False).data


def _fake_segmentation(root, fmt: str, n_train: int = 6, n_test: int = 2):
    """A tiny Cityscapes or ADE20K folder: random 40x48 images with label maps of a few valid ids."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(1)
    splits = {"cityscapes": ("train", "val"), "ade20k": ("training", "validation")}[fmt]
    for split, n in zip(splits, (n_train, n_test)):
        for i in range(n):
            img = Image.fromarray(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
            if fmt == "cityscapes":
                ids = rng.choice(np.array([7, 8, 11, 26, 0], np.uint8), (40, 48))
                stem = f"aachen_{i:06d}_000019"
                d_img, d_lab = root / "leftImg8bit" / split / "aachen", root / "gtFine" / split / "aachen"
                d_img.mkdir(parents=True, exist_ok=True), d_lab.mkdir(parents=True, exist_ok=True)
                img.save(d_img / f"{stem}_leftImg8bit.png")
                Image.fromarray(ids).save(d_lab / f"{stem}_gtFine_labelIds.png")
            else:
                ids = rng.integers(0, 151, (40, 48), dtype=np.uint8)
                base = root / "ADEChallengeData2016"
                (base / "images" / split).mkdir(parents=True, exist_ok=True)
                (base / "annotations" / split).mkdir(parents=True, exist_ok=True)
                img.save(base / "images" / split / f"ADE_{i}.jpg")
                Image.fromarray(ids).save(base / "annotations" / split / f"ADE_{i}.png")


@pytest.mark.parametrize("fmt,classes", [("cityscapes", 19), ("ade20k", 150)])
def test_paper_scale_pspnet_on_fake_cityscapes_and_ade20k(tmp_path, fmt, classes):
    """PSPNet through the paper path: its own data.val_size entry, the same steps, no embedded data."""
    _fake_segmentation(tmp_path / fmt, fmt)
    over = {"device": "cpu", "threads": 1, "data__root": str(tmp_path / "no-embedded-data"),
            "data__segmentation": str(tmp_path / fmt), "data__segmentation_format": fmt,
            f"data__val_size__{fmt}": 2, "data__workers": 0}
    over.update({f"network__pspnet__{k}": v for k, v in dict(
        width=0.0625, input_size=32, batch_size=2, weights=None, float_epochs=1, quant_epochs=0.5,
        train_size=None, eval_size=None).items()})
    params = write_params(tmp_path / "paper.yaml", scale="paper", **over)
    exp = Experiment(config.load(params), "pspnet", progress=False)
    assert (len(exp.data.train), len(exp.data.val), len(exp.data.test), exp.data.num_classes) == (4, 2, 2, classes)
    res = exp.baselines(tmp_path / "res")
    assert set(res) == {"float", "uniform4", "uniform2"}
    assert exp.sensitivity("eagl", tmp_path / "res").table.shape[0] == exp.spec.candidate_count


def test_paper_validation_sizes_fit_their_datasets():
    """data.val_size: one entry per dataset, each a small part of that dataset's training set."""
    cfg = config.load(write_params(Path(tempfile.mkdtemp()) / "p.yaml", scale="paper"))
    train = {"imagenet": 1_281_167, "cityscapes": 2_975, "ade20k": 20_210}
    assert set(cfg.data.val_size) == set(train)
    assert all(0 < cfg.data.val_size[d] <= 0.11 * n for d, n in train.items())  # about a tenth at most


def test_sync_batchnorm_round_trip_keeps_the_state():
    from mpq.experiment import _revert_sync_batchnorm
    from mpq.networks import build

    net = build("pspnet", num_classes=5, width=0.0625)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
    _revert_sync_batchnorm(net)
    assert not any(isinstance(m, torch.nn.SyncBatchNorm) for m in net.modules())
    assert all(type(m) is torch.nn.BatchNorm2d for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    after = net.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
