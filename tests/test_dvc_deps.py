"""dvc.yaml is complete by construction: generated from the registries and the notebooks' imports,
and every mpq module a stage actually imports is among its declared dependencies."""
import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mpq import methods, pipeline

ROOT = Path(__file__).resolve().parents[1]
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def declared_deps(stage: str) -> set[str]:
    entry = DVC[stage]
    return set((entry.get("do") or entry)["deps"])


def test_dvc_yaml_is_the_generated_one():
    assert (ROOT / "dvc.yaml").read_text() == pipeline.render(), \
        "dvc.yaml is stale: run `python -m mpq pipeline` and commit it"


def test_every_notebook_has_a_stage():
    assert sorted(s.notebook for s in pipeline.STAGES) == sorted(p.name for p in (ROOT / "notebooks").glob("*.ipynb"))


def reached_modules(stage: pipeline.Stage) -> set[str]:
    """The mpq modules a fresh interpreter holds after the notebook's imports and the registry's
    on-demand imports for the stage (what running the step imports)."""
    tree = ast.parse(pipeline.notebook_source(stage.notebook))
    imports = [ast.unparse(n) for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    code = "\n".join(["import importlib, sys", *imports,
                      *[f"importlib.import_module({m!r})" for m in sorted(pipeline.stage_modules(stage))],
                      "print('\\n'.join(sorted(k for k in sys.modules if k == 'mpq' or k.startswith('mpq.'))))"])
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return set(out.stdout.split())


@pytest.mark.parametrize("stage", pipeline.STAGES, ids=lambda s: s.name)
def test_imports_actually_reached_are_declared(stage):
    reached = reached_modules(stage)
    files = {str(Path(*m.split(".")).with_suffix(".py")) if m != "mpq" else "mpq/__init__.py" for m in reached}
    files = {f if (ROOT / f).is_file() else f.replace(".py", "/__init__.py") for f in files}
    assert files, "the stage imports no mpq module?"
    missing = files - declared_deps(stage.name)
    assert not missing, f"stage {stage.name} imports {sorted(missing)} but dvc.yaml does not list them"
    assert set(pipeline.code_deps(stage)) <= declared_deps(stage.name)


def test_imports_of_resolves_relative_and_function_level_imports():
    src = "from . import eagl\nfrom .cost import COSTS\ndef f():\n    from .hessian import scores\nimport mpq.alps\n"
    assert pipeline.imports_of(src, "mpq.x") >= {"mpq.eagl", "mpq.cost", "mpq.hessian", "mpq.alps"}
    assert "mpq.bitconfig" in pipeline.imports_of((ROOT / "mpq" / "__init__.py").read_text(), "mpq.__init__")


def test_method_outputs_and_params_follow_the_registry():
    sens = DVC["sensitivity"]["do"]
    outs = {next(iter(o)) for o in sens["outs"]}
    for name in methods.names(step="sensitivity"):
        assert f"results/${{item}}/sensitivity/{name}.csv" in outs
        for key in methods.get(name).param_keys:
            assert key in sens["params"]
    assert "results/${item}/sensitivity/alps.csv" in {next(iter(o)) for o in DVC["alps"]["do"]["outs"]}


def test_report_depends_on_every_network_by_construction():
    assert "results" in DVC["report"]["deps"]
    assert not any(d.startswith("results/") for d in DVC["report"]["deps"])
    assert json.dumps(DVC).count("edit here too") == 0
