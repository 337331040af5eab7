"""The One Hundred Layers Tiramisu (FC-DenseNet, Jégou et al. 2017), built from tinyseg layers.

Shapes are NCHW.  ``k`` is the growth rate, ``m`` the first convolution's filters
(``first_filters``), ``c`` a number of channels (the symbols of lesson 7).

**Dense layer** (``DenseLayer``): BatchNorm → ReLU → 3×3 convolution with ``k`` filters →
Dropout.  It maps ``(N, c, H, W) → (N, k, H, W)``.

**Dense block** (``DenseBlock``) of ``L`` layers on an input ``x₀`` with ``c₀`` channels::

    x_ℓ = DenseLayer_ℓ([x₀, x₁, …, x_{ℓ−1}])          ℓ = 1 … L,  [·] = concatenation
    output = [x₀, x₁, …, x_L]   (c₀ + L·k channels)     on the down path
    output = [x₁, …, x_L]       (L·k channels)          bottleneck and up path, except
                                                        the last up block (full output,
                                                        read by the final 1×1 conv)

**Transition down** (``TransitionDown``): BatchNorm → ReLU → 1×1 convolution (``c → c``) →
Dropout → 2×2 max-pool, ``(N, c, H, W) → (N, c, ⌊H/2⌋, ⌊W/2⌋)``.

**Transition up** (``TransitionUp``): a 3×3 transposed convolution with stride 2 and no
padding, ``H → 2H + 1``, centre-cropped to the skip connection's size and concatenated with
it: ``[crop(up), skip]``.

**Tiramisu**: 3×3 conv (``first_filters`` maps) → ``pools`` × (dense block, transition down)
→ bottleneck dense block → ``pools`` × (transition up, dense block) → 1×1 conv to
``num_classes`` logits.  The softmax / loss is outside the model.  The down blocks' outputs
are the skip connections of the up path.

Memory: two dense-block implementations
----------------------------------------
The *naive* block concatenates (copies) ``[x₀ … x_{ℓ−1}]`` into a new array for every layer,
and every layer keeps that concatenation and its ReLU output (each as wide as its input) for
the backward pass, so a block of ``L`` layers keeps ``O(L²·k)`` feature maps.  The
*memory-efficient* block (the default; Pleiss et al. 2017, "Memory-Efficient Implementation
of DenseNets") allocates one buffer of ``c₀ + L·k`` channels per block; layer ℓ reads the
view ``buffer[:, :c₀+(ℓ−1)k]`` (no copy) and writes its ``k`` new maps into the next
channels.  BatchNorm + ReLU are computed by the fused kernel into a temporary that is
dropped right after the convolution, and computed again in the backward pass from the
buffer and the saved per-channel statistics.  What a layer keeps is then its ``k`` maps in
the buffer and its dropout mask: ``O(L·k)``.  The transition-down layers recompute their
BatchNorm + ReLU the same way.  ``lessons/08-memory.md`` measures both.

BatchNorm at test time
----------------------
The paper normalises with the statistics of the current batch also at test time.  tinyseg's
default, like PyTorch's, is to use the running statistics in eval mode
(``eval_bn="running"``); ``eval_bn="batch"`` reproduces the paper (in eval mode every
BatchNorm uses the batch's own mean and variance and leaves its running statistics alone).
The choice is part of ``config``, so a saved model records it.

Input sizes
-----------
Heights and widths that are not multiples of ``2**pools`` are zero-padded at the bottom and
right up to the next multiple, and the logits are cropped back to the input's size (the
gradient is cropped the same way), so any input of at least 1×1 works in eval mode with
running statistics; with batch statistics (training, or ``eval_bn="batch"``) the bottleneck
needs ``N·⌈H/2^pools⌉·⌈W/2^pools⌉ ≥ 2`` values per channel.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .io import atomic_save_npz, read_npz
from .kernels.conv import conv2d_backward, conv2d_forward
from .kernels.norm import batchnorm2d_stats, batchnorm_relu_backward, batchnorm_relu_forward
from .layers.activation import Dropout, ReLU
from .layers.base import Layer, check_input, positive_int
from .layers.batchnorm import BatchNorm2d
from .layers.concat import concat, split_grad
from .layers.conv import Conv2d, ConvTranspose2d
from .layers.pool import MaxPool2d

__all__ = ["DenseLayer", "DenseBlock", "TransitionDown", "TransitionUp", "Tiramisu",
           "fc_densenet56", "fc_densenet67", "fc_densenet103", "tiramisu_small",
           "tiramisu_tiny", "PRESETS", "FORMAT_VERSION", "ARCH_KEYS", "centre_crop_offsets"]

FORMAT_VERSION = 1
"""Version of the ``.npz`` weight files written by :meth:`Tiramisu.save`."""

EVAL_BN_MODES = ("running", "batch")


def _spawn(rng: np.random.Generator) -> np.random.Generator:
    """An independent child generator for a Dropout layer (``rng``'s stream is untouched)."""
    return rng.spawn(1)[0]


def _as_rng(rng) -> np.random.Generator:
    if rng is None:
        return np.random.default_rng(0)
    if isinstance(rng, (int, np.integer)) and not isinstance(rng, bool):
        if rng < 0:                 # numpy says only "expected non-negative integer"
            raise ValueError(f"rng: a seed must be an integer >= 0, got {rng}")
        return np.random.default_rng(int(rng))
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, an int seed or None, "
                         f"got {type(rng).__name__}")
    return rng


def _check_dtype(name: str, x: np.ndarray, dtype: np.dtype) -> None:
    if x.dtype != dtype:
        raise ValueError(f"{name}: expected a {dtype} input (the layer's dtype), got dtype "
                         f"{x.dtype} (shape {x.shape})")


# ---------------------------------------------------------------------------------------------
# BatchNorm → ReLU → conv → Dropout, the part DenseLayer and TransitionDown share
# ---------------------------------------------------------------------------------------------

def _check_counts(name: str, **counts) -> None:
    """``ValueError`` naming the layer unless every count is a positive integer."""
    for key, v in counts.items():
        positive_int(name, key, v)


class _NormReLUConv(Layer):
    """``y = Dropout(conv(max(BN(x), 0)))`` with two ways of keeping memory for backward.

    ``memory_efficient=False`` chains the layers ``norm``, ``relu``, ``conv``, ``drop``; each
    keeps what it needs (BN its input, ReLU a mask, the convolution its input ``h``).

    ``memory_efficient=True`` keeps only a reference to ``x`` and the per-channel statistics
    ``(μ, invstd)``; ``h = max(γ·(x − μ)·invstd + β, 0)`` is computed by the fused kernel,
    used by the convolution and dropped, then computed again in ``backward``.  ``x`` may be a
    (non-contiguous) view into a dense block's buffer and must not change before backward.

    Both ways use the same parameters and give the same numbers, bit for bit in training
    mode; in eval mode with running statistics they agree to float32 rounding (the fused
    kernel computes in float64, ``BatchNorm2d`` in the input's dtype).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dropout: float,
                 rng: np.random.Generator, dtype, memory_efficient: bool) -> None:
        super().__init__()
        _check_counts(type(self).__name__, in_channels=in_channels, out_channels=out_channels)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.dtype = np.dtype(dtype)
        self.padding = kernel_size // 2
        self.norm = BatchNorm2d(self.in_channels, dtype=self.dtype)
        self.relu = ReLU()
        self.conv = Conv2d(self.in_channels, self.out_channels, kernel_size,
                           padding=self.padding, bias=True, rng=rng, dtype=self.dtype)
        self.drop = Dropout(dropout, rng=_spawn(rng))
        self.memory_efficient = bool(memory_efficient)
        self.eval_bn = "running"
        self._saved = None
        self._path: Optional[str] = None   # the way the last forward went: "recompute", "chain"

    # -- the plain chain ---------------------------------------------------------------------
    def _norm_forward(self, x: np.ndarray) -> np.ndarray:
        if self.training or self.eval_bn == "running":
            return self.norm.forward(x)
        # eval with batch statistics: normalise like training, leave running stats alone
        keep = {k: v.copy() for k, v in self.norm.buffers.items()}
        self.norm.training = True
        try:
            return self.norm.forward(x)
        finally:
            self.norm.training = False
            for k, v in keep.items():
                self.norm.buffers[k][...] = v

    def _forward_chain(self, x: np.ndarray) -> np.ndarray:
        return self.drop.forward(self.conv.forward(self.relu.forward(self._norm_forward(x))))

    def _backward_chain(self, dout: np.ndarray) -> np.ndarray:
        return self.norm.backward(self.relu.backward(self.conv.backward(self.drop.backward(dout))))

    # -- recompute BN + ReLU in backward --------------------------------------------------------
    def _statistics(self, x: np.ndarray):
        """``(μ, invstd, batch)``: batch statistics (training, or eval with eval_bn='batch',
        updating the running averages only in training) or the running ones."""
        norm = self.norm
        if self.training or self.eval_bn == "batch":
            n, _, h, w = x.shape
            if n * h * w < 2:
                raise ValueError(f"{type(self).__name__}: BatchNorm needs more than 1 value per "
                                 f"channel with batch statistics, got input shape {x.shape}")
            mean, invstd = batchnorm2d_stats(x, norm.eps)
            if self.training:
                norm._update_running(mean, invstd, n * h * w)
            return mean, invstd, True
        mean = norm.buffers["running_mean"].copy()
        invstd = (1.0 / np.sqrt(norm.buffers["running_var"].astype(np.float64) + norm.eps)
                  ).astype(self.dtype)
        return mean, invstd, False

    def _forward_recompute(self, x: np.ndarray) -> np.ndarray:
        mean, invstd, batch = self._statistics(x)
        gamma, beta = self.norm.params["weight"], self.norm.params["bias"]
        h = batchnorm_relu_forward(x, mean, invstd, gamma, beta)
        y = conv2d_forward(h, self.conv.params["weight"], self.conv.params["bias"], 1,
                           self.padding)
        del h  # not kept: backward computes it again
        self._saved = (x, mean, invstd, batch)
        return self.drop.forward(y)

    def _backward_recompute(self, dout: np.ndarray) -> np.ndarray:
        x, mean, invstd, batch = self._saved
        gamma, beta = self.norm.params["weight"], self.norm.params["bias"]
        dy = self.drop.backward(dout)
        h = batchnorm_relu_forward(x, mean, invstd, gamma, beta)  # recomputed, same bits as forward
        dh, dw, db = conv2d_backward(dy, h, self.conv.params["weight"], 1, self.padding)
        del h, dy
        self.conv.grads["weight"] += dw
        self.conv.grads["bias"] += db
        if batch:
            dx, dgamma, dbeta = batchnorm_relu_backward(dh, x, mean, invstd, gamma, beta)
        else:  # running statistics: BN is the affine map γ·(x − μ)·invstd + β
            xhat = (x - mean[:, None, None]) * invstd[:, None, None]
            dz = dh * ((xhat * gamma[:, None, None] + beta[:, None, None]) > 0)
            dgamma, dbeta = np.sum(dz * xhat, axis=(0, 2, 3)), np.sum(dz, axis=(0, 2, 3))
            dx = dz * (gamma * invstd)[:, None, None]
        self.norm.grads["weight"] += dgamma
        self.norm.grads["bias"] += dbeta
        return dx

    # -- the Layer interface ------------------------------------------------------------------
    def _check(self, x: np.ndarray) -> None:
        check_input(type(self).__name__, x, ndim=4, channels=self.in_channels)
        _check_dtype(type(self).__name__, x, self.dtype)

    def _run_forward(self, x: np.ndarray) -> np.ndarray:
        self._check(x)
        self._path = self._saved = None
        if self.memory_efficient:
            y = self._forward_recompute(x)
            self._path = "recompute"
        else:
            y = self._forward_chain(x)
            self._path = "chain"
        return y

    def _require_forward(self) -> None:
        if self._path is None:
            raise ValueError(f"{type(self).__name__}: backward called before forward (each "
                             f"forward allows one backward)")

    def _run_backward(self, dout: np.ndarray) -> np.ndarray:
        # the way forward went, even if memory_efficient was switched since: its caches
        self._require_forward()
        if self._path == "recompute":
            dx = self._backward_recompute(dout)
        else:
            dx = self._backward_chain(dout)
        self._path = self._saved = None
        return dx


class DenseLayer(_NormReLUConv):
    """``DenseLayer(in_channels, growth_rate, dropout=0.2, rng=None, dtype=np.float32,
    memory_efficient=True)``.

    ``(N, in_channels, H, W) → (N, growth_rate, H, W)``::

        y = Dropout(conv₃ₓ₃(max(γ · (x − μ) · invstd + β, 0)))

    Children (PyTorch names): ``norm`` (BatchNorm2d), ``relu``, ``conv`` (Conv2d 3×3,
    padding 1, with bias), ``drop`` (Dropout).  With ``memory_efficient=True`` the BN + ReLU
    output is not kept but recomputed in ``backward``.  The computation is in
    ``_NormReLUConv`` above: ``_forward_chain`` / ``_backward_chain`` (the children one after
    the other) or ``_forward_recompute`` / ``_backward_recompute`` (the fused kernels of
    ``tinyseg.kernels.norm``, and ``BatchNorm2d._update_running`` for the running
    statistics).
    """

    def __init__(self, in_channels: int, growth_rate: int, dropout: float = 0.2,
                 rng: Optional[np.random.Generator] = None, dtype=np.float32,
                 memory_efficient: bool = True) -> None:
        super().__init__(in_channels, growth_rate, 3, dropout, _as_rng(rng), dtype,
                         memory_efficient)

    def forward(self, x: np.ndarray) -> np.ndarray:
        return self._run_forward(x)

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return self._run_backward(dout)

    def __repr__(self) -> str:
        return f"DenseLayer({self.in_channels}, growth_rate={self.out_channels})"


class TransitionDown(_NormReLUConv):
    """``TransitionDown(channels, dropout=0.2, rng=None, dtype=np.float32,
    memory_efficient=True)``.

    ``(N, c, H, W) → (N, c, ⌊H/2⌋, ⌊W/2⌋)``: BatchNorm → ReLU → 1×1 conv (c → c, with bias)
    → Dropout → 2×2 max-pool.  Children: ``norm``, ``relu``, ``conv``, ``drop``, ``pool``.
    """

    def __init__(self, channels: int, dropout: float = 0.2,
                 rng: Optional[np.random.Generator] = None, dtype=np.float32,
                 memory_efficient: bool = True) -> None:
        super().__init__(channels, channels, 1, dropout, _as_rng(rng), dtype, memory_efficient)
        self.pool = MaxPool2d(2)

    def forward(self, x: np.ndarray) -> np.ndarray:
        if isinstance(x, np.ndarray) and x.ndim == 4 and min(x.shape[2:]) < 2:
            raise ValueError(f"TransitionDown: the input must be at least 2×2 to pool, got "
                             f"shape {x.shape}")
        return self.pool.forward(self._run_forward(x))

    def backward(self, dout: np.ndarray) -> np.ndarray:
        self._require_forward()
        return self._run_backward(self.pool.backward(dout))

    def __repr__(self) -> str:
        return f"TransitionDown({self.in_channels})"


# ---------------------------------------------------------------------------------------------
# Dense block
# ---------------------------------------------------------------------------------------------

class DenseBlock(Layer):
    """``DenseBlock(in_channels, growth_rate, num_layers, dropout=0.2, new_features_only=False,
    memory_efficient=True, rng=None, dtype=np.float32)``.

    ``(N, c₀, H, W) → (N, c₀ + L·k, H, W)``, or ``(N, L·k, H, W)`` with
    ``new_features_only=True`` (the bottleneck and every up block but the last), where
    ``L = num_layers`` and ``k = growth_rate``.  Layer ℓ = 1 … L (as in lesson 6) sees
    ``c₀ + (ℓ−1)·k`` channels: the block input and every earlier layer's output,
    concatenated.  Children: ``layers`` (a list of ``DenseLayer``, indexed from 0), so
    parameters are named ``layers.0.conv.weight`` (layer 1) and so on.

    ``memory_efficient=True`` (default): one buffer ``(N, c₀ + L·k, H, W)`` per forward;
    layer ℓ's input is the view ``buffer[:, :c₀ + (ℓ−1)·k]`` and its output goes to
    ``buffer[:, c₀ + (ℓ−1)·k : c₀ + ℓ·k]``.  The returned array *is* that buffer (or its
    view of the new channels): do not modify it before ``backward``.  Backward uses one
    gradient buffer of the same shape: the gradient of layer ℓ's output is complete once
    every later layer j > ℓ has added its input gradient into ``dbuffer[:, :c₀ + (j−1)·k]``.

    ``memory_efficient=False``: the textbook version, a new concatenation per layer.
    """

    def __init__(self, in_channels: int, growth_rate: int, num_layers: int,
                 dropout: float = 0.2, new_features_only: bool = False,
                 memory_efficient: bool = True, rng: Optional[np.random.Generator] = None,
                 dtype=np.float32) -> None:
        super().__init__()
        _check_counts("DenseBlock", in_channels=in_channels, growth_rate=growth_rate,
                      num_layers=num_layers)
        rng = _as_rng(rng)
        self.in_channels = int(in_channels)
        self.growth_rate = int(growth_rate)
        self.num_layers = int(num_layers)
        self.new_features_only = bool(new_features_only)
        self.dtype = np.dtype(dtype)
        self.layers: List[DenseLayer] = [
            DenseLayer(self.in_channels + i * self.growth_rate, self.growth_rate, dropout,
                       rng=rng, dtype=self.dtype, memory_efficient=memory_efficient)
            for i in range(self.num_layers)]
        self.memory_efficient = bool(memory_efficient)
        self._buffer: Optional[np.ndarray] = None
        self._path: Optional[str] = None   # the way the last forward went: "buffer", "naive"

    @property
    def memory_efficient(self) -> bool:
        return self._memory_efficient

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        self._memory_efficient = bool(value)
        for layer in self.layers:
            layer.memory_efficient = self._memory_efficient

    @property
    def total_channels(self) -> int:
        """``c₀ + L·k``: the channels of the block's buffer."""
        return self.in_channels + self.num_layers * self.growth_rate

    @property
    def out_channels(self) -> int:
        return self.num_layers * self.growth_rate if self.new_features_only \
            else self.total_channels

    # -- memory-efficient path --------------------------------------------------------------------
    def new_buffer(self, n: int, h: int, w: int) -> np.ndarray:
        """An uninitialised ``(n, c₀ + L·k, h, w)`` buffer; fill ``[:, :c₀]`` with the block
        input and pass it to :meth:`forward_buffer`."""
        return np.empty((n, self.total_channels, h, w), dtype=self.dtype)

    def forward_buffer(self, buf: np.ndarray) -> np.ndarray:
        """Run the block on a buffer whose first ``c₀`` channels hold the input (in place)."""
        if not self.memory_efficient:
            raise ValueError("DenseBlock.forward_buffer needs memory_efficient=True")
        if (not isinstance(buf, np.ndarray) or buf.ndim != 4
                or buf.shape[1] != self.total_channels or buf.dtype != self.dtype
                or not buf.flags.c_contiguous):
            raise ValueError(f"DenseBlock.forward_buffer: expected a C-contiguous {self.dtype} "
                             f"buffer of shape (N, {self.total_channels}, H, W), got "
                             f"{getattr(buf, 'shape', type(buf).__name__)}")
        c, k = self.in_channels, self.growth_rate
        self._path = None
        for layer in self.layers:
            buf[:, c:c + k] = layer.forward(buf[:, :c])  # input: a view, no copy
            c += k
        self._buffer, self._path = buf, "buffer"
        return buf[:, self.in_channels:] if self.new_features_only else buf

    def forward(self, x: np.ndarray) -> np.ndarray:
        check_input("DenseBlock", x, ndim=4, channels=self.in_channels)
        _check_dtype("DenseBlock", x, self.dtype)
        if self.memory_efficient:
            buf = self.new_buffer(x.shape[0], x.shape[2], x.shape[3])
            buf[:, :self.in_channels] = x
            return self.forward_buffer(buf)
        return self._forward_naive(x)

    def backward(self, dout: np.ndarray, overwrite_dout: bool = False) -> np.ndarray:
        """Gradient of the block input, ``(N, c₀, H, W)``.

        ``overwrite_dout=True`` lets a full-output block use ``dout`` itself as its gradient
        buffer (saves one buffer-sized array; the Tiramisu does this with arrays it owns).
        """
        expect = (self.out_channels,)
        if not isinstance(dout, np.ndarray) or dout.ndim != 4 or dout.shape[1:2] != expect:
            raise ValueError(f"DenseBlock: expected dout of shape (N, {self.out_channels}, H, W), "
                             f"got {getattr(dout, 'shape', type(dout).__name__)}")
        if dout.dtype.kind != "f":
            raise ValueError(f"DenseBlock: expected a float dout, got {dout.dtype}")
        if self._path is None:
            raise ValueError("DenseBlock: backward called before forward (each forward allows "
                             "one backward)")
        if self._path == "naive":   # the way forward went, even if the flag changed since
            return self._backward_naive(dout)
        buf = self._buffer
        if dout.shape[0] != buf.shape[0] or dout.shape[2:] != buf.shape[2:]:
            raise ValueError(f"DenseBlock: expected dout of shape "
                             f"{(buf.shape[0], self.out_channels) + buf.shape[2:]}, "
                             f"got {dout.shape}")
        if self.new_features_only:
            dbuf = np.zeros_like(buf)
            dbuf[:, self.in_channels:] = dout
        elif overwrite_dout and dout.flags.c_contiguous and dout.dtype == buf.dtype:
            dbuf = dout
        else:
            dbuf = np.array(dout, dtype=buf.dtype, order="C")
        k = self.growth_rate
        c = self.total_channels
        for layer in reversed(self.layers):
            c -= k
            # dbuf[:, c:c+k] is complete: every later layer has added its share already
            dbuf[:, :c] += layer.backward(dbuf[:, c:c + k])
        self._buffer = self._path = None
        return dbuf[:, :self.in_channels]

    # -- naive path -------------------------------------------------------------------------------
    def _forward_naive(self, x: np.ndarray) -> np.ndarray:
        # lesson 6's words: layer ℓ reads input_ℓ = [x₀, …, x_{ℓ−1}] and writes x_ℓ
        input_l, new = x, []
        self._path = None
        for layer in self.layers:
            x_l = layer.forward(input_l)
            new.append(x_l)
            input_l = concat([input_l, x_l])  # a new array: x₀ … x_ℓ copied once more
        self._path = "naive"
        return concat(new) if self.new_features_only else input_l

    def _backward_naive(self, dout: np.ndarray) -> np.ndarray:
        k = self.growth_rate
        if self.new_features_only:
            dx_new = split_grad(dout, [k] * self.num_layers)  # from concat(new)
            d_input = None  # the last concatenation is not used: no gradient
        else:
            dx_new = [None] * self.num_layers
            d_input = dout
        for i in reversed(range(self.num_layers)):      # layer ℓ = i + 1
            c = self.in_channels + i * k
            if d_input is None:
                d_before, dx_l = None, dx_new[i]
            else:  # input_{ℓ+1} = [input_ℓ, x_ℓ]: split its gradient in two
                d_before, dx_l = split_grad(d_input, [c, k])
                if dx_new[i] is not None:
                    dx_l = dx_l + dx_new[i]
            d_layer_input = self.layers[i].backward(dx_l)
            d_input = d_layer_input if d_before is None else d_before + d_layer_input
        self._path = None
        return d_input

    def __repr__(self) -> str:
        return (f"DenseBlock({self.in_channels}, growth_rate={self.growth_rate}, "
                f"num_layers={self.num_layers}, new_features_only={self.new_features_only})")


# ---------------------------------------------------------------------------------------------
# Transition up
# ---------------------------------------------------------------------------------------------

def centre_crop_offsets(size: Tuple[int, int], target: Tuple[int, int]) -> Tuple[int, int]:
    """``(top, left)`` of the centred ``target`` window inside ``size``: ``(S − T) // 2``."""
    return (size[0] - target[0]) // 2, (size[1] - target[1]) // 2


class TransitionUp(Layer):
    """``TransitionUp(in_channels, out_channels, rng=None, dtype=np.float32)``.

    ``forward(x, skip)``: ``x`` ``(N, in, H, W)``, ``skip`` ``(N, S, Hs, Ws)`` →
    ``(N, out + S, Hs, Ws)``::

        u = ConvTranspose2d₃ₓ₃,stride 2,padding 0(x)        (N, out, 2H + 1, 2W + 1)
        y = [u[:, :, t : t + Hs, l : l + Ws], skip]          t = (2H + 1 − Hs) // 2, same for l

    (``Hs ≤ 2H + 1`` is required.)  ``backward(dy)`` returns ``(dx, dskip)``; ``dskip`` is a
    view into ``dy``.  Child: ``conv`` (ConvTranspose2d, weight ``(in, out, 3, 3)``, bias).
    ``forward(x, skip, out=a)`` writes ``y`` into ``a`` (e.g. the next dense block's buffer)
    instead of allocating.
    """

    def __init__(self, in_channels: int, out_channels: int,
                 rng: Optional[np.random.Generator] = None, dtype=np.float32) -> None:
        super().__init__()
        _check_counts("TransitionUp", in_channels=in_channels, out_channels=out_channels)
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.dtype = np.dtype(dtype)
        self.conv = ConvTranspose2d(self.in_channels, self.out_channels, 3, stride=2, padding=0,
                                    bias=True, rng=_as_rng(rng), dtype=self.dtype)
        self._cache = None

    def forward(self, x: np.ndarray, skip: np.ndarray,  # type: ignore[override]
                out: Optional[np.ndarray] = None) -> np.ndarray:
        check_input("TransitionUp", x, ndim=4, channels=self.in_channels)
        _check_dtype("TransitionUp", x, self.dtype)
        check_input("TransitionUp (skip)", skip, ndim=4)
        _check_dtype("TransitionUp (skip)", skip, self.dtype)
        n, _, h, w = x.shape
        hs, ws = skip.shape[2:]
        if skip.shape[0] != n or hs > 2 * h + 1 or ws > 2 * w + 1:
            raise ValueError(f"TransitionUp: the skip connection must have the batch size of x "
                             f"and at most (2H+1, 2W+1) = {(2 * h + 1, 2 * w + 1)} pixels; got "
                             f"x {x.shape}, skip {skip.shape}")
        shape = (n, self.out_channels + skip.shape[1], hs, ws)
        if out is None:
            out = np.empty(shape, dtype=self.dtype)
        elif out.shape != shape or out.dtype != self.dtype:
            raise ValueError(f"TransitionUp: out must have shape {shape} and dtype {self.dtype}, "
                             f"got {out.shape} {out.dtype}")
        u = self.conv.forward(x)
        t, l = centre_crop_offsets(u.shape[2:], (hs, ws))
        out[:, :self.out_channels] = u[:, :, t:t + hs, l:l + ws]
        out[:, self.out_channels:] = skip
        self._cache = (u.shape, t, l, hs, ws, skip.shape[1])
        return out

    def backward(self, dout: np.ndarray):  # type: ignore[override]
        if self._cache is None:
            raise ValueError("TransitionUp: backward called before forward")
        ushape, t, l, hs, ws, skip_channels = self._cache
        shape = (ushape[0], self.out_channels + skip_channels, hs, ws)
        if not isinstance(dout, np.ndarray) or dout.shape != shape or dout.dtype != self.dtype:
            raise ValueError(f"TransitionUp: expected dout of shape {shape} (the forward "
                             f"output's) and dtype {self.dtype}, got "
                             f"{getattr(dout, 'dtype', type(dout).__name__)} "
                             f"{getattr(dout, 'shape', '')}")
        du = np.zeros(ushape, dtype=self.dtype)  # the cropped-off border gets no gradient
        du[:, :, t:t + hs, l:l + ws] = dout[:, :self.out_channels]
        dx = self.conv.backward(du)
        self._cache = None
        return dx, dout[:, self.out_channels:]

    def __repr__(self) -> str:
        return f"TransitionUp({self.in_channels}, {self.out_channels})"


# ---------------------------------------------------------------------------------------------
# The whole network
# ---------------------------------------------------------------------------------------------

ARCH_KEYS = ("in_channels", "num_classes", "first_filters", "growth_rate", "pools", "layers")
"""Config entries that decide the parameters' shapes; :meth:`Tiramisu.load` compares these."""


def _layers_list(layers, pools: int) -> List[int]:
    """One number, a down + bottleneck list (mirrored for the up path) or the full list."""
    if isinstance(layers, (int, np.integer)) and not isinstance(layers, bool):
        full = [int(layers)] * (2 * pools + 1)
    else:
        try:
            full = [int(v) for v in layers]
        except TypeError:
            raise ValueError(f"Tiramisu: layers must be an int or a list of ints, "
                             f"got {layers!r}") from None
        if any(int(v) != v or isinstance(v, bool) for v in layers):
            raise ValueError(f"Tiramisu: layers must be integers, got {list(layers)!r}")
        if len(full) == pools + 1:
            full = full + full[-2::-1]
        elif len(full) != 2 * pools + 1:
            raise ValueError(f"Tiramisu: layers must have pools + 1 = {pools + 1} (down path and "
                             f"bottleneck, mirrored for the up path) or 2·pools + 1 = "
                             f"{2 * pools + 1} entries, got {len(full)}: {list(layers)!r}")
    if any(v < 1 for v in full):
        raise ValueError(f"Tiramisu: every block needs at least one layer, got {full}")
    return full


class Tiramisu(Layer):
    """``Tiramisu(in_channels=3, num_classes=2, first_filters=48, growth_rate=16, layers=4,
    pools=5, dropout=0.2, memory_efficient=True, eval_bn="running", rng=None,
    dtype=np.float32)``.

    ``forward(x)``: ``(N, in_channels, H, W)`` → logits ``(N, num_classes, H, W)``;
    ``backward(dlogits)`` → ``dx``.

    Parameters
    ----------
    in_channels, num_classes : input channels (3 for RGB) and output classes.
    first_filters : ``m`` of the first 3×3 convolution (48 in the paper).
    growth_rate : ``k``, new feature maps per dense layer.
    layers : layers per dense block: one number for all ``2·pools + 1`` blocks, the full list
        (down blocks, bottleneck, up blocks), or the down blocks and the bottleneck only
        (``pools + 1`` numbers, mirrored for the up path).
    pools : number of transition downs (and ups).
    dropout : dropout probability after the convolution of every dense layer and transition
        down.
    memory_efficient : shared-buffer dense blocks that recompute BN + ReLU in backward
        (default) or the naive ones; same numbers (to float32 rounding in eval mode),
        different memory.
    eval_bn : ``"running"`` (default) normalise with running statistics in eval mode;
        ``"batch"`` with the batch's own statistics, as in the paper.
    rng : ``numpy.random.Generator`` (or an int seed; ``None`` means seed 0) for the weights;
        each Dropout gets an independent child generator (``rng.spawn``), so the same seed
        gives the same weights and the same dropout masks.
    dtype : ``np.float32`` (training) or ``np.float64`` (gradient checks).

    Children (PyTorch names): ``firstconv``, ``down_blocks.<i>``, ``trans_down.<i>``,
    ``bottleneck``, ``trans_up.<i>``, ``up_blocks.<i>``, ``finalconv``.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 2, first_filters: int = 48,
                 growth_rate: int = 16, layers: Union[int, Sequence[int]] = 4, pools: int = 5,
                 dropout: float = 0.2, memory_efficient: bool = True, eval_bn: str = "running",
                 rng=None, dtype=np.float32) -> None:
        super().__init__()
        _check_counts("Tiramisu", in_channels=in_channels, num_classes=num_classes,
                      first_filters=first_filters, growth_rate=growth_rate, pools=pools)
        if (isinstance(dropout, bool) or not isinstance(dropout, (int, float, np.floating))
                or not 0.0 <= dropout < 1.0):
            raise ValueError(f"Tiramisu: dropout must be in [0, 1), got {dropout!r}")
        if not isinstance(memory_efficient, (bool, np.bool_)):
            raise ValueError(f"Tiramisu: memory_efficient must be true or false, got "
                             f"{memory_efficient!r}")
        if eval_bn not in EVAL_BN_MODES:
            raise ValueError(f"Tiramisu: eval_bn must be one of {EVAL_BN_MODES}, got {eval_bn!r}")
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise ValueError(f"Tiramisu: dtype must be float32 or float64, got {dtype}")
        pools = int(pools)
        blocks = _layers_list(layers, pools)
        k = int(growth_rate)
        rng = _as_rng(rng)
        self.dtype = dtype
        self.config = {"in_channels": int(in_channels), "num_classes": int(num_classes),
                       "first_filters": int(first_filters), "growth_rate": k,
                       "layers": blocks, "pools": pools, "dropout": float(dropout),
                       "memory_efficient": bool(memory_efficient), "eval_bn": eval_bn}

        self.firstconv = Conv2d(in_channels, first_filters, 3, padding=1, bias=True, rng=rng,
                                dtype=dtype)
        c = int(first_filters)
        skip_channels = []
        self.down_blocks: List[DenseBlock] = []
        self.trans_down: List[TransitionDown] = []
        for i in range(pools):
            block = DenseBlock(c, k, blocks[i], dropout, False, memory_efficient, rng, dtype)
            c = block.out_channels
            skip_channels.append(c)
            self.down_blocks.append(block)
            self.trans_down.append(TransitionDown(c, dropout, rng, dtype, memory_efficient))
        self.bottleneck = DenseBlock(c, k, blocks[pools], dropout, True, memory_efficient, rng,
                                     dtype)
        c = self.bottleneck.out_channels
        self.trans_up: List[TransitionUp] = []
        self.up_blocks: List[DenseBlock] = []
        for i in range(pools):
            self.trans_up.append(TransitionUp(c, c, rng, dtype))
            last = i == pools - 1
            block = DenseBlock(c + skip_channels[pools - 1 - i], k, blocks[pools + 1 + i],
                               dropout, not last, memory_efficient, rng, dtype)
            self.up_blocks.append(block)
            c = block.out_channels
        self.finalconv = Conv2d(c, num_classes, 1, padding=0, bias=True, rng=rng, dtype=dtype)
        self.eval_bn = eval_bn
        self._pad = None

    # -- switches ----------------------------------------------------------------------------------
    @property
    def memory_efficient(self) -> bool:
        return self.config["memory_efficient"]

    @memory_efficient.setter
    def memory_efficient(self, value: bool) -> None:
        """Switch every dense block and transition down (between training steps)."""
        self.config["memory_efficient"] = bool(value)
        for _, layer in self.named_layers():
            if isinstance(layer, (DenseBlock, _NormReLUConv)):
                layer.memory_efficient = bool(value)

    @property
    def eval_bn(self) -> str:
        return self.config["eval_bn"]

    @eval_bn.setter
    def eval_bn(self, value: str) -> None:
        if value not in EVAL_BN_MODES:
            raise ValueError(f"Tiramisu: eval_bn must be one of {EVAL_BN_MODES}, got {value!r}")
        self.config["eval_bn"] = value
        for _, layer in self.named_layers():
            if isinstance(layer, _NormReLUConv):
                layer.eval_bn = value

    @property
    def pools(self) -> int:
        return self.config["pools"]

    @property
    def num_classes(self) -> int:
        return self.config["num_classes"]

    @property
    def in_channels(self) -> int:
        return self.config["in_channels"]

    # -- forward / backward -----------------------------------------------------------------------
    def forward(self, x: np.ndarray) -> np.ndarray:
        check_input("Tiramisu", x, ndim=4, channels=self.in_channels)
        _check_dtype("Tiramisu", x, self.dtype)
        n, _, h, w = x.shape
        if h < 1 or w < 1 or n < 1:
            raise ValueError(f"Tiramisu: empty input of shape {x.shape}")
        step = 2 ** self.pools
        ph, pw = -h % step, -w % step
        batch_stats = self.training or self.eval_bn == "batch"
        if batch_stats and n * ((h + ph) // step) * ((w + pw) // step) < 2:
            raise ValueError(f"Tiramisu: an input of shape {x.shape} leaves one value per "
                             f"channel after {self.pools} poolings, and batch norm with batch "
                             f"statistics needs at least 2: give a larger image or batch, or "
                             f"use eval mode with running statistics")
        if ph or pw:  # pad bottom / right to a multiple of 2**pools, crop the logits back
            x = np.pad(x, ((0, 0), (0, 0), (0, ph), (0, pw)))
        self._pad = (n, h, w, ph, pw)

        y = self.firstconv.forward(x)
        skips = []
        for block, down in zip(self.down_blocks, self.trans_down):
            y = block.forward(y)
            skips.append(y)
            y = down.forward(y)
        y = self.bottleneck.forward(y)
        for up, block in zip(self.trans_up, self.up_blocks):
            skip = skips.pop()
            if self.memory_efficient:  # concatenate straight into the block's buffer
                buf = block.new_buffer(n, skip.shape[2], skip.shape[3])
                up.forward(y, skip, out=buf[:, :block.in_channels])
                y = block.forward_buffer(buf)
            else:
                y = block.forward(up.forward(y, skip))
        logits = self.finalconv.forward(y)
        return logits[:, :, :h, :w] if (ph or pw) else logits

    def backward(self, dlogits: np.ndarray) -> np.ndarray:
        """``dx`` for ``dlogits = ∂L/∂logits``; adds every parameter's gradient into ``grads``."""
        if self._pad is None:
            raise ValueError("Tiramisu: backward called before forward")
        n, h, w, ph, pw = self._pad
        expect = (n, self.num_classes, h, w)
        if not isinstance(dlogits, np.ndarray) or dlogits.shape != expect \
                or dlogits.dtype.kind != "f":   # a complex one lost its imaginary part
            raise ValueError(f"Tiramisu: expected float dlogits of shape {expect}, got "
                             f"{getattr(dlogits, 'dtype', type(dlogits).__name__)} "
                             f"{getattr(dlogits, 'shape', '')}")
        d = np.asarray(dlogits, dtype=self.dtype)
        if ph or pw:  # the padded border's logits were cropped off: zero gradient there
            d = np.pad(d, ((0, 0), (0, 0), (0, ph), (0, pw)))
        d = self.finalconv.backward(d)
        dskips: List[Optional[np.ndarray]] = [None] * self.pools
        for i in reversed(range(self.pools)):
            d = self.up_blocks[i].backward(d, overwrite_dout=True)
            d, dskip = self.trans_up[i].backward(d)
            # a copy of the skip part lets the up block's whole gradient buffer go
            dskips[self.pools - 1 - i] = dskip.copy()
        d = self.bottleneck.backward(d)
        for i in reversed(range(self.pools)):
            d = self.trans_down[i].backward(d)
            d += dskips[i]  # the down block's output also fed the up path
            dskips[i] = None
            d = self.down_blocks[i].backward(d, overwrite_dout=True)
        dx = self.firstconv.backward(d)
        self._pad = None
        return dx[:, :, :h, :w] if (ph or pw) else dx

    # -- weights on disk ---------------------------------------------------------------------------
    def save(self, path) -> Path:
        """Write ``config``, every parameter and buffer and the format version to ``path``.

        An ``.npz`` (compressed) with the entries ``__format__`` (the int
        :data:`FORMAT_VERSION`), ``__config__`` (``config`` as a JSON string) and one array per
        ``state_dict`` name (``firstconv.weight``, ``down_blocks.0.layers.1.norm.running_mean``,
        …).  Written to a temporary file in the same directory and renamed over ``path``
        (:func:`tinyseg.io.atomic_save_npz`), so an interrupted save leaves the old file or the
        new one, never half of one.
        """
        return atomic_save_npz(path, self.arrays())

    def arrays(self) -> Dict[str, np.ndarray]:
        """What :meth:`save` writes: ``__format__``, ``__config__`` and the ``state_dict``.

        Training checkpoints (``tinyseg.checkpoint``) add their own ``__``-prefixed entries to
        this dict, so :meth:`from_file` opens a checkpoint as well as a plain weight file.
        """
        arrays: Dict[str, np.ndarray] = {
            "__format__": np.array(FORMAT_VERSION, dtype=np.int64),
            "__config__": np.array(json.dumps(self.config, sort_keys=True)),
        }
        arrays.update(self.state_dict())
        return arrays

    @staticmethod
    def read_file(path) -> Tuple[dict, Dict[str, np.ndarray]]:
        """``(config, state)`` from a file written by :meth:`save`, after checking its format."""
        path = Path(path)
        if path.is_dir():
            raise IsADirectoryError(f"Tiramisu: {path} is a directory, not a weight file")
        if not path.is_file():
            raise FileNotFoundError(f"Tiramisu: no weight file at {path}")
        try:
            data = read_npz(path)
        except Exception as e:  # not an npz, truncated, pickled objects...
            reason = str(e) if type(e) is ValueError else f"{type(e).__name__}: {e}"
            raise ValueError(f"Tiramisu: cannot read {path} as a tinyseg weight file "
                             f"({reason})") from e
        if "__format__" not in data or "__config__" not in data:
            raise ValueError(f"Tiramisu: {path} is not a tinyseg Tiramisu weight file "
                             f"(no __format__ / __config__ entries)")
        version, config = data.pop("__format__"), data.pop("__config__")
        if version.shape != () or version.dtype.kind not in "iu":
            raise ValueError(f"Tiramisu: {path} has a damaged __format__ entry ({version!r})")
        if int(version) != FORMAT_VERSION:
            raise ValueError(f"Tiramisu: {path} has weight-file format version {int(version)}; "
                             f"this tinyseg reads version {FORMAT_VERSION}")
        try:
            config = json.loads(str(config))
        except json.JSONDecodeError as e:
            raise ValueError(f"Tiramisu: {path} has a damaged __config__ entry ({e})") from None
        if not isinstance(config, dict):
            raise ValueError(f"Tiramisu: {path} has a damaged __config__ entry (not a JSON "
                             f"object)")
        return config, data

    def load(self, path) -> "Tiramisu":
        """Load the weights (parameters and buffers) of a file written by :meth:`save`.

        Refuses, with a ``ValueError`` naming the first mismatch, a file whose architecture
        (the :data:`ARCH_KEYS` entries of ``config``) differs from this model's, or whose
        arrays are missing, unexpected or of another shape.  Nothing is changed unless every
        check passes.  Runtime options (``dropout``, ``memory_efficient``, ``eval_bn``) stay
        this model's; :meth:`from_file` builds a model with the file's.  Values are cast to
        this model's dtype.
        """
        config, state = self.read_file(path)
        # other "__"-prefixed entries belong to training checkpoints (optimiser, metadata)
        state = {k: v for k, v in state.items() if not k.startswith("__")}
        for key in ARCH_KEYS:
            if config.get(key) != self.config[key]:
                raise ValueError(f"Tiramisu.load: {path} was saved from a model with "
                                 f"{key}={config.get(key)!r}, this model has "
                                 f"{key}={self.config[key]!r}")
        own = self.state_dict()
        for name, target in own.items():
            if name not in state:
                raise ValueError(f"Tiramisu.load: {path} has no '{name}'")
            if state[name].shape != target.shape:
                raise ValueError(f"Tiramisu.load: '{name}' has shape {state[name].shape} in "
                                 f"{path}, expected {target.shape}")
        extra = [name for name in state if name not in own]
        if extra:
            raise ValueError(f"Tiramisu.load: {path} has an unexpected '{extra[0]}'"
                             + (f" and {len(extra) - 1} more" if len(extra) > 1 else ""))
        damage = damaged_weights(state)
        if damage:
            raise ValueError(f"Tiramisu.load: {path}: {damage}")
        try:
            self.load_state_dict(state)         # checks every array before it copies one
        except ValueError as e:
            raise ValueError(f"Tiramisu.load: {path}: {str(e).split(': ', 1)[-1]}") from None
        return self

    @classmethod
    def from_file(cls, path, rng=None, dtype=np.float32, **overrides) -> "Tiramisu":
        """A new model with the file's ``config`` (updated by ``overrides``) and weights."""
        config, _ = cls.read_file(path)
        config.update(overrides)
        try:
            model = cls(**config, rng=rng, dtype=dtype)
        except (TypeError, ValueError) as e:     # an unknown key, layers "abc", ...
            raise ValueError(f"Tiramisu.from_file: {path}: its configuration does not build "
                             f"a Tiramisu ({e})") from None
        return model.load(path)

    # -- sizes and memory -------------------------------------------------------------------------
    def stages(self, height: int, width: int, batch: int = 1) -> List[dict]:
        """One dict per stage, in forward order: ``name``, ``out`` ``(C, H, W)``, ``params``,
        ``kept_efficient`` and ``kept_naive`` (bytes of activations the stage keeps for the
        backward pass in training mode with either dense-block implementation, see
        :func:`_kept_bytes`)."""
        if min(height, width, batch) < 1:
            raise ValueError(f"Tiramisu.stages: height, width and batch must be at least 1, "
                             f"got {height}, {width}, {batch}")
        return _stages(self, height, width, batch)

    def summary(self, height: int = 224, width: int = 224, batch: int = 1,
                measure: bool = False) -> str:
        """A table of the stages: output size, parameters, activation memory; and totals.

        The memory column is what each stage keeps from the forward pass for the backward
        pass (training mode, ``batch`` images of ``height × width``, this model's dtype and
        dense-block implementation), computed from the shapes.  The totals give both
        implementations.  ``measure=True`` also runs one training step on zeros and reports
        its measured peak (``tinyseg.memory.training_step_peak`` on a fresh copy of this
        model; slow for big inputs).
        """
        from .memory import format_bytes, fresh_copy, training_step_peak

        rows = self.stages(height, width, batch)
        key = "kept_efficient" if self.memory_efficient else "kept_naive"
        mode = "shared buffer" if self.memory_efficient else "naive"
        head = (f"Tiramisu(in_channels={self.in_channels}, num_classes={self.num_classes}, "
                f"first_filters={self.config['first_filters']}, "
                f"growth_rate={self.config['growth_rate']}, layers={self.config['layers']}, "
                f"pools={self.pools}, dropout={self.config['dropout']}, "
                f"eval_bn={self.eval_bn!r}), {self.dtype.name}")
        lines = [head, f"input {batch} × {self.in_channels} × {height} × {width}; memory kept "
                       f"for backward ({mode} dense blocks)", ""]
        lines.append(f"{'stage':<16}{'output C × H × W':>20}{'params':>12}{'activations':>14}")
        lines.append("-" * 62)
        for r in rows:
            c, h, w = r["out"]
            lines.append(f"{r['name']:<16}{f'{c} × {h} × {w}':>20}{r['params']:>12,}"
                         f"{format_bytes(r[key]):>14}")
        lines.append("-" * 62)
        total_p = sum(r["params"] for r in rows)
        assert total_p == self.num_parameters()
        eff = sum(r["kept_efficient"] for r in rows)
        naive = sum(r["kept_naive"] for r in rows)
        kept = format_bytes(sum(r[key] for r in rows))
        lines.append(f"{'total':<16}{'':>20}{total_p:>12,}{kept:>14}")
        lines.append("")
        lines.append(f"parameters: {total_p:,} ({format_bytes(total_p * self.dtype.itemsize)}); "
                     f"parameters + gradients + RMSprop state: "
                     f"{format_bytes(3 * total_p * self.dtype.itemsize)}")
        lines.append(f"activations kept for backward: shared buffer {format_bytes(eff)}, "
                     f"naive {format_bytes(naive)} (ratio {eff / naive:.2f})")
        if measure:  # on a fresh copy: this model's state, gradients and rngs stay as they are
            x = np.zeros((batch, self.in_channels, height, width), dtype=self.dtype)
            peak = training_step_peak(fresh_copy(self), x)
            lines.append(f"measured peak of one training step (forward + backward, {mode}): "
                         f"{format_bytes(peak)}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config.items())
        return f"Tiramisu({args})"


def damaged_weights(state: Dict[str, np.ndarray]) -> Optional[str]:
    """What is wrong with weights no training run can write (``None``: nothing): NaN or
    infinite values, or a negative batch-norm running variance (its square root in batch
    norm gives NaN, and a mask of all background without an error)."""
    for name, v in state.items():
        v = np.asarray(v)
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            return (f"'{name}' holds NaN or infinite values (a damaged file, or weights from a "
                    f"run that diverged)")
        if name.endswith("running_var") and v.dtype.kind in "iuf" and np.any(v < 0):
            return f"'{name}' holds negative values (a variance is at least 0: a damaged file)"
    return None


# ---------------------------------------------------------------------------------------------
# Activation memory, from the shapes
# ---------------------------------------------------------------------------------------------

def _stages(model: Tiramisu, height: int, width: int, batch: int) -> List[dict]:
    """See :meth:`Tiramisu.stages`.

    What each stage keeps until the backward pass, with ``M = N·H·W`` values per channel at
    the stage's resolution, ``nbytes`` bytes per float, 1 byte per boolean mask value
    (dropout, ReLU) and per max-pool arg-max:

    shared buffer (``memory_efficient=True``)
      * dense block: its buffer, ``(c₀ + L·k)·M·nbytes``, and the dropout masks, ``L·k·M``;
      * transition down: dropout mask ``c·M`` and the pool's arg-max ``c·M/4``;
      * transition up: nothing (it writes into the next block's buffer; its convolution
        keeps a reference to its input, the previous block's new maps, already counted);
      * first / final conv: nothing new (their inputs are kept by someone else).
    naive
      * dense layer on ``c`` channels: the concatenation it reads (``c·M·nbytes``, for layers
        after the first), its ReLU mask ``c·M`` and ReLU output ``c·M·nbytes`` (the
        convolution's input), its dropout mask ``k·M``; plus the block's output: the last
        concatenation, or ``[x₁ … x_L]`` for the bottleneck and up blocks;
      * transition down: ReLU mask and output, dropout mask, arg-max, and its pooled output
        (the next block's first input);
      * transition up: the concatenation ``[up, skip]``;
      * first conv: its output (the first block's input).

    Per-channel statistics (a few floats per channel) are left out.
    """
    cfg = model.config
    nbytes = model.dtype.itemsize
    k = cfg["growth_rate"]
    drop = 1 if cfg["dropout"] > 0 else 0
    step = 2 ** cfg["pools"]
    H = height + (-height % step)
    W = width + (-width % step)
    pad_bytes = batch * cfg["in_channels"] * H * W * nbytes if (H, W) != (height, width) else 0

    def params(layer: Layer) -> int:
        return layer.num_parameters()

    def block_kept(block: DenseBlock, M: int) -> Tuple[int, int]:
        c0, L = block.in_channels, block.num_layers
        eff = block.total_channels * M * nbytes + drop * L * k * M
        naive = 0
        for i in range(L):
            c = c0 + i * k
            naive += (c * M * nbytes if i > 0 else 0) + c * M * (1 + nbytes) + drop * k * M
        if block.new_features_only:  # [x₁ … x_L]; the last concatenation is not kept
            naive += L * k * M * nbytes
        else:  # the last concatenation is the block's output
            naive += block.total_channels * M * nbytes
        return eff, naive

    rows = []
    m = cfg["first_filters"]
    M = batch * H * W
    rows.append(dict(name="firstconv", out=(m, H, W), params=params(model.firstconv),
                     kept_efficient=pad_bytes, kept_naive=pad_bytes + m * M * nbytes))
    h, w = H, W
    for i, (block, down) in enumerate(zip(model.down_blocks, model.trans_down)):
        M = batch * h * w
        eff, naive = block_kept(block, M)
        rows.append(dict(name=f"down_blocks.{i}", out=(block.out_channels, h, w),
                         params=params(block), kept_efficient=eff, kept_naive=naive))
        c = block.out_channels
        h, w = h // 2, w // 2
        q = batch * h * w
        eff = drop * c * M + c * q
        naive = c * M * (1 + nbytes) + drop * c * M + c * q + c * q * nbytes
        rows.append(dict(name=f"trans_down.{i}", out=(c, h, w), params=params(down),
                         kept_efficient=eff, kept_naive=naive))
    M = batch * h * w
    eff, naive = block_kept(model.bottleneck, M)
    rows.append(dict(name="bottleneck", out=(model.bottleneck.out_channels, h, w),
                     params=params(model.bottleneck), kept_efficient=eff, kept_naive=naive))
    for i, (up, block) in enumerate(zip(model.trans_up, model.up_blocks)):
        h, w = h * 2, w * 2
        M = batch * h * w
        rows.append(dict(name=f"trans_up.{i}", out=(block.in_channels, h, w),
                         params=params(up), kept_efficient=0,
                         kept_naive=block.in_channels * M * nbytes))
        eff, naive = block_kept(block, M)
        rows.append(dict(name=f"up_blocks.{i}", out=(block.out_channels, h, w),
                         params=params(block), kept_efficient=eff, kept_naive=naive))
    rows.append(dict(name="finalconv", out=(cfg["num_classes"], height, width),
                     params=params(model.finalconv), kept_efficient=0, kept_naive=0))
    return rows


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

def _preset(defaults: dict) -> Callable[..., Tiramisu]:
    def make(num_classes: int = 2, rng=None, dtype=np.float32, **overrides) -> Tiramisu:
        return Tiramisu(**{**defaults, "num_classes": num_classes, **overrides}, rng=rng,
                        dtype=dtype)
    return make


fc_densenet56 = _preset(dict(first_filters=48, growth_rate=12, layers=4, pools=5))
fc_densenet56.__name__ = "fc_densenet56"
fc_densenet56.__doc__ = """FC-DenseNet56 (paper table): 4 layers per block, k = 12, m = 48, 5 pools.

1,376,795 parameters with 11 classes (1,375,058 with 2).  ``num_classes=2, rng=None,
dtype=np.float32, **overrides`` (any ``Tiramisu`` argument)."""

fc_densenet67 = _preset(dict(first_filters=48, growth_rate=16, layers=5, pools=5))
fc_densenet67.__name__ = "fc_densenet67"
fc_densenet67.__doc__ = """FC-DenseNet67 (paper table): 5 layers per block, k = 16, m = 48, 5 pools.

3,463,243 parameters with 11 classes (3,460,642 with 2)."""

fc_densenet103 = _preset(dict(first_filters=48, growth_rate=16,
                              layers=[4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4], pools=5))
fc_densenet103.__name__ = "fc_densenet103"
fc_densenet103.__doc__ = """FC-DenseNet103 (paper table): blocks of 4, 5, 7, 10, 12 | 15 |
12, 10, 7, 5, 4 layers, k = 16, m = 48, 5 pools.

9,322,091 parameters with 11 classes (9,319,778 with 2)."""

tiramisu_small = _preset(dict(first_filters=24, growth_rate=12, layers=4, pools=4))
tiramisu_small.__name__ = "tiramisu_small"
tiramisu_small.__doc__ = """A small Tiramisu for a 2-core CPU: 4 layers per block, k = 12, m = 24,
4 pools (sides that are multiples of 16 need no padding).

853,970 parameters with 2 classes (855,491 with 11).  The model of the training command's
``medium`` preset (96 × 96 images) and of the bundled weights."""

tiramisu_tiny = _preset(dict(first_filters=16, growth_rate=8, layers=3, pools=3))
tiramisu_tiny.__name__ = "tiramisu_tiny"
tiramisu_tiny.__doc__ = """The smallest preset, for tests, lessons and quick experiments: 3 layers
per block, k = 8, m = 16, 3 pools (sides that are multiples of 8 need no padding).

147,650 parameters with 2 classes (148,451 with 11).  Also the model of the training
command's default ``small`` preset (64 × 64 images)."""

PRESETS: Dict[str, Callable[..., Tiramisu]] = {
    "fc_densenet56": fc_densenet56,
    "fc_densenet67": fc_densenet67,
    "fc_densenet103": fc_densenet103,
    "tiramisu_small": tiramisu_small,
    "tiramisu_tiny": tiramisu_tiny,
}
