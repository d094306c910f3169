"""The tiny scale through the real pipeline, switched as the README says: `dvc exp run -S scale=tiny`
in a temporary copy of the repository.

Checks that every declared output exists and is well-formed (tables with their columns and no
NaN, figures that are real images, a verdict for every claim), that DVC then reports the
pipeline up to date, and that changing one method's settings re-runs only its stage.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mpq import methods

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(cmd, cwd, env, timeout=1500):
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory, embedded):
    """A copy of the repository (tracked and unignored files) after `dvc exp run -S scale=tiny`."""
    repo = tmp_path_factory.mktemp("repo")
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for f in filter(None, files):
        src = ROOT / f
        if src.is_file() and not f.startswith(("results/", "report/")):
            (repo / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, repo / f)
    shutil.copytree(embedded[0], repo / "data")
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""), "DVC_NO_ANALYTICS": "1",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "PYTHONWARNINGS": "ignore"}
    run(["git", "init", "-q"], repo, env)
    run(["git", "add", "-A"], repo, env)
    run(["git", "commit", "-qm", "tiny"], repo, env)
    run([sys.executable, "-m", "ipykernel", "install", "--sys-prefix", "--name", "mpq"], repo, env)
    run([sys.executable, "-m", "dvc", "exp", "run", "-S", "scale=tiny"], repo, env)
    assert yaml.safe_load((repo / "params.yaml").read_text())["scale"] == "tiny"
    return repo, env


def test_every_declared_output_exists_and_is_well_formed(tiny_repo):
    from PIL import Image

    repo, _ = tiny_repo
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    networks = yaml.safe_load((repo / "params.yaml").read_text())["networks"]
    declared = []
    for stage in stages.values():
        body = stage.get("do", stage)
        items = networks if "do" in stage else [None]
        for item in items:
            for out in body.get("outs", []) + body.get("metrics", []):
                path = next(iter(out)) if isinstance(out, dict) else out
                declared.append(path.replace("${item}", item) if item else path)
    missing = [p for p in declared if not (repo / p).exists()]
    assert not missing, f"declared outputs missing: {missing}"
    report = repo / "report"
    pngs = sorted(report.glob("F*.png"))
    assert {p.name[:2] for p in pngs} >= {"F1", "F2", "F3", "F4", "F5", "F6"}
    for png in pngs:
        with Image.open(png) as im:
            assert im.size[0] > 100 and im.size[1] > 100
        assert png.with_suffix(".pdf").read_bytes().startswith(b"%PDF")
    for table in sorted(report.glob("T*.csv")):
        df = pd.read_csv(table)
        assert len(df) and len(df.columns) > 1, table.name
        assert (report / f"{table.stem}.md").is_file()
    claims = pd.read_csv(report / "T4_claims.csv")
    assert len(claims) >= 4 and claims["verdict"].notna().all() and claims["evidence"].notna().all()
    metrics = json.loads((report / "metrics.json").read_text())
    assert set(networks) <= set(metrics)
    for net in networks:
        front = pd.read_csv(repo / "results" / net / "frontier.csv")
        assert front[["rel_throughput", "metric", "n_low"]].notna().all().all()
        for m in methods.names():
            s = pd.read_csv(repo / "results" / net / "sensitivity" / f"{m}.csv")
            assert s["score"].notna().all()


def test_dvc_status_is_clean_after_repro(tiny_repo):
    repo, env = tiny_repo
    out = run([sys.executable, "-m", "dvc", "status"], repo, env)
    assert "up to date" in out, out


def test_changing_one_method_reruns_only_what_depends_on_it(tiny_repo):
    repo, env = tiny_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["eagl"]["variant"] = "entropy_drop"   # a key the tiny overlay does not set
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(run([sys.executable, "-m", "dvc", "status", "--json"], repo, env)))
    assert changed == {f"sensitivity@{n}" for n in params["networks"]}
