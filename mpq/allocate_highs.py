"""How the allocator calls HiGHS (internal to ``mpq.allocate``): options, and silence on every level.

``run`` solves one binary program with ``scipy.optimize.milp`` under the
options the folded objective of ``mpq.allocate_milp`` relies on, with nothing
reaching the console: HiGHS prints some debug lines with C's printf whatever
its options say (``HighsMipSolverData::transformNewIntegerFeasibleSolution
tmpSolver.run();``, a known HiGHS issue), so ``silence_fds`` redirects the
file descriptors themselves.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator

import numpy as np
from scipy import sparse
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp

__all__ = ["FEASIBILITY_TOL", "run", "silence_fds"]

FEASIBILITY_TOL = 1e-9     # HiGHS's MIP, primal and dual feasibility tolerances (see mpq.allocate_milp)
_OPTIONS = {
    # zero gaps: HiGHS's defaults (1e-4 relative, 1e-6 absolute) stop short of the optimum
    "mip_rel_gap": 0.0, "mip_abs_gap": 0.0,
    "mip_feasibility_tolerance": FEASIBILITY_TOL, "primal_feasibility_tolerance": FEASIBILITY_TOL,
    "dual_feasibility_tolerance": FEASIBILITY_TOL,
    # primal heuristics off: on these small knapsacks they cost more time than they save (on the
    # benchmark, the sub-MIP ones alone doubled the worst solve); the caller bounds the objective
    # with a near-optimal assignment instead, and the tree search proves optimality either way
    "mip_heuristic_effort": 0.0, "mip_heuristic_run_feasibility_jump": False,
    "mip_heuristic_run_rins": False, "mip_heuristic_run_rens": False,
    "mip_heuristic_run_root_reduced_cost": False,
}


def run(objective: np.ndarray, matrix: sparse.csr_array, lower: np.ndarray, upper: np.ndarray,
        var_upper: np.ndarray, objective_bound: float) -> OptimizeResult:
    """Minimise ``objective`` over binaries ``x <= var_upper`` with ``lower <= matrix x <= upper``.

    ``objective_bound`` must exceed the optimum (HiGHS prunes everything
    above it). Python warnings raised during the solve are held back while the
    descriptors are silenced and re-issued after, except scipy's notice that it
    passes the options it does not list to HiGHS verbatim.
    """
    options = {**_OPTIONS, "objective_bound": float(objective_bound)}
    with warnings.catch_warnings(record=True) as caught:
        warnings.filterwarnings("ignore", "Unrecognized options", RuntimeWarning)
        with silence_fds():
            res = milp(objective, integrality=np.ones_like(objective), bounds=Bounds(0.0, var_upper),
                       constraints=LinearConstraint(matrix, lower, upper), options=options)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return res


# --------------------------------------------------------------------------- silence


def _c_fflush() -> Callable[[None], int] | None:
    """C's ``fflush`` (``fflush(NULL)`` flushes every C stdio stream), or None where it cannot be loaded."""
    try:
        fflush = ctypes.CDLL(None).fflush
    except (OSError, TypeError, AttributeError):     # no handle on the C library (e.g. Windows)
        return None
    fflush.argtypes = [ctypes.c_void_p]
    return fflush


_FFLUSH = _c_fflush()
_lock = threading.Lock()
_depth = 0
_saved: list[tuple[int, int]] = []


def _flush_all() -> None:
    """Push buffered output (Python's and C's) to where fds 1 and 2 point now."""
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            with contextlib.suppress(ValueError, OSError):      # a closed or detached stream
                stream.flush()
    if _FFLUSH is not None:
        _FFLUSH(None)


def _redirect_to_null() -> list[tuple[int, int]]:
    """Point fds 1 and 2 at the null device; return (fd, saved copy) for each one redirected."""
    _flush_all()
    saved = []
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                copy = os.dup(fd)
            except OSError:                                    # fd not open: nothing to silence
                continue
            os.dup2(null, fd)
            saved.append((fd, copy))
    finally:
        os.close(null)
    return saved


def _restore(saved: list[tuple[int, int]]) -> None:
    _flush_all()                # the solver's C-buffered output goes to the null device, not back
    for fd, copy in saved:
        os.dup2(copy, fd)
        os.close(copy)


@contextlib.contextmanager
def silence_fds() -> Iterator[None]:
    """Send everything written to file descriptors 1 and 2 to the null device while the block runs.

    Pending Python and C output is flushed to the real destination first, and
    the C stdio buffers to the null device at the end; the descriptors are
    restored even if the block raises. Process-wide and re-entrant: nested or
    concurrent blocks (threads) share one redirection, undone when the last
    one exits, so other threads' output in that window is lost too.
    """
    global _depth
    with _lock:
        if _depth == 0:
            _saved[:] = _redirect_to_null()
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                saved, _saved[:] = list(_saved), []
                _restore(saved)
