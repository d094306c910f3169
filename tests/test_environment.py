"""The set-up files agree: requirements.txt pins, environment.yml, pyproject ranges, CI."""
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def pins() -> dict[str, str]:
    out = {}
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"requirements.txt: {line!r} is not pinned with =="
            out[name.lower()] = version
    return out


def test_environment_yml_has_the_same_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = {n.lower(): v for n, _, v in (p.partition("==") for p in pip)}
    assert conda_pins == pins()
    assert "python=3.11" in env["dependencies"]


def test_pins_satisfy_the_package_ranges():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    p = pins()
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for extra in project["optional-dependencies"].values() for r in extra]
    for r in reqs:
        assert r.name.lower() in p, f"{r.name} is not pinned in requirements.txt"
        assert r.specifier.contains(p[r.name.lower()]), f"{r.name}=={p[r.name.lower()]} is outside {r.specifier}"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if "pytest" in line).strip()
    assert command in readme, "the README's test command and .ci/run differ"
    assert (ROOT / ".dvc" / "config").read_text().split() == ["[core]", "analytics", "=", "false"]
