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

from . import config, methods
from .cost import COSTS

__all__ = ["main", "build_parser"]


def _say(text: str) -> None:
    """Print once: on rank 0 only under torchrun."""
    if os.environ.get("RANK", "0") == "0":
        print(text)


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
        _say(json.dumps({network: results}, indent=1))


def _cmd_sensitivity(args: argparse.Namespace) -> None:
    from . import methods as registry
    from .experiment import Experiment

    cfg = config.load(args.params)
    methods = args.method or registry.names()
    for name in methods:  # every name checked before any work
        registry.get(name)
    for network in args.network or cfg.networks:
        exp = Experiment(cfg, network, progress=not args.quiet)
        for method in methods:
            s = exp.sensitivity(method, args.out and Path(args.out) / network)
            _say(f"{network} {method}: {len(s.table)} layers in {s.cost.seconds:.2f} s "
                 f"({s.cost.device}, {s.cost.workers} worker(s))")


def _cmd_frontier(args: argparse.Namespace) -> None:
    from . import frontier_run
    from .experiment import Experiment

    cfg = config.load(args.params)
    for network in args.network or cfg.networks:
        exp = Experiment(cfg, network, progress=not args.quiet)
        table = frontier_run.run(exp, args.out and Path(args.out) / network)
        _say(f"{network}: {len(table)} frontier points\n"
             + table.groupby(["method", "target"])["metric"].mean().round(2).to_string())


def _cmd_allocate(args: argparse.Namespace) -> None:
    """EAGL + the allocator on a torchvision model: write a bit-configuration file."""
    import torch
    import torchvision

    from . import allocate, cost, eagl
    from .bitconfig import save_bits
    from .quantized import candidate_layers, get_bits, quantize

    if args.model not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {args.model!r}: see torchvision.models.list_models()")
    model = torchvision.models.get_model(args.model, weights="DEFAULT" if args.pretrained else None,
                                         **({} if args.pretrained else {"num_classes": args.num_classes}))
    if args.weights:
        state = torch.load(args.weights, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    q = quantize(model, args.start_bits)
    x = torch.randn(1, 3, args.input_size, args.input_size)
    q.eval()
    q(x)  # activation steps
    macs, params = cost.layer_macs(q, x), cost.layer_params(q)
    cands = candidate_layers(q)
    bits0 = get_bits(q)
    fixed = {n: b for n, b in bits0.items() if n not in cands}
    table = cost.layer_costs(args.cost, macs, params, cands, [args.start_bits, args.low_bits])
    sens = eagl.scores(q, variant=args.variant, low_bits=args.low_bits).for_allocator()
    [alloc] = allocate.sweep(sens, table, [args.budget], reference_bits=args.start_bits,
                             fixed_cost=cost.total_cost(args.cost, fixed, macs, params))
    bits = {**bits0, **alloc.bits}
    pred = cost.summary(bits, bits0, macs, params)
    save_bits(args.out, bits, network=args.model, method=f"eagl-{args.variant}", cost_model=args.cost,
              target=args.budget, predicted={k: round(v, 6) for k, v in pred.items()},
              checkpoint=args.weights or ("torchvision DEFAULT weights" if args.pretrained else "untrained"))
    n_low = sum(b == args.low_bits for b in alloc.bits.values())
    print(f"{args.out}: {n_low}/{len(cands)} layers at {args.low_bits} bits, relative {args.cost} "
          f"{alloc.relative:.3f}x (asked {args.budget}x)")


def _cmd_pipeline(args: argparse.Namespace) -> None:
    from . import pipeline

    if args.check:
        if Path(pipeline.DVC_YAML).read_text() != pipeline.render():
            raise ValueError(f"{pipeline.DVC_YAML} is stale: run `python -m mpq pipeline` and commit it")
        print(f"{pipeline.DVC_YAML} is up to date")
        return
    print(f"{pipeline.DVC_YAML} {'written' if pipeline.write() else 'unchanged'}")


def _step(sub, name: str, text: str, func) -> argparse.ArgumentParser:
    """A pipeline step's sub-command, with the options every step shares."""
    p = sub.add_parser(name, help=text)
    p.add_argument("--network", action="append", help="network (repeatable; default: all in params)")
    p.add_argument("--out", default=None, help="results root (default: results/)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpq", description=__doc__.splitlines()[0])
    p.add_argument("--params", default=config.DEFAULT_PARAMS, help="settings file (default: params.yaml)")
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("data", help="embedded data")
    d.add_argument("action", choices=["build"], help="build the embedded data (deterministic .npy files)")
    d.add_argument("--root", default=None, help="output folder (default: data.root of the params)")
    d.set_defaults(func=_cmd_data)

    _step(sub, "baselines", "train float, uniform start_bits and low_bits models", _cmd_baselines)
    s = _step(sub, "sensitivity", "score every candidate layer (needs the baselines' checkpoints)",
              _cmd_sensitivity)
    s.add_argument("--method", action="append",
                   help=f"{', '.join(methods.names())} (repeatable; default: all)")
    _step(sub, "frontier", "fine-tune and evaluate every (method, budget, seed) configuration", _cmd_frontier)

    pl = sub.add_parser("pipeline", help="write dvc.yaml from the registries and the notebooks' imports")
    pl.add_argument("--check", action="store_true", help="only check that dvc.yaml is up to date")
    pl.set_defaults(func=_cmd_pipeline)

    a = sub.add_parser("allocate", help="EAGL + allocator on a torchvision model -> bit-configuration file")
    a.add_argument("--model", required=True, help="torchvision model name, e.g. resnet50")
    a.add_argument("--budget", type=float, required=True, help="relative target vs all start-bits (e.g. 1.5)")
    a.add_argument("--cost", default="throughput", choices=list(COSTS))
    a.add_argument("--variant", default="entropy", choices=list(methods.get("eagl").variants))
    a.add_argument("--weights", default=None, help="a state-dict file for the model (LSQ-trained 4-bit is best)")
    a.add_argument("--pretrained", action="store_true", help="torchvision's default weights (needs them cached)")
    a.add_argument("--num-classes", type=int, default=1000)
    a.add_argument("--input-size", type=int, default=224)
    a.add_argument("--start-bits", type=int, default=4)
    a.add_argument("--low-bits", type=int, default=2)
    a.add_argument("--out", default="bits.yaml", help="bit-configuration file to write")
    a.set_defaults(func=_cmd_allocate)
    return p


def _init_distributed() -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPUs)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _init_distributed()
    try:
        args.func(args)
    except (ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        if os.environ.get("MPQ_TRACEBACK"):
            raise
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"mpq: error: {str(msg).splitlines()[0] if msg else type(e).__name__}", file=sys.stderr)
        return 2
    return 0
