"""The shape every tinyseg layer shares.

A layer owns three dicts of NumPy arrays:

* ``params``  -- learnable parameters, PyTorch names and layouts (``weight``, ``bias``);
* ``grads``   -- one gradient array per parameter, same name, same shape, same dtype;
* ``buffers`` -- state that is saved but not learned (``running_mean``, ``running_var``).

``forward(x)`` checks its input, calls one kernel, and keeps in ``self`` only what
``backward`` needs.  ``backward(dout)`` *adds* the parameter gradients into ``grads``
(so the gradients of several forward/backward pairs add up until ``zero_grad``, as in
PyTorch) and returns the input gradient.  A layer keeps only its last forward's input, so
one layer must not appear twice in one forward pass; and ``backward`` is meant once per
``forward``: the plain layers would add the same gradients again on a second call (PyTorch
raises there); the Tiramisu and its parts refuse it.  What a layer keeps is a reference to the arrays it saw, not a copy (a copy
would double the memory of a training step): changing the input in place between
``forward`` and ``backward`` changes the gradients, where PyTorch raises ("modified by an
inplace operation").  Hand ``forward`` a copy if the array must change in between.

Layers that are built from other layers (a dense block, the whole Tiramisu) keep their
children as ordinary attributes, or in lists of layers; ``named_layers`` finds them, and
``named_parameters`` / ``state_dict`` give dotted names exactly like PyTorch's
(``trans_down.0.conv.weight``), so weights can be copied to and from a PyTorch model by name.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import numpy as np


class Layer:
    """Base class: parameters, gradients, buffers, a train/eval switch and child layers."""

    def __init__(self) -> None:
        self.params: Dict[str, np.ndarray] = {}
        self.grads: Dict[str, np.ndarray] = {}
        self.buffers: Dict[str, np.ndarray] = {}
        self.training: bool = True

    # -- the two methods every layer writes ------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def backward(self, dout: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.forward(x)

    # -- parameters ------------------------------------------------------------------
    def add_param(self, name: str, value: np.ndarray) -> np.ndarray:
        """Register a learnable parameter and a zero gradient of the same shape."""
        self.params[name] = value
        self.grads[name] = np.zeros_like(value)
        return value

    def named_layers(self, prefix: str = "") -> Iterator[Tuple[str, "Layer"]]:
        """Yield ``(dotted_name, layer)`` for this layer and every layer inside it."""
        yield prefix, self
        for attr, value in vars(self).items():
            if isinstance(value, Layer):
                yield from value.named_layers(_join(prefix, attr))
            elif isinstance(value, (list, tuple)):
                for i, item in enumerate(value):
                    if isinstance(item, Layer):
                        yield from item.named_layers(_join(prefix, f"{attr}.{i}"))

    def named_parameters(self) -> Iterator[Tuple[str, np.ndarray, np.ndarray]]:
        """Yield ``(dotted_name, parameter, gradient)`` for every learnable array."""
        for lname, layer in self.named_layers():
            for pname, p in layer.params.items():
                yield _join(lname, pname), p, layer.grads[pname]

    def named_buffers(self) -> Iterator[Tuple[str, np.ndarray]]:
        for lname, layer in self.named_layers():
            for bname, b in layer.buffers.items():
                yield _join(lname, bname), b

    def num_parameters(self) -> int:
        return int(sum(p.size for _, p, _ in self.named_parameters()))

    def zero_grad(self) -> None:
        for _, _, g in self.named_parameters():
            g[...] = 0

    # -- train / eval ------------------------------------------------------------------
    def train(self, mode: bool = True) -> "Layer":
        for _, layer in self.named_layers():
            layer.training = mode
        return self

    def eval(self) -> "Layer":
        return self.train(False)

    # -- weights in and out, by PyTorch name ------------------------------------------------
    def state_dict(self) -> Dict[str, np.ndarray]:
        """Every parameter and buffer under its dotted PyTorch name (copies)."""
        out = {name: p.copy() for name, p, _ in self.named_parameters()}
        out.update({name: b.copy() for name, b in self.named_buffers()})
        return out

    def load_state_dict(self, state: Dict[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into this layer's parameters and buffers, in place.

        Raises ``ValueError`` naming the first parameter that is missing, has another shape
        or holds no real numbers (complex, text, objects), or a count (an integer buffer such
        as ``num_batches_tracked``) that is negative or not whole; nothing is changed unless
        every array passes.  Values are cast to the parameter's dtype.
        """
        me = f"{type(self).__name__}.load_state_dict"
        own = {name: p for name, p, _ in self.named_parameters()}
        own.update(dict(self.named_buffers()))
        staged = []
        for name, target in own.items():
            if name not in state:
                if strict:
                    raise ValueError(f"{me}: missing '{name}'")
                continue
            value = np.asarray(state[name])
            if value.shape != target.shape:
                raise ValueError(f"{me}: '{name}' has shape {value.shape}, expected "
                                 f"{target.shape}")
            if value.dtype.kind not in "biuf":
                raise ValueError(f"{me}: '{name}' holds {value.dtype} values, not real numbers")
            if target.dtype.kind in "iu" and (np.any(value != np.floor(value))
                                               or np.any(value < 0)):
                raise ValueError(f"{me}: '{name}' is a count, a whole number >= 0, got {value}")
            value = fitted(f"{me}: '{name}'", value, target.dtype)
            staged.append((target, value))
        if strict:
            extra = sorted(set(state) - set(own))
            if extra:
                raise ValueError(f"{me}: unexpected '{extra[0]}'"
                                 + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        for target, value in staged:
            target[...] = value

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def fitted(what: str, value: np.ndarray, dtype) -> np.ndarray:
    """``value`` cast to ``dtype``, or ``ValueError`` if a finite number becomes infinite on
    the way (float64 ``1e40`` is ``inf`` in float32: a model would then compute with it
    silently).  NaN and infinities already in ``value`` are left for the caller to judge."""
    dtype = np.dtype(dtype)
    if dtype.kind in "iu" and np.any(np.asarray(value) > np.iinfo(dtype).max):
        raise ValueError(f"{what} holds {np.max(value):g}, too large for {dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        cast = np.asarray(value).astype(dtype)
    if dtype.kind == "f" and np.asarray(value).dtype.kind == "f":
        lost = np.isfinite(value) & ~np.isfinite(cast)
        if np.any(lost):
            big = np.asarray(value)[lost].flat[0]
            raise ValueError(f"{what} holds {big:g}, too large for {dtype} (largest "
                             f"{np.finfo(dtype).max:g})")
    return cast


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


# -- input checks shared by all layers --------------------------------------------------------

def positive_int(layer: str, name: str, value) -> int:
    """``value`` as an int, or ``ValueError`` naming the layer: a positive integer, not a float
    that ``int`` would cut, nor a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{layer}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_input(layer: str, x: np.ndarray, ndim: int = 4, channels: int | None = None,
                channel_axis: int = 1) -> None:
    """Raise a ``ValueError`` naming the layer and both shapes if ``x`` is not what it expects.

    Checked: that ``x`` is a NumPy array of floating dtype (float32 or float64), its number
    of dimensions, and (when given) its channel count.  Nothing that fails here ever reaches
    a numba kernel.
    """
    if not isinstance(x, np.ndarray):
        raise ValueError(f"{layer}: expected a numpy.ndarray, got {type(x).__name__}")
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"{layer}: expected a float32 or float64 array, got dtype {x.dtype} "
                         f"(shape {x.shape})")
    if x.ndim != ndim:
        want = "(N, C, H, W)" if ndim == 4 else f"{ndim} dimensions"
        raise ValueError(f"{layer}: expected input of shape {want}, got shape {x.shape}")
    if channels is not None and x.shape[channel_axis] != channels:
        raise ValueError(f"{layer}: expected {channels} input channels, got shape {x.shape} "
                         f"with {x.shape[channel_axis]} channels")
