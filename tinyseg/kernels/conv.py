"""Convolution and transposed convolution, fast.  Equations: ``tinyseg.reference.conv``.

Two numba kernels move data, NumPy's BLAS (``np.matmul``) does the arithmetic:

* ``_im2col_rows`` (gather) fills rows i0 … i0+R−1 of one image's column matrix:
  ``cols[(c,p,q), i, j] = x[n, c, (i0+i)·sh+p−ph, j·sw+q−pw]``, 0 outside ``x``;
* ``_col2im_rows_add`` (scatter-add, its adjoint):
  ``img[n, c, (i0+i)·sh+p−ph, j·sw+q−pw] += cols[(c,p,q), i, j]``.

They are private and more general than the readable ``tinyseg.reference.conv.im2col`` /
``col2im`` (separate row / column stride and padding, padding of any sign, a block of rows
into a caller's buffer): the scatter route and the blocking need that.

A convolution can be computed two ways, and both are used:

* **gather** (classic im2col): ``Y = W₂ · im2col(X)``, ``W₂`` (O, C·kh·kw).  Temporary of
  C·kh·kw × Ho·Wo per image.
* **scatter**: ``Z = Wₛ · X`` (O·kh·kw × H·W), then ``Y = col2im(Z)``, where ``Wₛ`` is the
  transposed convolution's weight (C, O, kh, kw) read as an (O·kh·kw) × C matrix (lesson
  2's ``Wₛ``).  This is the transposed convolution's forward pass; a stride-1 convolution
  is a stride-1 transposed convolution with the kernel rotated 180° and in / out swapped
  (``_flip``) and padding k − 1 − P.  Temporary of O·kh·kw × H·W per image.

``conv2d`` with stride 1 takes the route with the smaller temporary: gather when C ≤ O,
scatter when C > O (the Tiramisu's dense layers go from up to a few hundred channels down to
the growth rate, 8-16 in the presets: 10-15x less memory traffic).  Strided convolutions
gather; transposed convolutions scatter forward and gather backward; a 1×1 stride-1
convolution is one matrix product.  Work goes image by image (and in blocks of rows on very
large images, see ``CHUNK_BYTES``), so temporaries stay bounded and are reused.

**Threads.**  Images are independent, so a batch is split into one contiguous block of
images per thread (``numba.get_num_threads()``, which ``--threads`` sets) and the blocks run
in Python threads at the same time: the numba kernels release the GIL (``nogil=True``) and
so do NumPy's matrix products, each of which runs on one OpenBLAS thread (tinyseg keeps
OpenBLAS at one thread, see ``tinyseg.cli``).  Each thread has its own column buffer and
writes only its own images.  The weight gradient is a sum over images: every image's share
goes to its own slot and the slots are added in image order, so the result is the same, bit
for bit, with any number of threads.  The kernels themselves stay serial (no ``prange``):
the parallelism is one level up, where each task is a whole image (large, equal, no
synchronisation inside).  A batch of one image runs on one core.

Arguments and results are exactly those of the reference functions; the layers validate
shapes and dtypes before calling, and each public function checks them again (``_check``,
no pass over the data), so that a direct call with arrays that do not fit raises a
``ValueError`` instead of crashing inside numba.  ``bias`` may be ``None``.
Inputs that are not C-contiguous (views) are copied once.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Optional

import numba
import numpy as np
from numba import njit

from ._args import array, at_least, fail, same_dtype

__all__ = ["conv2d_forward", "conv2d_backward",
           "conv_transpose2d_forward", "conv_transpose2d_backward"]


# -- the two numba kernels ------------------------------------------------------------------------

@njit(cache=True, nogil=True)
def _im2col_rows(x, n, i0, kh, kw, sh, sw, ph, pw, cols):
    """Rows ``i0 … i0+R−1`` of image ``n``'s column matrix, into ``cols`` (C·kh·kw, R, Wc).

    ``cols[(c·kh+p)·kw+q, i, j] = x[n, c, (i0+i)·sh+p−ph, j·sw+q−pw]``, 0 outside ``x``.
    Padding may be any integer (the scatter route uses k − 1 − padding, which can be < 0).
    """
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    R, wc = cols.shape[1], cols.shape[2]
    zero = x.dtype.type(0)
    for c in range(C):
        for p in range(kh):
            for q in range(kw):
                r = (c * kh + p) * kw + q
                # the columns j with 0 <= j·sw + q − pw < W
                j0 = min(max(0, -((q - pw) // sw)), wc)
                j1 = min(max((W - 1 + pw - q) // sw + 1, j0), wc)
                off = q - pw
                for i in range(R):
                    u = (i0 + i) * sh + p - ph
                    if u < 0 or u >= H:
                        for j in range(wc):
                            cols[r, i, j] = zero
                    else:
                        for j in range(j0):
                            cols[r, i, j] = zero
                        for j in range(j0, j1):
                            cols[r, i, j] = x[n, c, u, j * sw + off]
                        for j in range(j1, wc):
                            cols[r, i, j] = zero


@njit(cache=True, nogil=True)
def _col2im_rows_add(cols, i0, kh, kw, sh, sw, ph, pw, img, n):
    """The adjoint of ``_im2col_rows``: add ``cols`` (C·kh·kw, R, Wc) into image ``n``.

    ``img[n, c, (i0+i)·sh+p−ph, j·sw+q−pw] += cols[(c·kh+p)·kw+q, i, j]`` where in range.
    """
    C, H, W = img.shape[1], img.shape[2], img.shape[3]
    R, wc = cols.shape[1], cols.shape[2]
    for c in range(C):
        for p in range(kh):
            for q in range(kw):
                r = (c * kh + p) * kw + q
                j0 = min(max(0, -((q - pw) // sw)), wc)
                j1 = min(max((W - 1 + pw - q) // sw + 1, j0), wc)
                off = q - pw
                for i in range(R):
                    u = (i0 + i) * sh + p - ph
                    if u >= 0 and u < H:
                        for j in range(j0, j1):
                            img[n, c, u, j * sw + off] += cols[r, i, j]


# -- the routes: loops over images and row blocks, BLAS in between ------------------------------

CHUNK_BYTES = 32 << 20
"""Upper bound on one block of the column matrix (per image, R rows at a time): bounds the
temporary memory of a convolution on large images.  Blocks are large on purpose: every
block costs one BLAS call.  Measured when those calls were multi-threaded (before tinyseg
kept OpenBLAS at one thread), where each call's thread synchronisation was expensive on a
busy machine: 1 MiB blocks, which would stay in L2, ran 1.5-5x slower than whole images on
the shared 2-core machine."""


def _rows_per_chunk(rows, bytes_per_row):
    return int(max(1, min(rows, CHUNK_BYTES // max(1, bytes_per_row))))


def _threads():
    """How many images are convolved at once: numba's thread count (``--threads``)."""
    return max(1, int(numba.get_num_threads()))


_pool: Optional[ThreadPoolExecutor] = None     # started on first use, grown when needed
_pool_size = 0


def _in_parallel(images, N):
    """Call ``images(lo, hi)`` on contiguous blocks of the images 0 … N−1, one per thread.

    The calling thread takes the first block, pool threads the others; returns when all
    are done (and re-raises the first error).  The blocks write to disjoint images, so no
    locks are needed: the numba kernels and NumPy's matrix products release the GIL.
    """
    T = min(_threads(), N)
    if T <= 1:
        images(0, N)
        return
    global _pool, _pool_size
    if _pool_size < T - 1:
        if _pool is not None:
            _pool.shutdown(wait=False)     # its threads finish and exit
        _pool = ThreadPoolExecutor(max_workers=T - 1, thread_name_prefix="tinyseg-conv")
        _pool_size = T - 1
    bounds = [N * t // T for t in range(T + 1)]
    futures = [_pool.submit(images, bounds[t], bounds[t + 1]) for t in range(1, T)]
    images(bounds[0], bounds[1])
    for f in futures:
        f.result()


def _sum_images(parts):
    """``parts[0] + parts[1] + …`` in image order: the same float sums for any thread count."""
    if parts.shape[0] == 0:                 # a batch of no images: a zero gradient
        return np.zeros(parts.shape[1:], dtype=parts.dtype)
    total = parts[0].copy()
    for n in range(1, parts.shape[0]):
        total += parts[n]
    return total


def _add_gram(acc, a, b):
    """``acc += a · bᵀ`` for a (m, L), b (k, L) with L large (a weight gradient).

    Computed as ``(b · aᵀ)ᵀ`` when b has more rows.  Measured when OpenBLAS still ran on
    several threads (before tinyseg kept it at one): it splits the work over threads along
    the first dimension, and with few rows there (e.g. 48 × 144 with L = 50 176) the product
    took 5x longer than the other way round.  Kept: with one thread it costs nothing.
    """
    if a.shape[0] >= b.shape[0]:
        acc += np.matmul(a, b.T)
    else:
        acc += np.matmul(b, a.T).T


def _gather_forward(x, weight, stride, P, ho, wo):
    """y[n] = W₂ · cols[n], cols built R output rows at a time.  ``weight`` (O, C, kh, kw)."""
    N = x.shape[0]
    O, C, kh, kw = weight.shape
    K = C * kh * kw
    w2 = weight.reshape(O, K)
    y = np.empty((N, O, ho * wo), dtype=x.dtype)
    R = _rows_per_chunk(ho, K * wo * x.itemsize)

    def images(lo, hi):
        buf = np.empty(K * R * wo, dtype=x.dtype)
        for n in range(lo, hi):
            for i0 in range(0, ho, R):
                r = min(R, ho - i0)
                cols = buf[:K * r * wo].reshape(K, r, wo)
                _im2col_rows(x, n, i0, kh, kw, stride, stride, P, P, cols)
                np.matmul(w2, cols.reshape(K, r * wo), out=y[n, :, i0 * wo:(i0 + r) * wo])

    _in_parallel(images, N)
    return y.reshape(N, O, ho, wo)


def _gather_backward(dout, x, weight, stride, P):
    """Gradients of ``_gather_forward``: dW₂ = Σ dout·colsᵀ, dx = col2im(W₂ᵀ·dout)."""
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    ho, wo = dout.shape[2], dout.shape[3]
    K = C * kh * kw
    w2t = np.ascontiguousarray(weight.reshape(O, K).T)
    d3 = dout.reshape(N, O, ho * wo)
    dx = np.zeros_like(x)
    dw_n = np.zeros((N, O, K), dtype=x.dtype)        # each image's share of dW₂
    R = _rows_per_chunk(ho, 2 * K * wo * x.itemsize)

    def images(lo, hi):
        buf = np.empty(K * R * wo, dtype=x.dtype)
        dbuf = np.empty(K * R * wo, dtype=x.dtype)
        for n in range(lo, hi):
            for i0 in range(0, ho, R):
                r = min(R, ho - i0)
                cols = buf[:K * r * wo].reshape(K, r, wo)
                dcols = dbuf[:K * r * wo].reshape(K, r, wo)
                d = d3[n, :, i0 * wo:(i0 + r) * wo]
                _im2col_rows(x, n, i0, kh, kw, stride, stride, P, P, cols)
                _add_gram(dw_n[n], d, cols.reshape(K, r * wo))
                np.matmul(w2t, d, out=dcols.reshape(K, r * wo))
                _col2im_rows_add(dcols, i0, kh, kw, stride, stride, P, P, dx, n)

    _in_parallel(images, N)
    return dx, _sum_images(dw_n).reshape(weight.shape)


def _scatter_forward(x, weight, stride, ph, pw, ho, wo):
    """y[n] = col2im(Wₛ · x[n]), R input rows at a time.  ``weight`` (C, O, kh, kw)."""
    N, C, H, W = x.shape
    _, O, kh, kw = weight.shape
    M = O * kh * kw
    w2t = np.ascontiguousarray(weight.reshape(C, M).T)
    x3 = x.reshape(N, C, H * W)
    y = np.zeros((N, O, ho, wo), dtype=x.dtype)
    R = _rows_per_chunk(H, M * W * x.itemsize)

    def images(lo, hi):
        buf = np.empty(M * R * W, dtype=x.dtype)
        for n in range(lo, hi):
            for i0 in range(0, H, R):
                r = min(R, H - i0)
                z = buf[:M * r * W].reshape(M, r, W)
                np.matmul(w2t, x3[n, :, i0 * W:(i0 + r) * W], out=z.reshape(M, r * W))
                _col2im_rows_add(z, i0, kh, kw, stride, stride, ph, pw, y, n)

    _in_parallel(images, N)
    return y


def _scatter_backward(dout, x, weight, stride, ph, pw):
    """(dx, dweight) of ``_scatter_forward``: cols = im2col(dout) on x's grid serves both."""
    N, C, H, W = x.shape
    _, O, kh, kw = weight.shape
    M = O * kh * kw
    w2 = weight.reshape(C, M)
    x3 = x.reshape(N, C, H * W)
    dx = np.empty((N, C, H * W), dtype=x.dtype)
    dw_n = np.zeros((N, C, M), dtype=x.dtype)        # each image's share of dW₂
    R = _rows_per_chunk(H, M * W * x.itemsize)

    def images(lo, hi):
        buf = np.empty(M * R * W, dtype=x.dtype)
        for n in range(lo, hi):
            for i0 in range(0, H, R):
                r = min(R, H - i0)
                cols = buf[:M * r * W].reshape(M, r, W)
                _im2col_rows(dout, n, i0, kh, kw, stride, stride, ph, pw, cols)
                c2 = cols.reshape(M, r * W)
                np.matmul(w2, c2, out=dx[n, :, i0 * W:(i0 + r) * W])
                _add_gram(dw_n[n], x3[n, :, i0 * W:(i0 + r) * W], c2)

    _in_parallel(images, N)
    return dx.reshape(N, C, H, W), _sum_images(dw_n).reshape(weight.shape)


def _pointwise_forward(x, weight):
    """A 1×1 stride-1 convolution: y[n] = W₂ · x[n], one matrix product per image."""
    N, C, H, W = x.shape
    O = weight.shape[0]
    w2 = weight.reshape(O, C)
    x3 = x.reshape(N, C, H * W)
    y = np.empty((N, O, H * W), dtype=x.dtype)

    def images(lo, hi):
        for n in range(lo, hi):
            np.matmul(w2, x3[n], out=y[n])

    _in_parallel(images, N)
    return y.reshape(N, O, H, W)


def _pointwise_backward(dout, x, weight):
    """(dx, dweight) of ``_pointwise_forward``: dx[n] = W₂ᵀ · dout[n], dW₂ = Σ dout[n]·x[n]ᵀ."""
    N, C, H, W = x.shape
    O = weight.shape[0]
    w2t = np.ascontiguousarray(weight.reshape(O, C).T)
    d3 = dout.reshape(N, O, H * W)
    x3 = x.reshape(N, C, H * W)
    dx = np.empty((N, C, H * W), dtype=x.dtype)
    dw_n = np.zeros((N, O, C), dtype=x.dtype)

    def images(lo, hi):
        for n in range(lo, hi):
            np.matmul(w2t, d3[n], out=dx[n])
            _add_gram(dw_n[n], d3[n], x3[n])

    _in_parallel(images, N)
    return dx.reshape(N, C, H, W), _sum_images(dw_n).reshape(weight.shape)


def _flip(weight):
    """(O, C, kh, kw) -> (C, O, kh, kw) with the kernel rotated 180°; its own inverse."""
    return np.ascontiguousarray(weight[:, :, ::-1, ::-1].transpose(1, 0, 2, 3))


def _add_bias(y, bias):
    if bias is not None:
        y += bias.reshape(1, -1, 1, 1)
    return y


# -- public functions: same names, arguments and results as tinyseg.reference.conv -------------

def _check(kernel, x, weight, bias, stride, padding, dout=None, output_padding=None):
    """The arguments' shapes, dtypes and sizes (``tinyseg.kernels._args``); returns
    ``(stride, padding, Ho, Wo)``.  ``output_padding`` is given for the transposed ones."""
    transposed = output_padding is not None
    array(kernel, "x", x, (None,) * 4)
    C = x.shape[1]
    array(kernel, "weight", weight, (C, None, None, None) if transposed else (None, C, None, None))
    O = weight.shape[0 if not transposed else 1]
    if bias is not None:
        array(kernel, "bias", bias, (O,))
    same_dtype(kernel, x=x, weight=weight, bias=bias, dout=dout)
    s, P = at_least(kernel, "stride", stride, 1), at_least(kernel, "padding", padding, 0)
    kh, kw = weight.shape[2], weight.shape[3]
    H, W = x.shape[2], x.shape[3]
    if transposed:
        op = at_least(kernel, "output_padding", output_padding, 0)
        if op >= s:
            fail(kernel, f"output_padding must be smaller than the stride, got {op} and {s}")
        ho, wo = (H - 1) * s - 2 * P + kh + op, (W - 1) * s - 2 * P + kw + op
    else:
        ho, wo = (H + 2 * P - kh) // s + 1, (W + 2 * P - kw) // s + 1
    if min(H, W, ho, wo, kh, kw) < 1:
        fail(kernel, f"no output for x {x.shape}, weight {weight.shape}, stride {s}, padding "
                     f"{P}: output size {ho}x{wo}")
    if dout is not None:
        array(kernel, "dout", dout, (x.shape[0], O, ho, wo))
    return s, P, ho, wo


def conv2d_forward(x, weight, bias, stride, padding):
    """Conv2d forward, (N, C, H, W) -> (N, O, Ho, Wo).  See ``tinyseg.reference.conv``."""
    s, P, ho, wo = _check("conv2d_forward", x, weight, bias, stride, padding)
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    if kh == 1 and kw == 1 and s == 1 and P == 0:
        y = _pointwise_forward(x, weight)
    elif s == 1 and C > O:
        y = _scatter_forward(x, _flip(weight), 1, kh - 1 - P, kw - 1 - P, ho, wo)
    else:
        y = _gather_forward(x, weight, s, P, ho, wo)
    return _add_bias(y, bias)


def conv2d_backward(dout, x, weight, stride, padding):
    """Conv2d backward: ``(dx, dweight, dbias)``.  See ``tinyseg.reference.conv``."""
    s, P, _, _ = _check("conv2d_backward", x, weight, None, stride, padding, dout)
    dout = np.ascontiguousarray(dout)
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    N, C, H, W = x.shape
    O, _, kh, kw = weight.shape
    db = dout.sum(axis=(0, 2, 3))
    if kh == 1 and kw == 1 and s == 1 and P == 0:
        dx, dw = _pointwise_backward(dout, x, weight)
    elif s == 1 and C > O:
        dx, dw_flipped = _scatter_backward(dout, x, _flip(weight), 1, kh - 1 - P, kw - 1 - P)
        dw = _flip(dw_flipped)
    else:
        dx, dw = _gather_backward(dout, x, weight, s, P)
    return dx, dw, db


def conv_transpose2d_forward(x, weight, bias, stride, padding, output_padding):
    """ConvTranspose2d forward, weight (in, out, kh, kw).  See ``tinyseg.reference.conv``."""
    s, P, ho, wo = _check("conv_transpose2d_forward", x, weight, bias, stride, padding,
                          output_padding=output_padding)
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    return _add_bias(_scatter_forward(x, weight, s, P, P, ho, wo), bias)


def conv_transpose2d_backward(dout, x, weight, stride, padding, output_padding):
    """ConvTranspose2d backward: ``(dx, dweight, dbias)``.  See ``tinyseg.reference.conv``."""
    s, P, _, _ = _check("conv_transpose2d_backward", x, weight, None, stride, padding, dout,
                        output_padding)
    dout = np.ascontiguousarray(dout)
    x = np.ascontiguousarray(x)
    weight = np.ascontiguousarray(weight)
    dx, dw = _scatter_backward(dout, x, weight, s, P, P)
    return dx, dw, dout.sum(axis=(0, 2, 3))
