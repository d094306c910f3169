"""ALPS sensitivity: table, determinism, resume, stale records, worker pool, ranks, no-fine-tune, bad input.

Everything runs on a tiny quantized conv net (3 candidate convs) on random 8x8
inputs with learnable labels, so that a job takes milliseconds.
"""
import copy
import json
import os
from dataclasses import fields, replace

import pandas as pd
import pytest
import torch
import torch.distributed as dist
from torch.utils.data import TensorDataset

import mpq
from mpq import alps, jobs, records
from mpq.data import make_loader
from mpq.jobs import JobContext
from mpq.quantized import NotQuantizedError
from mpq.train import FitSettings, evaluate, fit
from mpq.sensitivity import allocator_table
from tests.conftest import one_thread, tiny_net

SETTINGS = FitSettings(epochs=1, lr=0.05)
BATCH = 16
N_TRAIN, N_VAL = 48, 32
# every column but seconds and worker; train_loss (a float) shows any difference in the fine-tune
DETERMINISTIC = ["layer", "bits_from", "bits_to", "score", "metric", "reference_metric", "train_loss"]
REAL_RUN_JOB = jobs.run_job
CONTEXT_FIELDS = {f.name for f in fields(JobContext)}


@pytest.fixture(scope="module")
def setup():
    """``(qmodel, train, val)``: a trained tiny net, quantized to 4 bits and calibrated.

    Inputs are noise plus one of 4 class patterns, so the net learns them and
    reducing a layer to 2 bits changes the validation accuracy.
    """
    with one_thread():  # the machine is shared: one thread is faster than two fighting
        torch.manual_seed(0)
        y = torch.randint(0, 4, (N_TRAIN + N_VAL,))
        x = torch.randn(N_TRAIN + N_VAL, 3, 8, 8) + 0.5 * torch.randn(4, 3, 8, 8)[y]
        train, val = TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])
        net = tiny_net()
        fit(net, make_loader(train, batch_size=BATCH, train=True), task="classification",
            settings=FitSettings(epochs=15, lr=0.1), progress=False)
        q = mpq.quantize(net, 4)
        mpq.calibrate(q, [x[:BATCH]])
    return q, train, val


def context(setup, **kw) -> JobContext:
    """The job context of the tiny setup (no teacher, CPU, no record folder), overridden by ``kw``.

    Its ``base_key`` is the ``context_key`` of its inputs unless ``kw`` gives
    one (needed for a model that cannot be hashed: a float one).
    """
    q, train, val = setup
    args = dict(model=q, teacher=None, train=train, eval_set=val, settings=SETTINGS, task="classification",
                num_classes=4, ignore_index=255, batch_size=BATCH, device="cpu", record_dir=None)
    args.update(kw)
    if "base_key" not in args:
        args["base_key"] = jobs.context_key(
            args["model"], teacher=args["teacher"], settings=args["settings"], batch_size=args["batch_size"],
            task=args["task"], num_classes=args["num_classes"], ignore_index=args["ignore_index"],
            train_set=args["train"], eval_set=args["eval_set"])
    return JobContext(**args)


def run(setup, **kw):
    """``alps.scores`` on ``context(setup)`` with the test defaults (one thread, no progress bar).

    ``kw``: ``JobContext`` fields (given to ``context``) and ``alps.scores``
    arguments (overriding the defaults).
    """
    ctx = context(setup, **{k: v for k, v in kw.items() if k in CONTEXT_FIELDS})
    args = dict(threads=1, progress=False)
    args.update({k: v for k, v in kw.items() if k not in CONTEXT_FIELDS})
    return alps.scores(ctx, **args)


def counting(monkeypatch, fail_at: int | None = None) -> list:
    """Wrap ``mpq.jobs.run_job``: record each job's name here; raise Ctrl-C on call ``fail_at``."""
    calls, real = [], REAL_RUN_JOB

    def wrapped(ctx, job):
        calls.append(job.name)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt
        return real(ctx, job)

    monkeypatch.setattr(jobs, "run_job", wrapped)
    return calls


def mtimes(folder) -> dict:
    return {p.name: p.stat().st_mtime_ns for p in folder.glob("*.json")}


def test_table_scores_and_cost(setup):
    q, train, val = setup
    before = {k: v.clone() for k, v in q.state_dict().items()}
    s = run(setup)
    assert s.method == "alps"
    assert list(s.table.columns[:4]) == ["layer", "bits_from", "bits_to", "score"]
    assert {"metric", "reference_metric", "metric_drop", "eval_loss", "reference_loss", "score_half_a",
            "score_half_b", "train_loss", "seconds", "worker"} <= set(s.table.columns)
    assert list(s.table["layer"]) == mpq.candidate_layers(q) == ["block.conv1", "block.conv2", "conv3"]
    assert (s.table["bits_from"] == 4).all() and (s.table["bits_to"] == 2).all()
    assert (s.table["score"] == s.table["eval_loss"] - s.table["reference_loss"]).all()
    assert (s.table["metric_drop"] == s.table["reference_metric"] - s.table["metric"]).all()
    assert s.table["score"].nunique() == len(s.table)  # a continuous score: no ties
    assert s.for_allocator() == allocator_table(s.scores, 4, 2)  # negative scores floored
    # the caller's model is untouched
    assert all(torch.equal(v, before[k]) for k, v in q.state_dict().items())
    assert set(mpq.get_bits(q).values()) == {4, 8}
    # the reference job is the recipe itself: seed, fine-tune, mpq.train.evaluate on val
    ref = copy.deepcopy(q)
    with one_thread():
        torch.manual_seed(0)
        stats = fit(ref, make_loader(train, batch_size=BATCH, train=True, seed=0), task="classification",
                    settings=SETTINGS, progress=False)
        expected = evaluate(ref, make_loader(val, batch_size=BATCH, train=False),
                            task="classification", num_classes=4)
    assert s.meta["reference_metric"] == expected and s.meta["reference_train_loss"] == stats["loss"]
    assert s.table["train_loss"].nunique() == 3  # each reduced layer changes the fine-tune
    # cost of 4 jobs (reference + 3 layers) of 1 epoch = 3 steps of 16 samples, then 32 val samples
    assert s.cost.epochs == 4 and s.cost.workers == 1
    assert s.cost.backward_passes == 4 * N_TRAIN and s.cost.forward_passes == 4 * (N_TRAIN + N_VAL)
    assert s.meta["jobs_run"] == 4 and s.meta["jobs_reused"] == 0 and s.cost.seconds > 0
    assert s.cost.device.startswith("cpu")
    # device time: the jobs' own seconds, summed (not wall time x workers)
    assert s.cost.device_seconds == pytest.approx(s.table["seconds"].sum() + s.meta["reference_seconds"])


def test_same_seed_same_table(setup):
    a, b = run(setup), run(setup)
    pd.testing.assert_frame_equal(a.table[DETERMINISTIC], b.table[DETERMINISTIC])


def test_resume_after_interrupt_skips_finished_jobs(setup, tmp_path, monkeypatch):
    full = run(setup)
    calls = counting(monkeypatch, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        run(setup, record_dir=str(tmp_path))
    done = mtimes(tmp_path)
    assert sorted(done) == ["__reference__.json", "block.conv1.json"]  # written as soon as each job ended
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written file left behind
    calls = counting(monkeypatch)
    resumed = run(setup, record_dir=str(tmp_path))
    assert calls == ["block.conv2", "conv3"]  # the finished jobs are not recomputed
    assert all(mtimes(tmp_path)[name] == t for name, t in done.items())
    pd.testing.assert_frame_equal(resumed.table[DETERMINISTIC], full.table[DETERMINISTIC])
    assert resumed.meta["jobs_run"] == 2 and resumed.meta["jobs_reused"] == 2
    # the cost counts every job's record, reused or computed: what the whole run spent
    assert resumed.cost.epochs == 4 and resumed.cost.backward_passes == full.cost.backward_passes
    assert resumed.cost.job_seconds == pytest.approx(resumed.table["seconds"].sum() + resumed.meta["reference_seconds"])
    # a rerun of a finished run computes nothing, returns the identical table (seconds included)
    # and the identical cost: re-reading the records never erases what the jobs took
    calls.clear()
    again = run(setup, record_dir=str(tmp_path))
    assert calls == [] and again.meta["jobs_run"] == 0
    pd.testing.assert_frame_equal(again.table, resumed.table)
    assert again.cost.device_seconds == resumed.cost.device_seconds > 0
    assert (again.cost.epochs, again.cost.backward_passes, again.cost.forward_passes, again.cost.device) == (
        resumed.cost.epochs, resumed.cost.backward_passes, resumed.cost.forward_passes, resumed.cost.device)
    # a subset of layers reuses the same records
    sub = run(setup, record_dir=str(tmp_path), layers=["conv3"])
    assert calls == [] and list(sub.table["layer"]) == ["conv3"]
    record = json.loads((tmp_path / "conv3.json").read_text())
    assert record["name"] == "conv3" and record["bits"] == {"conv3": 2} and record["seed"] == 0
    assert record["key"] == records.job_key(again.meta["key"], jobs.Job("conv3", {"conv3": 2}, 0), threads=1)
    # the run's key: the context's key extended with low_bits and the method version
    assert again.meta["key"] == alps.run_key(context(setup).base_key, 2) != context(setup).base_key
    # record file names: module names as they are; anything else sanitised without collisions
    assert alps.record_path(tmp_path, "layer3.4.conv2").name == "layer3.4.conv2.json"
    assert alps.record_path(tmp_path, "a/b") != alps.record_path(tmp_path, "a_b")
    assert alps.record_path(tmp_path, "a/b").parent == tmp_path


def test_stale_or_corrupt_records_are_recomputed(setup, tmp_path, monkeypatch):
    first = run(setup, record_dir=str(tmp_path))
    calls = counting(monkeypatch)
    # other settings: every record has another key
    other = run(setup, record_dir=str(tmp_path), settings=replace(SETTINGS, lr=0.02))
    assert len(calls) == 4 and other.meta["key"] != first.meta["key"]
    assert all(records.read_record(tmp_path, jobs.Job(layer, {layer: 2} if layer != alps.REFERENCE else {}, 0),
                                other.meta["key"], threads=1) is not None
               for layer in [alps.REFERENCE, *other.table["layer"]])
    # other weights (another checkpoint): recomputed again
    calls.clear()
    q2 = copy.deepcopy(setup[0])
    with torch.no_grad():
        q2.block.conv1.weight[0, 0, 0, 0] += 0.01
    moved = run(setup, model=q2, record_dir=str(tmp_path))
    assert len(calls) == 4 and moved.meta["key"] not in (first.meta["key"], other.meta["key"])
    # truncated or garbage records count as missing: only those jobs run again
    calls.clear()
    path = tmp_path / "block.conv2.json"
    path.write_text(path.read_text()[:40])
    (tmp_path / "__reference__.json").write_bytes(b"\x00\xff garbage")
    again = run(setup, model=q2, record_dir=str(tmp_path))
    assert sorted(calls) == ["__reference__", "block.conv2"]
    pd.testing.assert_frame_equal(again.table[DETERMINISTIC], moved.table[DETERMINISTIC])
    # another low_bits or another method version: even the reference job (no bits) is recomputed
    calls.clear()
    run(setup, model=q2, record_dir=str(tmp_path), low_bits=3)
    assert len(calls) == 4
    calls.clear()
    monkeypatch.setattr(alps, "METHOD_VERSION", "alps-test")
    assert run(setup, model=q2, record_dir=str(tmp_path)).meta["key"] != again.meta["key"]
    assert len(calls) == 4


def test_two_workers_match_one(setup, tmp_path):
    threads = torch.get_num_threads()
    one = run(setup, threads=1)
    assert torch.get_num_threads() == threads  # restored after the call
    two = run(setup, workers=2, threads=1, record_dir=str(tmp_path))
    pd.testing.assert_frame_equal(one.table[DETERMINISTIC], two.table[DETERMINISTIC])
    assert set(two.table["worker"]) <= {"proc0", "proc1"} and set(one.table["worker"]) == {"main"}
    assert two.cost.workers == 2 and two.cost.epochs == 4
    assert len(list(tmp_path.glob("*.json"))) == 4  # the workers wrote their records
    assert not any(t.is_shared() for t in setup[0].state_dict().values())  # the caller's model is as it was


def _rank(rank: int, world: int, init: str, ctx: JobContext, folder: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        try:
            alps.scores(ctx, progress=False)
        except ValueError as e:
            assert "record_dir" in str(e)
        else:
            raise AssertionError("record_dir=None was accepted under torch.distributed")
        s = alps.scores(replace(ctx, record_dir=folder), progress=False)
        s.table.to_pickle(os.path.join(out, f"rank{rank}.pkl"))
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump({"jobs_run": s.meta["jobs_run"], "workers": s.cost.workers,
                       "epochs": s.cost.epochs}, f)
    finally:
        dist.destroy_process_group()


def test_distributed_ranks_split_jobs_and_agree(setup, tmp_path):
    single = run(setup, threads=1)
    torch.multiprocessing.spawn(_rank, args=(2, f"file://{tmp_path / 'rdzv'}", context(setup),
                                             str(tmp_path / "records"), str(tmp_path)), nprocs=2)
    for r in range(2):
        table = pd.read_pickle(tmp_path / f"rank{r}.pkl")
        pd.testing.assert_frame_equal(table[DETERMINISTIC], single.table[DETERMINISTIC])
        info = json.loads((tmp_path / f"rank{r}.json").read_text())
        assert info == {"jobs_run": 4, "workers": 2, "epochs": 4.0}
    # jobs [rank::2]: rank 0 ran the reference and block.conv2, rank 1 block.conv1 and conv3
    assert list(table["worker"]) == ["rank1", "rank0", "rank1"]


def test_no_finetune_drop(setup, monkeypatch):
    q, _, val = setup

    def no_training(*a, **k):
        raise AssertionError("fit was called with epochs=0")

    monkeypatch.setattr(jobs, "fit", no_training)
    s = run(setup, settings=replace(SETTINGS, epochs=0))
    assert s.method == "noft" and s.cost.epochs == 0 and s.cost.backward_passes == 0
    assert s.table["train_loss"].isna().all()
    assert s.cost.forward_passes == 4 * N_VAL
    loader = make_loader(val, batch_size=BATCH, train=False)
    with one_thread():
        assert s.meta["reference_metric"] == evaluate(q, loader, task="classification", num_classes=4)
        for row in s.table.itertuples():
            reduced = mpq.set_bits(copy.deepcopy(q), {row.layer: 2})
            got = evaluate(reduced, loader, task="classification", num_classes=4, detail=True)
            with torch.no_grad():
                loss = torch.nn.functional.cross_entropy(torch.cat([reduced.eval()(x) for x, _ in loader]),
                                                         torch.cat([y for _, y in loader]))
            assert got["loss"] == pytest.approx(float(loss), rel=1e-5)
            assert row.metric == got["metric"] and row.metric_drop == s.meta["reference_metric"] - got["metric"]
            assert row.score == pytest.approx(got["loss"] - s.meta["reference_loss"], abs=1e-9)
            # the split halves: the same loss over the even- and odd-numbered samples
            halves = got["sample_loss"]
            assert (halves[0::2, 0].sum() + halves[1::2, 0].sum()) / len(halves) == pytest.approx(got["loss"])
    assert s.table["score"].abs().sum() > 0  # 2 bits without a fine-tune hurts this net
    assert run(setup, settings=replace(SETTINGS, epochs=0), method="custom").method == "custom"


def test_bad_input(setup):
    empty = TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long))
    with pytest.raises(NotQuantizedError):
        run(setup, model=tiny_net(), base_key="a float model has no context key")
    with pytest.raises(ValueError, match="validation set has 0 samples.*carve"):
        run(setup, eval_set=empty)
    with pytest.raises(ValueError, match="training set has 0 samples.*smaller batch_size"):
        run(setup, train=empty)
    with pytest.raises(ValueError, match="training set has 8 samples"):
        run(setup, train=TensorDataset(torch.zeros(8, 3, 8, 8), torch.zeros(8, dtype=torch.long)))
    # no fine-tune: the train split is not used, an empty one is fine
    assert run(setup, train=empty, settings=replace(SETTINGS, epochs=0)).method == "noft"
    with pytest.raises(ValueError, match="unknown task"):
        run(setup, task="detection")
    with pytest.raises(KeyError, match="nope"):
        run(setup, layers=["block.conv1", "nope"])
    with pytest.raises(ValueError, match="'stem'.*not a candidate"):
        run(setup, layers=["stem"])
    with pytest.raises(ValueError, match="bits"):
        run(setup, low_bits=1)
    with pytest.raises(ValueError, match="workers > 1 runs CPU"):
        run(setup, workers=2, device="cuda")


def test_with_a_teacher_the_score_is_the_kl_increase(setup):
    """With a float teacher the jobs measure the KL from it on the validation split, and the score is
    the KL increase over the reference job (no-FT here: exactly the models set_bits makes)."""
    q, _, val = setup
    teacher = mpq.set_bits(copy.deepcopy(q), dict.fromkeys(mpq.candidate_layers(q), 8))  # near-float stand-in
    s = run(setup, teacher=teacher, settings=replace(SETTINGS, epochs=0))
    assert s.meta["signal"] == "eval_kl"
    loader = make_loader(val, batch_size=BATCH, train=False)

    def kl(model):
        with torch.no_grad():
            t = torch.log_softmax(torch.cat([teacher.eval()(x) for x, _ in loader]), 1)
            m = torch.log_softmax(torch.cat([model.eval()(x) for x, _ in loader]), 1)
        return float((t.exp() * (t - m)).sum(1).mean())
    with one_thread():
        ref = kl(q)
        assert s.meta["reference_kl"] == pytest.approx(ref, rel=1e-5, abs=1e-9)
        for row in s.table.itertuples():
            reduced = mpq.set_bits(copy.deepcopy(q), {row.layer: 2})
            assert row.score == pytest.approx(kl(reduced) - ref, rel=1e-4, abs=1e-7)
            assert row.loss_increase == pytest.approx(row.eval_loss - row.reference_loss)
    assert (s.table["score"] > 0).all()  # 2 bits moves every layer's function away from the teacher
    assert s.cost.forward_passes == 4 * N_VAL * 2  # the students' and the teacher's validation passes
