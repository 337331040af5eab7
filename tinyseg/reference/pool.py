"""Max pooling with stride equal to the window size, in plain NumPy.

Shapes: ``x`` is ``(N, C, H, W)``; ``y`` and ``argmax`` are ``(N, C, Ho, Wo)`` with
``Ho = ⌊H / k⌋`` and ``Wo = ⌊W / k⌋`` (trailing rows / columns that do not fill a window are
dropped, as in PyTorch's default ``ceil_mode=False``).

Forward, for every output position ``(i, j)`` and window offset ``(p, q)``, ``0 ≤ p, q < k``
(named as the convolution's kernel offsets)::

    y[n, c, i, j] = max over (p, q) of x[n, c, i·k + p, j·k + q]

**The ``argmax`` encoding**: an ``int8`` array holding the position of the winner *inside its
window*, ``a = p·k + q`` (row-major), so ``0 ≤ a < k²``; the winner sits at
``x[n, c, i·k + a // k, j·k + a % k]``.  One byte per output value keeps the cache small,
and limits ``k`` to 11 (``k² ≤ 127``).  PyTorch's ``return_indices`` gives instead the flat
index within the ``H × W`` plane: ``(i·k + a // k) · W + (j·k + a % k)``.

Ties go to the first maximum in row-major window order, and a NaN wins over every number
(a later NaN over an earlier one) -- the same rule as PyTorch's CPU kernel, which scans the
window with ``if v > best or isnan(v): best, a = v, p·k + q`` starting from ``best = −∞``.

Backward: each output gradient goes to the one input that won its window; all other inputs
get zero::

    dx[n, c, i·k + a // k, j·k + a % k] = dout[n, c, i, j],   a = argmax[n, c, i, j]
"""
from __future__ import annotations

import numpy as np


def maxpool2d_forward(x: np.ndarray, k: int):
    """Max pool ``k × k``, stride ``k``: returns ``(y, argmax)`` (see the module docstring)."""
    n, c, h, w = x.shape
    ho, wo = h // k, w // k
    best = np.full((n, c, ho, wo), -np.inf, dtype=x.dtype)
    argmax = np.zeros((n, c, ho, wo), dtype=np.int8)
    for p in range(k):
        for q in range(k):
            # the (p, q) element of every window at once
            v = x[:, :, p:ho * k:k, q:wo * k:k]
            take = (v > best) | np.isnan(v)
            best = np.where(take, v, best)
            argmax = np.where(take, np.int8(p * k + q), argmax)
    return best, argmax


def maxpool2d_backward(dout: np.ndarray, argmax: np.ndarray, x_shape: tuple, k: int):
    """Route every ``dout[n, c, i, j]`` to the window element that won: returns ``dx``.

    ``dx`` has shape ``x_shape`` and ``dout``'s dtype; inputs that won no window (including
    the dropped trailing rows / columns) get 0.
    """
    dx = np.zeros(x_shape, dtype=dout.dtype)
    ho, wo = dout.shape[2], dout.shape[3]
    for p in range(k):
        for q in range(k):
            dx[:, :, p:ho * k:k, q:wo * k:k] = np.where(argmax == p * k + q, dout, 0)
    return dx
