"""A pool of spawned CPU processes that share one context, sent to each process once.

``run_pool(fn, ctx, items, ...)`` calls ``fn(ctx, item)`` for every item in
spawned processes, each with a fixed torch thread count. The context (e.g. a
model and its datasets) goes to each process once, as plain pickled bytes:
handing a model to torch's multiprocessing pickler instead would move the
caller's tensors into shared memory and pass one file descriptor per tensor.
``fn`` and ``setup`` must be picklable by reference (module-level functions).

The processes die with their parent, even when it is killed with SIGKILL
(``_die_with_parent``): none is left computing for a parent that is gone, and
multiprocessing's resource tracker, which lives as long as a process holds its
pipe, ends with them.
"""
from __future__ import annotations

import ctypes
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

import torch

__all__ = ["run_pool"]

_STATE: tuple[Callable[[Any, Any], Any], Any] | None = None  # in a pool process: (fn, its context)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h
_WATCH_SECONDS = 0.5  # the portable fallback: how often a pool process checks its parent


def _die_with_parent(parent: int) -> None:
    """End this process as soon as the process ``parent`` is gone.

    On Linux the kernel sends SIGKILL when the parent dies
    (``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread polls the parent
    pid. Either way, a parent already gone when this runs ends this process
    at once. (The death signal follows the parent *thread* that spawned the
    process; ``run_pool`` keeps that thread in the pool's lifetime.)
    """
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    else:
        threading.Thread(target=_watch_parent, args=(parent,), daemon=True, name="mpq-parent-watch").start()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:
    """Poll until this process's parent is no longer ``parent`` (it died: re-parented), then exit."""
    while os.getppid() == parent:
        time.sleep(_WATCH_SECONDS)
    os._exit(1)


def _init_process(blob: bytes, threads: int, counter: Any, parent: int) -> None:
    """Pool initializer: die with ``parent``, set the thread count, unpickle ``(fn, setup, ctx)``,
    take the next index."""
    global _STATE
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    fn, setup, ctx = pickle.loads(blob)
    with counter.get_lock():
        index = counter.value
        counter.value += 1
    _STATE = (fn, setup(ctx, index))


def _call(item: Any) -> Any:
    """``fn(ctx, item)`` with this process's ``fn`` and context."""
    assert _STATE is not None, "the pool initializer did not run"
    fn, ctx = _STATE
    return fn(ctx, item)


def run_pool(fn: Callable[[Any, Any], Any], ctx: Any, items: Sequence[Any], *, workers: int, threads: int,
             setup: Callable[[Any, int], Any], on_result: Callable[[Any], None]) -> list[Any]:
    """``fn(ctx, item)`` for every item in ``workers`` spawned processes; the results as they finish.

    Each process sets ``torch.set_num_threads(threads)`` and uses the context
    ``setup(ctx, index)``, ``index`` counting the processes from 0.
    ``on_result`` is called here with each result the moment it arrives. The
    first exception (Ctrl-C included) cancels the items not yet started and
    is raised without waiting for the running ones. The processes die with
    this one, also when it is killed (SIGKILL).
    """
    mp = torch.multiprocessing.get_context("spawn")
    counter = mp.Value("i", 0)
    blob = pickle.dumps((fn, setup, ctx), protocol=pickle.HIGHEST_PROTOCOL)
    out: list[Any] = []
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=mp,
                               initializer=_init_process, initargs=(blob, threads, counter, os.getpid()))
    try:
        futures = {pool.submit(_call, item) for item in items}
        while futures:
            done, futures = wait(futures, return_when=FIRST_COMPLETED)
            for f in done:
                result = f.result()
                out.append(result)
                on_result(result)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return out
