"""Convolution kernels (tinyseg.kernels.conv) against their NumPy twins and known values.

Tolerances:

* float64: kernel and reference sum the same products in different orders (BLAS blocking,
  im2col vs einsum), so they agree to rounding: ``max|a − b| ≤ TOL64 · max(1, max|b|)`` with
  TOL64 = 1e-13 (observed ~1e-15).
* float32: the float32 kernel is compared with the float64 reference on the same (float32)
  inputs; each output sums K ≤ 6·25 = 150 products (forward) or up to 2·3·13·13 ≈ 1000
  (weight gradient), so the error is a few K·2⁻²⁴ relative to the size of the terms:
  ``max|a − b| ≤ TOL32 · max(1, max|b|)`` with TOL32 = 1e-5 (observed up to 8.6e-7).
* the three reference forward passes (loops, im2col, einsum) agree to TOL64 in float64.
"""
import numpy as np
import pytest
from hypothesis import given, settings, assume
from hypothesis import strategies as st

from tinyseg.kernels import conv as K
from tinyseg.reference import conv as R

TOL64 = 1e-13
TOL32 = 1e-5


def close(actual, expected, tol):
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected), initial=0.0)))
    err = float(np.max(np.abs(actual - expected), initial=0.0))
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.1g} · {scale:.3g}"


# -- shapes drawn by hypothesis ---------------------------------------------------------------

@st.composite
def conv_case(draw):
    """(n, c, o, h, w, kh, kw, s, p) with the padded input at least as large as the kernel;
    kernels may be even-sized or not square, strides up to 3."""
    kh = draw(st.sampled_from([1, 2, 3, 5]))
    kw = draw(st.sampled_from([1, 2, 3, 5]))
    s = draw(st.sampled_from([1, 2, 3]))
    p = draw(st.integers(0, 2))
    h = draw(st.integers(max(1, kh - 2 * p), max(1, kh - 2 * p) + 8))
    w = draw(st.integers(max(1, kw - 2 * p), max(1, kw - 2 * p) + 8))
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 6))
    o = draw(st.integers(1, 6))
    return n, c, o, h, w, kh, kw, s, p


@st.composite
def conv_transpose_case(draw):
    """(n, c, o, h, w, kh, kw, s, p, op) with 0 ≤ op < s and an output of at least 1 × 1."""
    n, c, o, h, w, kh, kw, s, p = draw(conv_case())
    op = draw(st.integers(0, s - 1))
    h = draw(st.integers(1, 7))
    w = draw(st.integers(1, 7))
    assume((h - 1) * s - 2 * p + kh + op >= 1 and (w - 1) * s - 2 * p + kw + op >= 1)
    return n, c, o, h, w, kh, kw, s, p, op


def arrays(seed, dtype, *shapes):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for shape in shapes]


SETTINGS = settings(max_examples=40, deadline=None)
DTYPES = st.sampled_from([np.float32, np.float64])


# -- kernel == reference ----------------------------------------------------------------------

@SETTINGS
@given(case=conv_case(), dtype=DTYPES, use_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_conv2d_matches_reference(case, dtype, use_bias, seed):
    n, c, o, h, w, kh, kw, s, p = case
    x, weight, bias = arrays(seed, dtype, (n, c, h, w), (o, c, kh, kw), (o,))
    bias = bias if use_bias else None
    tol = TOL64 if dtype == np.float64 else TOL32
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)

    y = K.conv2d_forward(x, weight, bias, s, p)
    ho, wo = R.conv2d_output_size(h, kh, s, p), R.conv2d_output_size(w, kw, s, p)
    assert y.shape == (n, o, ho, wo) and y.dtype == np.dtype(dtype)
    close(y, R.conv2d_forward(x64, w64, b64, s, p), tol)

    dout = arrays(seed + 1, dtype, y.shape)[0]
    dx, dw, db = K.conv2d_backward(dout, x, weight, s, p)
    rdx, rdw, rdb = R.conv2d_backward(dout.astype(np.float64), x64, w64, s, p)
    for got, want, shape in ((dx, rdx, x.shape), (dw, rdw, weight.shape), (db, rdb, (o,))):
        assert got.dtype == np.dtype(dtype) and got.shape == shape
        close(got, want, tol)


@SETTINGS
@given(case=conv_transpose_case(), dtype=DTYPES, use_bias=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_conv_transpose2d_matches_reference(case, dtype, use_bias, seed):
    n, c, o, h, w, kh, kw, s, p, op = case
    x, weight, bias = arrays(seed, dtype, (n, c, h, w), (c, o, kh, kw), (o,))
    bias = bias if use_bias else None
    tol = TOL64 if dtype == np.float64 else TOL32
    x64, w64 = x.astype(np.float64), weight.astype(np.float64)
    b64 = None if bias is None else bias.astype(np.float64)

    y = K.conv_transpose2d_forward(x, weight, bias, s, p, op)
    ho = R.conv_transpose2d_output_size(h, kh, s, p, op)
    wo = R.conv_transpose2d_output_size(w, kw, s, p, op)
    assert y.shape == (n, o, ho, wo) and y.dtype == np.dtype(dtype)
    close(y, R.conv_transpose2d_forward(x64, w64, b64, s, p, op), tol)

    dout = arrays(seed + 1, dtype, y.shape)[0]
    dx, dw, db = K.conv_transpose2d_backward(dout, x, weight, s, p, op)
    rdx, rdw, rdb = R.conv_transpose2d_backward(dout.astype(np.float64), x64, w64, s, p, op)
    for got, want, shape in ((dx, rdx, x.shape), (dw, rdw, weight.shape), (db, rdb, (o,))):
        assert got.dtype == np.dtype(dtype) and got.shape == shape
        close(got, want, tol)


@pytest.mark.parametrize("c, o", [(5, 2), (2, 5), (3, 3)], ids=["scatter", "gather", "equal"])
@pytest.mark.parametrize("k, s, p", [(1, 1, 0), (1, 1, 1), (3, 1, 1), (3, 1, 0), (5, 1, 2),
                                     (3, 2, 1), (1, 2, 0)])
def test_conv2d_every_route(c, o, k, s, p):
    """Each path in conv2d (1×1 matmul, gather, scatter) on fixed shapes, non-square input."""
    x, weight, bias = arrays(7, np.float64, (2, c, 7, 6), (o, c, k, k), (o,))
    y = K.conv2d_forward(x, weight, bias, s, p)
    close(y, R.conv2d_forward(x, weight, bias, s, p), TOL64)
    dout = arrays(8, np.float64, y.shape)[0]
    for got, want in zip(K.conv2d_backward(dout, x, weight, s, p),
                         R.conv2d_backward(dout, x, weight, s, p)):
        close(got, want, TOL64)


@pytest.mark.parametrize("chunk_bytes", [1, 700])
def test_row_blocks(chunk_bytes, monkeypatch):
    """Large images are processed in blocks of rows; force tiny blocks (1 row, a few rows)
    so block edges fall everywhere, on every route, and compare with the reference."""
    monkeypatch.setattr(K, "CHUNK_BYTES", chunk_bytes)
    for c, o, k, s, p in [(5, 2, 3, 1, 1), (2, 5, 3, 1, 1), (3, 4, 3, 2, 1), (4, 2, 5, 1, 1),
                          (3, 2, 5, 2, 2)]:
        x, weight, bias = arrays(11, np.float64, (2, c, 9, 7), (o, c, k, k), (o,))
        y = K.conv2d_forward(x, weight, bias, s, p)
        close(y, R.conv2d_forward(x, weight, bias, s, p), TOL64)
        dout = arrays(12, np.float64, y.shape)[0]
        for got, want in zip(K.conv2d_backward(dout, x, weight, s, p),
                             R.conv2d_backward(dout, x, weight, s, p)):
            close(got, want, TOL64)
        wt = weight.transpose(1, 0, 2, 3).copy()  # (in, out) = (C, O)
        xt = arrays(13, np.float64, (2, c, 5, 4))[0]
        for op in range(s):
            y = K.conv_transpose2d_forward(xt, wt, bias, s, p, op)
            close(y, R.conv_transpose2d_forward(xt, wt, bias, s, p, op), TOL64)
            dout = arrays(14, np.float64, y.shape)[0]
            for got, want in zip(K.conv_transpose2d_backward(dout, xt, wt, s, p, op),
                                 R.conv_transpose2d_backward(dout, xt, wt, s, p, op)):
                close(got, want, TOL64)


@pytest.fixture
def threads(monkeypatch):
    """Set how many images the conv kernels run at once (their ``_threads()``), for one test.

    Patched rather than ``numba.set_num_threads``: numba's pool may have fewer threads than
    the test asks for (a 1-core machine), and the image split is what is being tested.
    """
    def use(n):
        monkeypatch.setattr(K, "_threads", lambda: n)
    return use


@pytest.mark.parametrize("chunk_bytes", [K.CHUNK_BYTES, 700])
def test_threads_give_identical_results(threads, chunk_bytes, monkeypatch):
    """Images split over 1, 2, 3 or 8 threads (more threads than images too): every route's
    outputs and gradients are bit-for-bit those of one thread, and match the reference."""
    monkeypatch.setattr(K, "CHUNK_BYTES", chunk_bytes)
    cases = [(5, 2, 3, 1, 1), (2, 5, 3, 1, 1), (3, 4, 3, 2, 1), (4, 3, 1, 1, 0)]
    for c, o, k, s, p in cases:
        x, weight, bias = arrays(21, np.float32, (5, c, 9, 7), (o, c, k, k), (o,))
        wt = weight.transpose(1, 0, 2, 3).copy()
        results = {}
        for n in (1, 2, 3, 8):
            threads(n)
            y = K.conv2d_forward(x, weight, bias, s, p)
            dout = arrays(22, np.float32, y.shape)[0]
            yt = K.conv_transpose2d_forward(x, wt, bias, s, p, s - 1)
            doutt = arrays(23, np.float32, yt.shape)[0]
            results[n] = [y, *K.conv2d_backward(dout, x, weight, s, p),
                          yt, *K.conv_transpose2d_backward(doutt, x, wt, s, p, s - 1)]
        for n in (2, 3, 8):
            for got, want in zip(results[n], results[1]):
                np.testing.assert_array_equal(got, want)
        y, dx, dw, db = results[1][:4]
        close(y, R.conv2d_forward(x, weight, bias, s, p), TOL32)
        for got, want in zip((dx, dw, db), R.conv2d_backward(dout, x, weight, s, p)):
            close(got, want, TOL32)
        yt, dxt, dwt, dbt = results[1][4:]
        close(yt, R.conv_transpose2d_forward(x, wt, bias, s, p, s - 1), TOL32)
        for got, want in zip((dxt, dwt, dbt),
                             R.conv_transpose2d_backward(doutt, x, wt, s, p, s - 1)):
            close(got, want, TOL32)


def test_thread_errors_reach_the_caller(threads, monkeypatch):
    """An exception inside a pool thread is raised in the caller, not lost."""
    threads(2)

    def fail(*args):
        raise RuntimeError("boom in a worker")
    monkeypatch.setattr(K, "_im2col_rows", fail)
    x, weight = arrays(3, np.float32, (4, 2, 5, 5), (3, 2, 3, 3))
    with pytest.raises(RuntimeError, match="boom in a worker"):
        K.conv2d_forward(x, weight, None, 1, 1)


def test_non_contiguous_inputs():
    """Views (e.g. the channel slices a concatenation hands back) give the same results."""
    x, weight, dout = arrays(3, np.float64, (2, 8, 6, 6), (2, 3, 3, 3), (2, 4, 6, 6))
    xs, ds = x[:, 2:5], dout[:, 1:3]
    assert not xs.flags.c_contiguous and not ds.flags.c_contiguous
    close(K.conv2d_forward(xs, weight, None, 1, 1), R.conv2d_forward(xs, weight, None, 1, 1),
          TOL64)
    for got, want in zip(K.conv2d_backward(ds, xs, weight, 1, 1),
                         R.conv2d_backward(ds, xs, weight, 1, 1)):
        close(got, want, TOL64)


# -- the reference against itself ---------------------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(case=conv_case(), use_bias=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_reference_naive_im2col_einsum_agree(case, use_bias, seed):
    n, c, o, h, w, kh, kw, s, p = case
    x, weight, bias = arrays(seed, np.float64, (n, c, h, w), (o, c, kh, kw), (o,))
    bias = bias if use_bias else None
    y = R.conv2d_forward(x, weight, bias, s, p)
    close(R.conv2d_forward_naive(x, weight, bias, s, p), y, TOL64)
    close(R.conv2d_forward_im2col(x, weight, bias, s, p), y, TOL64)


@settings(max_examples=25, deadline=None)
@given(case=conv_case(), seed=st.integers(0, 2**31 - 1))
def test_reference_col2im_is_adjoint_of_im2col(case, seed):
    """⟨im2col(x), z⟩ = ⟨x, col2im(z)⟩: col2im is im2col's transpose."""
    n, c, _, h, w, kh, kw, s, p = case
    x = arrays(seed, np.float64, (n, c, h, w))[0]
    cols = R.im2col(x, kh, kw, s, p)
    ho, wo = R.conv2d_output_size(h, kh, s, p), R.conv2d_output_size(w, kw, s, p)
    assert cols.shape == (n, c * kh * kw, ho * wo)
    z = arrays(seed + 1, np.float64, cols.shape)[0]
    back = R.col2im(z, x.shape, kh, kw, s, p)
    assert back.shape == x.shape
    # rounding grows with the terms' sizes, not with the sum (which may cancel towards 0)
    scale = np.sum(np.abs(cols * z))
    assert np.sum(cols * z) == pytest.approx(np.sum(x * back), rel=1e-12, abs=1e-12 * scale)


@settings(max_examples=30, deadline=None)
@given(case=conv_case(), seed=st.integers(0, 2**31 - 1))
def test_conv_transpose_is_adjoint_of_conv(case, seed):
    """⟨conv(x), z⟩ = ⟨x, convᵀ(z)⟩ with the same weight (read as (in, out) = (O, C)).

    ``output_padding = (H + 2P − k) mod s`` makes the transposed output exactly x's size; and
    convᵀ's forward is conv's input gradient, conv's forward is convᵀ's input gradient.
    """
    n, c, o, h, w, kh, kw, s, p = case
    assume((h + 2 * p - kh) % s == (w + 2 * p - kw) % s)
    op = (h + 2 * p - kh) % s
    x, weight = arrays(seed, np.float64, (n, c, h, w), (o, c, kh, kw))
    y = K.conv2d_forward(x, weight, None, s, p)
    z = arrays(seed + 1, np.float64, y.shape)[0]
    xt = K.conv_transpose2d_forward(z, weight, None, s, p, op)
    assert xt.shape == x.shape
    scale = np.sum(np.abs(y * z))   # as in the test above: cancellation-proof tolerance
    assert np.sum(y * z) == pytest.approx(np.sum(x * xt), rel=1e-10, abs=1e-10 * scale)
    close(xt, K.conv2d_backward(z, x, weight, s, p)[0], TOL64)
    close(K.conv_transpose2d_backward(x, z, weight, s, p, op)[0], y, TOL64)


# -- known values, worked by hand -------------------------------------------------------------

MODULES = pytest.mark.parametrize("mod", [K, R], ids=["kernel", "reference"])


@MODULES
def test_conv2d_known_values(mod):
    # x = [[1 2 3] [4 5 6] [7 8 9]], w = [[1 0] [0 -1]]:  y[i,j] = x[i,j] − x[i+1,j+1] = −4
    x = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    w = np.array([[[[1.0, 0.0], [0.0, -1.0]]]])
    np.testing.assert_array_equal(mod.conv2d_forward(x, w, np.array([0.5]), 1, 0),
                                  np.full((1, 1, 2, 2), -3.5))
    # backward with dout = 1 everywhere:
    #   dw[p,q] = Σ of the 2×2 block of x starting at (p, q);  db = 4;
    #   dx[u,v] = Σ of the weights that touched x[u,v] = w "stamped" at every output position
    dx, dw, db = mod.conv2d_backward(np.ones((1, 1, 2, 2)), x, w, 1, 0)
    np.testing.assert_array_equal(dw, [[[[12.0, 16.0], [24.0, 28.0]]]])
    np.testing.assert_array_equal(db, [4.0])
    np.testing.assert_array_equal(dx, [[[[1.0, 1.0, 0.0], [1.0, 0.0, -1.0], [0.0, -1.0, -1.0]]]])
    # padding 1, all-ones 3×3 kernel on a 2×2 image of ones: every window sees all 4 ones
    np.testing.assert_array_equal(
        mod.conv2d_forward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 3, 3)), None, 1, 1),
        np.full((1, 1, 2, 2), 4.0))
    # stride 2, 2×2 ones on 0..15: sums of the four 2×2 blocks
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    np.testing.assert_array_equal(mod.conv2d_forward(x, np.ones((1, 1, 2, 2)), None, 2, 0),
                                  [[[[10.0, 18.0], [42.0, 50.0]]]])
    # two input channels, two filters: filter 0 adds the channels, filter 1 subtracts them
    x = np.stack([np.full((2, 2), 3.0), np.full((2, 2), 1.0)])[None]
    w = np.array([[1.0, 1.0], [1.0, -1.0]]).reshape(2, 2, 1, 1)
    np.testing.assert_array_equal(mod.conv2d_forward(x, w, None, 1, 0)[0, :, 0, 0], [4.0, 2.0])


@MODULES
def test_conv_transpose2d_known_values(mod):
    x = np.array([[[[1.0, 2.0], [3.0, 4.0]]]])
    ones = np.ones((1, 1, 2, 2))
    # stride 2, 2×2 kernel of ones: every input pixel becomes a 2×2 block
    np.testing.assert_array_equal(
        mod.conv_transpose2d_forward(x, ones, None, 2, 0, 0),
        [[[[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]]]])
    # stride 1: the stamped blocks overlap and add
    np.testing.assert_array_equal(
        mod.conv_transpose2d_forward(x, ones, None, 1, 0, 0),
        [[[[1, 3, 2], [4, 10, 6], [3, 7, 4]]]])
    # padding 1 crops the border of that; output_padding 1 (stride 2) adds a bias-only row/col
    np.testing.assert_array_equal(mod.conv_transpose2d_forward(x, ones, None, 1, 1, 0),
                                  [[[[10.0]]]])
    y = mod.conv_transpose2d_forward(x, ones, np.array([0.5]), 2, 0, 1)
    np.testing.assert_array_equal(y[0, 0, :4, :4], [[1.5, 1.5, 2.5, 2.5], [1.5, 1.5, 2.5, 2.5],
                                                    [3.5, 3.5, 4.5, 4.5], [3.5, 3.5, 4.5, 4.5]])
    np.testing.assert_array_equal(y[0, 0, 4, :], np.full(5, 0.5))
    np.testing.assert_array_equal(y[0, 0, :, 4], np.full(5, 0.5))
    # backward of the stride-2 case: each input pixel gathers its own 2×2 block
    dout = np.arange(16.0).reshape(1, 1, 4, 4)
    dx, dw, db = mod.conv_transpose2d_backward(dout, x, ones, 2, 0, 0)
    np.testing.assert_array_equal(dx, [[[[10.0, 18.0], [42.0, 50.0]]]])
    # dw[p,q] = Σ_ij x[i,j] · dout[2i+p, 2j+q]
    want = [[sum(x[0, 0, i, j] * dout[0, 0, 2 * i + p, 2 * j + q]
                 for i in range(2) for j in range(2)) for q in range(2)] for p in range(2)]
    np.testing.assert_array_equal(dw[0, 0], want)
    np.testing.assert_array_equal(db, [120.0])


def test_dtypes_are_kept():
    for dtype in (np.float32, np.float64):
        x, weight = arrays(0, dtype, (1, 4, 5, 5), (2, 4, 3, 3))
        assert K.conv2d_forward(x, weight, None, 1, 1).dtype == dtype
        assert K.conv_transpose2d_forward(x, weight.transpose(1, 0, 2, 3).copy(), None, 2, 1,
                                          1).dtype == dtype


@pytest.mark.parametrize("s,p", [(1, 1), (2, 1), (1, 2)])
def test_reference_conv2d_backward_dx_is_adjoint_with_padding(s, p):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 7, 6))
    w = rng.standard_normal((4, 3, 3, 3))
    y = R.conv2d_forward(x, w, None, s, p)
    z = rng.standard_normal(y.shape)
    dx, dw, _ = R.conv2d_backward(z, x, w, s, p)
    # <conv(x), z> = <x, dx>   and   <conv(x; w), z> = <w, dw>
    assert np.vdot(y, z) == pytest.approx(np.vdot(x, dx), rel=1e-10)
    assert np.vdot(y, z) == pytest.approx(np.vdot(w, dw), rel=1e-10)


@pytest.mark.parametrize("s,p,op", [(2, 1, 1), (1, 1, 0), (2, 2, 0)])
def test_reference_conv_transpose2d_backward_is_adjoint_with_padding(s, p, op):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 4))
    w = rng.standard_normal((3, 2, 3, 3))
    y = R.conv_transpose2d_forward(x, w, None, s, p, op)
    z = rng.standard_normal(y.shape)
    dx, dw, _ = R.conv_transpose2d_backward(z, x, w, s, p, op)
    assert np.vdot(y, z) == pytest.approx(np.vdot(x, dx), rel=1e-10)
    assert np.vdot(y, z) == pytest.approx(np.vdot(w, dw), rel=1e-10)
