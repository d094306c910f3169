"""The CPU-runnable parts of benchmarks/gpu_check.sh: its script parses, its benchmarks run on a CPU
at a toy size and print the tables its targets read, and the GPU-hour estimator covers every network."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import gpu_targets  # noqa: E402


def run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_gpu_check_script_parses_and_names_every_part():
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], check=True)
    text = (ROOT / "benchmarks" / "gpu_check.sh").read_text()
    for part in ("quantized_step.py", "loader_speed.py", "pytest", "torchrun --nproc_per_node=1",
                 "baselines sensitivity frontier", "gpu_targets.py"):
        assert part in text


def test_step_and_loader_benchmarks_run_on_cpu_and_feed_the_targets():
    step = run("benchmarks/quantized_step.py", "--device", "cpu", "--threads", "1", "--steps", "1",
               "--batch", "4", "--size", "32", "--widths", "1.0")
    loader = run("benchmarks/loader_speed.py", "--device", "cpu", "--threads", "1", "--images", "8",
                 "--size", "32", "--batch-size", "4", "--workers", "0", "--passes", "1", "--steps", "1",
                 "--step-batch", "2")
    figures = gpu_targets.step_figures(step)
    assert figures is not None and all(v > 0 for v in figures)
    assert gpu_targets.loader_rates(loader) and all(r > 0 for r in gpu_targets.loader_rates(loader))
    assert len(gpu_targets.verdicts(step, loader)) == 2


def test_targets_pass_and_fail_on_the_numbers():
    step = "  1.0     100.0    1280        120.0    1067   1.20\n"
    fast = "loader, train transforms       8    2000.0\n"
    slow = "loader, train transforms       8     500.0\n"
    assert [ok for ok, _ in gpu_targets.verdicts(step, fast)] == [True, True]
    assert [ok for ok, _ in gpu_targets.verdicts(step, slow)] == [True, False]
    assert [ok for ok, _ in gpu_targets.verdicts(step.replace("1.20", "1.45"), fast)] == [False, True]
    assert [ok for ok, _ in gpu_targets.verdicts("", fast)] == [False, False]


@pytest.mark.parametrize("segmentation", ["cityscapes", "ade20k"])
def test_gpu_hours_estimates_every_network(segmentation):
    out = run("benchmarks/gpu_hours.py", "--segmentation", segmentation, "--img-per-s", "resnet50=1000")
    rows = [line.split()[0] for line in out.splitlines()[2:]]
    assert rows == ["resnet50", "resnet101", "pspnet"]
    assert "resnet50 1000" in out


def test_lsq_steps_benchmark_prints_its_three_parts(micro_params, tmp_path):
    """benchmarks/lsq_steps.py on a micro float model: the multiplier table (x1: steps at rest,
    x100: moved) and the data-free 2-bit init line (the 2-bit fine-tunes reuse the same path)."""
    from mpq import config
    from mpq.experiment import Experiment

    Experiment(config.load(micro_params), "resnet50", progress=False).baselines(tmp_path / "resnet50")
    out = run("benchmarks/lsq_steps.py", "--params", str(micro_params), "--network", "resnet50",
              "--results", str(tmp_path), "--mults", "1,100", "--no-init-finetune")
    rows = [line.split("|")[1:-1] for line in out.splitlines() if line.startswith("| 1 |") or line.startswith("| 100 |")]
    assert len(rows) == 2
    moved = {r[0].strip(): float(r[3].strip().rstrip(" %")) for r in rows}
    assert moved["1"] <= moved["100"]
    assert "MSE-optimal / LSQ-init step: median" in out
    assert "## 3." not in out


def test_test_set_size_benchmark_prints_the_copies_table(micro_params, tmp_path):
    """benchmarks/test_set_size.py on micro float and 4-bit models: per family, the K rows with
    the effective-size multiplier of the float - 4-bit pair (1.0 for the grid's K = 1: the originals)."""
    import torch
    import test_set_size
    from mpq import config
    from mpq.experiment import Experiment

    digits = torch.arange(2 * 32 * 32, dtype=torch.uint8).reshape(2, 32, 32)
    grid = test_set_size.variants(digits, 25, "grid")
    assert grid.shape == (2, 25, 32, 32) and torch.equal(grid[:, 0], digits)
    assert len({tuple(map(tuple, g.tolist())) for g in grid[0]}) == 25  # 25 different offsets
    Experiment(config.load(micro_params), "resnet50", progress=False).baselines(tmp_path / "resnet50")
    out = run("benchmarks/test_set_size.py", "--params", str(micro_params), "--results", str(tmp_path),
              "--mixes", "--digits", "64", "--families", "grid", "shift", "--variants", "3")
    assert "64 test digits" in out and "grid: 25 variants per digit" in out and "shift: 3 variants per digit" in out
    rows = [line.split() for line in out.splitlines() if line.strip()[:2].strip().isdigit()]
    assert [r[0] for r in rows] == ["1", "5", "9", "25", "1", "2", "3"]
    assert rows[0][-1] == "x1.0"
