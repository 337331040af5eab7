"""Softmax cross-entropy kernel (numba).  Equations and argument contract: tinyseg.reference.loss."""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._args import array, fail


def softmax_cross_entropy(logits, target, weight, ignore_index):
    """Mean weighted cross-entropy of (N, K, H, W) logits and its gradient, in one sweep.

    See ``tinyseg.reference.loss.softmax_cross_entropy`` (the arguments' contract); checked
    here (``tinyseg.kernels._args``), since the kernel indexes ``weight`` and the logits
    with the labels.
    """
    kernel = "softmax_cross_entropy"
    array(kernel, "logits", logits, (None,) * 4)
    N, K, H, W = logits.shape
    array(kernel, "target", target, (N, H, W), dtype=np.int64)
    array(kernel, "weight", weight, (K,), dtype=np.float64)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)) \
            or not -2**63 <= ignore_index < 2**63:
        fail(kernel, f"ignore_index must be a 64-bit integer, got {ignore_index!r}")
    ignore = int(ignore_index)
    if ignore != ignore_index:
        fail(kernel, f"ignore_index must be a 64-bit integer, got {ignore_index!r}")
    if target.size and not (0 <= target.min() and target.max() < K):
        bad = ((target < 0) | (target >= K)) & (target != ignore)
        if bad.any():
            fail(kernel, f"target values must be in [0, {K}) or equal ignore_index="
                         f"{ignore}; found {target[bad].flat[0]}")
    return _softmax_cross_entropy(logits, target, weight, ignore)


@njit(cache=True, parallel=True)
def _softmax_cross_entropy(logits, target, weight, ignore_index):
    """The kernel: parallel over the N·H image rows; inside a row the loops run over classes
    then columns so memory is read contiguously."""
    N, K, H, W = logits.shape
    rows = N * H

    # Pass 1 (targets only, cheap): w_sum = Σ_i w_i.
    w_sum = 0.0
    for r in prange(rows):
        n = r // H
        h = r - n * H
        acc = 0.0
        for c in range(W):
            t = target[n, h, c]
            if t != ignore_index:
                acc += weight[t]
        w_sum += acc

    dlogits = np.zeros_like(logits)
    if w_sum == 0.0:
        return 0.0, dlogits

    # Pass 2: softmax, loss and gradient, row by row.
    loss = 0.0
    for r in prange(rows):
        n = r // H
        h = r - n * H
        m = np.empty(W, dtype=logits.dtype)
        s = np.zeros(W, dtype=logits.dtype)
        for c in range(W):
            m[c] = logits[n, 0, h, c]
        for k in range(1, K):
            for c in range(W):
                v = logits[n, k, h, c]
                if v > m[c]:
                    m[c] = v
        # e = exp(x − m), kept in dlogits until the sum s is known.
        for k in range(K):
            for c in range(W):
                e = np.exp(logits[n, k, h, c] - m[c])
                dlogits[n, k, h, c] = e
                s[c] += e
        row_loss = 0.0
        for c in range(W):
            t = target[n, h, c]
            if t == ignore_index:
                for k in range(K):
                    dlogits[n, k, h, c] = 0.0
            else:
                coef = weight[t] / w_sum
                for k in range(K):
                    p = dlogits[n, k, h, c] / s[c]
                    if k == t:
                        p -= 1.0
                    dlogits[n, k, h, c] = coef * p
                row_loss += weight[t] * (np.log(s[c]) + m[c] - logits[n, t, h, c])
        loss += row_loss
    return loss / w_sum, dlogits
