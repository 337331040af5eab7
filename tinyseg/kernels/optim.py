"""RMSprop update kernel (numba).  Equations: tinyseg.reference.optim.

Serial on purpose.  The optimiser calls it once per parameter array (106 arrays in
the ``small`` training preset's ``tiramisu_tiny``, most of them a few hundred values), and
each call does a few operations per value: a parallel loop costs more to start than it
saves.  With ``prange`` and sleeping OpenMP workers (``OMP_WAIT_POLICY=PASSIVE``, see
``tinyseg/__init__.py``) all 106 calls took 10 ms at two threads against 0.33 ms at one;
this serial kernel takes 0.25 ms (``python -m benchmarks``, rmsprop rows).

``error_model="numpy"``: a division by zero gives inf or NaN, as in NumPy and the reference,
instead of numba's default Python behaviour (a ZeroDivisionError), whose check on every
division kept LLVM from vectorising the loop: 5.6 ms against 1.4 ms for the 1.4 M values of
FC-DenseNet56 (the earlier ``prange`` version, 1.7 ms at one thread, had been vectorised).
"""
from __future__ import annotations

import numpy as np
from numba import njit

from ._args import FLOATS, fail, number


def rmsprop_step(param, grad, square_avg, lr, alpha, eps, weight_decay):
    """One RMSprop step in place on ``param`` and ``square_avg`` (see the reference twin).

    The three arrays must be 1-D, of one shape and one float dtype: callers pass
    ``a.reshape(-1)`` views of contiguous parameters (one compiled version per dtype, not
    per rank).  Checked here in a few comparisons (the optimiser calls this for every
    parameter array at every step).
    """
    if not (isinstance(param, np.ndarray) and isinstance(grad, np.ndarray)
            and isinstance(square_avg, np.ndarray) and param.ndim == 1
            and param.shape == grad.shape == square_avg.shape
            and param.dtype == grad.dtype == square_avg.dtype and param.dtype in FLOATS):
        fail("rmsprop_step", "param, grad and square_avg must be 1-D float32 or float64 "
             "arrays of one shape and dtype, got " +
             ", ".join(f"{getattr(a, 'shape', type(a).__name__)} {getattr(a, 'dtype', '')}"
                       for a in (param, grad, square_avg)))
    if not (param.flags.writeable and square_avg.flags.writeable):
        fail("rmsprop_step", "param and square_avg are updated in place: they must be "
                             "writeable")
    _rmsprop_step(param, grad, square_avg, *(number("rmsprop_step", name, v) for name, v in (
        ("lr", lr), ("alpha", alpha), ("eps", eps), ("weight_decay", weight_decay))))


@njit(cache=True, error_model="numpy")
def _rmsprop_step(param, grad, square_avg, lr, alpha, eps, weight_decay):
    for i in range(param.shape[0]):
        g = grad[i]
        if weight_decay != 0.0:
            g = g + weight_decay * param[i]
        square_avg[i] = alpha * square_avg[i] + (1.0 - alpha) * g * g
        v = square_avg[i]                 # the stored (dtype-rounded) value, as the reference
        param[i] = param[i] - lr * (g / (np.sqrt(v) + eps))
