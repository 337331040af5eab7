"""Optimiser and learning-rate schedule used to train the Tiramisu: RMSprop + exponential decay.

``RMSprop`` keeps, for every parameter θ, a running average ``v`` of its squared gradient
and divides each step by its square root, so every weight moves at a similar pace whatever
the size of its gradients:

    g = ∂L/∂θ + λ·θ,      v ← α·v + (1 − α)·g²,      θ ← θ − η · g / (√v + ε)

(identical to ``torch.optim.RMSprop(params, lr=η, alpha=α, eps=ε, weight_decay=λ)``).
The update runs in the kernel ``tinyseg.kernels.optim.rmsprop_step``; its readable twin is
``tinyseg.reference.optim.rmsprop_step``.

``ExponentialLR`` multiplies the learning rate by γ once per epoch: after e epochs
η = η_0 · γ^e, so epoch e (counting from 1) trains at η_0 · γ^(e−1)
(identical to ``torch.optim.lr_scheduler.ExponentialLR``).  The Tiramisu paper trains with
RMSprop, η_0 = 1e-3, λ = 1e-4 and γ = 0.995.

Typical loop::

    opt = RMSprop(model.named_parameters(), lr=1e-3, weight_decay=1e-4)
    sched = ExponentialLR(opt, gamma=0.995)
    for epoch in range(epochs):
        for x, y in batches(...):
            opt.zero_grad()
            loss, dlogits = softmax_cross_entropy(model.forward(x), y)
            model.backward(dlogits)
            opt.step()
        sched.step()
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Tuple

import numpy as np

from .kernels.optim import rmsprop_step
from .layers.base import fitted

__all__ = ["RMSprop", "ExponentialLR"]

ParamTriple = Tuple[str, np.ndarray, np.ndarray]

_HYPER = ("lr", "alpha", "eps", "weight_decay")


def _is_number(value) -> bool:
    """A real number, or a 0-d array of one (what ``np.load`` gives back)."""
    a = np.asarray(value)
    return a.shape == () and a.dtype.kind in "biuf"


def _count(owner: str, name: str, value) -> int:
    """A saved counter (``steps``, ``last_epoch``) as an int: a whole number >= 0, not a
    float that ``int`` would cut, nor inf."""
    v = float(np.asarray(value))
    if not (math.isfinite(v) and v >= 0 and v == math.floor(v)):
        raise ValueError(f"{owner}: '{name}' must be a whole number >= 0, got {value!r}")
    return int(v)


def _check_hyper(owner: str, lr, alpha, eps, weight_decay) -> Tuple[float, float, float, float]:
    vals = {"lr": lr, "alpha": alpha, "eps": eps, "weight_decay": weight_decay}
    for k, v in vals.items():
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) \
                or not math.isfinite(float(v)):
            raise ValueError(f"{owner}: {k} must be a finite number, got {v!r}")
    if lr < 0:
        raise ValueError(f"{owner}: lr must be >= 0, got {lr}")
    if not 0 <= alpha < 1:
        raise ValueError(f"{owner}: alpha must be in [0, 1), got {alpha} "
                         f"(alpha = 1 would never update the squared-gradient average)")
    if eps <= 0:
        raise ValueError(f"{owner}: eps must be > 0, got {eps} "
                         f"(with eps = 0 a zero gradient gives 0/0 = nan)")
    if weight_decay < 0:
        raise ValueError(f"{owner}: weight_decay must be >= 0, got {weight_decay}")
    return float(lr), float(alpha), float(eps), float(weight_decay)


class RMSprop:
    """RMSprop over a list of ``(name, param, grad)`` triples, updated in place.

    Parameters
    ----------
    params : list (or generator) of ``(name, param, grad)``, what ``Layer.named_parameters()``
        yields.  Each ``param`` is a C-contiguous float32/float64 array; ``grad`` the array
        the layer writes its gradient into (same shape and dtype).  The optimiser keeps
        references to both, so the layers and the optimiser see the same memory.
    lr, alpha, eps, weight_decay : η, α, ε, λ of the update (PyTorch's names; PyTorch's
        defaults except ``lr``: 1e-3, the Tiramisu paper's, where PyTorch has 1e-2).  Checked:
        lr >= 0, 0 <= alpha < 1, eps > 0 (PyTorch allows 0, which gives 0/0 = nan for a zero
        gradient), weight_decay >= 0, all finite.

    Attributes
    ----------
    lr : the current learning rate (``ExponentialLR`` changes it).
    square_avg : ``{name: v}``, the running averages, float arrays shaped like the params.
    steps : number of ``step()`` calls so far.
    """

    def __init__(self, params: Iterable[ParamTriple], lr: float = 1e-3, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        self.lr, self.alpha, self.eps, self.weight_decay = _check_hyper(
            "RMSprop", lr, alpha, eps, weight_decay)
        self.params: List[ParamTriple] = []
        seen = set()
        if hasattr(params, "named_parameters"):
            raise ValueError(f"RMSprop: pass {type(params).__name__}.named_parameters(), the "
                             f"(name, param, grad) triples, not the layer itself")
        try:
            params = iter(params)
        except TypeError:
            raise ValueError(f"RMSprop: params must be an iterable of (name, param, grad) "
                             f"triples, got {type(params).__name__}") from None
        for item in params:
            if not (isinstance(item, tuple) and len(item) == 3):
                raise ValueError("RMSprop: params must be (name, param, grad) triples as "
                                 f"Layer.named_parameters() yields, got {item!r:.80}")
            name, p, g = item
            if name in seen:
                raise ValueError(f"RMSprop: parameter name '{name}' appears twice")
            seen.add(name)
            for what, a in (("parameter", p), ("gradient", g)):
                if not isinstance(a, np.ndarray) or a.dtype not in (np.float32, np.float64):
                    raise ValueError(f"RMSprop: {what} '{name}' must be a float32 or float64 "
                                     f"numpy array, got {getattr(a, 'dtype', type(a).__name__)}")
                if not a.flags.c_contiguous:
                    raise ValueError(f"RMSprop: {what} '{name}' (shape {a.shape}) must be "
                                     f"C-contiguous to be updated in place")
                if not a.flags.writeable:
                    raise ValueError(f"RMSprop: {what} '{name}' (shape {a.shape}) is "
                                     f"read-only; it is updated in place")
            if g.shape != p.shape or g.dtype != p.dtype:
                raise ValueError(f"RMSprop: gradient of '{name}' has shape {g.shape} dtype "
                                 f"{g.dtype}, expected shape {p.shape} dtype {p.dtype}")
            self.params.append((name, p, g))
        if not self.params:
            raise ValueError("RMSprop: got an empty parameter list")
        _refuse_overlaps([(f"parameter '{n}'", p) for n, p, _ in self.params]
                         + [(f"gradient '{n}'", g) for n, _, g in self.params])
        self.square_avg: Dict[str, np.ndarray] = {n: np.zeros_like(p) for n, p, _ in self.params}
        self.steps = 0

    def step(self) -> None:
        """Update every parameter in place from its current gradient."""
        for name, p, g in self.params:
            rmsprop_step(p.reshape(-1), g.reshape(-1), self.square_avg[name].reshape(-1),
                         self.lr, self.alpha, self.eps, self.weight_decay)
        self.steps += 1

    def zero_grad(self) -> None:
        """Set every gradient to zero (layers *add* into their gradients)."""
        for _, _, g in self.params:
            g[...] = 0

    # -- saving and restoring ---------------------------------------------------------------
    def state_dict(self) -> Dict[str, object]:
        """A flat dict, ready for ``np.savez``: hyper-parameters and every running average.

        Keys: ``lr``, ``alpha``, ``eps``, ``weight_decay`` (floats), ``steps`` (int) and
        ``square_avg.<param name>`` (array copies).
        """
        out: Dict[str, object] = {k: getattr(self, k) for k in _HYPER}
        out["steps"] = self.steps
        for name, v in self.square_avg.items():
            out[f"square_avg.{name}"] = v.copy()
        return out

    def load_state_dict(self, state: Dict[str, object]) -> None:
        """Restore what ``state_dict`` returned (also after a round trip through ``np.load``).

        The parameter names must be exactly this optimiser's, with the same shapes; the
        first mismatch raises ``ValueError`` naming it.  Nothing changes unless all checks
        pass.
        """
        for k in _HYPER + ("steps",):
            if k not in state:
                raise ValueError(f"RMSprop.load_state_dict: missing '{k}'")
        try:
            hyper = [float(np.asarray(state[k])) for k in _HYPER]
            float(np.asarray(state["steps"]))
        except (TypeError, ValueError):
            bad = next(k for k in _HYPER + ("steps",) if not _is_number(state[k]))
            raise ValueError(f"RMSprop.load_state_dict: '{bad}' is not a number: "
                             f"{state[bad]!r}") from None
        hyper = _check_hyper("RMSprop.load_state_dict", *hyper)
        steps = _count("RMSprop.load_state_dict", "steps", state["steps"])
        prefix = "square_avg."
        given = {k[len(prefix):] for k in state if k.startswith(prefix)}
        new = {}
        for name, p, _ in self.params:
            if name not in given:
                raise ValueError(f"RMSprop.load_state_dict: missing square_avg for parameter "
                                 f"'{name}'")
            v = np.asarray(state[prefix + name])
            if v.shape != p.shape:
                raise ValueError(f"RMSprop.load_state_dict: square_avg '{name}' has shape "
                                 f"{v.shape}, expected {p.shape}")
            if v.dtype.kind not in "biuf" or not (np.all(v >= 0) and np.all(np.isfinite(v))):
                raise ValueError(f"RMSprop.load_state_dict: square_avg '{name}' must hold "
                                 f"finite numbers >= 0 (a running average of squares)")
            new[name] = fitted(f"RMSprop.load_state_dict: square_avg '{name}'", v, p.dtype)
        extra = sorted(given - set(new))
        if extra:
            raise ValueError(f"RMSprop.load_state_dict: unexpected parameter '{extra[0]}'"
                             + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        self.lr, self.alpha, self.eps, self.weight_decay = hyper
        self.steps = steps
        for name, v in new.items():
            self.square_avg[name][...] = v

    def __repr__(self) -> str:
        return (f"RMSprop({len(self.params)} params, lr={self.lr:g}, alpha={self.alpha:g}, "
                f"eps={self.eps:g}, weight_decay={self.weight_decay:g})")


class ExponentialLR:
    """Multiply the optimiser's learning rate by ``gamma`` at every ``step()`` (once per epoch).

    After ``e`` calls, ``optimizer.lr = base_lr · gamma^e`` (computed by repeated
    multiplication, as PyTorch does) and ``last_epoch == e``.
    """

    def __init__(self, optimizer: RMSprop, gamma: float = 0.995) -> None:
        if not hasattr(optimizer, "lr"):
            raise ValueError(f"ExponentialLR: optimizer must have an 'lr' attribute, got "
                             f"{type(optimizer).__name__}")
        if isinstance(gamma, bool) or not isinstance(gamma, (int, float, np.floating)) \
                or not math.isfinite(gamma) or gamma <= 0:
            raise ValueError(f"ExponentialLR: gamma must be a finite number > 0, got {gamma!r}")
        self.optimizer = optimizer
        self.gamma = float(gamma)
        self.base_lr = float(optimizer.lr)
        self.last_epoch = 0

    def step(self) -> None:
        self.last_epoch += 1
        self.optimizer.lr = self.optimizer.lr * self.gamma

    def get_last_lr(self) -> float:
        return self.optimizer.lr

    def state_dict(self) -> Dict[str, float]:
        """``gamma``, ``base_lr``, ``last_epoch`` (the lr itself lives in the optimiser's)."""
        return {"gamma": self.gamma, "base_lr": self.base_lr, "last_epoch": self.last_epoch}

    def load_state_dict(self, state: Dict[str, float]) -> None:
        for k in ("gamma", "base_lr", "last_epoch"):
            if k not in state:
                raise ValueError(f"ExponentialLR.load_state_dict: missing '{k}'")
        try:
            gamma, base_lr = float(np.asarray(state["gamma"])), float(np.asarray(state["base_lr"]))
            last_epoch = float(np.asarray(state["last_epoch"]))
            if not (math.isfinite(last_epoch) and last_epoch == math.floor(last_epoch)):
                raise ValueError
            last_epoch = int(last_epoch)
        except (TypeError, ValueError):
            raise ValueError(f"ExponentialLR.load_state_dict: gamma, base_lr and last_epoch "
                             f"must be numbers, got {state!r}") from None
        if not (math.isfinite(gamma) and gamma > 0 and math.isfinite(base_lr) and base_lr >= 0
                and last_epoch >= 0):       # base_lr 0: RMSprop takes lr = 0 (a frozen run)
            raise ValueError(f"ExponentialLR.load_state_dict: needs gamma > 0, base_lr >= 0 and "
                             f"last_epoch >= 0, got {gamma}, {base_lr}, {last_epoch}")
        self.gamma, self.base_lr, self.last_epoch = gamma, base_lr, last_epoch

    def __repr__(self) -> str:
        return f"ExponentialLR(gamma={self.gamma:g}, last_epoch={self.last_epoch})"


def _refuse_overlaps(arrays) -> None:
    """``ValueError`` if two of the (C-contiguous) arrays share memory: one array given under
    two names would be updated twice per step, a gradient inside a parameter overwritten."""
    spans = sorted((a.__array_interface__["data"][0], a.nbytes, what) for what, a in arrays
                   if a.nbytes)
    for (start, size, what), (start2, _, what2) in zip(spans, spans[1:]):
        if start2 < start + size:
            raise ValueError(f"RMSprop: {what} and {what2} share memory (one array given "
                             f"twice?); each parameter and gradient must be its own array")
