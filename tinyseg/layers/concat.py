"""Concatenation along channels: how a dense block grows its feature maps.

Forward, for inputs ``x_1 … x_K`` of shapes ``(N, C_k, H, W)``::

    y = [x_1, x_2, …, x_K]      along axis 1,   shape (N, ΣC_k, H, W)

Backward: concatenation only moves values, so the gradient of each input is its own slice
of ``dy``::

    dx_k = dy[:, C_1 + … + C_{k−1} : C_1 + … + C_k]

This is plain NumPy on purpose: ``np.concatenate`` is a memory copy that already runs at
memory speed, and the backward is free (slices are views, nothing is copied).  No kernel.
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

from .base import Layer, check_input


def _check_inputs(xs) -> None:
    if not isinstance(xs, (list, tuple)) or len(xs) == 0:
        raise ValueError(f"Concat: expected a non-empty list of (N, C, H, W) arrays, got "
                         f"{type(xs).__name__}" + (" of length 0" if isinstance(xs, (list, tuple))
                                                    else ""))
    for k, x in enumerate(xs):
        check_input(f"Concat (input {k})", x, ndim=4)
    first = xs[0]
    for k, x in enumerate(xs[1:], start=1):
        if (x.shape[0], x.shape[2], x.shape[3]) != (first.shape[0], first.shape[2], first.shape[3]):
            raise ValueError(f"Concat: all inputs need the same N, H, W; input 0 has shape "
                             f"{first.shape}, input {k} has shape {x.shape}")
        if x.dtype != first.dtype:
            raise ValueError(f"Concat: all inputs need the same dtype; input 0 is {first.dtype} "
                             f"(shape {first.shape}), input {k} is {x.dtype} (shape {x.shape})")


def concat(xs: Sequence[np.ndarray]) -> np.ndarray:
    """``y = np.concatenate(xs, axis=1)`` after checking the inputs.

    ``xs``: a non-empty list of float32 / float64 arrays ``(N, C_k, H, W)`` with equal
    ``N, H, W`` and one dtype.  Returns a new C-contiguous ``(N, ΣC_k, H, W)`` array.
    """
    _check_inputs(xs)
    return np.concatenate(xs, axis=1)


def split_grad(dy: np.ndarray, sizes: Sequence[int]) -> List[np.ndarray]:
    """The backward of :func:`concat`: ``dy`` cut into channel slices of the given sizes.

    Returns *views* into ``dy`` (no copy; they are not C-contiguous when ``N > 1`` and
    more than one slice exists -- use ``np.ascontiguousarray`` before a kernel needs one).
    ``sum(sizes)`` must equal ``dy.shape[1]``.
    """
    check_input("Concat.split_grad", dy, ndim=4)
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes) or sum(sizes) != dy.shape[1]:
        raise ValueError(f"Concat.split_grad: channel sizes {sizes} (sum {sum(sizes)}) do not "
                         f"match dy of shape {dy.shape} ({dy.shape[1]} channels)")
    out, start = [], 0
    for s in sizes:
        out.append(dy[:, start:start + s])
        start += s
    return out


class Concat(Layer):
    """A layer wrapper: ``forward(xs: list) -> y``, ``backward(dy) -> list of dx_k`` (views)."""

    def __init__(self) -> None:
        super().__init__()
        self._sizes: List[int] | None = None
        self._out_shape: tuple | None = None

    def forward(self, xs: Sequence[np.ndarray]) -> np.ndarray:  # type: ignore[override]
        y = concat(xs)
        self._sizes = [int(x.shape[1]) for x in xs]
        self._out_shape = y.shape
        return y

    def backward(self, dout: np.ndarray) -> List[np.ndarray]:  # type: ignore[override]
        if self._sizes is None:
            raise ValueError("Concat: backward called before forward")
        if not isinstance(dout, np.ndarray) or dout.shape != self._out_shape:
            raise ValueError(f"Concat: expected dout of shape {self._out_shape}, got shape "
                             f"{getattr(dout, 'shape', type(dout).__name__)}")
        return split_grad(dout, self._sizes)
