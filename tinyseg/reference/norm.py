"""Batch normalisation (training mode) and the fused BatchNorm + ReLU, in plain NumPy.

Shapes: ``x``, ``y``, ``dout``, ``dx`` are ``(N, C, H, W)``; ``weight`` (γ), ``bias`` (β),
``mean`` (μ), ``invstd`` and the parameter gradients are ``(C,)``.  Every statistic is
taken per channel ``c`` over the ``M = N·H·W`` values ``x[:, c, :, :]``.

Forward (training mode, batch statistics)::

    μ      = (1/M) Σ x
    σ²     = (1/M) Σ (x − μ)²              biased variance, used for normalising
    invstd = (σ² + ε)^−½
    x̂      = (x − μ) · invstd
    y      = γ · x̂ + β

Backward, with ``dy = ∂L/∂y`` and sums over the same ``M`` values::

    ∂L/∂β = Σ dy
    ∂L/∂γ = Σ dy · x̂
    ∂L/∂x = γ · invstd / M · (M · dy − Σ dy − x̂ · Σ (dy · x̂))

(the last line is the chain rule through x̂ *and* through μ and σ², which also depend on x).

Fused BatchNorm + ReLU (the first half of a Tiramisu dense layer, BN → ReLU → conv)::

    z = γ · x̂ + β,   y = max(z, 0)

Its backward first masks the incoming gradient, ``dz = dy · [z > 0]``, then applies the
BatchNorm backward above to ``dz``.  The mask is *recomputed* from ``x``, μ, invstd, γ, β
rather than stored, so a memory-efficient dense block can drop ``y`` after the forward pass.

Numerics (shared with ``tinyseg.kernels.norm``, which must agree with this file):

* everything is computed in float64, also for float32 inputs, and rounded to the input
  dtype only when stored;
* ``mean`` and ``invstd`` are returned in the input dtype, and ``y`` is computed from those
  *rounded* values, so ``batchnorm_relu_forward(x, mean, invstd, γ, β)`` reproduces
  ``relu(batchnorm2d_forward(x, γ, β, ε)[0])`` bit for bit;
* x̂ is always evaluated as ``(x − μ) · invstd`` and z as ``x̂ · γ + β``, in that order, so
  forward and backward see exactly the same ReLU mask.
"""
from __future__ import annotations

import numpy as np


def _per_channel(v: np.ndarray) -> np.ndarray:
    """A ``(C,)`` vector as float64, shaped ``(1, C, 1, 1)`` to broadcast against NCHW."""
    return np.asarray(v, dtype=np.float64).reshape(1, -1, 1, 1)


def batchnorm2d_stats(x: np.ndarray, eps: float):
    """Batch statistics ``(mean, invstd)``, each ``(C,)`` in ``x``'s dtype.

    μ = (1/M) Σ x,  σ² = (1/M) Σ (x − μ)²,  invstd = (σ² + ε)^−½, over ``M = N·H·W`` values
    per channel.  Two passes (mean first, then squared deviations), in float64.
    """
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    var = ((x64 - mean.reshape(1, -1, 1, 1)) ** 2).mean(axis=(0, 2, 3))
    invstd = 1.0 / np.sqrt(var + eps)
    return mean.astype(x.dtype), invstd.astype(x.dtype)


def _xhat(x: np.ndarray, mean: np.ndarray, invstd: np.ndarray) -> np.ndarray:
    """x̂ = (x − μ) · invstd, in float64."""
    return (x.astype(np.float64) - _per_channel(mean)) * _per_channel(invstd)


def batchnorm2d_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float):
    """Training-mode batch norm: returns ``(y, mean, invstd)``.

    ``y = γ · (x − μ) · invstd + β`` with μ, invstd the batch statistics of ``x`` (see
    :func:`batchnorm2d_stats`).  ``y`` has ``x``'s shape and dtype; ``mean`` and ``invstd``
    are ``(C,)`` in ``x``'s dtype and are what :func:`batchnorm2d_backward` needs.
    """
    mean, invstd = batchnorm2d_stats(x, eps)
    z = _xhat(x, mean, invstd) * _per_channel(weight) + _per_channel(bias)
    return z.astype(x.dtype), mean, invstd


def batchnorm2d_backward(dout: np.ndarray, x: np.ndarray, mean: np.ndarray,
                         invstd: np.ndarray, weight: np.ndarray):
    """Training-mode batch-norm backward: returns ``(dx, dweight, dbias)``.

    With ``dy = dout``, x̂ = (x − μ)·invstd and sums over ``N, H, W``::

        dbias   = Σ dy
        dweight = Σ dy · x̂
        dx      = γ · invstd / M · (M · dy − Σ dy − x̂ · Σ (dy · x̂))

    ``dx`` has ``x``'s shape, everything is in ``x``'s dtype.
    """
    return _bn_backward(dout.astype(np.float64), x, mean, invstd, weight)


def _bn_backward(dy: np.ndarray, x, mean, invstd, weight):
    n, _, h, w = x.shape
    M = n * h * w                                  # values per channel
    xhat = _xhat(x, mean, invstd)
    sum_dy = dy.sum(axis=(0, 2, 3))
    sum_dy_xhat = (dy * xhat).sum(axis=(0, 2, 3))
    scale = _per_channel(weight) * _per_channel(invstd) / M
    dx = scale * (M * dy - _per_channel(sum_dy) - xhat * _per_channel(sum_dy_xhat))
    return dx.astype(x.dtype), sum_dy_xhat.astype(x.dtype), sum_dy.astype(x.dtype)


def batchnorm_relu_forward(x: np.ndarray, mean: np.ndarray, invstd: np.ndarray,
                           weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Fused ``y = max(γ · (x − μ) · invstd + β, 0)`` with *given* statistics.

    In training mode ``mean, invstd`` come from :func:`batchnorm2d_stats` (or
    :func:`batchnorm2d_forward`); in eval mode pass the running mean and
    ``(running_var + ε)^−½``.  Returns ``y`` with ``x``'s shape and dtype.
    """
    z = _xhat(x, mean, invstd) * _per_channel(weight) + _per_channel(bias)
    # written as "0 where z <= 0, else z" so that NaN propagates, as in torch.relu
    return np.where(z <= 0.0, 0.0, z).astype(x.dtype)


def batchnorm_relu_backward(dout: np.ndarray, x: np.ndarray, mean: np.ndarray,
                            invstd: np.ndarray, weight: np.ndarray, bias: np.ndarray):
    """Backward of the fused BN + ReLU in training mode: returns ``(dx, dweight, dbias)``.

    The ReLU mask is recomputed from ``x``: ``z = γ · x̂ + β``, ``dz = dout · [z > 0]``, and
    then the batch-norm backward (see :func:`batchnorm2d_backward`) is applied to ``dz``.
    It assumes ``mean, invstd`` are the batch statistics of ``x`` (training mode); in eval
    mode the map is affine and ``dx = dz · γ · invstd`` instead.
    """
    z = _xhat(x, mean, invstd) * _per_channel(weight) + _per_channel(bias)
    dz = np.where(z > 0.0, dout.astype(np.float64), 0.0)
    return _bn_backward(dz, x, mean, invstd, weight)
