"""The torchrun path on CPU (gloo): DDP baselines, sensitivity and frontier split across 2 ranks.

The same code runs one rank per GPU with NCCL at paper scale; here two CPU ranks prove the
process group, the DDP fine-tunes, the job split and the rank-0 writes.
"""
import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from tests.conftest import write_params

pytestmark = pytest.mark.slow


def test_torchrun_two_ranks_end_to_end(embedded, tmp_path):
    # three frontier methods (the frontier step needs the sensitivity of each): ALPS's rank split is the
    # no-FT drop's (the same jobs with a fine-tune), tested on its own in tests/test_alps.py
    over = {"data__root": str(embedded[0]), "threads": 1, "frontier__methods": ["eagl", "noft", "hessian"]}
    for net in ("resnet50", "resnet101", "pspnet"):
        over.update({f"network__{net}__width": 0.0625, f"network__{net}__train_size": 64,
                     f"network__{net}__eval_size": 64, f"network__{net}__batch_size": 16,
                     f"network__{net}__float_epochs": 1, f"network__{net}__quant_epochs": 0.5})
    params = write_params(tmp_path / "p.yaml", **over)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "-m", "mpq",
                "--params", str(params)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for step in (["baselines"], ["sensitivity", "--method", "noft", "--method", "eagl", "--method", "hessian"],
                 ["frontier"]):
        extra = ["--network", "resnet50", "--out", str(tmp_path / "res"), "--quiet"]
        proc = subprocess.run(torchrun + step + extra, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "res" / "resnet50"
    assert json.loads((out / "baselines.json").read_text())["uniform4"]["metric"] >= 0
    workers = {json.loads(p.read_text())["worker"] for p in (out / "records" / "frontier").glob("*.json")}
    assert workers == {"rank0", "rank1"}  # the jobs were split across the ranks
    table = pd.read_csv(out / "frontier.csv")
    assert table["metric"].notna().all() and len(table) > 0
    assert pd.read_csv(out / "sensitivity" / "noft.csv")["score"].notna().all()
