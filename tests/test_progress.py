"""Job progress: plain lines off a terminal, and they reach the terminal of a papermill run."""
import io
import shlex
import subprocess
import sys

import nbformat
from tqdm import tqdm

from mpq.pipeline import PAPERMILL
from mpq.progress import ProgressLines, format_seconds, job_bar
from tests.conftest import ROOT


class Clock:
    """A settable clock for ``ProgressLines``."""

    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_lines_show_done_total_rate_and_eta_at_the_interval():
    out, clock = io.StringIO(), Clock()
    with ProgressLines(53, initial=3, desc="resnet50 frontier", stream=out, interval=30.0, clock=clock) as bar:
        clock.now += 10
        bar.set_postfix(last="1.2s")
        bar.update(1)          # 10 s after the first line: quiet
        clock.now += 20
        bar.update(1)          # 30 s: a line; 2 jobs in 30 s, 48 left
        clock.now += 30
        bar.update(40)         # 60 s: 42 jobs in 60 s
        clock.now += 5
        bar.update(8)          # the last job: the closing line says it
    assert out.getvalue().splitlines() == [
        "resnet50 frontier: 3/53 jobs (3 already done)",
        "resnet50 frontier: 5/53 jobs, 15s/job, ETA 12m00s, last 1.2s",
        "resnet50 frontier: 45/53 jobs, 0.70 jobs/s, ETA 11s, last 1.2s",
        "resnet50 frontier: 53/53 jobs, 50 run in 1m05s"]


def test_format_seconds():
    assert [format_seconds(s) for s in (0.4, 45, 65, 3599, 7380)] == ["0s", "45s", "1m05s", "59m59s", "2h03m"]


def test_job_bar_is_a_tqdm_bar_on_a_terminal_and_lines_elsewhere():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    assert isinstance(job_bar(2, stream=Terminal()), tqdm)
    assert isinstance(job_bar(2, stream=io.StringIO()), ProgressLines)
    silent = io.StringIO()
    with job_bar(2, stream=silent, disable=True) as bar:
        bar.update(2)
    assert silent.getvalue() == ""


def test_progress_lines_reach_papermills_output(tmp_path):
    """The pipeline's papermill command passes the kernel's progress lines on to its stdout."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("Three jobs."),
                nbformat.v4.new_code_cell("from mpq.progress import job_bar\n"
                                          "with job_bar(3, desc='demo jobs') as bar:\n"
                                          "    bar.update(3)")]
    src = tmp_path / "demo.ipynb"
    nbformat.write(nb, src)
    cmd = [sys.executable, "-m", *shlex.split(PAPERMILL), str(src), str(tmp_path / "out.ipynb")]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "demo jobs: 0/3 jobs\ndemo jobs: 3/3 jobs, 3 run in 0s\n" in done.stdout


def test_training_steps_write_progress_lines_off_a_terminal(capsys):
    """``mpq.train.fit`` under papermill (stderr not a terminal): step lines with a rate and an ETA."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    from mpq.train import FitSettings, fit
    torch.manual_seed(0)
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=4)
    fit(torch.nn.Linear(4, 2), data, task="classification", settings=FitSettings(epochs=3, lr=0.1), desc="toy")
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == "toy: 0/12 steps" and lines[-1].startswith("toy: 12/12 steps, 12 run in ")
    out, clock = io.StringIO(), Clock()
    try:
        with ProgressLines(8, initial=2, desc="toy", stream=out, unit="step", interval=0.0, clock=clock) as bar:
            clock.now += 4
            bar.update(2)
            raise FloatingPointError
    except FloatingPointError:
        pass
    assert out.getvalue().splitlines() == ["toy: 2/8 steps (2 already done)", "toy: 4/8 steps, 0.50 steps/s, ETA 8s",
                                           "toy: stopped at 4/8 steps after 4s"]
