"""Job progress that reaches a person wherever the jobs run: a bar in a terminal, plain lines elsewhere.

A tqdm bar redraws itself with carriage returns; that is right in a terminal
and useless everywhere else. Under ``dvc repro`` the steps run in a Jupyter
kernel started by papermill, whose stderr is not a terminal: there the jobs'
progress is written as plain lines at a modest interval,

    resnet50 frontier: 12/53 jobs, 0.80 jobs/s, ETA 51s
    alps jobs: 12/53 jobs, 2m30s/job, ETA 1h42m   (under 0.1 jobs/s: time per job)

and papermill passes the kernel's stderr on to its own stdout
(``--stderr-file -`` in the commands ``mpq.pipeline`` writes into
``dvc.yaml``), which ``dvc repro`` shows. ``job_bar`` picks one of the two;
both offer the part of tqdm's interface that ``mpq.jobs`` uses (``update``,
``set_postfix``, a context manager). The same serves a training run's steps
(``unit="step"``: ``resnet50 float: 120/560 steps, 1.90 steps/s, ETA 3m39s``).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO, Union

from tqdm.std import tqdm  # text bar: tqdm.auto's notebook widget needs ipywidgets in the kernel

__all__ = ["INTERVAL", "Bar", "ProgressLines", "format_seconds", "job_bar"]

INTERVAL = 30.0  # seconds between two progress lines (the first and the last are always written)


def format_seconds(seconds: float) -> str:
    """A short duration: ``45s``, ``1m05s``, ``2h03m``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressLines:
    """Plain progress lines for a run of ``total`` jobs, ``initial`` of them already done (reused).

    A line is written when the run starts, after a job when ``interval``
    seconds have passed since the previous line, and when it closes. The rate
    and the ETA count only the jobs finished since the start (reused records
    cost nothing); under 0.1 jobs/s the speed is given as time per job, e.g.
    ``alps jobs: 12/53 jobs, 15s/job, ETA 10m15s, last 14.9s``.
    """

    def __init__(self, total: int, *, initial: int = 0, desc: str = "jobs", stream: TextIO | None = None,
                 interval: float = INTERVAL, clock: Callable[[], float] = time.monotonic, unit: str = "job") -> None:
        self.total, self.n, self.desc, self.unit = total, initial, desc, unit
        self._initial, self._interval, self._clock = initial, interval, clock
        self._stream = stream or sys.stderr
        self._postfix = ""
        self._start = self._last = clock()
        self._write(f"{initial}/{total} {unit}s" + (f" ({initial} already done)" if initial else ""))

    def _write(self, text: str) -> None:
        self._stream.write(f"{self.desc}: {text}\n")
        self._stream.flush()

    def _status(self) -> str:
        """``done/total jobs, rate, ETA`` (no rate before the first job of this run finishes)."""
        done, elapsed = self.n - self._initial, self._clock() - self._start
        text = f"{self.n}/{self.total} {self.unit}s"
        if done > 0 and elapsed > 0:
            rate = done / elapsed
            speed = f"{rate:.2f} {self.unit}s/s" if rate >= 0.1 else f"{format_seconds(1 / rate)}/{self.unit}"
            text += f", {speed}, ETA {format_seconds((self.total - self.n) / rate)}"
        return text + (f", {self._postfix}" if self._postfix else "")

    def set_postfix(self, **values: Any) -> None:
        """Values appended to the next line (``last=1.2s``), as tqdm's ``set_postfix``."""
        self._postfix = ", ".join(f"{k} {v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        """Count ``n`` finished jobs; write a line if ``interval`` seconds passed since the last one."""
        self.n += n
        now = self._clock()
        if now - self._last >= self._interval and self.n < self.total:
            self._last = now
            self._write(self._status())

    def close(self) -> None:
        """Write the closing line: jobs done and the wall time of this run."""
        elapsed = format_seconds(self._clock() - self._start)
        self._write(f"{self.n}/{self.total} {self.unit}s, {self.n - self._initial} run in {elapsed}")

    def __enter__(self) -> "ProgressLines":
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        if kind is None:
            self.close()
        else:  # an error is on its way out: say where the run stopped, not that it finished
            self._write(f"stopped at {self.n}/{self.total} {self.unit}s after "
                        f"{format_seconds(self._clock() - self._start)}")


Bar = Union[tqdm, ProgressLines]  # what ``job_bar`` returns


def job_bar(total: int, *, initial: int = 0, desc: str = "jobs", disable: bool = False,
            stream: TextIO | None = None, unit: str = "job", leave: bool = True) -> Bar:
    """The progress display of a run of jobs: a tqdm bar on a terminal, ``ProgressLines`` elsewhere.

    ``stream`` (default: ``sys.stderr``) is where it writes; ``disable``: a
    silent (disabled) tqdm bar; ``unit``: what is counted (``"job"``,
    ``"step"``); ``leave``: whether the terminal bar stays when it closes.
    """
    stream = stream or sys.stderr
    if disable or stream.isatty():
        return tqdm(total=total, initial=initial, desc=desc, disable=disable, file=stream, unit=unit, leave=leave)
    return ProgressLines(total, initial=initial, desc=desc, stream=stream, unit=unit)
