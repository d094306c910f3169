"""Trustworthy runs: pool processes die with their parent, one run per results folder (mpq.lock)."""
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from mpq import config
from mpq.experiment import Experiment
from mpq.lock import FolderLocked, folder_lock

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc")


def _python(code: str, *args: str) -> subprocess.Popen:
    """Start ``python -c code args...`` in the repository root (so that ``mpq`` and ``tests`` import)."""
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(cond, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s waiting for {what}")
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by its new parent, counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _children(pid: int) -> set[int]:
    """The pids of ``pid``'s running children."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid and _alive(int(entry.name)):
                found.add(int(entry.name))
    return found


def sleep_forever(ctx, item: int) -> None:
    """A pool job that announces its process and then hangs (a job the parent will never see end)."""
    Path(ctx, f"{item}.pid").write_text(str(os.getpid()))
    time.sleep(600)


def name_process(ctx, index: int):
    return ctx


def test_pool_processes_and_resource_tracker_die_with_a_killed_parent(tmp_path):
    parent = _python("""
        import sys
        from mpq.pool import run_pool
        from tests.test_runs import name_process, sleep_forever
        run_pool(sleep_forever, sys.argv[1], [0, 1], workers=2, threads=1, setup=name_process,
                 on_result=print)
    """, str(tmp_path))
    try:
        _wait_for(lambda: len(list(tmp_path.glob("*.pid"))) == 2, 120, "both pool processes")
        workers = {int(p.read_text()) for p in tmp_path.glob("*.pid")}
        children = _children(parent.pid)
        assert workers <= children and len(children) == 3  # the two workers and the resource tracker
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.communicate()
    _wait_for(lambda: not any(_alive(pid) for pid in children), 10, f"orphans {sorted(children)} to end")


def test_the_portable_fallback_ends_a_process_whose_parent_died():
    parent = _python("""
        import subprocess, sys
        child = subprocess.Popen([sys.executable, "-c", "import os; from mpq.pool import _watch_parent; "
                                  "print(os.getpid(), flush=True); _watch_parent(os.getppid())"],
                                 stdout=subprocess.PIPE, text=True)
        print(child.stdout.readline().strip(), flush=True)
        child.wait()
    """)
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.send_signal(signal.SIGKILL)
    parent.communicate()
    _wait_for(lambda: not _alive(child), 10, "the watching child to end")


HOLD = """
    import sys, time
    from mpq.lock import folder_lock
    with folder_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(600)
"""


def test_a_second_run_on_a_locked_folder_is_refused_until_the_holder_is_killed(micro_params, tmp_path):
    holder = _python(HOLD, str(tmp_path))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FolderLocked, match=rf"in use by another mpq run \(pid {holder.pid}\): wait"):
            with folder_lock(tmp_path):
                pass
        # the baselines step takes the lock before any work: nothing is trained or written
        with pytest.raises(FolderLocked, match=f"pid {holder.pid}"):
            Experiment(config.load(micro_params), "resnet50", progress=False).baselines(tmp_path)
        assert [p.name for p in tmp_path.iterdir()] == [".lock"]
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the operating system releases the lock
        holder.communicate()
    with folder_lock(tmp_path):  # the stale file is taken over
        assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    assert not (tmp_path / ".lock").exists()  # removed on release: the folder holds only results


def test_the_lock_is_reentrant_in_one_process_and_released_after(tmp_path):
    with folder_lock(tmp_path / "new"):
        with folder_lock(tmp_path / "new"):  # a step that runs another step keeps the lock
            pass
        other = _python(HOLD, str(tmp_path / "new"))
        out, err = other.communicate(timeout=120)
        assert other.returncode != 0 and f"pid {os.getpid()}" in err.strip().splitlines()[-1]
    other = _python(HOLD, str(tmp_path / "new"))
    try:
        assert other.stdout.readline().strip() == "locked"
    finally:
        other.send_signal(signal.SIGKILL)
        other.communicate()
