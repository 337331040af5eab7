"""Batch normalisation (training mode) and fused BatchNorm + ReLU: numba kernels.

Twins of ``tinyseg.reference.norm`` (same names, arguments, return values; the equations
are written out there).  Per channel ``c``, over the ``M = N·H·W`` values of ``x[:, c]``::

    x̂ = (x − μ) · (σ² + ε)^−½,          y = γ · x̂ + β
    dx = γ · invstd / M · (M · dy − Σ dy − x̂ · Σ (dy · x̂))

Each kernel runs one ``prange`` iteration per channel (channels are independent), and
accumulates its sums in float64 also for float32 inputs.  Outputs are in ``x``'s dtype.

Pass C-contiguous NCHW arrays with ``weight``, ``bias``, ``mean``, ``invstd``, ``dout`` of
``x``'s dtype (the layers make sure of that): other layouts or mixed dtypes still give
correct results, but each new combination compiles (and caches) one more specialisation,
about a second each.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(cache=True, parallel=True)
def batchnorm2d_stats(x, eps):
    """``(mean, invstd)`` of each channel: μ = Σx/M, invstd = (Σ(x − μ)²/M + ε)^−½."""
    n_, c_, h_, w_ = x.shape
    m = n_ * h_ * w_
    mean = np.empty(c_, dtype=x.dtype)
    invstd = np.empty(c_, dtype=x.dtype)
    for c in prange(c_):
        s = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    s += x[n, c, i, j]
        mu = s / m
        ss = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    d = x[n, c, i, j] - mu
                    ss += d * d
        mean[c] = mu
        invstd[c] = 1.0 / np.sqrt(ss / m + eps)
    return mean, invstd


@njit(cache=True, parallel=True)
def batchnorm2d_forward(x, weight, bias, eps):
    """Training-mode batch norm: ``(y, mean, invstd)``, y = γ · (x − μ) · invstd + β."""
    n_, c_, h_, w_ = x.shape
    m = n_ * h_ * w_
    y = np.empty_like(x)
    mean = np.empty(c_, dtype=x.dtype)
    invstd = np.empty(c_, dtype=x.dtype)
    for c in prange(c_):
        s = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    s += x[n, c, i, j]
        mu = s / m
        ss = 0.0
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    d = x[n, c, i, j] - mu
                    ss += d * d
        mean[c] = mu
        invstd[c] = 1.0 / np.sqrt(ss / m + eps)
        # normalise with the statistics as stored (rounded to x's dtype), like the reference
        mu_s = np.float64(mean[c])
        r = np.float64(invstd[c])
        g = np.float64(weight[c])
        b = np.float64(bias[c])
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    y[n, c, i, j] = ((x[n, c, i, j] - mu_s) * r) * g + b
    return y, mean, invstd


@njit(cache=True, parallel=True)
def batchnorm2d_backward(dout, x, mean, invstd, weight):
    """Training-mode batch-norm backward: ``(dx, dweight, dbias)``."""
    n_, c_, h_, w_ = x.shape
    m = n_ * h_ * w_
    dx = np.empty_like(x)
    dweight = np.empty(c_, dtype=x.dtype)
    dbias = np.empty(c_, dtype=x.dtype)
    for c in prange(c_):
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
        k = np.float64(weight[c]) * r / m
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    xhat = (x[n, c, i, j] - mu) * r
                    dx[n, c, i, j] = k * (m * np.float64(dout[n, c, i, j]) - sum_dy
                                          - xhat * sum_dy_xhat)
    return dx, dweight, dbias


@njit(cache=True, parallel=True)
def batchnorm_relu_forward(x, mean, invstd, weight, bias):
    """Fused ``y = max(γ · (x − μ) · invstd + β, 0)`` with given statistics."""
    n_, c_, h_, w_ = x.shape
    y = np.empty_like(x)
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


@njit(cache=True, parallel=True)
def batchnorm_relu_backward(dout, x, mean, invstd, weight, bias):
    """Fused BN + ReLU backward (training mode), ReLU mask recomputed from ``x``."""
    n_, c_, h_, w_ = x.shape
    m = n_ * h_ * w_
    dx = np.empty_like(x)
    dweight = np.empty(c_, dtype=x.dtype)
    dbias = np.empty(c_, dtype=x.dtype)
    for c in prange(c_):
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
                    if xhat * g + b > 0.0:
                        dz = np.float64(dout[n, c, i, j])
                        sum_dz += dz
                        sum_dz_xhat += dz * xhat
        dweight[c] = sum_dz_xhat
        dbias[c] = sum_dz
        k = g * r / m
        for n in range(n_):
            for i in range(h_):
                for j in range(w_):
                    xhat = (x[n, c, i, j] - mu) * r
                    dz = np.float64(dout[n, c, i, j]) if xhat * g + b > 0.0 else 0.0
                    dx[n, c, i, j] = k * (m * dz - sum_dz - xhat * sum_dz_xhat)
    return dx, dweight, dbias
