"""Max-pool kernels (tinyseg.kernels.pool) against their NumPy twins, known values, PyTorch.

Max pooling only selects and copies values, so kernel and reference must agree exactly
(tolerance 0) in both dtypes, including which element wins a tie.
"""
import numpy as np
import pytest
from hypothesis import given, settings, assume
from hypothesis import strategies as st

from tinyseg.kernels import pool as K
from tinyseg.reference import pool as R


def flat_index(argmax, k, width):
    """Our in-window index a = r·k + s  ->  PyTorch's flat index h·W + w in the plane."""
    ho, wo = argmax.shape[2:]
    i = np.arange(ho).reshape(1, 1, -1, 1)
    j = np.arange(wo).reshape(1, 1, 1, -1)
    a = argmax.astype(np.int64)
    return (i * k + a // k) * width + (j * k + a % k)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 3), c=st.integers(1, 3), h=st.integers(1, 24), w=st.integers(1, 24),
       k=st.integers(1, 11), dtype=st.sampled_from([np.float32, np.float64]),
       ties=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_kernels_match_reference(n, c, h, w, k, dtype, ties, seed):
    assume(h >= k and w >= k)
    rng = np.random.default_rng(seed)
    if ties:  # few distinct values: many ties inside windows
        x = rng.integers(-2, 2, (n, c, h, w)).astype(dtype)
    else:
        x = rng.standard_normal((n, c, h, w)).astype(dtype)
    yk, ak = K.maxpool2d_forward(x, k)
    yr, ar = R.maxpool2d_forward(x, k)
    assert yk.shape == yr.shape == (n, c, h // k, w // k)
    assert yk.dtype == yr.dtype == np.dtype(dtype)
    assert ak.dtype == ar.dtype == np.int8
    np.testing.assert_array_equal(yk, yr)
    np.testing.assert_array_equal(ak, ar)
    # the encoding: y is the input element at (i·k + a // k, j·k + a % k)
    picked = np.take_along_axis(x.reshape(n, c, -1), flat_index(ak, k, w).reshape(n, c, -1),
                                axis=2).reshape(yk.shape)
    np.testing.assert_array_equal(picked, yk)

    dout = rng.standard_normal(yk.shape).astype(dtype)
    dk = K.maxpool2d_backward(dout, ak, x.shape, k)
    dr = R.maxpool2d_backward(dout, ar, x.shape, k)
    assert dk.shape == x.shape and dk.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(dk, dr)
    # every gradient lands once, unchanged: the non-zero values of dx are those of dout (a
    # float32 sum compared with rel=1e-5 failed on cancellation: 21 values summing to -0.077)
    np.testing.assert_array_equal(np.sort(dk[dk != 0]), np.sort(dout[dout != 0]))


@pytest.mark.parametrize("mod", [K, R], ids=["kernel", "reference"])
def test_known_values(mod):
    # 5 x 5 with k = 2: the last row and column are dropped (floor, like PyTorch)
    x = np.arange(25, dtype=np.float64).reshape(1, 1, 5, 5)
    x[0, 0, 0, 1] = 100.0  # wins the top-left window at (r, s) = (0, 1)
    x[0, 0, 4, :] = 1000.0  # dropped row: never selected
    y, a = mod.maxpool2d_forward(x, 2)
    np.testing.assert_array_equal(y[0, 0], [[100.0, 8.0], [16.0, 18.0]])
    np.testing.assert_array_equal(a[0, 0], [[1, 3], [3, 3]])
    dx = mod.maxpool2d_backward(np.array([[[[1.0, 2.0], [3.0, 4.0]]]]), a, x.shape, 2)
    expected = np.zeros((5, 5))
    expected[0, 1], expected[1, 3], expected[3, 1], expected[3, 3] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, 0], expected)


@pytest.mark.parametrize("mod", [K, R], ids=["kernel", "reference"])
def test_ties_nan_and_infinities(mod):
    x = np.array([[[[5.0, 5.0, -np.inf, -np.inf, 1.0, np.nan],
                    [5.0, 5.0, -np.inf, -np.inf, np.nan, 2.0]]]], dtype=np.float32)
    y, a = mod.maxpool2d_forward(x, 2)
    # tie -> first in row-major order; all −inf -> index 0; NaN wins, the later NaN last
    np.testing.assert_array_equal(a[0, 0, 0], [0, 0, 2])
    assert y[0, 0, 0, 0] == 5.0 and y[0, 0, 0, 1] == -np.inf and np.isnan(y[0, 0, 0, 2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernel_matches_torch_indices_with_ties(torch, dtype):
    rng = np.random.default_rng(7)
    x = rng.integers(0, 3, (2, 3, 7, 9)).astype(dtype)  # odd sizes, many ties
    for k in (2, 3):
        y, a = K.maxpool2d_forward(x, k)
        ty, ti = torch.nn.functional.max_pool2d(torch.from_numpy(x), k, return_indices=True)
        np.testing.assert_array_equal(y, ty.numpy())
        np.testing.assert_array_equal(flat_index(a, k, x.shape[3]), ti.numpy())


def test_kernel_matches_torch_on_nan_and_inf(torch):
    x = np.array([[[[5.0, 5.0, -np.inf, -np.inf, 1.0, np.nan],
                    [5.0, 5.0, -np.inf, -np.inf, np.nan, 2.0]]]], dtype=np.float32)
    y, a = K.maxpool2d_forward(x, 2)
    ty, ti = torch.nn.functional.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(y, ty.numpy())  # NaN == NaN for assert_array_equal
    np.testing.assert_array_equal(flat_index(a, 2, 6), ti.numpy())
