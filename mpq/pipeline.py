"""The DVC pipeline, written from the registries: ``dvc.yaml`` by construction.

``render()`` returns the text of ``dvc.yaml``: one stage per step, each
running its notebook with papermill for every network in ``params.yaml``
(``foreach``), and the report over all of them. Nothing in it is typed by hand:

- **code**: each stage depends on its notebook and on every ``mpq`` module the
  notebook can reach, the transitive closure of its imports (module level and
  inside functions, found with ``ast``), plus the modules the method registry
  imports on demand for that stage (``compute`` of the methods the stage
  computes, ``variant_scores`` for the report);
- **params**: the sections each step reads, the settings of the methods it
  computes (``Method.param_keys``) and the active overlay ``presets/<scale>.yaml``;
- **outs**: each method's table and cost record under ``sensitivity/``.

``python -m mpq pipeline`` rewrites ``dvc.yaml``; ``--check`` fails when the
file differs (a test runs it). After adding a method or a module, rerun it.
"""
from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from . import methods, paths

__all__ = ["Stage", "STAGES", "code_deps", "imports_of", "render", "stage_modules", "DVC_YAML", "PAPERMILL"]

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent
DVC_YAML = "dvc.yaml"
# How a stage runs its notebook: in the venv's ``mpq`` kernel, papermill's own messages from WARNING
# up, and the kernel's stderr (where ``mpq.progress`` writes the jobs' progress lines) passed on to
# papermill's stdout as it comes, so that ``dvc repro`` shows it ("-": stdout; a file would be truncated)
PAPERMILL = "papermill -k mpq --log-level WARNING --stderr-file -"


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline."""

    name: str
    notebook: str                       # under notebooks/
    per_network: bool = True            # foreach network in params.yaml
    params: tuple[str, ...] = ()        # params.yaml keys (``network.${item}`` allowed)
    deps: tuple[str, ...] = ()          # data deps (besides code), ``${item}`` = the network
    step: str | None = None             # computes the registry's methods of this step
    outs: tuple[str, ...] = ()          # plain outputs (not cached)
    persist: tuple[str, ...] = ()       # cached outputs kept across runs (checkpoints, job records)
    metrics: tuple[str, ...] = ()
    comment: str = field(default="", compare=False)


NET = "results/${item}"
STAGES = (
    # ${data.root}: the embedded data folder; the paper switch (README) sets it to the paper
    # overlay file, so that scale needs no embedded data (it reads data.imagenet / segmentation)
    Stage("baselines", "01_baselines.ipynb", deps=("${data.root}",),
          params=("seed", "device", "threads", "data", "speed", "network.${item}", "train", "quant"),
          persist=(f"{NET}/{paths.FLOAT_CKPT}", f"{NET}/uniform4.pt", f"{NET}/uniform2.pt"),
          metrics=(f"{NET}/{paths.BASELINES_JSON}",),
          comment="persist: kept across runs; mpq retrains a checkpoint whose recipe (settings) changed"),
    Stage("sensitivity", "02_sensitivity.ipynb", step="sensitivity",
          deps=(f"{NET}/{paths.FLOAT_CKPT}", f"{NET}/uniform4.pt"), params=("threads", "speed")),
    Stage("alps", "03_alps.ipynb", step="alps", deps=(f"{NET}/{paths.FLOAT_CKPT}", f"{NET}/uniform4.pt"),
          params=("threads", "speed")),
    Stage("frontier", "04_frontier.ipynb",
          deps=(f"{NET}/{paths.FLOAT_CKPT}", f"{NET}/uniform4.pt", f"{NET}/{paths.BASELINES_JSON}",
                f"{NET}/{paths.SENSITIVITY}"),
          params=("seed", "threads", "speed", "allocate", "frontier"),
          outs=(f"{NET}/{paths.FRONTIER_CSV}", f"{NET}/{paths.FRONTIER_SUMMARY_CSV}", f"{NET}/{paths.FRONTIER_INPUTS}", f"{NET}/{paths.LAYERS_CSV}",
                f"{NET}/{paths.CONFIGS}"),
          persist=(f"{NET}/{paths.RECORDS}/frontier",)),
    Stage("report", "05_report.ipynb", per_network=False, deps=(str(paths.RESULTS),),
          params=("networks", "quant", "allocate.cost", "report"), outs=(str(paths.report_dir()),),
          comment="reads every network's results: the whole results/ folder is its input"),
)


# --------------------------------------------------------------------------- code dependencies


def _module_file(name: str) -> Path | None:
    """The file of module ``name`` in this repository (``mpq.eagl`` -> mpq/eagl.py), None for any
    other module (the standard library, installed packages)."""
    if not name:
        return None
    base = ROOT.joinpath(*name.split("."))
    for p in (base.with_suffix(".py"), base / "__init__.py"):
        if p.is_file():
            return p
    return None


def imports_of(source: str, module: str = "") -> set[str]:
    """Every module of this repository (``mpq``'s, or a method module elsewhere in it) that
    ``source`` imports, anywhere in it (``module``: its own dotted name, for relative imports)."""
    found: set[str] = set()
    package = module[: -len(".__init__")] if module.endswith(".__init__") else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                anchor = parts[: len(parts) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from mpq import eagl` imports a module
    return {m for m in found if _module_file(m) is not None}


def _closure(start: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        todo += [p for p in parents if p not in seen]  # importing mpq.x runs mpq/__init__.py
        path = _module_file(name)
        own = name if path.name != "__init__.py" else f"{name}.__init__"
        todo += [m for m in imports_of(path.read_text(), own) if m not in seen]
    return seen


def notebook_source(notebook: str) -> str:
    """The code cells of a notebook, as one Python source."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


def stage_modules(stage: Stage) -> set[str]:
    """The registry's on-demand imports for ``stage`` (see the module docstring)."""
    refs: list = []
    if stage.step:
        refs += [m.compute for m in methods.METHODS.values() if m.step == stage.step]
    if stage.name == "frontier":
        refs += [m.compute for m in methods.METHODS.values() if m.per_seed]
    if stage.name == "report":
        refs += [m.variant_scores for m in methods.METHODS.values() if m.variant_scores is not None]
    return {methods.module_of(r) for r in refs}


def code_deps(stage: Stage) -> list[str]:
    """The repository's Python files ``stage`` depends on, relative to the repository root, sorted."""
    start = imports_of(notebook_source(stage.notebook)) | stage_modules(stage)
    return sorted(str(_module_file(m).relative_to(ROOT)) for m in _closure(start))


# --------------------------------------------------------------------------- dvc.yaml


def _params(stage: Stage) -> list[str]:
    keys = list(stage.params)
    if stage.step:
        for m in methods.METHODS.values():
            if m.step == stage.step:
                keys += [k for k in m.param_keys if k not in keys]
    return ["scale", *keys] if "scale" not in keys else keys


def _outs(stage: Stage) -> list[tuple[str, str]]:
    outs = [(p, "persist") for p in stage.persist]
    if stage.step:
        for m in methods.METHODS.values():
            if m.step == stage.step:
                outs += [(f"{NET}/{paths.SENSITIVITY}/{m.name}.csv", "plain"),
                         (f"{NET}/{paths.SENSITIVITY}/{m.name}_cost.json", "plain")]
        outs += [(f"{NET}/{paths.RECORDS}/{m.name}", "persist") for m in methods.METHODS.values()
                 if m.step == stage.step and m.records]
    outs += [(p, "plain") for p in stage.outs]
    if stage.per_network:  # the report's executed notebook lies inside its output folder
        outs.append((f"{NET}/{stage.notebook}", "plain"))
    return outs


def _stage_yaml(stage: Stage) -> list[str]:
    ind = "      " if stage.per_network else "    "
    out_dir = NET if stage.per_network else str(paths.report_dir())
    executed = f"{out_dir}/{stage.notebook}"
    param = " -p network ${item}" if stage.per_network else ""
    lines = [f"  {stage.name}:"]
    if stage.per_network:
        lines += ["    foreach: ${networks}", "    do:"]
    lines += [f"{ind}cmd: >-", f"{ind}  mkdir -p {out_dir} &&",
              f"{ind}  {PAPERMILL} notebooks/{stage.notebook}",
              f"{ind}  {executed}{param}"]
    lines += [f"{ind}deps:", f"{ind}  - notebooks/{stage.notebook}"]
    lines += [f"{ind}  - {d}" for d in stage.deps] + [f"{ind}  - {d}" for d in code_deps(stage)]
    lines += [f"{ind}params:"] + [f"{ind}  - {p}" for p in _params(stage)]
    lines += [f"{ind}  - presets/${{scale}}.yaml:"]
    outs = _outs(stage)
    lines += [f"{ind}outs:" + (f"  # {stage.comment}" if stage.comment else "")]
    for path, kind in outs:
        lines += [f"{ind}  - {path}:", f"{ind}      " + ("persist: true" if kind == "persist" else "cache: false")]
    if stage.metrics:
        lines += [f"{ind}metrics:"]
        for path in stage.metrics:
            lines += [f"{ind}  - {path}:", f"{ind}      cache: false"]
    return lines


def render() -> str:
    """The text of ``dvc.yaml`` for the registries and notebooks as they are now."""
    report = paths.report_dir()
    head = ["# GENERATED by `python -m mpq pipeline` from mpq/pipeline.py and the registries (mpq.methods,",
            "# mpq.networks): edit those, then rerun it; a test fails when this file is stale.",
            "# One stage per step, each running its notebook with papermill for every network in",
            "# params.yaml (`foreach`). Code deps = every mpq module the notebook can reach; params = what",
            "# the step reads, plus the active overlay presets/<scale>.yaml. Run from the activated virtual",
            "# environment (README): `dvc repro`.",
            "stages:"]
    body: list[str] = []
    for stage in STAGES:
        body += _stage_yaml(stage) + [""]
    tail = ["metrics:", f"  - {report}/metrics.json", "plots:", f"  - {report}/frontier_points.csv:",
            "      x: rel_throughput", "      y: metric_mean", "      template: scatter"]
    return "\n".join(head + body + tail) + "\n"


def write(path: str | Path = DVC_YAML) -> bool:
    """Write ``dvc.yaml``; return whether it changed."""
    p = Path(path)
    text = render()
    if p.is_file() and p.read_text() == text:
        return False
    p.write_text(text)
    return True
