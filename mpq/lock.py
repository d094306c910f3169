"""One run at a time per results folder: an exclusive lock on ``<folder>/.lock``.

The steps that write under ``results/<network>/`` (baselines, sensitivity,
frontier) hold ``folder_lock(folder)`` while they run, so a second run on the
same folder is refused at once with one line naming the holder's pid instead
of computing everything a second time and racing the first one's writes. The
lock is ``fcntl.flock`` on an open file: the operating system releases it when
the holder exits, however it exits (crash, SIGKILL included). The holder
removes the file when it releases the lock, so the folder holds only results;
a ``.lock`` left behind by a crash is unlocked and the next run takes it over.
The pid written into the file is for the message only. The lock is re-entrant
within a process (a step that runs another step keeps it), and is advisory:
it binds only code that asks for it.
"""
from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

__all__ = ["FolderLocked", "folder_lock", "LOCK_NAME"]

LOCK_NAME = ".lock"
_HELD: dict[Path, tuple[IO[str], int]] = {}  # this process's locks: folder -> (open lock file, depth)


class FolderLocked(RuntimeError):
    """The results folder is locked by another running process."""


@contextmanager
def folder_lock(folder: str | Path) -> Iterator[None]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block.

    Raises ``FolderLocked`` at once, without waiting, when another process
    holds it.
    """
    key = Path(folder).resolve()
    if key in _HELD:
        f, depth = _HELD[key]
        _HELD[key] = (f, depth + 1)
    else:
        _HELD[key] = (_acquire(key), 1)
    try:
        yield
    finally:
        f, depth = _HELD.pop(key)
        if depth > 1:
            _HELD[key] = (f, depth - 1)
        else:
            (key / LOCK_NAME).unlink(missing_ok=True)  # still ours: a newcomer checks it locked the file in place
            f.close()  # closing the file releases the lock


def _acquire(folder: Path) -> IO[str]:
    """Open ``folder/.lock``, take the lock without blocking and write this pid into it.

    When the file was removed by its releasing holder between our open and
    our lock, the lock is on a file no one else will see: try again on the
    file now in place.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        f = open(path, "a+")  # never truncates the holder's pid before the lock is ours
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "unknown"
            f.close()
            raise FolderLocked(f"{folder} is in use by another mpq run (pid {holder}): wait for it to finish "
                               "or stop it, then rerun") from None
        try:
            if os.path.samestat(os.fstat(f.fileno()), os.stat(path)):
                break
        except FileNotFoundError:
            pass
        f.close()
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f
