"""Convolution layers: ``Conv2d`` and ``ConvTranspose2d`` (PyTorch's names, layouts, arguments).

``Conv2d``: input x (N, C, H, W), weight w (O, C, kh, kw), bias b (O,), output y (N, O, Ho, Wo)::

    y[n,o,i,j] = b[o] + Σ_c Σ_p Σ_q w[o,c,p,q] · x_pad[n, c, i·s+p, j·s+q]
    Ho = ⌊(H + 2P − kh) / s⌋ + 1,   Wo = ⌊(W + 2P − kw) / s⌋ + 1

``ConvTranspose2d``: input x (N, C, H, W), weight w (C, O, kh, kw) -- (in, out, kh, kw), as in
PyTorch --, output y (N, O, Ho, Wo); every input pixel adds ``x[n,c,i,j] · w[c,o,:,:]`` into the
output window at (i·s − P, j·s − P)::

    y[n, o, i·s+p−P, j·s+q−P] += Σ_c x[n,c,i,j] · w[c,o,p,q]      (then + b[o])
    Ho = (H − 1)·s − 2P + kh + output_padding

equivalently ``y_full[n, o, i·s+p, j·s+q] += …`` on the uncropped grid, then ``y = y_full``
with P rows and columns cropped from each side (the form of ``tinyseg.reference.conv``).

It is the adjoint (the input gradient) of a ``Conv2d`` with the same weight, stride and
padding, which is why it "undoes" the size change of a strided convolution: with kernel 3,
stride 2, padding 1 and output_padding 1 the output is exactly twice the input.

The gradients, the three ways to compute a convolution (loops, im2col, einsum) and the
reasoning behind them are in ``tinyseg.reference.conv``; the layers call the fast kernels in
``tinyseg.kernels.conv``.  Both layers keep their input from ``forward`` for ``backward``,
which *adds* into ``grads['weight']`` / ``grads['bias']`` and returns ∂L/∂x.

Weights are He-uniform (``tinyseg.init.he_uniform``), biases start at zero.  Randomness comes
only from ``rng``; when it is omitted the layer uses ``np.random.default_rng(0)``, so a layer
built without one is reproducible but every such layer starts from the *same* draw: pass
your own generator when building a network.
"""
from __future__ import annotations

from typing import Optional, Tuple, Union

import numpy as np

from ..init import he_uniform
from ..kernels import conv as _k
from .base import Layer, check_input, positive_int

__all__ = ["Conv2d", "ConvTranspose2d"]

IntOrPair = Union[int, Tuple[int, int]]


def _pair(name: str, layer: str, value: IntOrPair, minimum: int) -> Tuple[int, int]:
    """``3 -> (3, 3)``; ``(3, 5) -> (3, 5)``; rejects non-integers and values below ``minimum``."""
    vals = tuple(value) if isinstance(value, (tuple, list)) else (value, value)
    if len(vals) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                             or v < minimum for v in vals):
        raise ValueError(f"{layer}: {name} must be an integer >= {minimum} or a pair of them, "
                         f"got {value!r}")
    return int(vals[0]), int(vals[1])


def _square(name: str, layer: str, value: IntOrPair, minimum: int) -> int:
    """stride / padding: an int, or a pair of two equal ints (the kernels use one value)."""
    a, b = _pair(name, layer, value, minimum)
    if a != b:
        raise ValueError(f"{layer}: {name} must be the same for rows and columns, got {value!r}")
    return a


class _ConvBase(Layer):
    """What the two layers share: parameter set-up, input checks, the cached input."""

    def _setup(self, in_channels, out_channels, kernel_size, stride, padding, bias, rng,
               dtype) -> None:
        name = type(self).__name__
        self.in_channels = positive_int(name, "in_channels", in_channels)
        self.out_channels = positive_int(name, "out_channels", out_channels)
        self.kernel_size = _pair("kernel_size", name, kernel_size, 1)
        self.stride = _square("stride", name, stride, 1)
        self.padding = _square("padding", name, padding, 0)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"{name}: dtype must be float32 or float64, got {dtype}")
        self.dtype = dtype
        self._rng = rng if rng is not None else np.random.default_rng(0)
        if not isinstance(self._rng, np.random.Generator):
            raise ValueError(f"{name}: rng must be a numpy.random.Generator "
                             f"(np.random.default_rng(seed)), got {type(rng).__name__}")
        self.use_bias = bool(bias)
        self._x: Optional[np.ndarray] = None
        self._y_shape: Optional[Tuple[int, ...]] = None

    def _check_forward(self, x: np.ndarray) -> None:
        name = type(self).__name__
        check_input(name, x, ndim=4, channels=self.in_channels)
        if x.dtype != self.dtype:
            raise ValueError(f"{name}: input dtype {x.dtype} (shape {x.shape}) differs from the "
                             f"parameters' dtype {self.dtype}; cast the input with "
                             f".astype(np.{self.dtype})")

    def _check_backward(self, dout: np.ndarray) -> np.ndarray:
        name = type(self).__name__
        if self._x is None:
            raise ValueError(f"{name}: backward called before forward")
        if not isinstance(dout, np.ndarray) or dout.shape != self._y_shape:
            shape = getattr(dout, "shape", type(dout).__name__)
            raise ValueError(f"{name}: expected dout of shape {self._y_shape}, got {shape}")
        if dout.dtype != self._x.dtype:
            raise ValueError(f"{name}: expected dout of dtype {self._x.dtype}, got {dout.dtype}")
        return dout

    def _bias(self) -> Optional[np.ndarray]:
        return self.params["bias"] if self.use_bias else None

    def _accumulate(self, dw: np.ndarray, db: np.ndarray) -> None:
        self.grads["weight"] += dw
        if self.use_bias:
            self.grads["bias"] += db

    def _repr_args(self) -> str:
        kh, kw = self.kernel_size
        s, P = self.stride, self.padding
        return (f"{self.in_channels}, {self.out_channels}, kernel_size=({kh}, {kw}), "
                f"stride=({s}, {s})" + (f", padding=({P}, {P})" if P else ""))


class Conv2d(_ConvBase):
    """2-D convolution, ``y = b + w ⋆ x`` (cross-correlation, as in PyTorch).

    Parameters
    ----------
    in_channels, out_channels : C and O.
    kernel_size : ``k`` or ``(kh, kw)``; any size ≥ 1 (the Tiramisu uses 3 and 1).
    stride : s ≥ 1 (an int; 1 and 2 are the ones a Tiramisu needs).
    padding : P ≥ 0 zeros added on every side (int).
    bias : whether to add a learned bias ``b`` (O,).
    rng : ``numpy.random.Generator`` for the weights; default ``np.random.default_rng(0)``.
    dtype : ``np.float32`` (default, training) or ``np.float64`` (gradient checks).

    Shapes: x (N, C, H, W) -> y (N, O, Ho, Wo), Ho = ⌊(H + 2P − kh)/s⌋ + 1, Wo likewise.
    ``params['weight']`` (O, C, kh, kw) ~ He-uniform with fan_in = C·kh·kw;
    ``params['bias']`` (O,) = 0.

    Backward, for dout = ∂L/∂y (N, O, Ho, Wo)::

        ∂L/∂w[o,c,p,q] = Σ_n Σ_i Σ_j dout[n,o,i,j] · x_pad[n, c, i·s+p, j·s+q]
        ∂L/∂b[o]       = Σ_n Σ_i Σ_j dout[n,o,i,j]
        ∂L/∂x_pad[n,c,u,v] = Σ_o Σ_{i,p: i·s+p=u} Σ_{j,q: j·s+q=v} w[o,c,p,q] · dout[n,o,i,j]

    then ∂L/∂x is ∂L/∂x_pad with its border of P cut off: the transposed convolution of dout
    with w (each dout value scattered back over its window).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: IntOrPair = 0, bias: bool = True,
                 rng: Optional[np.random.Generator] = None, dtype=np.float32) -> None:
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, bias, rng, dtype)
        kh, kw = self.kernel_size
        C, O = self.in_channels, self.out_channels
        self.add_param("weight", he_uniform((O, C, kh, kw), C * kh * kw, self._rng, self.dtype))
        if self.use_bias:
            self.add_param("bias", np.zeros(O, dtype=self.dtype))
        del self._rng  # only needed to draw the weights

    def output_shape(self, input_shape: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
        """``(N, C, H, W) -> (N, O, Ho, Wo)``."""
        N, _, H, W = input_shape
        kh, kw = self.kernel_size
        s, P = self.stride, self.padding
        return (N, self.out_channels, (H + 2 * P - kh) // s + 1, (W + 2 * P - kw) // s + 1)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> y (N, O, Ho, Wo); keeps x for ``backward``."""
        self._check_forward(x)
        kh, kw = self.kernel_size
        P = self.padding
        H, W = x.shape[2:]
        if H + 2 * P < kh or W + 2 * P < kw:
            raise ValueError(
                f"{type(self).__name__}: kernel ({kh}, {kw}) is larger than the padded input: "
                f"input shape {x.shape} with padding {P} is ({H + 2 * P}, {W + 2 * P}), "
                f"expected at least ({kh}, {kw})")
        self._x = x
        y = _k.conv2d_forward(x, self.params["weight"], self._bias(), self.stride, P)
        self._y_shape = y.shape
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (N, O, Ho, Wo) -> dx (N, C, H, W); adds into ``grads``."""
        dout = self._check_backward(dout)
        dx, dw, db = _k.conv2d_backward(dout, self._x, self.params["weight"], self.stride,
                                        self.padding)
        self._accumulate(dw, db)
        return dx

    def __repr__(self) -> str:
        return f"Conv2d({self._repr_args()}" + ("" if self.use_bias else ", bias=False") + ")"


class ConvTranspose2d(_ConvBase):
    """2-D transposed convolution ("deconvolution"), the up-sampling of the Tiramisu.

    Parameters
    ----------
    in_channels, out_channels : C and O.
    kernel_size : ``k`` or ``(kh, kw)``.
    stride : s ≥ 1; padding : P ≥ 0 (removed from every side of the full output).
    output_padding : 0 ≤ op < s, op more rows / columns at the bottom / right of the output:
        computed ones that the padding crop would otherwise remove (only where op > P do
        op − P of them lie beyond every input's reach and hold the bias alone); it chooses
        among the ``s`` input sizes a strided ``Conv2d`` maps to the same output size.
    bias, rng, dtype : as for ``Conv2d``.

    Shapes: x (N, C, H, W) -> y (N, O, Ho, Wo), Ho = (H − 1)·s − 2P + kh + op, Wo likewise.
    Kernel 3, stride 2: padding 0 gives 2H + 1 (the Tiramisu then crops the centre to the
    skip connection's size); padding 1, output_padding 1 gives exactly 2H.

    ``params['weight']`` has shape (C, O, kh, kw) (PyTorch's (in, out, kh, kw)), He-uniform
    with fan_in = O·kh·kw (the value PyTorch's and Lasagne's initialisers compute, see
    ``tinyseg.init``); ``params['bias']`` (O,) = 0.

    Backward::

        ∂L/∂x[n,c,i,j] = Σ_o Σ_p Σ_q w[c,o,p,q] · dy_full[n, o, i·s+p, j·s+q]  (a Conv2d)
        ∂L/∂w[c,o,p,q] = Σ_n Σ_i Σ_j x[n,c,i,j] · dy_full[n, o, i·s+p, j·s+q]
        ∂L/∂b[o]       = Σ_n Σ_a Σ_e dout[n,o,a,e]       (a, e: the output's rows, columns)

    with ``dy_full`` = dout shifted by P into the uncropped output grid (zeros elsewhere),
    named as in ``tinyseg.reference.conv``.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: IntOrPair,
                 stride: IntOrPair = 1, padding: IntOrPair = 0, output_padding: IntOrPair = 0,
                 bias: bool = True, rng: Optional[np.random.Generator] = None,
                 dtype=np.float32) -> None:
        super().__init__()
        self._setup(in_channels, out_channels, kernel_size, stride, padding, bias, rng, dtype)
        self.output_padding = _square("output_padding", "ConvTranspose2d", output_padding, 0)
        if self.output_padding >= self.stride:
            raise ValueError(f"ConvTranspose2d: output_padding must be smaller than stride, "
                             f"got output_padding={self.output_padding}, stride={self.stride}")
        kh, kw = self.kernel_size
        C, O = self.in_channels, self.out_channels
        self.add_param("weight", he_uniform((C, O, kh, kw), O * kh * kw, self._rng, self.dtype))
        if self.use_bias:
            self.add_param("bias", np.zeros(O, dtype=self.dtype))
        del self._rng  # only needed to draw the weights

    def output_shape(self, input_shape: Tuple[int, int, int, int]) -> Tuple[int, int, int, int]:
        """``(N, C, H, W) -> (N, O, (H−1)·s − 2P + kh + op, (W−1)·s − 2P + kw + op)``."""
        N, _, H, W = input_shape
        kh, kw = self.kernel_size
        s, P, op = self.stride, self.padding, self.output_padding
        return (N, self.out_channels, (H - 1) * s - 2 * P + kh + op,
                (W - 1) * s - 2 * P + kw + op)

    def forward(self, x: np.ndarray) -> np.ndarray:
        """x (N, C, H, W) -> y (N, O, Ho, Wo); keeps x for ``backward``."""
        self._check_forward(x)
        out = self.output_shape(x.shape)
        if out[2] < 1 or out[3] < 1:
            raise ValueError(
                f"{type(self).__name__}: padding {self.padding} is too large for input shape "
                f"{x.shape}: the output would be {out}, expected at least 1 × 1")
        self._x = x
        y = _k.conv_transpose2d_forward(x, self.params["weight"], self._bias(), self.stride,
                                        self.padding, self.output_padding)
        self._y_shape = y.shape
        return y

    def backward(self, dout: np.ndarray) -> np.ndarray:
        """dout (N, O, Ho, Wo) -> dx (N, C, H, W); adds into ``grads``."""
        dout = self._check_backward(dout)
        dx, dw, db = _k.conv_transpose2d_backward(dout, self._x, self.params["weight"],
                                                  self.stride, self.padding,
                                                  self.output_padding)
        self._accumulate(dw, db)
        return dx

    def __repr__(self) -> str:
        s = f"ConvTranspose2d({self._repr_args()}"
        if self.output_padding:
            s += f", output_padding=({self.output_padding}, {self.output_padding})"
        return s + ("" if self.use_bias else ", bias=False") + ")"
