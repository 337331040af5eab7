"""Loss functions: softmax cross-entropy for per-pixel classification.

For logits ``x`` (N, K, H, W) and targets ``t`` (N, H, W), in the symbols of lesson 5 and
``tinyseg.reference.loss`` (the readable twin of the kernel ``tinyseg.kernels.loss``)::

    softmax          p_{i,k} = exp(x_{i,k} − m_i) / Σ_j exp(x_{i,j} − m_i),  m_i = max_j x_{i,j}
    pixel loss       ℓ_i = −log p_{i,t_i}
    pixel weight     w_i = weight[t_i], or 0 when t_i == ignore_index
    mean loss        L = Σ_i w_i ℓ_i / w_sum,        w_sum = Σ_i w_i  (= M without weights)
    gradient         ∂L/∂x_{i,k} = (w_i / w_sum) · (p_{i,k} − [k == t_i])

This is exactly ``torch.nn.functional.cross_entropy(x, t, weight, ignore_index=...,
reduction='mean')``: with class weights the mean divides by the *sum of the weights* of the
non-ignored pixels, not by their number.  One difference, on purpose: when that sum is 0
(every pixel ignored) PyTorch returns ``nan``; tinyseg returns loss 0.0 and a zero gradient.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .kernels.loss import softmax_cross_entropy as _sce_kernel
from .layers.base import check_input

__all__ = ["softmax_cross_entropy"]

_NAME = "softmax_cross_entropy"


def softmax_cross_entropy(logits: np.ndarray, target: np.ndarray,
                          weight: Optional[Union[np.ndarray, Sequence[float]]] = None,
                          ignore_index: Optional[int] = None) -> Tuple[float, np.ndarray]:
    """Mean softmax cross-entropy over the class axis, and its gradient.

    Parameters
    ----------
    logits : (N, K, H, W) float32 or float64 class scores (before softmax).
    target : (N, H, W) integer array, values in [0, K) (or ``ignore_index``).
    weight : optional (K,) non-negative class weights (PyTorch's ``weight``).
    ignore_index : optional int; pixels with this target get no loss and zero gradient.
        ``None`` (default) ignores nothing (PyTorch's default is -100, which no valid
        target equals, so the results are the same).

    Returns
    -------
    (loss, dlogits) : ``loss`` a Python float; ``dlogits`` = ∂loss/∂logits, same shape and
    dtype as ``logits``.  Pass ``dlogits`` straight to the network's ``backward``.
    """
    check_input(_NAME, logits, ndim=4)
    N, K, H, W = logits.shape
    if not isinstance(target, np.ndarray):
        raise ValueError(f"{_NAME}: target must be a numpy.ndarray, got {type(target).__name__}")
    if not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"{_NAME}: target must be an integer array, got dtype {target.dtype} "
                         f"(shape {target.shape})")
    if target.shape != (N, H, W):
        raise ValueError(f"{_NAME}: target must have shape (N, H, W) = {(N, H, W)} to match "
                         f"logits of shape {logits.shape}, got {target.shape}")
    if K < 1:
        raise ValueError(f"{_NAME}: logits of shape {logits.shape} have no classes (K = 0)")

    if ignore_index is None:
        ignore = -1          # never equal to a target that passes the check below (>= 0)
    else:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise ValueError(f"{_NAME}: ignore_index must be an int or None, "
                             f"got {ignore_index!r}")
        ignore = int(ignore_index)
        if not -2**63 <= ignore < 2**63:
            raise ValueError(f"{_NAME}: ignore_index must fit in 64 bits, got {ignore_index}")

    if target.dtype == np.uint64 and target.size and target.max() > np.iinfo(np.int64).max:
        raise ValueError(f"{_NAME}: target values must be in [0, {K}); found {target.max()}")
    t = target.astype(np.int64, copy=False)
    if t.size:
        bad = (t < 0) | (t >= K)
        if ignore_index is not None:
            bad &= t != ignore
        if bad.any():
            first = t[bad].flat[0]
            raise ValueError(f"{_NAME}: target values must be in [0, {K}) for logits of shape "
                             f"{logits.shape}"
                             + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
                             + f"; found {first} (target min {t.min()}, max {t.max()})")

    if weight is None:
        w = np.ones(K, dtype=np.float64)
    else:
        try:
            w = np.asarray(weight)
            if w.dtype.kind not in "biuf":
                raise TypeError
            w = w.astype(np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{_NAME}: weight must hold real numbers, got {weight!r}") from None
        if w.shape != (K,):
            raise ValueError(f"{_NAME}: weight must have shape ({K},) for logits of shape "
                             f"{logits.shape}, got {w.shape}")
        if not np.all(np.isfinite(w)) or np.any(w < 0):
            raise ValueError(f"{_NAME}: weight must be finite and non-negative, got {w}")

    loss, dlogits = _sce_kernel(np.ascontiguousarray(logits), np.ascontiguousarray(t), w, ignore)
    return float(loss), dlogits
