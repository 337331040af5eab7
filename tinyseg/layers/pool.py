"""``MaxPool2d``: the down-sampling of a Tiramisu transition-down.

``y[n, c, i, j] = max_{0 ≤ p, q < k} x[n, c, i·k + p, j·k + q]`` with stride ``k``;
``(N, C, H, W) → (N, C, ⌊H/k⌋, ⌊W/k⌋)``.  The backward sends each output gradient to the
input that won its window.  Kernels: ``tinyseg.kernels.pool`` (equations, the ``int8``
arg-max encoding and the tie rule in ``tinyseg.reference.pool``).
"""
from __future__ import annotations

import numpy as np

from ..kernels.pool import maxpool2d_backward, maxpool2d_forward
from .base import Layer, check_input

MAX_KERNEL_SIZE = 11  # the arg-max is stored as an int8 index p·k + q < k² ≤ 127


class MaxPool2d(Layer):
    """``MaxPool2d(kernel_size=2)``: ``k × k`` max pooling with stride ``k``, no padding.

    Like ``torch.nn.MaxPool2d(k)`` (``ceil_mode=False``): trailing rows / columns that do not
    fill a window are dropped; on ties the first maximum in row-major window order wins
    (and gets the gradient).  ``1 ≤ kernel_size ≤ 11``; the input must be at least
    ``k × k``.  Keeps the ``int8`` arg-max (one byte per output value) for the backward.
    """

    def __init__(self, kernel_size: int = 2) -> None:
        super().__init__()
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, (int, np.integer)) \
                or not 1 <= kernel_size <= MAX_KERNEL_SIZE:
            raise ValueError(f"MaxPool2d: kernel_size must be an int in [1, {MAX_KERNEL_SIZE}], "
                             f"got {kernel_size!r}")
        self.kernel_size = int(kernel_size)
        self._cache = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_input("MaxPool2d", x, ndim=4)
        k = self.kernel_size
        if x.shape[2] < k or x.shape[3] < k:
            raise ValueError(f"MaxPool2d: kernel_size {k} is larger than the input's spatial "
                             f"size (H, W) = {x.shape[2:]} (input shape {x.shape})")
        x = np.ascontiguousarray(x)
        y, argmax = maxpool2d_forward(x, k)
        self._cache = (tuple(int(d) for d in x.shape), argmax, x.dtype)
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise ValueError("MaxPool2d: backward called before forward")
        x_shape, argmax, dtype = self._cache
        if not isinstance(dout, np.ndarray) or dout.shape != argmax.shape:
            raise ValueError(f"MaxPool2d: expected dout of shape {argmax.shape}, got shape "
                             f"{getattr(dout, 'shape', type(dout).__name__)}")
        if dout.dtype.kind != "f":
            raise ValueError(f"MaxPool2d: expected a float dout, got {dout.dtype}")
        dout = np.ascontiguousarray(dout, dtype=dtype)
        return maxpool2d_backward(dout, argmax, x_shape, self.kernel_size)

    def __repr__(self) -> str:
        return f"MaxPool2d(kernel_size={self.kernel_size})"
