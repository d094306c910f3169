"""The targets of ``benchmarks/gpu_check.sh``, read from its benchmarks' printed tables.

- the LSQ 4-bit training step at most ``STEP_RATIO`` x the float step (``quantized_step.py``, width 1.0);
- the fastest loader (``loader_speed.py``, training transforms) at least the LSQ step's img/s.

    python benchmarks/gpu_targets.py STEP_TXT LOADER_TXT     (exit 1 when a target fails)
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

STEP_RATIO = 1.3


def step_figures(text: str) -> tuple[float, float, float] | None:
    """``(float img/s, LSQ img/s, LSQ/float step-time ratio)`` of the width-1.0 row, or None."""
    m = re.search(r"^\s*1\.0\s+\S+\s+(\S+)\s+\S+\s+(\S+)\s+(\S+)", text, re.M)
    return (float(m[1]), float(m[2]), float(m[3])) if m else None


def loader_rates(text: str) -> list[float]:
    """The training-transform loader img/s of every worker count."""
    return [float(r) for r in re.findall(r"loader, train transforms\s+\d+\s+(\S+)", text)]


def verdicts(step_text: str, loader_text: str) -> list[tuple[bool, str]]:
    """One ``(passed, line)`` per target; a missing figure fails."""
    out = []
    step = step_figures(step_text)
    if step is None:
        return [(False, "no step figures found"), (False, "no loader verdict without step figures")]
    float_ips, lsq_ips, ratio = step
    out.append((ratio <= STEP_RATIO, f"LSQ 4-bit step / float step = {ratio:.2f} (target <= {STEP_RATIO}); "
                                     f"float {float_ips:.0f} img/s, LSQ {lsq_ips:.0f} img/s"))
    rates = loader_rates(loader_text)
    if not rates:
        out.append((False, "no loader figures found"))
    else:
        out.append((max(rates) >= lsq_ips, f"best loader {max(rates):.0f} img/s vs LSQ step {lsq_ips:.0f} "
                                           "img/s per GPU (target: loader >= step)"))
    return out


def main() -> int:
    texts = [Path(p).read_text() if Path(p).is_file() else "" for p in sys.argv[1:3]]
    results = verdicts(*texts)
    for ok, line in results:
        print(f"{'PASS' if ok else 'FAIL'}: {line}")
    return 0 if all(ok for ok, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
