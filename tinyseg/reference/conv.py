"""Convolution and transposed convolution, written to be read.

Symbols (PyTorch conventions, NCHW activations):

* ``x``  input, shape (N, C, H, W);   ``y`` output, shape (N, O, Ho, Wo);
* ``w``  Conv2d weight, shape (O, C, kh, kw) (OIHW);  ``b`` bias, shape (O,), or ``None``;
* ``s``  stride, ``P`` padding (the same on all four sides), both integers;
* ``x_pad`` is ``x`` with ``P`` rows / columns of zeros added on every side.

**Convolution** (strictly a cross-correlation, as in every deep-learning library)::

    y[n,o,i,j] = b[o] + Σ_c Σ_p Σ_q  w[o,c,p,q] · x_pad[n, c, i·s+p, j·s+q]

    Ho = ⌊(H + 2P − kh) / s⌋ + 1,      Wo = ⌊(W + 2P − kw) / s⌋ + 1

**Its gradients**, for ``dout = ∂L/∂y`` (N, O, Ho, Wo)::

    ∂L/∂b[o]           = Σ_n Σ_i Σ_j dout[n,o,i,j]
    ∂L/∂w[o,c,p,q]     = Σ_n Σ_i Σ_j dout[n,o,i,j] · x_pad[n, c, i·s+p, j·s+q]
    ∂L/∂x_pad[n,c,u,v] = Σ_o Σ_{i,p: i·s+p=u} Σ_{j,q: j·s+q=v} w[o,c,p,q] · dout[n,o,i,j]

and ``∂L/∂x`` is ``∂L/∂x_pad`` with the ``P`` border rows / columns cut off.  The input
gradient *scatters*: every output gradient is spread back over the window it came from.

**Transposed convolution** (``ConvTranspose2d``; weight ``w`` of shape (C, O, kh, kw), i.e.
(in, out, kh, kw), as in PyTorch) is exactly that scatter, run forwards::

    y_full[n, o, i·s+p, j·s+q] += Σ_c x[n,c,i,j] · w[c,o,p,q]      (for every i, j, p, q)
    y[n,o,a,e] = b[o] + y_full[n, o, a+P, e+P]

    Ho = (H − 1)·s − 2P + kh + output_padding     (and the same for Wo)

``y_full`` has (H − 1)·s + kh + output_padding rows, the last ``output_padding`` (0 ≤ op < s)
of which no input reaches, and ``y`` drops P rows from each end of it: with op ≤ P the
unreached rows are cropped away and op only keeps computed rows that the crop would have
removed; only where op > P do op − P unreached rows (the bias alone) remain.  It exists to
pick one of the ``s`` input sizes that a strided convolution maps to the same
output size.  With the same ``w`` (read as OIHW with O = C_in), ``conv_transpose2d_forward``
is ``conv2d_backward``'s input gradient, and ``conv_transpose2d_backward``'s input gradient is
``conv2d_forward``: the two are adjoint linear maps, ⟨conv(x), z⟩ = ⟨x, convᵀ(z)⟩.

Three ways to compute the same convolution are kept here, because lesson 2 walks through
them: ``conv2d_forward_naive`` (loops over every output value), ``conv2d_forward_im2col``
(copy every window into a column, then one matrix product), and ``conv2d_forward`` (the one
the tests compare the fast kernels with: the equation above as an ``einsum`` over windows).
"""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "conv2d_output_size", "conv_transpose2d_output_size",
    "pad2d", "im2col", "col2im",
    "conv2d_forward_naive", "conv2d_forward_im2col",
    "conv2d_forward", "conv2d_backward",
    "conv_transpose2d_forward", "conv_transpose2d_backward",
]


# -- sizes and padding -----------------------------------------------------------------------

def conv2d_output_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """``⌊(size + 2·padding − kernel) / stride⌋ + 1``: output rows (or columns) of a conv."""
    return (size + 2 * padding - kernel) // stride + 1


def conv_transpose2d_output_size(size: int, kernel: int, stride: int, padding: int,
                                 output_padding: int) -> int:
    """``(size − 1)·stride − 2·padding + kernel + output_padding`` (PyTorch's formula)."""
    return (size - 1) * stride - 2 * padding + kernel + output_padding


def pad2d(x: np.ndarray, padding: int) -> np.ndarray:
    """``x_pad``: (N, C, H, W) -> (N, C, H + 2P, W + 2P), zeros all around."""
    P = padding
    return np.pad(x, ((0, 0), (0, 0), (P, P), (P, P)))


# -- the three forward passes of lesson 2 --------------------------------------------------------

def conv2d_forward_naive(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray],
                         stride: int, padding: int) -> np.ndarray:
    """The equation, one output value at a time (slow: use it on tiny inputs).

    ``y[n,o,i,j] = b[o] + Σ_c Σ_p Σ_q w[o,c,p,q] · x_pad[n, c, i·s+p, j·s+q]``, where the
    triple sum is the elementwise product of the window ``x_pad[n, :, i·s:i·s+kh,
    j·s:j·s+kw]`` (C, kh, kw) with the filter ``w[o]`` (C, kh, kw), summed.
    """
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    s = stride
    Ho = conv2d_output_size(H, kh, s, padding)
    Wo = conv2d_output_size(W, kw, s, padding)
    x_pad = pad2d(x, padding)
    y = np.zeros((N, O, Ho, Wo), dtype=x.dtype)
    for n in range(N):
        for o in range(O):
            for i in range(Ho):
                for j in range(Wo):
                    window = x_pad[n, :, i * s:i * s + kh, j * s:j * s + kw]
                    y[n, o, i, j] = np.sum(window * weight[o])
            if bias is not None:
                y[n, o] += bias[o]
    return y


def im2col(x: np.ndarray, kh: int, kw: int, stride: int, padding: int) -> np.ndarray:
    """Copy every (C, kh, kw) window of ``x_pad`` into one column.

    Returns ``cols`` of shape (N, C·kh·kw, Ho·Wo) with

        cols[n, (c, p, q), (i, j)] = x_pad[n, c, i·s+p, j·s+q]

    (row index ``(c·kh + p)·kw + q``, column index ``i·Wo + j``).  Each input value appears
    in up to kh·kw columns, so ``cols`` is about kh·kw / s² times the size of ``x``.
    """
    N, C, H, W = x.shape
    s = stride
    Ho = conv2d_output_size(H, kh, s, padding)
    Wo = conv2d_output_size(W, kw, s, padding)
    x_pad = pad2d(x, padding)
    cols = np.empty((N, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for p in range(kh):
        for q in range(kw):
            cols[:, :, p, q] = x_pad[:, :, p:p + s * (Ho - 1) + 1:s, q:q + s * (Wo - 1) + 1:s]
    return cols.reshape(N, C * kh * kw, Ho * Wo)


def col2im(cols: np.ndarray, x_shape: Tuple[int, int, int, int], kh: int, kw: int,
           stride: int, padding: int) -> np.ndarray:
    """The adjoint of ``im2col``: add every column back into the window it came from.

    ``x_pad[n, c, i·s+p, j·s+q] += cols[n, (c, p, q), (i, j)]`` for all entries, then cut the
    padding off.  Overlapping windows *add*: this is how the input gradient of a convolution
    (and the forward pass of a transposed convolution) is formed.
    """
    N, C, H, W = x_shape
    s, P = stride, padding
    Ho = conv2d_output_size(H, kh, s, P)
    Wo = conv2d_output_size(W, kw, s, P)
    cols = cols.reshape(N, C, kh, kw, Ho, Wo)
    x_pad = np.zeros((N, C, H + 2 * P, W + 2 * P), dtype=cols.dtype)
    for p in range(kh):
        for q in range(kw):
            x_pad[:, :, p:p + s * (Ho - 1) + 1:s, q:q + s * (Wo - 1) + 1:s] += cols[:, :, p, q]
    return x_pad[:, :, P:P + H, P:P + W].copy()


def conv2d_forward_im2col(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray],
                          stride: int, padding: int) -> np.ndarray:
    """Convolution as one matrix product per image: ``Y = W₂ · cols``.

    ``W₂ = w.reshape(O, C·kh·kw)`` (each row one filter, flattened in the same (c, p, q)
    order as the rows of ``cols``), so ``Y[n] = W₂ @ cols[n]`` has shape (O, Ho·Wo), and
    ``(W₂ @ cols[n])[o, (i, j)] = Σ_{(c,p,q)} w[o,c,p,q] · x_pad[n, c, i·s+p, j·s+q]``,
    the equation again.  Fast because the matrix product runs in BLAS.
    """
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    Ho = conv2d_output_size(H, kh, stride, padding)
    Wo = conv2d_output_size(W, kw, stride, padding)
    cols = im2col(x, kh, kw, stride, padding)
    y = np.matmul(weight.reshape(O, C * kh * kw), cols).reshape(N, O, Ho, Wo)
    if bias is not None:
        y += bias.reshape(1, O, 1, 1)
    return y


# -- the reference pair the kernels are tested against -------------------------------------------

def conv2d_forward(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray],
                   stride: int, padding: int) -> np.ndarray:
    """Conv2d forward: ``y[n,o,i,j] = b[o] + Σ_c Σ_p Σ_q w[o,c,p,q]·x_pad[n,c,i·s+p,j·s+q]``.

    Parameters
    ----------
    x : (N, C, H, W) float32 or float64.
    weight : (O, C, kh, kw), same dtype.
    bias : (O,) or ``None`` (no bias).
    stride, padding : ints, s ≥ 1, P ≥ 0, with H + 2P ≥ kh and W + 2P ≥ kw.

    Returns
    -------
    y : (N, O, Ho, Wo), Ho = ⌊(H + 2P − kh)/s⌋ + 1, Wo likewise; dtype of ``x``.

    ``windows[n, c, i, j, p, q] = x_pad[n, c, i·s+p, j·s+q]`` is a strided *view* (no copy),
    and the einsum below is the equation letter for letter.
    """
    s = stride
    windows = sliding_window_view(pad2d(x, padding), weight.shape[2:], axis=(2, 3))[:, :, ::s, ::s]
    y = np.einsum("ncijpq,ocpq->noij", windows, weight, optimize=True)
    if bias is not None:
        y = y + bias.reshape(1, -1, 1, 1)
    return np.ascontiguousarray(y, dtype=x.dtype)


def conv2d_backward(dout: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: int,
                    padding: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Conv2d backward: ``(dx, dweight, dbias)`` for ``dout = ∂L/∂y`` (N, O, Ho, Wo).

    One kernel offset ``(p, q)`` at a time: the input values that met ``w[:, :, p, q]`` are
    the strided slice ``x_pad[:, :, p::s, q::s]`` (Ho × Wo of them), so

        dw[o, c, p, q]             = Σ_n Σ_i Σ_j dout[n,o,i,j] · x_pad[n, c, i·s+p, j·s+q]
        dx_pad[n, c, p::s, q::s]  += Σ_o w[o, c, p, q] · dout[n, o, :, :]
        db[o]                      = Σ_n Σ_i Σ_j dout[n,o,i,j]

    and ``dx = dx_pad`` without its border.  ``dbias`` is returned even if the layer has no
    bias (the caller ignores it).  All three have the dtype of ``x``.
    """
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    _, _, Ho, Wo = dout.shape
    s, P = stride, padding
    x_pad = pad2d(x, P)
    dx_pad = np.zeros_like(x_pad)
    dw = np.zeros_like(weight)
    for p in range(kh):
        for q in range(kw):
            u = slice(p, p + s * (Ho - 1) + 1, s)       # rows i·s + p, i = 0 … Ho − 1
            v = slice(q, q + s * (Wo - 1) + 1, s)       # columns j·s + q
            dw[:, :, p, q] = np.einsum("noij,ncij->oc", dout, x_pad[:, :, u, v])
            dx_pad[:, :, u, v] += np.einsum("oc,noij->ncij", weight[:, :, p, q], dout)
    db = dout.sum(axis=(0, 2, 3)).astype(x.dtype)
    dx = dx_pad[:, :, P:P + H, P:P + W].copy()
    return dx, dw, db


def conv_transpose2d_forward(x: np.ndarray, weight: np.ndarray, bias: Optional[np.ndarray],
                             stride: int, padding: int, output_padding: int) -> np.ndarray:
    """ConvTranspose2d forward: every input pixel stamps a weighted kernel onto the output.

    Parameters
    ----------
    x : (N, C, H, W) float32 or float64.
    weight : (C, O, kh, kw) -- (in, out, kh, kw), PyTorch's layout; same dtype.
    bias : (O,) or ``None``.
    stride, padding, output_padding : ints, s ≥ 1, P ≥ 0, 0 ≤ op < s, Ho, Wo ≥ 1.

    Returns
    -------
    y : (N, O, Ho, Wo), Ho = (H − 1)·s − 2P + kh + op, Wo likewise; dtype of ``x``.

    ``y_full[n, o, i·s+p, j·s+q] += Σ_c x[n,c,i,j] · w[c,o,p,q]`` (one offset (p, q) at a
    time, a strided slice of ``y_full``), then ``y = b + y_full`` cropped by ``P`` at the top
    and left and to Ho × Wo.
    """
    N, C, H, W = x.shape
    _, O, kh, kw = weight.shape
    s, P = stride, padding
    Ho = conv_transpose2d_output_size(H, kh, s, P, output_padding)
    Wo = conv_transpose2d_output_size(W, kw, s, P, output_padding)
    y_full = np.zeros((N, O, (H - 1) * s + kh + output_padding,
                       (W - 1) * s + kw + output_padding), dtype=x.dtype)
    for p in range(kh):
        for q in range(kw):
            y_full[:, :, p:p + s * (H - 1) + 1:s, q:q + s * (W - 1) + 1:s] += np.einsum(
                "ncij,co->noij", x, weight[:, :, p, q])
    y = y_full[:, :, P:P + Ho, P:P + Wo].copy()
    if bias is not None:
        y += bias.reshape(1, O, 1, 1)
    return y


def conv_transpose2d_backward(dout: np.ndarray, x: np.ndarray, weight: np.ndarray, stride: int,
                              padding: int, output_padding: int
                              ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ConvTranspose2d backward: ``(dx, dweight, dbias)`` for ``dout`` (N, O, Ho, Wo).

    Put ``dout`` back where it sat in ``y_full`` (zeros in the cropped border), then each
    input pixel gathers from the window it stamped::

        dy_full[n, o, a+P, e+P] = dout[n, o, a, e]
        dx[n, c, i, j]  = Σ_o Σ_p Σ_q w[c,o,p,q] · dy_full[n, o, i·s+p, j·s+q]
        dw[c, o, p, q]  = Σ_n Σ_i Σ_j x[n,c,i,j] · dy_full[n, o, i·s+p, j·s+q]
        db[o]           = Σ_n Σ_a Σ_e dout[n,o,a,e]

    (``dx`` is an ordinary strided convolution of ``dout``, with ``w`` read as OIHW.)
    """
    N, C, H, W = x.shape
    _, O, kh, kw = weight.shape
    _, _, Ho, Wo = dout.shape
    s, P = stride, padding
    dy_full = np.zeros((N, O, (H - 1) * s + kh + output_padding,
                        (W - 1) * s + kw + output_padding), dtype=dout.dtype)
    dy_full[:, :, P:P + Ho, P:P + Wo] = dout
    dx = np.zeros_like(x)
    dw = np.zeros_like(weight)
    for p in range(kh):
        for q in range(kw):
            window = dy_full[:, :, p:p + s * (H - 1) + 1:s, q:q + s * (W - 1) + 1:s]
            dx += np.einsum("co,noij->ncij", weight[:, :, p, q], window)
            dw[:, :, p, q] = np.einsum("ncij,noij->co", x, window)
    db = dout.sum(axis=(0, 2, 3)).astype(x.dtype)
    return dx, dw, db
