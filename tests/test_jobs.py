"""mpq.jobs and mpq.records: bits applied, determinism, keys, reuse, stale records, pool, no fine-tune.

A tiny quantized conv net (3 candidate convs, 8-bit stem and fc) on random 8x8
inputs, so that a job takes milliseconds.
"""
import copy
import json
import math
from dataclasses import replace

import pytest
import torch
from torch.utils.data import Subset, TensorDataset

import mpq
from mpq import jobs, records
from mpq.data import make_loader
from mpq.jobs import Job, JobContext
from mpq.quantized import quant_layers
from mpq.train import FitSettings, evaluate
from tests.conftest import one_thread, tiny_net

SETTINGS = FitSettings(epochs=1, lr=0.05)
BATCH = 16
N_TRAIN, N_EVAL = 32, 24
FULL = {"stem": 8, "block.conv1": 2, "block.conv2": 4, "conv3": 3, "fc": 8}  # a full assignment
CHANGED = {"block.conv1", "conv3"}  # the layers FULL moves away from the start (4 bits)
# every record field that does not depend on timing or on who ran the job
DETERMINISTIC = ["format", "key", "name", "bits", "seed", "metric", "train_loss", "steps", "train_samples",
                 "eval_samples", "teacher_samples"]


@pytest.fixture(scope="module")
def ctx() -> JobContext:
    """A context on a calibrated 4-bit tiny net (untrained: the jobs only need to be deterministic)."""
    with one_thread():
        torch.manual_seed(0)
        y = torch.randint(0, 4, (N_TRAIN + N_EVAL,))
        x = torch.randn(N_TRAIN + N_EVAL, 3, 8, 8) + 0.5 * torch.randn(4, 3, 8, 8)[y]
        train, test = TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])
        q = mpq.quantize(tiny_net(), 4)
        mpq.calibrate(q, [x[:BATCH]])
    common = dict(teacher=None, settings=SETTINGS, batch_size=BATCH, task="classification", num_classes=4,
                  ignore_index=255)
    key = records.context_key(q, train_set=train, eval_set=test, **common)
    return JobContext(model=q, train=train, eval_set=test, device="cpu", record_dir=None, base_key=key,
                      **common)


def run(ctx, job_list, **kw):
    args = dict(threads=1, progress=False)
    args.update(kw)
    return jobs.run(ctx, job_list, **args)


def counting(monkeypatch) -> list:
    """Wrap ``jobs.run_job``: record the name of every job computed in this process."""
    calls, real = [], jobs.run_job

    def wrapped(c, job):
        calls.append(job.name)
        return real(c, job)

    monkeypatch.setattr(jobs, "run_job", wrapped)
    return calls


def fields(rec: dict) -> dict:
    return {f: rec[f] for f in DETERMINISTIC}


def test_full_assignment_changes_exactly_those_layers(ctx, monkeypatch):
    q = ctx.model
    start = {k: v.clone() for k, v in q.state_dict().items()}
    seen = []
    real_fit = jobs.fit

    def spy(model, *a, **k):
        seen.append((mpq.get_bits(model), {n: v.clone() for n, v in model.state_dict().items()}))
        return real_fit(model, *a, **k)

    monkeypatch.setattr(jobs, "fit", spy)
    with one_thread():
        rec = jobs.run_job(ctx, Job("full", FULL, 0))
    bits, state = seen[0]
    assert bits == FULL
    for name in FULL:  # changed layers get the LSQ init; the others (named or not) are left as they are
        assert torch.equal(state[f"{name}.wq.step"], start[f"{name}.wq.step"]) == (name not in CHANGED)
        assert torch.equal(state[f"{name}.weight"], start[f"{name}.weight"])
    assert all(torch.equal(v, start[k]) for k, v in q.state_dict().items())  # the start model is untouched
    assert set(mpq.get_bits(q).values()) == {4, 8}
    assert rec["format"] == records.RECORD_FORMAT and rec["name"] == "full" and rec["bits"] == FULL
    assert rec["seed"] == 0 and rec["worker"] == "main" and rec["device"].startswith("cpu")
    assert rec["steps"] == N_TRAIN // BATCH and rec["train_samples"] == N_TRAIN
    assert rec["eval_samples"] == N_EVAL and rec["teacher_samples"] == 0
    assert math.isfinite(rec["train_loss"]) and 0 <= rec["metric"] <= 100 and rec["seconds"] > 0
    # deterministic: the same job again gives the same record (timing aside)
    with one_thread():
        again = jobs.run_job(ctx, Job("full", FULL, 0))
    assert fields(again) == fields(rec)
    # the key: the job's bits (in any order), seed and thread count, not its name
    key = records.job_key(ctx.base_key, Job("full", FULL, 0), threads=1)
    assert rec["threads"] == 1
    assert rec["key"] == key == records.job_key(ctx.base_key, Job("other", dict(reversed(FULL.items())), 0), threads=1)
    assert records.job_key(ctx.base_key, Job("full", {**FULL, "conv3": 2}, 0), threads=1) != key
    assert records.job_key(ctx.base_key, Job("full", FULL, 1), threads=1) != key
    assert records.job_key(ctx.base_key, Job("full", FULL, 0), threads=2) != key
    assert records.job_key("another context", Job("full", FULL, 0), threads=1) != key
    # an extended context key: another key for another base or other extra values, the same for the same
    extended = records.extend_key(ctx.base_key, {"low_bits": 2})
    assert extended not in (ctx.base_key, records.extend_key(ctx.base_key, {"low_bits": 3}),
                            records.extend_key("another context", {"low_bits": 2}))
    assert extended == records.extend_key(ctx.base_key, {"low_bits": 2})
    assert hash(Job("full", FULL, 0)) == hash(Job("full", dict(FULL), 0))
    # the context key follows the inputs
    common = dict(teacher=None, settings=SETTINGS, batch_size=BATCH, task="classification", num_classes=4,
                  ignore_index=255, train_set=ctx.train, eval_set=ctx.eval_set)
    assert records.context_key(q, **common) == ctx.base_key
    x, y = ctx.eval_set.tensors
    assert records.context_key(q, **{**common, "eval_set": TensorDataset(x[:-1], y[:-1])}) != ctx.base_key
    # the same size, other samples: another key (a split re-drawn must not reuse the old records)
    assert records.context_key(q, **{**common, "eval_set": TensorDataset(x.flip(0), y.flip(0))}) != ctx.base_key
    assert records.context_key(q, **{**common, "eval_set": Subset(ctx.eval_set, range(len(x))[::-1])}) != ctx.base_key
    assert records.context_key(q, **{**common, "train_set": TensorDataset(*(t.flip(0) for t in ctx.train.tensors))}
                               ) != ctx.base_key
    assert records.context_key(q, **common, extra={"low_bits": 2}) != ctx.base_key
    moved = mpq.set_bits(copy.deepcopy(q), {"conv3": 3})
    assert records.context_key(moved, **common) != ctx.base_key


def test_the_reused_working_copy_gives_a_fresh_copys_floats(ctx):
    """A process resets one working copy per starting model between jobs (``_working_copy``): a job run
    after others (other bits, fine-tuned weights, BN statistics, gradients) matches one from a fresh copy."""
    with one_thread():
        jobs._WORKING.clear()
        fresh = jobs.run_job(ctx, Job("full", FULL, 0))
        jobs.run_job(ctx, Job("other", {"block.conv2": 2, "conv3": 2}, 1))
        jobs.run_job(ctx, Job("ref", {}, 2))
        after = jobs.run_job(ctx, Job("full", FULL, 0))
    assert fields(after) == fields(fresh)
    assert after["eval_loss"] == fresh["eval_loss"] and after["eval_loss_halves"] == fresh["eval_loss_halves"]
    assert len(jobs._WORKING) == 1 and jobs._WORKING[ctx.model][1] is not ctx.model
    # a copy whose layout load_state_dict cannot restore (here: channels-last) is replaced, not reset
    cpu = torch.device("cpu")
    held = jobs._working_copy(ctx.model, cpu)
    assert jobs._working_copy(ctx.model, cpu) is held
    held.to(memory_format=torch.channels_last)
    assert jobs._working_copy(ctx.model, cpu) is not held
    # a layer without a quantizer (bits None) in the starting model: job after job still works
    off = copy.deepcopy(ctx.model)
    quant_layers(off)["block.conv2"].set_bits(None)  # the layer's own call: mpq.set_bits takes ints
    with one_thread():
        first = jobs.run_job(replace(ctx, model=off), Job("conv3", {"conv3": 2}, 0))
        second = jobs.run_job(replace(ctx, model=off), Job("conv3", {"conv3": 2}, 0))
    assert fields(first) == fields(second) and mpq.get_bits(off)["block.conv2"] is None
    # jobs.run drops the copy with its run
    jobs._WORKING.clear()
    run(ctx, [Job("ref", {}, 0)])
    assert len(jobs._WORKING) == 0


def test_records_are_reused_and_stale_ones_recomputed(ctx, tmp_path, monkeypatch):
    c = replace(ctx, record_dir=str(tmp_path))
    job_list = [Job("start", {}, 0), Job("full", FULL, 0), Job("a/b", {"conv3": 2}, 0)]
    calls = counting(monkeypatch)
    first, stats = run(c, job_list)
    assert calls == ["start", "full", "a/b"] and list(first) == ["start", "full", "a/b"]
    assert stats["run"] == 3 and stats["reused"] == 0 and stats["workers"] == 1
    assert stats["train_samples"] == 3 * N_TRAIN and stats["eval_samples"] == 3 * N_EVAL
    assert stats["teacher_samples"] == 0 and stats["seconds"] > 0 and stats["devices"][0].startswith("cpu")
    files = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert len(files) == 3 and "start.json" in files and "full.json" in files
    assert not list(tmp_path.glob(".*.tmp"))
    for job in job_list:
        stored = json.loads(records.record_path(tmp_path, job.name).read_text())
        assert stored.pop("checksum") and stored == first[job.name]
    # a rerun computes nothing and returns the identical records (seconds and all)
    calls.clear()
    again, stats = run(c, job_list)
    assert calls == [] and again == first and stats["run"] == 0 and stats["reused"] == 3
    assert stats["train_samples"] == 0 and stats["devices"] == []
    assert {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")} == files
    assert records.valid_records(tmp_path, job_list, c.base_key, threads=1) == first
    records.wait_for_records(tmp_path, job_list, c.base_key, threads=1, poll_seconds=60)  # all there: returns at once
    # the same names with another seed or other bits: the key differs, recomputed and overwritten
    changed = [Job("start", {}, 1), Job("full", {**FULL, "conv3": 2}, 0), job_list[2]]
    other, stats = run(c, changed)
    assert calls == ["start", "full"] and stats["run"] == 2 and stats["reused"] == 1
    assert other["a/b"] == first["a/b"] and other["full"]["bits"]["conv3"] == 2
    assert other["start"]["key"] != first["start"]["key"] and other["start"]["seed"] == 1
    assert records.read_record(tmp_path, job_list[0], c.base_key, threads=1) is None
    assert records.read_record(tmp_path, changed[0], c.base_key, threads=1) == other["start"]
    # another context (e.g. other settings): nothing is reused
    assert records.read_record(tmp_path, changed[2], "another context", threads=1) is None
    # a record under another job's name, a truncated one, garbage: not reused
    path = records.record_path(tmp_path, "a/b")
    assert records.read_record(tmp_path, replace(changed[2], name="a_b"), c.base_key, threads=1) is None
    edited = json.loads(path.read_text())
    path.write_text(json.dumps({**edited, "metric": edited["metric"] + 1.0}))  # an edited number
    assert records.read_record(tmp_path, changed[2], c.base_key, threads=1) is None
    path.write_text(path.read_text()[:50])
    assert records.read_record(tmp_path, changed[2], c.base_key, threads=1) is None
    path.write_bytes(b"\x00\xff garbage")
    calls.clear()
    fixed, _ = run(c, changed)
    assert calls == ["a/b"] and fields(fixed["a/b"]) == fields(first["a/b"])
    # record file names: module-like names as they are; anything else sanitised without collisions
    assert records.record_path(tmp_path, "layer3.4.conv2").name == "layer3.4.conv2.json"
    assert records.record_path(tmp_path, "a/b") != records.record_path(tmp_path, "a_b")
    assert records.record_path(tmp_path, "..").parent == tmp_path
    assert len(records.record_path(tmp_path, "x" * 1000).name) < 200


def test_bad_jobs(ctx):
    with pytest.raises(ValueError, match="'dup' is used twice"):
        run(ctx, [Job("dup", {}, 0), Job("ok", {}, 0), Job("dup", FULL, 1)])
    with pytest.raises(KeyError, match="nope"):
        run(ctx, [Job("x", {"nope": 2}, 0)])
    with pytest.raises(ValueError, match="'stem'.*not a candidate"):
        run(ctx, [Job("x", {"stem": 4}, 0)])
    with pytest.raises(ValueError, match="bad precision"):
        run(ctx, [Job("x", {"conv3": 1}, 0)])
    with pytest.raises(ValueError, match="non-empty"):
        Job("", {}, 0)
    with pytest.raises(ValueError, match="workers > 1 runs CPU"):
        run(replace(ctx, device="cuda"), [Job("x", {}, 0)], workers=2)
    with pytest.raises(ValueError, match="unknown task"):
        run(replace(ctx, task="detection"), [Job("x", {}, 0)])
    with pytest.raises(ValueError, match="fewer than one batch"):
        run(replace(ctx, train=TensorDataset(torch.zeros(BATCH - 1, 3, 8, 8))), [Job("x", {}, 0)])
    with pytest.raises(ValueError, match="evaluation set is empty"):
        run(replace(ctx, eval_set=TensorDataset(torch.zeros(0, 3, 8, 8))), [Job("x", {}, 0)])
    assert run(ctx, [])[0] == {}


def test_two_workers_match_one(ctx, tmp_path):
    job_list = [Job("start", {}, 0), Job("full", FULL, 0), Job("conv3", {"conv3": 2}, 1)]
    threads = torch.get_num_threads()
    one, stats1 = run(ctx, job_list)
    assert torch.get_num_threads() == threads  # restored after the call
    two, stats2 = run(replace(ctx, record_dir=str(tmp_path)), job_list, workers=2)
    assert list(two) == list(one)
    assert all(fields(two[n]) == fields(one[n]) for n in one)
    assert {r["worker"] for r in one.values()} == {"main"} and {r["worker"] for r in two.values()} <= {"proc0", "proc1"}
    assert stats1["workers"] == 1 and stats2["workers"] == 2 and stats2["run"] == 3
    assert len(list(tmp_path.glob("*.json"))) == 3  # the workers wrote their records
    assert not any(t.is_shared() for t in ctx.model.state_dict().values())


def test_no_finetune(ctx, monkeypatch):
    def no_training(*a, **k):
        raise AssertionError("fit was called with epochs=0")

    monkeypatch.setattr(jobs, "fit", no_training)
    c = replace(ctx, settings=replace(SETTINGS, epochs=0), train=TensorDataset(torch.zeros(0, 3, 8, 8)))
    recs, stats = run(c, [Job("start", {}, 0), Job("full", FULL, 0)])
    assert stats["train_samples"] == 0 and stats["eval_samples"] == 2 * N_EVAL
    loader = make_loader(ctx.eval_set, batch_size=BATCH, train=False)
    with one_thread():
        for name, bits in (("start", {}), ("full", FULL)):
            rec = recs[name]
            assert rec["steps"] == 0 and math.isnan(rec["train_loss"])
            model = mpq.set_bits(copy.deepcopy(ctx.model), bits)
            assert rec["metric"] == evaluate(model, loader, task="classification", num_classes=4)


def test_a_change_of_threads_per_job_recomputes(ctx, tmp_path, monkeypatch):
    """The thread count changes float sums: records of another count are recomputed, not mixed."""
    c = replace(ctx, record_dir=str(tmp_path))
    job_list = [Job("start", {}, 0), Job("conv3", {"conv3": 2}, 0)]
    calls = counting(monkeypatch)
    one, _ = run(c, job_list)
    assert calls == ["start", "conv3"] and {r["threads"] for r in one.values()} == {1}
    calls.clear()
    two, stats = run(c, job_list, threads=2)
    assert calls == ["start", "conv3"] and stats["reused"] == 0
    assert {r["threads"] for r in two.values()} == {2} and two["start"]["key"] != one["start"]["key"]
    calls.clear()
    # workers=2 without threads: this process's threads / 2 each (4 // 2 = 2): the 2-thread records
    threads = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        again, stats = run(c, job_list, threads=None, workers=2)
    finally:
        torch.set_num_threads(threads)
    assert calls == [] and stats["reused"] == 2 and again == two
