"""Batch normalisation over the channels of an NCHW tensor, like ``torch.nn.BatchNorm2d``.

Training mode (batch statistics over ``N, H, W``, ``M = N·H·W`` values per channel; the
symbols of lesson 4 and ``tinyseg.reference.norm``)::

    μ = (1/M) Σ x,   σ² = (1/M) Σ (x − μ)²                   (biased: used to normalise)
    invstd = (σ² + ε)^−½,   x̂ = (x − μ) · invstd,   y = γ · x̂ + β

    ∂L/∂β = Σ dy,   ∂L/∂γ = Σ dy · x̂
    ∂L/∂x = γ · invstd / M · (M · dy − Σ dy − x̂ · Σ (dy · x̂))

and the running statistics move towards the batch ones, with the *unbiased* variance::

    running_mean ← (1 − m) · running_mean + m · μ
    running_var  ← (1 − m) · running_var  + m · σ² · M / (M − 1)

where ``m`` is ``momentum`` (or ``1 / num_batches_tracked`` when ``momentum=None``: a
plain average over all batches seen, as in PyTorch).

Eval mode uses the running statistics instead: ``y = γ · (x − running_mean) ·
(running_var + ε)^−½ + β``, an affine map of ``x`` whose backward is
``dx = dy · γ · (running_var + ε)^−½``.

The training-mode kernels are in ``tinyseg.kernels.norm`` (equations and their backward
in ``tinyseg.reference.norm``).

:func:`recompute_running_stats` replaces the running statistics of every batch norm in a
network by plain averages over given batches (PyTorch's ``torch.optim.swa_utils.update_bn``).
With ``momentum = 0.1`` the running statistics remember mostly the last ten or twenty
training batches -- random, augmented ones -- so an evaluation right after training can
swing with whatever those batches happened to be; averaging over a fixed set of
un-augmented training images makes it depend on the weights alone.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np

from ..kernels.norm import batchnorm2d_backward, batchnorm2d_forward
from .activation import Dropout
from .base import Layer, check_input, positive_int


class BatchNorm2d(Layer):
    """``BatchNorm2d(num_features, eps=1e-5, momentum=0.1, dtype=np.float32)``.

    Input and output ``(N, C, H, W)`` with ``C = num_features``, of the layer's dtype.

    Parameters: ``weight`` γ (ones), ``bias`` β (zeros), both ``(C,)``.
    Buffers: ``running_mean`` (zeros), ``running_var`` (ones), both ``(C,)`` in ``dtype``, and
    ``num_batches_tracked`` (an int64 array of shape ``()``, counting training batches, as in
    PyTorch, so PyTorch state dicts load with ``strict=True``).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1,
                 dtype=np.float32) -> None:
        super().__init__()
        positive_int("BatchNorm2d", "num_features", num_features)   # not 2.0, None, NaN
        for name, v in (("eps", eps), ("momentum", momentum)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float,
                                                                             np.number))):
                raise ValueError(f"BatchNorm2d: {name} must be a number, got {v!r}")
        if not 0 < eps < float("inf"):
            raise ValueError(f"BatchNorm2d: eps must be a finite number > 0, got {eps!r}")
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"BatchNorm2d: momentum must be in [0, 1] or None, got {momentum!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"BatchNorm2d: dtype must be float32 or float64, got {dtype}")
        self.num_features = int(num_features)
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.dtype = dtype
        self.add_param("weight", np.ones(self.num_features, dtype=dtype))
        self.add_param("bias", np.zeros(self.num_features, dtype=dtype))
        self.buffers["running_mean"] = np.zeros(self.num_features, dtype=dtype)
        self.buffers["running_var"] = np.ones(self.num_features, dtype=dtype)
        self.buffers["num_batches_tracked"] = np.zeros((), dtype=np.int64)
        self._cache = None

    def _check(self, x: np.ndarray) -> None:
        check_input("BatchNorm2d", x, ndim=4, channels=self.num_features)
        if x.dtype != self.dtype:
            raise ValueError(f"BatchNorm2d: expected a {self.dtype} input (the layer's dtype), "
                             f"got dtype {x.dtype} (shape {x.shape})")

    def forward(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        x = np.ascontiguousarray(x)
        gamma, beta = self.params["weight"], self.params["bias"]      # γ, β
        if self.training:
            n, _, h, wd = x.shape
            M = n * h * wd                       # values per channel
            if M < 2:
                raise ValueError(f"BatchNorm2d: expected more than 1 value per channel when "
                                 f"training, got input shape {x.shape}")
            y, mean, invstd = batchnorm2d_forward(x, gamma, beta, self.eps)
            self._update_running(mean, invstd, M)
            self._cache = ("train", x, mean, invstd)
            return y
        # eval: the affine map with the running statistics (plain NumPy)
        mean = self.buffers["running_mean"].copy()
        invstd = (1.0 / np.sqrt(self.buffers["running_var"].astype(np.float64) + self.eps)
                  ).astype(self.dtype)
        self._cache = ("eval", x, mean, invstd)
        return (x - mean[:, None, None]) * invstd[:, None, None] * gamma[:, None, None] \
            + beta[:, None, None]

    def _update_running(self, mean: np.ndarray, invstd: np.ndarray, M: int) -> None:
        nbt = self.buffers["num_batches_tracked"]
        nbt += 1
        momentum = 1.0 / float(nbt) if self.momentum is None else self.momentum
        # the kernel returns invstd = (σ² + ε)^−½; recover the biased σ², then unbias it
        var = 1.0 / np.square(invstd.astype(np.float64)) - self.eps
        var_unbiased = var * (M / (M - 1))
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm[...] = (1.0 - momentum) * rm + momentum * mean.astype(np.float64)
        rv[...] = (1.0 - momentum) * rv + momentum * var_unbiased

    def backward(self, dout: np.ndarray) -> np.ndarray:
        if self._cache is None:
            raise ValueError("BatchNorm2d: backward called before forward")
        mode, x, mean, invstd = self._cache
        if not isinstance(dout, np.ndarray) or dout.shape != x.shape:
            raise ValueError(f"BatchNorm2d: expected dout of shape {x.shape}, got shape "
                             f"{getattr(dout, 'shape', type(dout).__name__)}")
        if dout.dtype.kind != "f":
            raise ValueError(f"BatchNorm2d: expected a float dout, got {dout.dtype}")
        dout = np.ascontiguousarray(dout, dtype=x.dtype)
        gamma = self.params["weight"]
        if mode == "train":
            dx, dgamma, dbeta = batchnorm2d_backward(dout, x, mean, invstd, gamma)
        else:
            xhat = (x - mean[:, None, None]) * invstd[:, None, None]
            dgamma = np.sum(dout * xhat, axis=(0, 2, 3), dtype=np.float64)
            dbeta = np.sum(dout, axis=(0, 2, 3), dtype=np.float64)
            dx = dout * (gamma * invstd)[:, None, None]
        self.grads["weight"] += dgamma
        self.grads["bias"] += dbeta
        return dx

    def __repr__(self) -> str:
        return (f"BatchNorm2d({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"dtype={self.dtype})")


def recompute_running_stats(model: Layer, batches: Iterable[np.ndarray]) -> int:
    """Set every ``BatchNorm2d`` in ``model`` to the plain average of its batch statistics
    over ``batches`` (inputs of ``model``); returns the number of batches used.

    Each batch norm starts from ``running_mean = 0``, ``running_var = 1``,
    ``num_batches_tracked = 0`` with ``momentum = None``, so after ``n`` batches
    ``running_mean = (1/n) Σ μ_B`` and ``running_var = (1/n) Σ σ²_B · M/(M − 1)``.  The batch
    norms, and every other layer but ``Dropout``, run in training mode (batch statistics;
    the Tiramisu's dense layers read their own flag), dropout in eval mode (no dropout, its
    random generators left untouched); nothing is learnt.  Momentum and
    train/eval modes are restored afterwards, also on error.  Raises ``ValueError`` if
    ``batches`` is empty (the running statistics are then left as they were).
    """
    norms = [layer for _, layer in model.named_layers() if isinstance(layer, BatchNorm2d)]
    modes = [(layer, layer.training) for _, layer in model.named_layers()]
    saved = [({k: v.copy() for k, v in bn.buffers.items()}, bn.momentum) for bn in norms]
    n = 0
    model.eval()
    try:
        for bn in norms:
            bn.buffers["running_mean"][...] = 0
            bn.buffers["running_var"][...] = 1
            bn.buffers["num_batches_tracked"][...] = 0
            bn.momentum = None
        # a batch norm updates its running statistics only in training mode; the Tiramisu's
        # dense layers also read their own flag, so they run in training mode too
        for _, layer in model.named_layers():
            if not isinstance(layer, Dropout):
                layer.training = True
        for x in batches:
            model.forward(x)
            n += 1
        if n == 0:
            raise ValueError("recompute_running_stats: no batches given")
    except BaseException:
        for bn, (buffers, _) in zip(norms, saved):
            for k, v in buffers.items():
                bn.buffers[k][...] = v
        raise
    finally:
        for bn, (_, momentum) in zip(norms, saved):
            bn.momentum = momentum
        for layer, mode in modes:
            layer.training = mode
    return n
