"""Loss functions: softmax cross-entropy for per-pixel classification, and the Lovász-Softmax
loss, a surrogate of 1 − IoU.

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

Lovász-Softmax (Berman, Rannen Triki and Blaschko 2018) for one class c, with F = {i : t_i = c}
the class's pixels, p_i = softmax(x_i)_c and the pixel errors e_i = |[i ∈ F] − p_i|::

    Jaccard loss of a set M of wrong pixels   Δ(M) = 1 − |F ∖ M| / |F ∪ M|
    (with hard predictions M is the set of mistakes, and Δ(M) = 1 − IoU)
    sort the errors e_π1 ≥ e_π2 ≥ … ≥ e_πn, and let M_k = {π1 … πk}
    loss             L_c = Σ_k e_πk (Δ(M_k) − Δ(M_{k−1}))          (Δ(M_0) = 0)
    gradient         ∂L_c/∂e_πk = Δ(M_k) − Δ(M_{k−1})    (the sorted order held fixed)

L_c is the Lovász extension of Δ: piecewise linear in e, equal to Δ(M) when every error
is 0 or 1, and equal to ∫₀¹ Δ({i : e_i ≥ u}) du in general (and convex in e, because Δ
is submodular).  So its gradients lead towards a lower 1 − IoU itself, while the
cross-entropy scores each pixel on its own.  The loss averages L_c over the chosen classes, with all the batch's pixels
pooled, as the IoU metric pools them.
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple, Union

import numpy as np

from .kernels.loss import softmax_cross_entropy as _sce_kernel
from .layers.base import check_input

__all__ = ["softmax_cross_entropy", "lovasz_softmax"]

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
    _check_logits_and_target(_NAME, logits, target)
    K = logits.shape[1]

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
        if not np.any(w > 0):         # the weighted mean would be 0 / 0
            raise ValueError(f"{_NAME}: weight must not be all zero, got {w}")

    loss, dlogits = _sce_kernel(np.ascontiguousarray(logits), np.ascontiguousarray(t), w, ignore)
    return float(loss), dlogits


def _check_logits_and_target(name: str, logits: np.ndarray, target: np.ndarray) -> None:
    """Raise a ``ValueError`` naming ``name`` and the shapes unless the pair fits together."""
    check_input(name, logits, ndim=4)
    N, K, H, W = logits.shape
    if not isinstance(target, np.ndarray):
        raise ValueError(f"{name}: target must be a numpy.ndarray, got {type(target).__name__}")
    if not np.issubdtype(target.dtype, np.integer):
        raise ValueError(f"{name}: target must be an integer array, got dtype {target.dtype} "
                         f"(shape {target.shape})")
    if target.shape != (N, H, W):
        raise ValueError(f"{name}: target must have shape (N, H, W) = {(N, H, W)} to match "
                         f"logits of shape {logits.shape}, got {target.shape}")
    if K < 1:
        raise ValueError(f"{name}: logits of shape {logits.shape} have no classes (K = 0)")


def lovasz_softmax(logits: np.ndarray, target: np.ndarray,
                   classes: Optional[Sequence[int]] = None) -> Tuple[float, np.ndarray]:
    """The Lovász-Softmax loss (module docstring), and its gradient.

    Parameters
    ----------
    logits : (N, K, H, W) float32 or float64 class scores (before softmax).
    target : (N, H, W) integer array, values in [0, K).
    classes : the classes whose losses are averaged; ``None`` (default): all K.  The
        trainer passes ``[1]``: the person class, whose IoU is the metric.

    Returns
    -------
    (loss, dlogits) : as ``softmax_cross_entropy``; ``dlogits`` has the logits' dtype (the
    sums run in float64).
    """
    name = "lovasz_softmax"
    _check_logits_and_target(name, logits, target)
    N, K, H, W = logits.shape
    if target.size and (target.min() < 0 or target.max() >= K):
        raise ValueError(f"{name}: target values must be in [0, {K}) for logits of shape "
                         f"{logits.shape}; found min {target.min()}, max {target.max()}")
    if classes is not None and not isinstance(classes, (list, tuple, np.ndarray, range)):
        raise ValueError(f"{name}: classes must be a list of class numbers, e.g. [1], "
                         f"got {classes!r}")
    chosen = list(range(K)) if classes is None else list(classes)
    if not chosen or any(isinstance(c, bool) or not isinstance(c, (int, np.integer))
                         or not 0 <= c < K for c in chosen):
        raise ValueError(f"{name}: classes must be a non-empty list of class numbers in "
                         f"[0, {K}), got {classes!r}")
    x = logits.astype(np.float64)
    p = np.exp(x - x.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)                        # softmax over the classes
    dp = np.zeros_like(p)                                    # ∂loss/∂p
    loss = 0.0
    for c in chosen:
        fg = (target == c).ravel().astype(np.float64)        # [i ∈ F]
        e = np.abs(fg - p[:, c].ravel())                     # the errors e_i
        order = np.argsort(-e, kind="stable")                # e_π1 ≥ e_π2 ≥ …
        jump = lovasz_jumps(fg[order])                       # Δ(M_k) − Δ(M_{k−1})
        loss += float(e[order] @ jump)
        de = np.empty_like(e)
        de[order] = jump
        dp[:, c] += (de * np.sign(p[:, c].ravel() - fg)).reshape(N, H, W)   # ∂e/∂p = ±1
    loss /= len(chosen)
    dp /= len(chosen)
    dx = p * (dp - (p * dp).sum(axis=1, keepdims=True))     # through the softmax
    return loss, dx.astype(logits.dtype)


def lovasz_jumps(fg_sorted: np.ndarray) -> np.ndarray:
    """``Δ(M_k) − Δ(M_{k−1})`` for k = 1 … n, given ``[π_k ∈ F]`` in the sorted order."""
    n_fg = fg_sorted.sum()
    not_wrong_fg = n_fg - np.cumsum(fg_sorted)               # |F ∖ M_k|
    union = n_fg + np.cumsum(1.0 - fg_sorted)                # |F ∪ M_k|  (≥ 1 for k ≥ 1)
    delta = 1.0 - not_wrong_fg / union                       # Δ(M_k)
    return np.diff(delta, prepend=0.0)
