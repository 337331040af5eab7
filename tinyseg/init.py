"""Weight initialisation: He uniform.

He et al. (2015, "Delving deep into rectifiers") choose the scale of random weights so that
the variance of the activations stays the same from layer to layer in a ReLU network.  For a
layer computing ``y = Σ_j w_j x_j`` over ``fan_in`` inputs, with ReLU before it, that
needs

    Var(w) = 2 / fan_in.

The uniform distribution U(−b, b) has variance b² / 3, so

    b = sqrt(6 / fan_in),        w ~ U(−b, b).

This is Keras' ``he_uniform`` and Lasagne's ``HeUniform(gain='relu')``, the initialiser the
Tiramisu paper (Jégou et al. 2017) uses.  It is also ``torch.nn.init.kaiming_uniform_(w,
a=0, nonlinearity='relu')``.  (PyTorch's *default* layer initialisation is different:
``kaiming_uniform_(a=sqrt(5))``, i.e. b = sqrt(1 / fan_in).)
"""
from __future__ import annotations

import math
from typing import Sequence, Union

import numpy as np

__all__ = ["he_uniform"]


def he_uniform(shape: Union[int, Sequence[int]], fan_in: int, rng: np.random.Generator,
               dtype=np.float32) -> np.ndarray:
    """Draw an array of ``shape`` from U(−b, b), b = sqrt(6 / fan_in).

    ``fan_in`` is the number of inputs that one output value sums over:

    * ``Conv2d`` weight, shape ``(out, in, kh, kw)`` (OIHW): ``fan_in = in · kh · kw``.
    * ``ConvTranspose2d`` weight, shape ``(in, out, kh, kw)``: we use
      ``fan_in = weight.shape[1] · kh · kw = out · kh · kw``, the number PyTorch computes
      (``torch.nn.init._calculate_fan_in_and_fan_out`` always reads ``weight.shape[1]``),
      and also what Keras and Lasagne compute for their transposed convolutions.  It is
      not the "true" fan-in of a transposed convolution (each output pixel sums over about
      ``in · kh · kw / stride²`` terms), but it is what every reference implementation of
      the Tiramisu used, so our networks start from the same distribution as theirs and
      a ``kaiming_uniform_`` on the PyTorch twin gives the same bound.

    Parameters
    ----------
    shape : the shape of the array to draw.
    fan_in : a positive integer, see above.
    rng : a ``numpy.random.Generator`` (``np.random.default_rng(seed)``); the only source
        of randomness, so the same seed gives the same weights.
    dtype : ``np.float32`` (default, training) or ``np.float64`` (gradient checks).

    Returns
    -------
    ndarray of ``shape`` and ``dtype`` with every entry in [−b, b].
    """
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"he_uniform: rng must be a numpy.random.Generator "
                         f"(np.random.default_rng(seed)), got {type(rng).__name__}")
    if isinstance(fan_in, bool) or not isinstance(fan_in, (int, np.integer)) or fan_in <= 0:
        raise ValueError(f"he_uniform: fan_in must be a positive integer, got {fan_in!r}")
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise ValueError(f"he_uniform: dtype must be float32 or float64, got {dtype}")
    bound = math.sqrt(6.0 / int(fan_in))
    w = rng.uniform(-bound, bound, size=shape).astype(dtype, copy=False)
    # Rounding float64 -> float32 can land one ulp outside ±bound; clip keeps the promise.
    return np.clip(w, dtype.type(-bound), dtype.type(bound), out=w)
