"""Batch normalisation (training mode) and fused BatchNorm + ReLU: numba kernels.

Twins of ``tinyseg.reference.norm`` (same names, arguments, return values; the equations
are written out there).  Per channel ``c``, over the ``M = N·H·W`` values of ``x[:, c]``::

    x̂ = (x − μ) · (σ² + ε)^−½,          y = γ · x̂ + β
    dx = γ · invstd / M · (M · dy − Σ dy − x̂ · Σ (dy · x̂))

Each public function is a few lines of Python around its numba kernel (the same name with
a leading underscore; ``batchnorm2d_forward`` runs the statistics kernel, then
``_batchnorm2d_normalise``).  Channels are independent; the kernels accumulate their sums in
float64 also for float32 inputs.  Outputs are C-contiguous, in ``x``'s dtype.

**Threads.**  The element-wise kernels run one ``prange`` iteration per channel.  The three
kernels with sums (``FASTMATH``, below) are serial over a range of channels ``c0 … c1−1``,
compiled with ``nogil=True``, and the channels are split over Python threads as the
convolutions split images (``tinyseg.kernels.conv._in_parallel``).  The reason is
reproducibility: numba 0.68's ``parallel=True`` kernels with fast-math flags computed
differently when compiled in the running process than when loaded from numba's on-disk
cache (one element of ``dx`` in 160 k differed in the last bit on a real training batch,
enough to send a 16-epoch run down another path from epoch 8 on), while serial fast-math
kernels and parallel kernels without fast-math gave the same bits both ways
(README, "Training results").  Each channel is computed by one thread from start to end,
so the results are the same for any number of threads.

**Two things make these loops fast** (measured here on the BN + ReLU backward of an
(8, 100, 64, 64) float32 input, one thread; ``python -m benchmarks`` has the full rows):

* ``FASTMATH`` (below) lets LLVM add a sum in a different order, so the float64 sums are
  split over SIMD lanes: 15.3 ms without, 2.5 ms with.
* Unit strides.  The Tiramisu's dense layers read the first C channels of a bigger
  (N, C', H, W) buffer (``tinyseg.tiramisu``).  That slice is not C-contiguous, and numba
  compiles a non-contiguous array with general strides, which LLVM does not vectorise:
  30.2 ms on such a slice against 3.2 ms on a contiguous copy.  :func:`_channels_of` hands
  the kernel the same memory seen as a C-contiguous (N, C', H, W) array plus the number C
  of channels to use, so no copy is needed; the kernels never read channels ≥ C.

Pass ``weight``, ``bias``, ``mean``, ``invstd``, ``dout`` of ``x``'s dtype (the layers make
sure of that): mixed dtypes still give correct results, but each new combination compiles
(and caches) one more specialisation, about a second each.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange
from numpy.lib.stride_tricks import as_strided

from ._args import array, fail, number, same_dtype
from .conv import _in_parallel

__all__ = ["batchnorm2d_stats", "batchnorm2d_forward", "batchnorm2d_backward",
           "batchnorm_relu_forward", "batchnorm_relu_backward"]

#: LLVM fast-math flags of the kernels that add up sums: ``reassoc`` (a sum may be added in
#: another order, so it can be split over SIMD lanes), ``arcp`` (x / y may become
#: x · (1/y)), ``nsz`` (the sign of a zero may be ignored).  Not ``nnan`` / ``ninf``: NaN and
#: inf still propagate as in the reference; not ``contract`` (fused multiply-add), which
#: changed results in the last bit and measured no faster.  The element-wise kernels
#: (``_batchnorm_relu_forward``, the normalisation ``_batchnorm2d_normalise``) vectorise
#: without these flags and stay bit-identical to the reference.
FASTMATH = {"reassoc", "arcp", "nsz"}


def _channels_of(x):
    """``(xc, C)``: a C-contiguous array whose channels ``0 … C−1`` are ``x``'s.

    ``x`` itself when it is C-contiguous.  When ``x`` is the first ``C`` channels of a
    contiguous (N, C', H, W) buffer (each H×W plane contiguous, images C'·H·W apart), the
    same memory viewed as (N, C', H, W) with C-contiguous strides (no copy); the kernels
    read only channels below ``C``, i.e. only ``x``'s own elements.  Other layouts: a copy.
    """
    C = x.shape[1]
    if x.flags.c_contiguous:
        return x, C
    n, _, h, w = x.shape
    item = x.itemsize
    plane = h * w * item
    s0, s1, s2, s3 = x.strides
    if (s3 == item and s2 == w * item and s1 == plane and s0 > 0 and s0 % plane == 0
            and s0 // plane >= C):
        # (writeable as x is: a read-only view would be a new numba type, one more compile)
        return as_strided(x, (n, s0 // plane, h, w), (s0, plane, w * item, item)), C
    return np.ascontiguousarray(x), C


def _backward_outputs(x, C):
    """Empty ``(dx, dweight, dbias)`` for a backward kernel to fill, in ``x``'s dtype."""
    n, _, h, w = x.shape
    return (np.empty((n, C, h, w), dtype=x.dtype), np.empty(C, dtype=x.dtype),
            np.empty(C, dtype=x.dtype))


# -- statistics and the plain batch norm ------------------------------------------------------

@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _batchnorm2d_stats(x, c0, c1, eps, mean, invstd):
    n_, h_, w_ = x.shape[0], x.shape[2], x.shape[3]
    M = n_ * h_ * w_                    # values per channel
    for c in range(c0, c1):
        s = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    s += x[n, c, i, j]
        mu = s / M
        ss = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    d = x[n, c, i, j] - mu
                    ss += d * d
        mean[c] = mu
        invstd[c] = 1.0 / np.sqrt(ss / M + eps)


def _check(kernel, x, dout=None, empty_ok=False, **per_channel):
    """``x`` (N, C, H, W) with N·H·W ≥ 1 (unless ``empty_ok``), ``dout`` of x's shape, each
    per-channel array (C,), all of one float dtype (``tinyseg.kernels._args``)."""
    array(kernel, "x", x, (None,) * 4)
    if x.shape[0] * x.shape[2] * x.shape[3] == 0 and not empty_ok:
        fail(kernel, f"no values to normalise in x {x.shape}")
    if dout is not None:
        array(kernel, "dout", dout, x.shape)
    for name, a in per_channel.items():
        array(kernel, name, a, (x.shape[1],))
    same_dtype(kernel, x=x, dout=dout, **per_channel)


def batchnorm2d_stats(x, eps):
    """``(mean, invstd)`` of each channel: μ = Σx/M, invstd = (Σ(x − μ)²/M + ε)^−½."""
    _check("batchnorm2d_stats", x)
    eps = number("batchnorm2d_stats", "eps", eps, positive=True)   # as BatchNorm2d asks
    xc, C = _channels_of(x)
    mean = np.empty(C, dtype=x.dtype)
    invstd = np.empty(C, dtype=x.dtype)
    _in_parallel(lambda c0, c1: _batchnorm2d_stats(xc, c0, c1, eps, mean, invstd), C)
    return mean, invstd


@njit(cache=True, parallel=True)  # no sums in the loop: vectorised without FASTMATH, exact
def _batchnorm2d_normalise(x, c_, mean, invstd, weight, bias):
    n_, h_, w_ = x.shape[0], x.shape[2], x.shape[3]
    y = np.empty((n_, c_, h_, w_), dtype=x.dtype)
    for c in prange(c_):
        # normalise with the statistics as stored (rounded to x's dtype), like the reference
        mu = np.float64(mean[c])
        r = np.float64(invstd[c])
        g = np.float64(weight[c])
        b = np.float64(bias[c])
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    y[n, c, i, j] = ((x[n, c, i, j] - mu) * r) * g + b
    return y


def batchnorm2d_forward(x, weight, bias, eps):
    """Training-mode batch norm: ``(y, mean, invstd)``, y = γ · (x − μ) · invstd + β."""
    _check("batchnorm2d_forward", x, weight=weight, bias=bias)
    number("batchnorm2d_forward", "eps", eps, positive=True)
    xc, C = _channels_of(x)
    mean, invstd = batchnorm2d_stats(xc[:, :C], eps)
    return _batchnorm2d_normalise(xc, C, mean, invstd, weight, bias), mean, invstd


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _batchnorm2d_backward(dout, x, c0, c1, mean, invstd, weight, dx, dweight, dbias):
    n_, h_, w_ = x.shape[0], x.shape[2], x.shape[3]
    M = n_ * h_ * w_                    # values per channel
    for c in range(c0, c1):
        mu = np.float64(mean[c])
        r = np.float64(invstd[c])
        sum_dy = 0.0
        sum_dy_xhat = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    dy = np.float64(dout[n, c, i, j])
                    sum_dy += dy
                    sum_dy_xhat += dy * ((x[n, c, i, j] - mu) * r)
        dweight[c] = sum_dy_xhat
        dbias[c] = sum_dy
        k = np.float64(weight[c]) * r / M
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    xhat = (x[n, c, i, j] - mu) * r
                    dx[n, c, i, j] = k * (M * np.float64(dout[n, c, i, j]) - sum_dy
                                          - xhat * sum_dy_xhat)


def batchnorm2d_backward(dout, x, mean, invstd, weight):
    """Training-mode batch-norm backward: ``(dx, dweight, dbias)``."""
    _check("batchnorm2d_backward", x, dout, mean=mean, invstd=invstd, weight=weight)
    xc, C = _channels_of(x)
    dc, _ = _channels_of(dout)
    dx, dweight, dbias = _backward_outputs(x, C)
    _in_parallel(lambda c0, c1: _batchnorm2d_backward(dc, xc, c0, c1, mean, invstd, weight,
                                                      dx, dweight, dbias), C)
    return dx, dweight, dbias


# -- fused BatchNorm + ReLU (the dense layers) ------------------------------------------------

@njit(cache=True, parallel=True)  # no sums here: vectorised without FASTMATH, exact
def _batchnorm_relu_forward(x, c_, mean, invstd, weight, bias):
    n_, h_, w_ = x.shape[0], x.shape[2], x.shape[3]
    y = np.empty((n_, c_, h_, w_), dtype=x.dtype)
    for c in prange(c_):
        mu = np.float64(mean[c])
        r = np.float64(invstd[c])
        g = np.float64(weight[c])
        b = np.float64(bias[c])
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    z = ((x[n, c, i, j] - mu) * r) * g + b
                    y[n, c, i, j] = 0.0 if z <= 0.0 else z  # NaN propagates
    return y


def batchnorm_relu_forward(x, mean, invstd, weight, bias):
    """Fused ``y = max(γ · (x − μ) · invstd + β, 0)`` with given statistics."""
    _check("batchnorm_relu_forward", x, empty_ok=True, mean=mean, invstd=invstd,
           weight=weight, bias=bias)
    xc, C = _channels_of(x)
    return _batchnorm_relu_forward(xc, C, mean, invstd, weight, bias)


@njit(cache=True, nogil=True, fastmath=FASTMATH)
def _batchnorm_relu_backward(dout, x, c0, c1, mean, invstd, weight, bias, dx, dweight, dbias):
    n_, h_, w_ = x.shape[0], x.shape[2], x.shape[3]
    M = n_ * h_ * w_                    # values per channel
    for c in range(c0, c1):
        mu = np.float64(mean[c])
        r = np.float64(invstd[c])
        g = np.float64(weight[c])
        b = np.float64(bias[c])
        sum_dz = 0.0
        sum_dz_xhat = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    xhat = (x[n, c, i, j] - mu) * r
                    dz = np.float64(dout[n, c, i, j]) if xhat * g + b > 0.0 else 0.0
                    sum_dz += dz
                    sum_dz_xhat += dz * xhat
        dweight[c] = sum_dz_xhat
        dbias[c] = sum_dz
        k = g * r / M
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    xhat = (x[n, c, i, j] - mu) * r
                    dz = np.float64(dout[n, c, i, j]) if xhat * g + b > 0.0 else 0.0
                    dx[n, c, i, j] = k * (M * dz - sum_dz - xhat * sum_dz_xhat)


def batchnorm_relu_backward(dout, x, mean, invstd, weight, bias):
    """Fused BN + ReLU backward (training mode), ReLU mask recomputed from ``x``."""
    _check("batchnorm_relu_backward", x, dout, mean=mean, invstd=invstd, weight=weight,
           bias=bias)
    xc, C = _channels_of(x)
    dc, _ = _channels_of(dout)
    dx, dweight, dbias = _backward_outputs(x, C)
    _in_parallel(lambda c0, c1: _batchnorm_relu_backward(dc, xc, c0, c1, mean, invstd, weight,
                                                         bias, dx, dweight, dbias), C)
    return dx, dweight, dbias
