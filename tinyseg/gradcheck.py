"""Gradient checking by central finite differences.

For a layer ``y = f(x; θ)`` and any fixed array ``g`` of the output's shape, the scalar

    L(x, θ) = Σ f(x; θ) · g

has ``∂L/∂x = backward(g)`` and ``∂L/∂θ = grads[θ]``.  Each entry of those gradients is
compared with the central difference

    (L(x + ε e_i) − L(x − ε e_i)) / (2ε)

whose error is O(ε²).  In float64 with ε = 1e-6 the two agree to about 1e-8 relative
error for smooth layers; kinks (ReLU at 0, max-pool ties) can disagree when ``x ± ε``
crosses them, so tests draw inputs away from those.

The relative error reported for an array is ``max|a − n| / max(max|a|, max|n|)`` (0.0 when
both are zero) taken over the checked entries (one number per array, the worst case).

Two cases where that number says nothing: an array whose true gradient is zero (a bias
followed by batch norm in training mode, which subtracts it again) gives analytic values
near 1e-16 and numeric ones near 1e-10 for a single layer (about 1e-8 through a whole
Tiramisu, whose larger loss has larger rounding steps), both rounding noise, and a relative
error near 1; look at their absolute size instead.  And in float32 the central difference itself is
noise at ε = 1e-6 (errors of 0.1 are common): check in float64.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from .layers.base import Layer


def relative_error(analytic: np.ndarray, numeric: np.ndarray) -> float:
    """``max|a − n| / max(max|a|, max|n|)``; 0.0 when both are exactly zero."""
    a = np.asarray(analytic, dtype=np.float64)
    n = np.asarray(numeric, dtype=np.float64)
    if a.shape != n.shape:
        raise ValueError(f"relative_error: the two gradients have different shapes, {a.shape} "
                         f"and {n.shape}")
    scale = max(np.max(np.abs(a), initial=0.0), np.max(np.abs(n), initial=0.0))
    if scale == 0.0:
        return 0.0
    return float(np.max(np.abs(a - n)) / scale)


def numerical_gradient(f: Callable[[], float], x: np.ndarray, eps: float = 1e-6,
                       indices: Optional[np.ndarray] = None) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to the array ``x``, in place.

    ``x`` is perturbed in place and restored.  ``indices`` (flat indices) limits the
    entries computed; the others are left at 0.
    """
    if not eps > 0:
        raise ValueError(f"numerical_gradient: eps must be positive, got {eps!r}")
    grad = np.zeros_like(x, dtype=np.float64)
    flat_x = x.reshape(-1)  # a view: x must be contiguous
    if not np.shares_memory(flat_x, x):
        raise ValueError("numerical_gradient needs a contiguous array")
    flat_g = grad.reshape(-1)
    for i in (range(x.size) if indices is None else indices):
        old = flat_x[i]
        flat_x[i] = old + eps
        plus = f()
        flat_x[i] = old - eps
        minus = f()
        flat_x[i] = old
        flat_g[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(layer: Layer, x: np.ndarray, dout: Optional[np.ndarray] = None,
              eps: float = 1e-6, max_entries: Optional[int] = None,
              rng: Optional[np.random.Generator] = None) -> Dict[str, float]:
    """Compare a layer's ``backward`` with finite differences; return relative errors.

    Returns ``{"input": err, "<param name>": err, ...}`` (dotted names for composite
    layers).  ``x`` and every parameter should be float64.  ``max_entries`` checks only
    that many randomly chosen entries of each array (drawn from ``rng``), which keeps
    big layers cheap.  The layer must be deterministic from call to call (dropout off or
    with a fixed mask).
    """
    if max_entries is not None and (int(max_entries) != max_entries or max_entries < 1):
        raise ValueError(f"gradcheck: max_entries must be a positive integer or None (every "
                         f"entry), got {max_entries!r}")
    if not eps > 0:
        raise ValueError(f"gradcheck: eps must be positive, got {eps!r}")
    rng = rng if rng is not None else np.random.default_rng(0)
    x = np.ascontiguousarray(x)
    y = layer.forward(x)
    if dout is None:
        dout = rng.standard_normal(y.shape)
    dout = np.asarray(dout, dtype=y.dtype)

    layer.zero_grad()
    dx = layer.backward(dout)
    analytic = {"input": dx}
    for name, _, g in layer.named_parameters():
        analytic[name] = g.copy()

    def loss() -> float:
        return float(np.sum(layer.forward(x) * dout))

    def pick(size: int) -> Optional[np.ndarray]:
        if max_entries is None or size <= max_entries:
            return None
        return rng.choice(size, size=max_entries, replace=False)

    errors: Dict[str, float] = {}
    targets = [("input", x)] + [(name, p) for name, p, _ in layer.named_parameters()]
    for name, arr in targets:
        idx = pick(arr.size)
        num = numerical_gradient(loss, arr, eps=eps, indices=idx)
        ana = np.asarray(analytic[name], dtype=np.float64)
        if idx is not None:
            errors[name] = relative_error(ana.reshape(-1)[idx], num.reshape(-1)[idx])
        else:
            errors[name] = relative_error(ana, num)
    return errors
