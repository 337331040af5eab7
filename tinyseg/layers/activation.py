"""Element-wise layers: ``ReLU`` and (inverted) ``Dropout``.

Both work on float32 / float64 arrays of any shape and are plain NumPy: one element-wise
operation each, which NumPy already runs at memory speed, so a numba kernel would buy
nothing.  (Inside a Tiramisu dense layer the ReLU is fused with the batch norm instead:
``tinyseg.kernels.norm.batchnorm_relu_forward``.)
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from .base import Layer, check_input


def _check_float_array(layer: str, x) -> None:
    """Any shape, but a NumPy array of float32 / float64 (the checks of ``check_input``)."""
    check_input(layer, x, ndim=x.ndim if isinstance(x, np.ndarray) else 4)


def _check_dout(layer: str, dout, shape, dtype) -> np.ndarray:
    """``dout`` of the forward output's shape, any float dtype; returned in the forward
    input's ``dtype`` (as ``BatchNorm2d`` and ``MaxPool2d`` do), so a float16 gradient does
    not turn the rest of the backward pass into float16."""
    if not isinstance(dout, np.ndarray) or dout.shape != shape:
        raise ValueError(f"{layer}: expected dout of shape {shape}, got shape "
                         f"{getattr(dout, 'shape', type(dout).__name__)}")
    if dout.dtype.kind != "f":
        raise ValueError(f"{layer}: expected a float dout, got {dout.dtype}")
    return np.asarray(dout, dtype=dtype)


class ReLU(Layer):
    """``y = max(x, 0)``; backward ``dx = dout · [x > 0]`` (the gradient at exactly 0 is 0,
    as in PyTorch).  Keeps only the boolean mask ``x > 0`` for the backward pass.
    NaN inputs propagate to the output."""

    def __init__(self) -> None:
        super().__init__()
        self._mask: Optional[np.ndarray] = None
        self._dtype = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_float_array("ReLU", x)
        self._mask, self._dtype = x > 0, x.dtype
        return np.maximum(x, x.dtype.type(0))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._mask is None:
            raise ValueError("ReLU: backward called before forward")
        dout = _check_dout("ReLU", dout, self._mask.shape, self._dtype)
        return dout * self._mask


class Dropout(Layer):
    """Inverted dropout: ``Dropout(p=0.5, rng=None)``.

    Training mode: every element is kept with probability ``1 − p`` and scaled so the
    expected output equals the input::

        mask ~ Bernoulli(1 − p)   (drawn as  u ≥ p,  u ~ U[0, 1) in float32)
        y    = x · mask / (1 − p),        dx = dout · mask / (1 − p)

    Eval mode (and ``p = 0``): the identity, ``y = x`` (the same array is returned) and
    ``dx = dout``.  ``p`` must lie in ``[0, 1)``.

    The mask is drawn from ``rng``, a ``numpy.random.Generator``: with ``rng=None`` a fresh,
    unseeded generator is made (not reproducible).  The same seed gives the same masks.

    Making it deterministic (e.g. for ``tinyseg.gradcheck``, which calls ``forward`` many
    times and needs the same function each time), any of:

    * ``layer.freeze_mask()`` -- from then on ``forward`` reuses the last mask (a new one is
      drawn only when there is none yet or the input shape changes); ``freeze_mask(False)``
      goes back to a fresh mask per call;
    * ``Dropout(p=0)`` or ``layer.eval()`` -- no dropout at all;
    * setting ``layer.rng = np.random.default_rng(seed)`` before every ``forward``.

    The last mask is available as ``layer.mask`` (boolean, the input's shape).
    """

    def __init__(self, p: float = 0.5, rng: Optional[np.random.Generator] = None) -> None:
        super().__init__()
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)) \
                or not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout: p must be a number in [0, 1), got {p!r}")
        if rng is not None and not isinstance(rng, np.random.Generator):
            raise ValueError(f"Dropout: rng must be a numpy.random.Generator or None, "
                             f"got {type(rng).__name__}")
        self.p = float(p)
        self.rng = rng if rng is not None else np.random.default_rng()
        self.frozen = False
        self.mask: Optional[np.ndarray] = None
        self._cache = None

    def freeze_mask(self, frozen: bool = True) -> "Dropout":
        """Reuse the last mask in every following ``forward`` (see the class docstring)."""
        self.frozen = bool(frozen)
        return self

    def forward(self, x: np.ndarray) -> np.ndarray:
        _check_float_array("Dropout", x)
        if not self.training or self.p == 0.0:
            self._cache = ("identity", x.shape, x.dtype, None)
            return x
        if not (self.frozen and self.mask is not None and self.mask.shape == x.shape):
            self.mask = self.rng.random(x.shape, dtype=np.float32) >= self.p
        scale = x.dtype.type(1.0 / (1.0 - self.p))
        y = x * self.mask
        y *= scale
        self._cache = ("drop", x.shape, x.dtype, (self.mask, scale))
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise ValueError("Dropout: backward called before forward")
        mode, shape, dtype, saved = self._cache
        dout = _check_dout("Dropout", dout, shape, dtype)
        if mode == "identity":
            return dout
        mask, scale = saved
        dx = dout * mask
        dx *= scale
        return dx

    def __repr__(self) -> str:
        return f"Dropout(p={self.p})"
