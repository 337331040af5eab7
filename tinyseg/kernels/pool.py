"""Max pooling (window ``k × k``, stride ``k``): numba kernels.

Twins of ``tinyseg.reference.pool``; the equations, the ``int8`` arg-max encoding
(``a = p·k + q``, position inside the window, row-major) and the tie / NaN rule (first
maximum wins, NaN beats numbers, as in PyTorch) are described there.  One ``prange``
iteration per ``(n, c)`` plane.  Requirements (the layer makes sure of them, and the
public functions check them again): ``k ≤ 11``, ``x_shape`` a tuple of 4 ints, ``H, W ≥
k``; ``x`` and ``dout`` C-contiguous (another layout is still correct but compiles one more
specialisation).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._args import array, at_least, fail


def _window(kernel, k, h, w):
    k = at_least(kernel, "k", k, 1)
    if k > 11:
        fail(kernel, f"k must be at most 11 (the arg-max is stored in int8), got {k}")
    if h < k or w < k:
        fail(kernel, f"a {k}x{k} window does not fit in {h}x{w}")
    return k


def maxpool2d_forward(x, k):
    """``(y, argmax)``: ``y[n, c, i, j] = max_{p,q} x[n, c, i·k + p, j·k + q]``."""
    array("maxpool2d_forward", "x", x, (None,) * 4)
    return _maxpool2d_forward(x, _window("maxpool2d_forward", k, x.shape[2], x.shape[3]))


def maxpool2d_backward(dout, argmax, x_shape, k):
    """``dx`` of shape ``x_shape``: ``dx[n, c, i·k + a // k, j·k + a % k] = dout[n, c, i, j]``.

    ``argmax`` as ``maxpool2d_forward`` returned it; values outside ``0 … k·k − 1`` are
    refused (the kernel would write outside ``dx``).
    """
    kernel = "maxpool2d_backward"
    array(kernel, "dout", dout, (None,) * 4)
    array(kernel, "argmax", argmax, dout.shape, dtype=np.int8)
    x_shape = tuple(int(v) for v in x_shape)
    if len(x_shape) != 4 or x_shape[:2] != dout.shape[:2]:
        fail(kernel, f"x_shape {x_shape} does not fit dout {dout.shape}")
    k = _window(kernel, k, x_shape[2], x_shape[3])
    if (x_shape[2] // k, x_shape[3] // k) != dout.shape[2:]:
        fail(kernel, f"dout {dout.shape} is not the {k}x{k} pooling of x_shape {x_shape}")
    if argmax.size and not 0 <= argmax.min() <= argmax.max() < k * k:
        fail(kernel, f"argmax holds {argmax.min()} … {argmax.max()}, positions in a {k}x{k} "
                     f"window are 0 … {k * k - 1}")
    return _maxpool2d_backward(dout, argmax, x_shape, k)


@njit(cache=True, parallel=True)
def _maxpool2d_forward(x, k):
    n_, c_, h_, w_ = x.shape
    ho, wo = h_ // k, w_ // k
    y = np.empty((n_, c_, ho, wo), dtype=x.dtype)
    argmax = np.empty((n_, c_, ho, wo), dtype=np.int8)
    for plane in prange(n_ * c_):
        n = plane // c_
        c = plane % c_
        for i in range(ho):
            for j in range(wo):
                best = -np.inf
                a = 0
                for p in range(k):
                    for q in range(k):
                        v = x[n, c, i * k + p, j * k + q]
                        if v > best or np.isnan(v):
                            best = v
                            a = p * k + q
                y[n, c, i, j] = best
                argmax[n, c, i, j] = a
    return y, argmax


@njit(cache=True, parallel=True)
def _maxpool2d_backward(dout, argmax, x_shape, k):
    n_, c_, ho, wo = dout.shape
    dx = np.zeros(x_shape, dtype=dout.dtype)
    for plane in prange(n_ * c_):
        n = plane // c_
        c = plane % c_
        for i in range(ho):
            for j in range(wo):
                a = np.int64(argmax[n, c, i, j])
                dx[n, c, i * k + a // k, j * k + a % k] = dout[n, c, i, j]
    return dx
