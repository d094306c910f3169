"""Command line: ``mpq <command>`` (or ``python -m mpq <command>``).

Every command reads its settings from a params file (``--params``, default
``params.yaml``). Bad input ends in one line ``mpq: error: ...`` that says
what to fix, exit status 2; set ``MPQ_TRACEBACK=1`` to see the traceback.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from . import config

__all__ = ["main", "build_parser"]


def _cmd_data(args: argparse.Namespace) -> None:
    from .data import build_embedded

    root = args.root or config.load(args.params).data.root
    for path in build_embedded(root):
        print(path)


def _cmd_baselines(args: argparse.Namespace) -> None:
    from .experiment import Experiment

    cfg = config.load(args.params)
    for network in args.network or cfg.networks:
        exp = Experiment(cfg, network, progress=not args.quiet)
        results = exp.baselines(args.out and Path(args.out) / network)
        print(json.dumps({network: results}, indent=1))


def _cmd_sensitivity(args: argparse.Namespace) -> None:
    from .experiment import SENSITIVITY_METHODS, Experiment

    cfg = config.load(args.params)
    methods = args.method or list(SENSITIVITY_METHODS)
    for network in args.network or cfg.networks:
        exp = Experiment(cfg, network, progress=not args.quiet)
        for method in methods:
            s = exp.sensitivity(method, args.out and Path(args.out) / network)
            print(f"{network} {method}: {len(s.table)} layers in {s.cost.seconds:.2f} s "
                  f"({s.cost.device}, {s.cost.workers} worker(s))")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpq", description=__doc__.splitlines()[0])
    p.add_argument("--params", default=config.DEFAULT_PARAMS, help="settings file (default: params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="embedded data")
    d.add_argument("action", choices=["build"], help="build the embedded data (deterministic .npy files)")
    d.add_argument("--root", default=None, help="output folder (default: data.root of the params)")
    d.set_defaults(func=_cmd_data)

    b = sub.add_parser("baselines", help="train float, uniform start_bits and low_bits models")
    b.add_argument("--network", action="append", help="network (repeatable; default: all in params)")
    b.add_argument("--out", default=None, help="results root (default: results/)")
    b.add_argument("--quiet", action="store_true", help="no progress bars")
    b.set_defaults(func=_cmd_baselines)

    s = sub.add_parser("sensitivity", help="score every candidate layer (needs the baselines' checkpoints)")
    s.add_argument("--network", action="append", help="network (repeatable; default: all in params)")
    s.add_argument("--method", action="append", help="eagl, alps, hessian, noft or random (repeatable; default: all)")
    s.add_argument("--out", default=None, help="results root (default: results/)")
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    s.set_defaults(func=_cmd_sensitivity)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("MPQ_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"mpq: error: {str(msg).splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    return 0
