"""Where things live, relative to the repository root (the working directory).

Per-network results go to ``results/<network>/``; report figures and tables to
``report/`` (outside ``results/``, so that the report stage can depend on the
whole ``results/`` folder). Changing a layout here changes it everywhere.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["enter_repository", "RESULTS", "network_dir", "report_dir", "FLOAT_CKPT", "BASELINES_JSON", "SENSITIVITY", "RECORDS", "CONFIGS", "FRONTIER_CSV", "LAYERS_CSV", "FRONTIER_SUMMARY_CSV", "FRONTIER_INPUTS", "FRONTIER_SAMPLES", "BASELINES_SAMPLES", "SAMPLE_GROUPS", "STEP_DIAGNOSTIC", "uniform_ckpt"]

RESULTS = Path("results")
FLOAT_CKPT = "float.pt"
BASELINES_JSON = "baselines.json"
STEP_DIAGNOSTIC = "step_diagnostic.json"  # per uniform checkpoint: trained/initial step ratios, EAGL spread
BASELINES_SAMPLES = "baselines_samples.npz"  # per-test-sample counts of float and the uniform models
SAMPLE_GROUPS = "test_groups"  # in BASELINES_SAMPLES: each test sample's source digit (mpq.data.sample_groups)
SENSITIVITY = "sensitivity"  # per-method score tables and cost records
CONFIGS = "configs"  # bit-configuration files of the frontier
FRONTIER_CSV = "frontier.csv"
LAYERS_CSV = "layers.csv"  # per-layer MACs, parameters, starting bits, candidate flag
FRONTIER_SUMMARY_CSV = "frontier_summary.csv"
FRONTIER_SAMPLES = "frontier_samples.npz"  # per-test-sample counts of every frontier job (bootstrap CIs)
FRONTIER_INPUTS = "frontier_inputs.json"  # hashes of the files the frontier was computed from
RECORDS = "records"  # per-job records of ALPS, noft and the frontier (resumable work)


def uniform_ckpt(bits: int) -> str:
    """File name of the uniform ``bits``-bit LSQ checkpoint."""
    return f"uniform{bits}.pt"


def network_dir(network: str, root: str | Path = RESULTS) -> Path:
    return Path(root) / network


def report_dir() -> Path:
    return Path("report")


def enter_repository(start: str | Path | None = None) -> Path:
    """Change the working directory to the repository root (the nearest folder, from ``start`` or
    the current one upwards, holding ``dvc.yaml`` and ``params.yaml``) and return it.

    Every path here is relative to that root. Papermill runs the notebooks there already; Jupyter
    starts a notebook's kernel in the notebook's own folder (``notebooks/`` or
    ``results/<network>/``), so each notebook calls this first.
    """
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "dvc.yaml").is_file() and (folder / "params.yaml").is_file():
            os.chdir(folder)
            return folder
    raise FileNotFoundError(f"no repository root (a folder with dvc.yaml and params.yaml) at or above {here}")

