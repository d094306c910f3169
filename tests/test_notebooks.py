"""Notebooks: stored without outputs, thin, and parameterised exactly as dvc.yaml runs them."""
import json
import re
from pathlib import Path

import papermill as pm
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_there_is_one_notebook_per_step_in_pipeline_order():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_stored_without_outputs_and_narrative(path):
    nb = json.loads(path.read_text())
    cells = nb["cells"]
    code = [c for c in cells if c["cell_type"] == "code"]
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in code), "strip the outputs"
    assert cells[0]["cell_type"] == "markdown" and cells[0]["source"][0].startswith("# ")
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1
    # markdown before every code cell (but the parameters cell may follow the title directly)
    for prev, cell in zip(cells, cells[1:]):
        if cell["cell_type"] == "code" and cell is not tagged[0]:
            assert prev["cell_type"] == "markdown", f"{path.name}: code cell without a markdown cell before it"
    # thin: no function or class definitions in notebooks (logic lives in mpq)
    src = "\n".join("".join(c["source"]) for c in code)
    assert not re.search(r"^\s*(def|class) ", src, re.M)


def stage_params():
    """{notebook: set of -p names} from the papermill commands in dvc.yaml."""
    out = {}
    for stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].values():
        cmd = (stage.get("do") or stage)["cmd"].split("papermill", 1)[1]
        nb = re.search(r"(notebooks/\S+\.ipynb)", cmd).group(1)
        out[nb] = set(re.findall(r"-p (\w+) ", cmd + " "))
    return out


def test_dvc_passes_exactly_the_notebook_parameters():
    passed = stage_params()
    assert sorted(passed) == sorted(f"notebooks/{p.name}" for p in NOTEBOOKS)
    for nb, names in passed.items():
        declared = set(pm.inspect_notebook(str(ROOT / nb)))
        assert names <= declared, f"{nb}: dvc.yaml passes {names - declared} that the notebook does not declare"
        assert names == ({"network"} if nb != "notebooks/05_report.ipynb" else set())
