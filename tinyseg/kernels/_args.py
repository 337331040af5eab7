"""The kernels' own guard: cheap checks of their arguments.

The layers check their inputs before they call a kernel, with messages that name the layer.
A kernel called directly (as lesson 2 does, or a reader trying one out) has no layer in
front of it, and numba code indexes without bounds checks: a weight with too few channels
or a class label past the last class would read or write outside an array, and crash the
process or return garbage.  So every public kernel first checks what it can without
touching the data (shapes, dtypes, sizes; the loss also looks at the range of its labels)
and raises a ``ValueError`` that names the kernel and the argument.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def fail(kernel: str, message: str):
    raise ValueError(f"{kernel}: {message}")


def array(kernel: str, name: str, a, shape: Sequence[Optional[int]], dtype=None) -> None:
    """``a`` must be an ndarray of len(shape) dimensions whose sizes match ``shape`` (``None``:
    any size), of ``dtype`` (default: float32 or float64)."""
    if not isinstance(a, np.ndarray):
        fail(kernel, f"{name} must be a NumPy array, got {type(a).__name__}")
    if (a.dtype != dtype) if dtype is not None else (a.dtype not in FLOATS):
        want = np.dtype(dtype) if dtype is not None else "float32 or float64"
        fail(kernel, f"{name} must be {want}, got {a.dtype}")
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + \
            ("," if len(shape) == 1 else "") + ")"
        fail(kernel, f"{name} must have shape {want}, got {a.shape}")


def same_dtype(kernel: str, **arrays) -> None:
    """All the given arrays (``None`` skipped) share one dtype."""
    given = {name: a.dtype for name, a in arrays.items() if a is not None}
    if len(set(given.values())) > 1:
        fail(kernel, "arrays of different dtypes: " +
             ", ".join(f"{name} {dt}" for name, dt in given.items()))


def number(kernel: str, name: str, value, positive: bool = False) -> float:
    """``float(value)`` of a finite real number (not a bool, a string or an array); with
    ``positive``, > 0."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)) or not np.isfinite(value) \
            or (positive and value <= 0):
        fail(kernel, f"{name} must be a finite{' positive' if positive else ''} number, got "
                     f"{value!r}")
    return float(value)


def at_least(kernel: str, name: str, value, low: int) -> int:
    """``int(value)``, which must be at least ``low``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not np.isfinite(value):
        fail(kernel, f"{name} must be an integer of at least {low}, got {value!r}")
    v = int(value)
    if v != value or v < low:
        fail(kernel, f"{name} must be an integer of at least {low}, got {value!r}")
    return v
