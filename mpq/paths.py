"""Where things live, relative to the repository root (the working directory).

Per-network results go to ``results/<network>/``; report figures and tables to
``report/`` (outside ``results/``, so that the report stage can depend on the
whole ``results/`` folder). Changing a layout here changes it everywhere.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["RESULTS", "network_dir", "report_dir", "FLOAT_CKPT", "BASELINES_JSON", "SENSITIVITY", "RECORDS", "CONFIGS", "FRONTIER_CSV", "LAYERS_CSV", "FRONTIER_SUMMARY_CSV", "uniform_ckpt"]

RESULTS = Path("results")
FLOAT_CKPT = "float.pt"
BASELINES_JSON = "baselines.json"
SENSITIVITY = "sensitivity"  # per-method score tables and cost records
CONFIGS = "configs"  # bit-configuration files of the frontier
FRONTIER_CSV = "frontier.csv"
LAYERS_CSV = "layers.csv"  # per-layer MACs, parameters, starting bits, candidate flag
FRONTIER_SUMMARY_CSV = "frontier_summary.csv"
RECORDS = "records"  # per-job records of ALPS, noft and the frontier (resumable work)


def uniform_ckpt(bits: int) -> str:
    """File name of the uniform ``bits``-bit LSQ checkpoint."""
    return f"uniform{bits}.pt"


def network_dir(network: str, root: str | Path = RESULTS) -> Path:
    return Path(root) / network


def report_dir() -> Path:
    return Path("report")
