"""The RMSprop update, written to be read.

For a parameter θ with gradient ∂L/∂θ, running average of squared gradients v (``square_avg``,
starting at 0), learning rate η, smoothing α, ε and weight decay λ, one step is

    g = ∂L/∂θ + λ·θ                    (L2 weight decay folded into the gradient)
    v ← α·v + (1 − α)·g²
    θ ← θ − η · g / (√v + ε)

elementwise.  This is exactly ``torch.optim.RMSprop`` with ``centered=False, momentum=0``
(note that ε is added *after* the square root, as PyTorch does).
"""
from __future__ import annotations

import numpy as np


def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray, lr: float,
                 alpha: float, eps: float, weight_decay: float) -> None:
    """One RMSprop step, in place on ``param`` and ``square_avg``; returns None.

    ``param``, ``grad`` and ``square_avg`` have the same shape and dtype (float32 or
    float64); ``grad`` is not modified.
    """
    g = grad + weight_decay * param if weight_decay != 0 else grad
    square_avg *= alpha
    square_avg += (1 - alpha) * g * g
    param -= lr * (g / (np.sqrt(square_avg) + eps))
