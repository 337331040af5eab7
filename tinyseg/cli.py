"""What the commands (``train``, ``evaluate``, ``cutout``, ``ensemble``, ``data``, ``memory``)
share: exit codes, one-line errors and warnings, threads.

The commands follow one convention (README, "Commands"):

* exit code 0 on success;
* exit code 1 on a *user* error (a missing file, a bad checkpoint, no data): one line on
  standard error, ``tinyseg.<command>: error: <message>``, and no traceback (a failed
  ensemble member adds the last lines of its output);
* exit code 2 on bad flags (argparse's own behaviour).

A command's ``main(argv)`` raises :class:`UserError` for the second case and
:func:`run_main` turns it into the message and the exit code.

Threads
-------
``--threads N`` sets the threads of the numba kernels (``numba.set_num_threads``); the
convolutions run that many images at once (``tinyseg.kernels.conv``); the BLAS library
NumPy uses for matrix products (OpenBLAS) is kept at **one** thread per caller.  Measured
on the project's first 2-core machine (an Intel Xeon, 2026-11-26), idle, one training step
of ``tiramisu_tiny``, 64x64, batch 8, before the convolutions split their images:
numba 2 + BLAS 1 thread: 22 images/s; numba 1 + BLAS 1: 15.5; numba 2 + BLAS 2: 8.9.  Two thread
pools that both spin-wait for work fight over the same cores (numba's OpenMP workers after
each parallel loop, OpenBLAS's after each product), and on a busy machine the two-pool
setting was 10-20x slower still. With the convolutions' own image threads and
``OMP_WAIT_POLICY=PASSIVE`` (set in ``tinyseg/__init__.py``) the same step takes 235 ms
with 1 thread and 165 ms with 2 (34 and 48 images/s; ``python -m benchmarks``,
``benchmarks/results/2026-11-27-intel-xeon.md``, Intel Xeon), and 286 and 184 ms (28 and
43 images/s; ``benchmarks/results/latest.md``, 2026-11-28) on the AMD EPYC the project
runs on now.  Set ``TINYSEG_BLAS_THREADS`` to override the BLAS setting.  OpenBLAS reads
``OPENBLAS_NUM_THREADS`` only when it is loaded, i.e. when NumPy is first imported, which
has already happened by the time a command parses its flags; so :func:`set_threads` also
asks the loaded OpenBLAS directly through its C function ``openblas_set_num_threads``
(found with :mod:`ctypes`).  That is what ``threadpoolctl`` does, in the twenty lines
tinyseg needs, without a new dependency.
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import sys
import warnings
from typing import Callable, Iterator, List, Optional, Sequence

__all__ = ["UserError", "run_main", "set_threads", "available_threads", "blas_threads",
           "HelpFormatter"]

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


class UserError(Exception):
    """Something the user can fix (a path, a flag value, missing data): exit code 1."""


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` with each flag's default, unless its text already says it (or it has none)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


def data_dir(text: str) -> str:
    """The ``--data`` flag's type: an empty value is refused (``resolve_data_root`` takes ''
    for 'not given' and would quietly use ``$TINYSEG_DATA`` instead)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a COCO folder, or leave the flag out "
                                         "to use $TINYSEG_DATA")
    return text


@contextlib.contextmanager
def plain_warnings(prog: str) -> Iterator[None]:
    """Within the block, tinyseg's own warnings (``DataWarning``: images skipped,
    degenerate annotations) print as ``<prog>: warning: <message>``, not as Python's
    ``file:line: Category`` with a source line; other warnings keep Python's format."""
    from .data.errors import DataWarning
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DataWarning):
            print(f"{prog}: warning: {message}", file=sys.stderr, flush=True)
        else:
            old(message, category, filename, lineno, file, line)
    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = old


def run_main(main: Callable[[Optional[Sequence[str]]], int], prog: str,
             argv: Optional[Sequence[str]] = None) -> int:
    """Call ``main(argv)``; a :class:`UserError` becomes one line on stderr and exit code 1.

    So do the errors that come from the user's machine rather than from tinyseg: a file
    system that refuses a path (``OSError``: a file where a folder should be, no permission,
    a full disk, a read-only file that would be replaced), named with the path, and running
    out of memory (``MemoryError``, e.g. ``--batch-size 100000``).  ``TINYSEG_TRACEBACK=1``
    shows the traceback of those two instead.
    """
    try:
        with plain_warnings(prog):
            return int(main(argv) or 0)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except (OSError, MemoryError) as e:
        if os.environ.get("TINYSEG_TRACEBACK") == "1":
            raise
        if isinstance(e, MemoryError):
            message = ("not enough memory for this job; try a smaller --size, --batch-size "
                       "or fewer images")
        else:
            where = " -> ".join(str(f) for f in (e.filename, e.filename2) if f is not None)
            message = f"{where}: {e.strerror or e}" if where else str(e.strerror or e)
        print(f"{prog}: error: {message}", file=sys.stderr)
        return 1


def available_threads() -> int:
    """The most threads numba can use in this process (its pool is sized at start-up)."""
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


def _openblas_libraries() -> List[str]:
    """Paths of the OpenBLAS shared libraries loaded in this process (Linux only)."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if ".so" in p)


def _set_blas_threads(n: int) -> bool:
    done = False
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        # NumPy's wheels ship "scipy-openblas", whose symbols carry a prefix and suffix.
        for name in ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
                     "openblas_set_num_threads64_", "openblas_set_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.argtypes = [ctypes.c_int]
                fn.restype = None
                fn(int(n))
                done = True
                break
    return done


def blas_threads() -> Optional[int]:
    """Threads the loaded OpenBLAS uses now (``None`` if no OpenBLAS is found)."""
    for path in _openblas_libraries():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
                     "openblas_get_num_threads64_", "openblas_get_num_threads"):
            fn = getattr(lib, name, None)
            if fn is not None:
                fn.restype = ctypes.c_int
                return int(fn())
    return None


def set_threads(n: Optional[int]) -> int:
    """Use ``n`` numba threads (``None``: all cores) and one BLAS thread (see above).

    Returns the number of numba threads now in use.  Raises :class:`UserError` when ``n``
    is below 1 or above what numba's thread pool was started with.
    """
    import numba
    blas = int(os.environ.get("TINYSEG_BLAS_THREADS", "1"))
    if n is None:
        _set_blas_threads(blas)
        return int(numba.get_num_threads())
    n = int(n)
    limit = available_threads()
    if n < 1:
        raise UserError(f"--threads must be at least 1, got {n}")
    if n > limit:
        raise UserError(f"--threads {n} is more than the {limit} threads numba can use here "
                        f"(set NUMBA_NUM_THREADS before starting Python to raise the limit)")
    for var in _THREAD_ENV:            # for any process started from here on
        os.environ[var] = str(blas)
    numba.set_num_threads(n)
    _set_blas_threads(blas)
    return n
