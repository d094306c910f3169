"""A sensitivity table records the inputs it was computed from; the frontier refuses a stale one."""
import dataclasses

import pytest
from torch.utils.data import Subset

from mpq import cli, paths
from mpq.config import load
from mpq.experiment import Experiment
from mpq.frontier_run import run as run_frontier
from mpq.sensitivity import Sensitivity, StaleSensitivity, check_inputs, inputs_identity
from tests.conftest import write_params


def test_frontier_refuses_tables_computed_from_other_inputs(micro_params, tmp_path, capsys):
    params = write_params(tmp_path / "p.yaml", base=micro_params, frontier__methods=["eagl"])
    out = tmp_path / "res"
    exp = Experiment(load(params), "resnet50", progress=False)
    exp.baselines(out / "resnet50")
    exp.sensitivity("eagl", out / "resnet50")
    stored = Sensitivity.load(out / "resnet50" / paths.SENSITIVITY, "eagl")
    assert stored.meta["inputs"] == inputs_identity(exp, "eagl", out / "resnet50")
    assert set(stored.meta["inputs"]) == {"checkpoint", "teacher", "recipe", "data", "settings"}
    check_inputs(stored, exp, out / "resnet50")  # unchanged inputs: accepted

    table = out / "resnet50" / paths.SENSITIVITY / "eagl.csv"
    # the same checkpoints and settings, another validation split of the same size: stale
    other = Experiment(load(params), "resnet50", progress=False)
    val = other.data.val
    other._data = dataclasses.replace(other.data, val=Subset(val, list(range(len(val)))[::-1]))
    with pytest.raises(StaleSensitivity, match="the train or validation samples changed since it was computed"):
        check_inputs(stored, other, out / "resnet50")
    rerun = "rerun `mpq sensitivity --network resnet50 --method eagl`"
    # another setting of the method: stale, no retraining involved
    variant = write_params(tmp_path / "v.yaml", base=params, eagl__variant="entropy_drop")
    with pytest.raises(StaleSensitivity) as e:
        run_frontier(Experiment(load(variant), "resnet50", progress=False), out / "resnet50")
    assert str(e.value) == f"{table} is stale: the method settings (eagl) changed since it was computed; {rerun}"

    # another recipe: baselines retrain the 4-bit checkpoint, the frontier command refuses the table
    changed = write_params(tmp_path / "q.yaml", base=params, network__resnet50__quant_lr=0.02)
    Experiment(load(changed), "resnet50", progress=False).baselines(out / "resnet50")
    capsys.readouterr()
    argv = ["--params", str(changed), "frontier", "--network", "resnet50", "--out", str(out), "--quiet"]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"mpq: error: {table} is stale: the starting checkpoint and checkpoint recipe changed "
                   f"since it was computed; {rerun}\n")

    # recomputed from today's inputs: accepted again
    exp = Experiment(load(changed), "resnet50", progress=False)
    check_inputs(exp.sensitivity("eagl", out / "resnet50"), exp, out / "resnet50")


def test_a_table_without_a_record_of_its_inputs_is_refused(micro_params, tmp_path):
    exp = Experiment(load(micro_params), "resnet50", progress=False)
    exp.baselines(tmp_path)
    sens = exp.sensitivity("eagl", tmp_path)
    del sens.meta["inputs"]
    with pytest.raises(StaleSensitivity, match="carries no record of the inputs it was computed from; "
                                               "rerun `mpq sensitivity --network resnet50 --method eagl`"):
        check_inputs(sens, exp, tmp_path)
