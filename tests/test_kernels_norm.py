"""Batch-norm kernels (tinyseg.kernels.norm) against their NumPy twins, known values, and
finite differences."""
import numpy as np
import pytest
from hypothesis import given, settings, assume
from hypothesis import strategies as st

from tinyseg.gradcheck import gradcheck
from tinyseg.kernels import norm as K
from tinyseg.layers.base import Layer
from tinyseg.reference import norm as R

EPS = 1e-5
# Kernel vs reference: both compute in float64 and differ only in summation order.
# float64: agreement to 1e-13 relative (of the array's largest value; observed 3.8e-15).
# float32: the float64 results are rounded to float32 by both, so they differ by at most
# about one float32 ulp (~1.2e-7 relative) plus the ulp of a rounded mean times invstd:
# 2e-6 relative to the array's scale covers that for the data drawn below.
RTOL = {np.float32: 2e-6, np.float64: 1e-13}
GRAD_TOL = 1e-6  # gradcheck relative error bound (float64, central differences, eps=1e-6)


def close(a, b, dtype):
    """|a − b| ≤ tol · max(|b|, 1) elementwise-max (one scale per array)."""
    assert a.dtype == b.dtype == np.dtype(dtype)
    assert a.shape == b.shape
    scale = max(float(np.max(np.abs(b), initial=0.0)), 1.0)
    np.testing.assert_allclose(a, b, rtol=0, atol=RTOL[dtype] * scale)


def draw(seed, shape, dtype, offset=0.0, spread=1.0):
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    x = (offset + spread * rng.standard_normal(shape)).astype(dtype)
    weight = rng.uniform(0.5, 2.0, c).astype(dtype) * rng.choice([-1, 1], c).astype(dtype)
    bias = rng.standard_normal(c).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, weight, bias, dout


shapes = st.tuples(st.integers(1, 3), st.integers(1, 5), st.integers(1, 6), st.integers(1, 6))
dtypes = st.sampled_from([np.float32, np.float64])


@settings(max_examples=30, deadline=None)
@given(shape=shapes, dtype=dtypes, seed=st.integers(0, 2**31 - 1),
       offset=st.floats(-3.0, 3.0), spread=st.floats(0.3, 3.0))
def test_kernels_match_reference(shape, dtype, seed, offset, spread):
    n, c, h, w = shape
    assume(n * h * w >= 2)
    x, weight, bias, dout = draw(seed, shape, dtype, offset, spread)

    for k, r in zip(K.batchnorm2d_stats(x, EPS), R.batchnorm2d_stats(x, EPS)):
        close(k, r, dtype)

    yk, mk, ik = K.batchnorm2d_forward(x, weight, bias, EPS)
    yr, mr, ir = R.batchnorm2d_forward(x, weight, bias, EPS)
    close(yk, yr, dtype)
    close(mk, mr, dtype)
    close(ik, ir, dtype)

    # backward kernels get the same statistics, so only summation order differs
    for k, r in zip(K.batchnorm2d_backward(dout, x, mr, ir, weight),
                    R.batchnorm2d_backward(dout, x, mr, ir, weight)):
        close(k, r, dtype)

    # fused: same statistics in, the ReLU mask is computed with identical float64
    # operations, so the forward is bit-identical
    fk = K.batchnorm_relu_forward(x, mr, ir, weight, bias)
    fr = R.batchnorm_relu_forward(x, mr, ir, weight, bias)
    assert fk.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(fk, fr)
    for k, r in zip(K.batchnorm_relu_backward(dout, x, mr, ir, weight, bias),
                    R.batchnorm_relu_backward(dout, x, mr, ir, weight, bias)):
        close(k, r, dtype)


@pytest.mark.parametrize("window", ["prefix", "middle", "transposed"])
@pytest.mark.parametrize("n", [1, 3])
def test_channel_windows_of_a_buffer(window, n):
    """The dense layers pass the first C channels of a bigger buffer (not C-contiguous; the
    kernels read it in place through a strided view); channels in the middle work the same
    way; other layouts are copied.  All must give what the reference gives on a copy, and
    the buffer must be left as it was."""
    rng = np.random.default_rng(7)
    buf = rng.standard_normal((n, 9, 5, 6)).astype(np.float32)
    before = buf.copy()
    x = {"prefix": buf[:, :4], "middle": buf[:, 3:7],
         "transposed": buf.transpose(0, 1, 3, 2)[:, :4]}[window]
    assert n == 1 or not x.flags.c_contiguous   # one image: a channel window is contiguous
    c = x.shape[1]
    _, weight, bias, dout = draw(8, x.shape, np.float32)
    dwin = np.ascontiguousarray(
        np.concatenate([dout, np.ones_like(dout)], axis=1))[:, :c]   # a window, too
    xc = np.ascontiguousarray(x)
    for k, r in zip(K.batchnorm2d_stats(x, EPS), R.batchnorm2d_stats(xc, EPS)):
        close(k, r, np.float32)
    for k, r in zip(K.batchnorm2d_forward(x, weight, bias, EPS),
                    R.batchnorm2d_forward(xc, weight, bias, EPS)):
        close(k, r, np.float32)
    mean, invstd = R.batchnorm2d_stats(xc, EPS)
    for k, r in zip(K.batchnorm2d_backward(dwin, x, mean, invstd, weight),
                    R.batchnorm2d_backward(dout, xc, mean, invstd, weight)):
        close(k, r, np.float32)
    np.testing.assert_array_equal(K.batchnorm_relu_forward(x, mean, invstd, weight, bias),
                                  R.batchnorm_relu_forward(xc, mean, invstd, weight, bias))
    for k, r in zip(K.batchnorm_relu_backward(dwin, x, mean, invstd, weight, bias),
                    R.batchnorm_relu_backward(dout, xc, mean, invstd, weight, bias)):
        close(k, r, np.float32)
    np.testing.assert_array_equal(buf, before)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_forward_is_relu_of_forward_bitwise(dtype):
    x, weight, bias, _ = draw(3, (2, 4, 5, 3), dtype, 0.7, 2.0)
    for mod in (K, R):
        y, mean, invstd = mod.batchnorm2d_forward(x, weight, bias, EPS)
        fused = mod.batchnorm_relu_forward(x, mean, invstd, weight, bias)
        np.testing.assert_array_equal(fused, np.where(y <= 0, 0, y).astype(dtype))
        assert (fused > 0).any() and (fused == 0).any()


def test_known_values():
    # channel 0: values 1, 2, 3, 4 -> μ = 2.5, σ² = 1.25 (biased); channel 1 constant 7
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]], [[7.0, 7.0], [7.0, 7.0]]]])
    weight = np.array([2.0, 3.0])
    bias = np.array([0.5, -1.0])
    for mod in (K, R):
        y, mean, invstd = mod.batchnorm2d_forward(x, weight, bias, EPS)
        r = 1.0 / np.sqrt(1.25 + EPS)
        np.testing.assert_allclose(mean, [2.5, 7.0], rtol=1e-15)
        np.testing.assert_allclose(invstd, [r, 1.0 / np.sqrt(EPS)], rtol=1e-14)
        np.testing.assert_allclose(y[0, 0], 2.0 * r * (x[0, 0] - 2.5) + 0.5, rtol=1e-14)
        np.testing.assert_allclose(y[0, 1], -1.0, rtol=1e-14)  # constant channel -> β
        # dy = 1 everywhere: Σdy = 4, Σdy·x̂ = 0 -> dx = 0, dγ = 0, dβ = 4
        dx, dw, db = mod.batchnorm2d_backward(np.ones_like(x), x, mean, invstd, weight)
        np.testing.assert_allclose(dx, 0.0, atol=1e-12)
        np.testing.assert_allclose(dw, 0.0, atol=1e-12)
        np.testing.assert_allclose(db, [4.0, 4.0], rtol=1e-15)
        # dy = x̂ on channel 0: dγ = Σx̂² = M·σ²·invstd² ≈ 4, dx = γ·invstd/M·(M x̂ − 0 − x̂·Σx̂²)
        xhat = (x[0, 0] - 2.5) * r
        dy = np.zeros_like(x)
        dy[0, 0] = xhat
        dx, dw, db = mod.batchnorm2d_backward(dy, x, mean, invstd, weight)
        s2 = np.sum(xhat ** 2)
        np.testing.assert_allclose(dw[0], s2, rtol=1e-14)
        np.testing.assert_allclose(dx[0, 0], 2.0 * r / 4 * (4 * xhat - xhat * s2), rtol=1e-10,
                                   atol=1e-14)


@pytest.mark.parametrize("mod", [K, R], ids=["kernel", "reference"])
def test_fused_backward_limits(mod):
    """All z > 0: the fused backward is the plain BN backward; all z ≤ 0: it is zero.

    Bit for bit in the reference; the two kernels may add their sums in different orders
    (``FASTMATH``'s ``reassoc``: each is vectorised on its own), so they agree to float64
    rounding."""
    x, weight, bias, dout = draw(5, (2, 3, 4, 4), np.float64)
    y, mean, invstd = mod.batchnorm2d_forward(x, weight, np.full(3, 100.0), EPS)
    plain = mod.batchnorm2d_backward(dout, x, mean, invstd, weight)
    fused = mod.batchnorm_relu_backward(dout, x, mean, invstd, weight, np.full(3, 100.0))
    for a, b in zip(fused, plain):
        np.testing.assert_allclose(a, b, rtol=0, atol=0 if mod is R else 1e-12)
    dead = mod.batchnorm_relu_backward(dout, x, mean, invstd, weight, np.full(3, -100.0))
    for a in dead:
        assert not a.any()


@pytest.mark.parametrize("mod", [K, R], ids=["kernel", "reference"])
def test_fused_backward_at_zero_passes_no_gradient(mod):
    """ReLU's gradient at exactly 0 is 0 (PyTorch's choice).  Channel 1 is constant (0.5,
    32 values: the mean is exact, x̂ = 0) with β = 0, so z = 0 everywhere there, as in a
    dead channel; its dx, dγ and dβ must be exactly 0 (``z >= 0`` gave them gradients)."""
    x, weight, bias, dout = draw(6, (2, 3, 4, 4), np.float64)
    x[:, 1] = 0.5
    bias[1] = 0.0
    mean, invstd = R.batchnorm2d_stats(x, EPS)
    assert not (x[:, 1] - mean[1]).any()
    dx, dweight, dbias = mod.batchnorm_relu_backward(dout, x, mean, invstd, weight, bias)
    assert not dx[:, 1].any() and dweight[1] == 0.0 and dbias[1] == 0.0
    assert dx[:, 0].any() and dbias[0] != 0.0            # the other channels do get some


def test_float32_accumulates_in_float64():
    """A large common offset: float32 sums would lose the spread; float64 sums do not."""
    rng = np.random.default_rng(0)
    x64 = 1000.0 + 0.01 * rng.standard_normal((4, 2, 32, 32))
    x = x64.astype(np.float32)
    mean, invstd = K.batchnorm2d_stats(x, EPS)
    xd = x.astype(np.float64)
    true_mean = xd.mean(axis=(0, 2, 3))
    true_invstd = 1 / np.sqrt(xd.var(axis=(0, 2, 3)) + EPS)
    np.testing.assert_allclose(mean, true_mean, rtol=1e-7)
    np.testing.assert_allclose(invstd, true_invstd, rtol=1e-6)


# -- finite differences through small Layer wrappers (float64) --------------------------

class _BNKernel(Layer):
    """Training-mode BN straight from the kernels (no layer code in between)."""

    def __init__(self, weight, bias, fused):
        super().__init__()
        self.add_param("weight", weight)
        self.add_param("bias", bias)
        self.fused = fused

    def forward(self, x):
        w, b = self.params["weight"], self.params["bias"]
        y, self.mean, self.invstd = K.batchnorm2d_forward(x, w, b, EPS)
        self.x = x.copy()
        if self.fused:
            y = K.batchnorm_relu_forward(x, self.mean, self.invstd, w, b)
        return y

    def backward(self, dout):
        w, b = self.params["weight"], self.params["bias"]
        if self.fused:
            dx, dw, db = K.batchnorm_relu_backward(dout, self.x, self.mean, self.invstd, w, b)
        else:
            dx, dw, db = K.batchnorm2d_backward(dout, self.x, self.mean, self.invstd, w)
        self.grads["weight"] += dw
        self.grads["bias"] += db
        return dx


@pytest.mark.parametrize("fused", [False, True], ids=["bn", "bn_relu"])
def test_gradcheck_kernels(fused):
    x, weight, bias, _ = draw(11, (3, 4, 3, 5), np.float64, 0.5, 1.5)
    layer = _BNKernel(weight, bias, fused)
    if fused:  # keep every z away from the ReLU kink so x ± 1e-6 cannot cross it
        y, mean, invstd = K.batchnorm2d_forward(x, weight, bias, EPS)
        assert np.min(np.abs(y)) > 1e-3
        assert (y > 0).mean() > 0.2 and (y < 0).mean() > 0.2
    errors = gradcheck(layer, x, rng=np.random.default_rng(0))
    assert set(errors) == {"input", "weight", "bias"}
    for name, err in errors.items():
        assert err < GRAD_TOL, (name, err)


# -- compiled in the process or loaded from numba's cache: the same bits -----------------------
_REPLAY = r'''
import sys
import numpy as np
import numba
numba.set_num_threads(int(sys.argv[2]))
from tinyseg.kernels import norm

def crafted(seed, n=8, c=16, h=16, w=16):
    # Masked elements (z <= 0) whose dx = k (-Σdz - x̂ Σ dz x̂) nearly cancels: where two
    # builds of a kernel differ in the last bit, it shows here.
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    dout = (rng.standard_normal((n, c, h, w)) * 1e-3).astype(np.float32)
    for ch in range(c):
        xc = x[:, ch].astype(np.float64)
        dz = np.where(xc > 0, dout[:, ch].astype(np.float64), 0.0)
        t = -dz.sum() / (dz * xc).sum()
        neg = xc <= 0
        vals = -abs(t) * (1 + rng.standard_normal(int(neg.sum())) * 1e-6)
        x[:, ch][neg] = np.minimum(vals, -1e-7).astype(np.float32)
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    return dout, x, zeros, ones, ones, zeros

out = {}
for s in range(8):
    dout, x, mean, invstd, g, b = crafted(s)
    for name, r in (("relu", norm.batchnorm_relu_backward(dout, x, mean, invstd, g, b)),
                    ("bn", norm.batchnorm2d_backward(dout, x, mean, invstd, g)),
                    ("stats", norm.batchnorm2d_stats(x, 1e-5))):
        for k, a in enumerate(r):
            out[f"{s}_{name}_{k}"] = a
np.savez(sys.argv[1], **out)
'''


@pytest.mark.slow
def test_compiled_and_cached_kernels_give_the_same_bits(tmp_path):
    """numba 0.68's ``parallel=True`` + fast-math kernels gave other bits when loaded from
    the on-disk cache than when compiled in the process (hundreds of elements of ``dx``
    on these inputs), which made training runs depend on the cache's state.  The kernels
    with sums are serial now; compiled, loaded, and on 1 or 2 threads they must agree."""
    import os
    import subprocess
    import sys
    script = tmp_path / "replay.py"
    script.write_text(_REPLAY)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    runs = [("compiled", "1"), ("loaded", "1"), ("loaded-2", "2")]
    for name, threads in runs:
        r = subprocess.run([sys.executable, str(script), str(tmp_path / f"{name}.npz"), threads],
                           env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    first = np.load(tmp_path / "compiled.npz")
    for name, _ in runs[1:]:
        other = np.load(tmp_path / f"{name}.npz")
        for k in first.files:
            np.testing.assert_array_equal(first[k], other[k], err_msg=f"{name}: {k}")
