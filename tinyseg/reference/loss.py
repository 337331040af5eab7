"""Softmax cross-entropy over the class axis, written to be read.

Symbols, for logits ``x`` of shape (N, K, H, W) and integer targets ``t`` of shape (N, H, W):
one pixel ``i = (n, h, w)`` has K scores ``x_{i,k}`` and a class ``t_i``.

    softmax          p_{i,k} = exp(x_{i,k} − m_i) / s_i,  m_i = max_j x_{i,j},
                     s_i = Σ_j exp(x_{i,j} − m_i)
    pixel loss       ℓ_i = −log p_{i,t_i} = log s_i + m_i − x_{i,t_i}
    pixel weight     w_i = weight[t_i], or 0 when t_i == ignore_index
    mean loss        L = Σ_i w_i ℓ_i / w_sum,        w_sum = Σ_i w_i  (= M without weights)
    gradient         ∂L/∂x_{i,k} = (w_i / w_sum) · (p_{i,k} − [k == t_i])

Subtracting the maximum ``m_i`` changes nothing mathematically (it cancels) but keeps every
``exp`` in [0, 1], so logits of ±1e4 neither overflow nor lose the answer.

When ``w_sum == 0`` (every pixel ignored, or only zero-weight classes present) PyTorch returns
``nan``; tinyseg returns a loss of 0.0 and a zero gradient, so one empty batch cannot poison a
training run with nan weights.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def softmax_cross_entropy(logits: np.ndarray, target: np.ndarray, weight: np.ndarray,
                          ignore_index: int) -> Tuple[float, np.ndarray]:
    """Mean weighted cross-entropy and its gradient.

    Parameters
    ----------
    logits : (N, K, H, W) float32 or float64.
    target : (N, H, W) int64; every entry is in [0, K) or equals ``ignore_index``.
    weight : (K,) float64 class weights (all ones for the unweighted loss).
    ignore_index : int; pixels whose target equals it count for nothing.

    Returns
    -------
    (loss, dlogits) : ``loss`` a Python float (L above), ``dlogits`` = ∂L/∂x, same shape and
    dtype as ``logits``.
    """
    x = logits
    N, K, H, W = x.shape

    # Softmax over the class axis, stabilised by the per-pixel maximum.
    m = x.max(axis=1, keepdims=True)                 # (N, 1, H, W)
    e = np.exp(x - m)                                # (N, K, H, W), every entry in [0, 1]
    s = e.sum(axis=1, keepdims=True)                 # (N, 1, H, W), >= 1
    p = e / s

    # Per-pixel weight w_i; ignored pixels weigh 0 (their class index is replaced by 0 only
    # so that it can be used as an index).
    valid = target != ignore_index
    t = np.where(valid, target, 0)
    w = np.where(valid, weight[t], 0.0)              # (N, H, W) float64
    w_sum = w.sum()

    dlogits = np.zeros_like(x)
    if w_sum == 0:
        return 0.0, dlogits

    # ℓ_i = log s_i + m_i − x_{i, t_i}
    x_t = np.take_along_axis(x, t[:, None], axis=1)[:, 0]
    nll = np.log(s[:, 0]) + m[:, 0] - x_t            # (N, H, W)
    # an ignored pixel is left out, not weighted by 0: its logits may be anything (0 · NaN
    # is NaN), as in the kernel and in PyTorch
    loss = float(np.sum(np.where(valid, w * nll, 0.0)) / w_sum)

    # (w_i / w_sum) (p_{i,k} − [k == t_i]), 0 at ignored pixels
    onehot = np.arange(K)[None, :, None, None] == t[:, None]
    dlogits[...] = np.where(valid[:, None], (w / w_sum)[:, None] * (p - onehot), 0.0)
    return loss, dlogits
