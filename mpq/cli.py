"""Command line: ``mpq <command>`` (or ``python -m mpq <command>``).

Every command reads its settings from a params file (``--params``, default
``params.yaml``). Bad input and the other expected failures (a diverging
loss, weights that cannot be downloaded, an unreadable or mismatched file)
end in one line ``mpq: error: ...`` that says what to fix, exit status 2.
Ctrl-C ends in one line saying what was kept and how to resume, exit status
130. Set ``MPQ_TRACEBACK=1`` to see the traceback instead.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import sys
from pathlib import Path
from urllib.error import URLError

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


def _check_allocate_args(args: argparse.Namespace) -> None:
    """Refuse impossible ``mpq allocate`` options before any work, naming the option."""
    from .quantizers import qrange

    for option, value in (("--input-size", args.input_size), ("--num-classes", args.num_classes)):
        if value <= 0:
            raise ValueError(f"{option} must be a positive integer, got {value}")
    if not args.budget >= 1.0:  # NaN included
        raise ValueError(f"--budget is relative to every layer at --start-bits, so it must be at least 1.0, "
                         f"got {args.budget}")
    for option, value in (("--start-bits", args.start_bits), ("--low-bits", args.low_bits)):
        try:
            qrange(value, True)
        except ValueError as e:
            raise ValueError(f"{option}: {e}") from None
    if args.start_bits <= args.low_bits:
        raise ValueError(f"--start-bits ({args.start_bits}) must be above --low-bits ({args.low_bits})")
    if Path(args.out).is_dir():
        raise ValueError(f"--out {args.out} is a folder: give a file name, e.g. {Path(args.out) / 'bits.yaml'}")


def _read_weights(path: str) -> dict:
    """The state dict in ``path``: a plain state dict (float or LSQ-quantized) or an mpq checkpoint's."""
    import torch

    from . import checkpoint

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--weights {p}: no such file")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, pickle garbage, not a torch file at all, ...
        raise ValueError(f"--weights {p} is unreadable ({type(e).__name__}): give a file written by "
                         "torch.save(model.state_dict(), path) or mpq.checkpoint.save") from None
    if isinstance(payload, dict) and (payload.get("format") == checkpoint.FORMAT
                                      or isinstance(payload.get("state_dict"), dict)):
        payload = payload.get("state_dict")
    if not isinstance(payload, dict) or not payload or \
            not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()):
        raise ValueError(f"--weights {p} holds no state dict: give a file written by "
                         "torch.save(model.state_dict(), path) or mpq.checkpoint.save")
    return payload


def _fit_state(model, state: dict, path: str, what: str) -> None:
    """Load ``state`` into ``model`` (strictly); a mismatch is one line naming the first bad key."""
    want = model.state_dict()
    fix = "pass the --model and --num-classes the weights were trained with"
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        parts = ([f"missing key {missing[0]!r} ({len(missing)} missing)"] if missing else []) + \
                ([f"unexpected key {unexpected[0]!r} ({len(unexpected)} unexpected)"] if unexpected else [])
        raise ValueError(f"--weights {path} does not fit {what}: {', '.join(parts)}; {fix}")
    for k, v in want.items():
        if state[k].shape != v.shape:
            raise ValueError(f"--weights {path} does not fit {what}: {k!r} has shape {list(state[k].shape)} "
                             f"there, {list(v.shape)} here; {fix}")
    model.load_state_dict(state)


def _quantized_model(args: argparse.Namespace):
    """The torchvision model of ``args``, quantized at ``--start-bits``, with its ``--weights`` if any.

    A float state dict is loaded before quantizing; an LSQ-quantized one (keys
    ``*.wq.step``/``*.aq.step``) after, so its trained steps are kept.
    """
    import torchvision

    from .quantized import quantize

    if args.model not in torchvision.models.list_models():
        raise ValueError(f"unknown torchvision model {args.model!r}: see torchvision.models.list_models()")
    kwargs = {"weights": "DEFAULT"} if args.pretrained else {"weights": None, "num_classes": args.num_classes}
    if not args.pretrained and "weights_backbone" in inspect.signature(
            torchvision.models.get_model_builder(args.model)).parameters:
        kwargs["weights_backbone"] = None  # segmentation/detection models: no backbone download
    model = torchvision.models.get_model(args.model, **kwargs)
    if not args.weights:
        return quantize(model, args.start_bits)
    state = _read_weights(args.weights)
    what = f"{args.model} with {'its pretrained head' if args.pretrained else f'--num-classes {args.num_classes}'}"
    if not any(k.endswith((".wq.step", ".aq.step")) for k in state):
        _fit_state(model, state, args.weights, what)
        return quantize(model, args.start_bits)
    q = quantize(model, args.start_bits)
    _fit_state(q, state, args.weights, f"the quantized {what}")
    return q


def _cmd_allocate(args: argparse.Namespace) -> None:
    """EAGL + the allocator on a torchvision model: write a bit-configuration file."""
    _check_allocate_args(args)
    import torch

    from . import allocate, cost, eagl
    from .bitconfig import save_bits
    from .quantized import candidate_layers, get_bits

    q = _quantized_model(args)
    x = torch.randn(1, 3, args.input_size, args.input_size)
    q.eval()
    q(x)  # activation steps (kept where --weights brought trained ones)
    macs, params = cost.layer_macs(q, x), cost.layer_params(q)
    unused = [n for n, v in macs.items() if v == 0]  # never run in eval: no inference cost, not chosen
    cands = [n for n in candidate_layers(q) if macs[n] > 0]
    bits0 = get_bits(q)
    if not cands:
        raise ValueError(f"{args.model} has no layer to choose a precision for: its {len(bits0)} quantized "
                         "layers are the first and the last (kept at 8 bits) or never run in eval")
    fixed = {n: b for n, b in bits0.items() if n not in cands}
    table = cost.layer_costs(args.cost, macs, params, cands, [args.start_bits, args.low_bits])
    sens = eagl.scores(q, variant=args.variant, low_bits=args.low_bits).for_allocator()
    sens = {n: sens[n] for n in cands}
    [alloc] = allocate.sweep(sens, table, [args.budget], reference_bits=args.start_bits,
                             fixed_cost=cost.total_cost(args.cost, fixed, macs, params))
    bits = {**bits0, **alloc.bits}
    pred = cost.summary(bits, bits0, macs, params)
    save_bits(args.out, bits, network=args.model, method=f"eagl-{args.variant}", cost_model=args.cost,
              target=args.budget, predicted={k: round(v, 6) for k, v in pred.items()},
              checkpoint=args.weights or ("torchvision DEFAULT weights" if args.pretrained else "untrained"),
              **({"not_run_in_eval": unused} if unused else {}))
    n_low = sum(b == args.low_bits for b in alloc.bits.values())
    print(f"{args.out}: {n_low}/{len(cands)} layers at {args.low_bits} bits, relative {args.cost} "
          f"{alloc.relative:.3f}x (asked {args.budget}x)")
    if unused:
        print(f"{len(unused)} layers never run in eval (e.g. {unused[0]}): kept at {args.start_bits} bits, "
              "no inference cost (listed as not_run_in_eval)")


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
    a.add_argument("--weights", default=None,
                   help="a float or LSQ-quantized state dict, or an mpq checkpoint (LSQ-trained 4-bit is best)")
    a.add_argument("--pretrained", action="store_true", help="torchvision's default weights (needs them cached)")
    a.add_argument("--num-classes", type=int, default=1000)
    a.add_argument("--input-size", type=int, default=224)
    a.add_argument("--start-bits", type=int, default=4)
    a.add_argument("--low-bits", type=int, default=2)
    a.add_argument("--out", default="bits.yaml", help="bit-configuration file to write")
    a.set_defaults(func=_cmd_allocate)
    return p


def _init_distributed() -> None:
    """Under ``torchrun`` (it sets WORLD_SIZE, even to 1): join the process group (NCCL on GPUs, gloo on CPUs).

    A group of one rank (``--nproc_per_node=1``) runs the distributed code path on one device,
    which is how ``benchmarks/gpu_check.sh`` checks NCCL on a single GPU."""
    if "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ:
        import torch
        import torch.distributed as dist

        if not dist.is_initialized():
            cuda = torch.cuda.is_available()
            if cuda:
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group("nccl" if cuda else "gloo")


# Failures a user can cause and fix; anything else is a bug and keeps its traceback.
_EXPECTED = (ValueError, KeyError, OSError, RuntimeError, FloatingPointError)

_INTERRUPTED = ("mpq: interrupted: finished checkpoints and records are kept (every file is written "
               "atomically); rerun the same command to resume")


def _error_line(e: BaseException) -> str:
    """The one line ``mpq: error: ...`` for an expected failure ``e``."""
    if isinstance(e, URLError):
        import torch

        msg = (f"could not download weights ({e.reason}): go online once so that they are cached under "
               f"{torch.hub.get_dir()}, or run without pretrained weights")
    elif isinstance(e, OSError) and e.filename and e.strerror:
        msg = f"{e.filename}: {e.strerror}"
    else:
        msg = str(e.args[0] if isinstance(e, KeyError) and e.args else e)
    return f"mpq: error: {msg.splitlines()[0] if msg.strip() else type(e).__name__}"


def main(argv: list[str] | None = None) -> int:
    """Run one command; return the exit status (0, 2 for an expected failure, 130 for Ctrl-C)."""
    args = build_parser().parse_args(argv)
    try:
        _init_distributed()
        args.func(args)
    except KeyboardInterrupt:
        if os.environ.get("MPQ_TRACEBACK"):
            raise
        print(_INTERRUPTED, file=sys.stderr)
        return 130
    except _EXPECTED as e:
        if os.environ.get("MPQ_TRACEBACK"):
            raise
        print(_error_line(e), file=sys.stderr)
        return 2
    return 0
