"""The numba RMSprop kernel equals its NumPy reference."""
import numpy as np
from hypothesis import example, given, settings, strategies as st

from tinyseg.kernels import optim as kernels
from tinyseg.reference import optim as reference

# The kernel does the arithmetic in float64 and rounds when storing, the reference in the
# array dtype, so they differ by a few ulps of the O(1) operands (parameters ~N(0,1), steps
# up to lr/sqrt(1 − alpha) = 1).  When a step nearly cancels its parameter that is an
# absolute, not relative, difference: float32 rtol 1e-6 + atol 1e-6 (~16 ulp at 1.0);
# float64 rtol 1e-13 + atol 1e-14.  Each step starts both from the kernel's state: over
# several steps the differences can grow without bound, so a comparison of two separate runs
# has no fair tolerance.  (Seed 361 below: with g = 0 and weight decay a parameter walks to
# −7.6e-5 in three steps of 0.1, where the step lr·g/(|g| + eps), g = 1e-4·p ≈ eps, turns a
# difference of 5e-10 in p, left by rounding the three steps, into 1.6e-6.)
TOL = {np.float32: dict(rtol=1e-6, atol=1e-6), np.float64: dict(rtol=1e-13, atol=1e-14)}


@settings(max_examples=40, deadline=None)
@example(dtype=np.float32, n=81, steps=4, lr=0.1, alpha=0.0, eps=1e-8, weight_decay=1e-4,
         seed=361, zero_grads=True)
@given(dtype=st.sampled_from([np.float32, np.float64]), n=st.integers(1, 300),
       steps=st.integers(1, 4), lr=st.sampled_from([0.0, 1e-3, 0.1]),
       alpha=st.sampled_from([0.0, 0.9, 0.99]), eps=st.sampled_from([1e-8, 1e-3]),
       weight_decay=st.sampled_from([0.0, 1e-4, 0.5]), seed=st.integers(0, 2**31),
       zero_grads=st.booleans())
def test_kernel_matches_reference(dtype, n, steps, lr, alpha, eps, weight_decay, seed,
                                  zero_grads):
    rng = np.random.default_rng(seed)
    p_k = rng.standard_normal(n).astype(dtype)
    p_0 = p_k.copy()
    v_k = np.zeros(n, dtype)
    for _ in range(steps):
        g = rng.standard_normal(n).astype(dtype)
        if zero_grads:
            g[::2] = 0
        g_before = g.copy()
        p_r, v_r = p_k.copy(), v_k.copy()                    # the same state for both
        kernels.rmsprop_step(p_k, g, v_k, lr, alpha, eps, weight_decay)
        reference.rmsprop_step(p_r, g, v_r, lr, alpha, eps, weight_decay)
        np.testing.assert_array_equal(g, g_before)           # grad untouched
        assert p_k.dtype == dtype and v_k.dtype == dtype
        np.testing.assert_allclose(v_k, v_r, **TOL[dtype])
        np.testing.assert_allclose(p_k, p_r, **TOL[dtype])
    if lr == 0:                                  # no step at all
        np.testing.assert_array_equal(p_k, p_0)


def test_one_step_by_hand():
    # g = 2 + 0.5·1 = 2.5; v = 0.9·0 + 0.1·6.25 = 0.625; θ = 1 − 0.1·2.5/(sqrt(0.625) + 1e-8)
    p = np.array([1.0])
    v = np.zeros(1)
    kernels.rmsprop_step(p, np.array([2.0]), v, 0.1, 0.9, 1e-8, 0.5)
    assert abs(v[0] - 0.625) < 1e-15
    assert abs(p[0] - (1 - 0.1 * 2.5 / (np.sqrt(0.625) + 1e-8))) < 1e-15
