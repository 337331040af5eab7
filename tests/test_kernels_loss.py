"""The numba softmax cross-entropy kernel equals its NumPy reference."""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyseg.kernels import loss as kernels
from tinyseg.reference import loss as reference

# Tolerances: the kernel sums in a different order (per pixel, in parallel rows) and, in
# float32, rounds some intermediates differently from NumPy, so results agree to a few ulps.
# Relative tolerances: on the loss, and on dlogits relative to its largest entry (which is at
# most 1/w_sum, so an absolute bound would be loose on large images).  Observed: float32
# 1.7e-7 (gradient), float64 6e-16 (loss) and 1.1e-16 (gradient).
TOL = {np.float32: dict(loss=2e-6, grad=1e-6), np.float64: dict(loss=1e-14, grad=1e-14)}


@st.composite
def problems(draw):
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    N, K = draw(st.integers(1, 3)), draw(st.integers(1, 5))
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 7))
    scale = draw(st.sampled_from([1.0, 10.0, 1e4]))
    seed = draw(st.integers(0, 2**31))
    rng = np.random.default_rng(seed)
    logits = (scale * rng.standard_normal((N, K, H, W))).astype(dtype)
    ignore = draw(st.sampled_from([-1, 255, 0]))
    target = rng.integers(0, K, (N, H, W))
    if ignore != 0 or K > 1:
        mask = rng.random((N, H, W)) < draw(st.sampled_from([0.0, 0.3, 1.0]))
        target[mask] = ignore
    weighted = draw(st.booleans())
    weight = rng.uniform(0.1, 3.0, K) if weighted else np.ones(K)
    return logits, target.astype(np.int64), weight, ignore


@settings(max_examples=40, deadline=None)
@given(problems())
def test_kernel_matches_reference(problem):
    logits, target, weight, ignore = problem
    tol = TOL[logits.dtype.type]
    lk, dk = kernels.softmax_cross_entropy(logits, target, weight, ignore)
    lr, dr = reference.softmax_cross_entropy(logits, target, weight, ignore)
    assert dk.dtype == logits.dtype and dk.shape == logits.shape
    assert np.isfinite(lk) and np.all(np.isfinite(dk))
    assert abs(lk - lr) <= tol["loss"] * max(1.0, abs(lr))
    scale = max(float(np.abs(dr).max(initial=0.0)), 1e-30)
    np.testing.assert_allclose(dk, dr, rtol=0, atol=tol["grad"] * scale)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_ignored_gives_zero(dtype):
    logits = np.ones((2, 3, 2, 2), dtype)
    target = np.full((2, 2, 2), 7, np.int64)
    for fn in (kernels.softmax_cross_entropy, reference.softmax_cross_entropy):
        loss, d = fn(logits, target, np.ones(3), 7)
        assert loss == 0.0 and d.dtype == dtype and not d.any()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ignored_pixels_are_left_out_whatever_their_logits(dtype):
    """NaN and inf logits at ignored pixels change nothing: the reference weighted them by 0
    and got 0 · NaN = NaN where the kernel (and PyTorch) leave them out."""
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    target = rng.integers(0, 3, (2, 4, 4))
    target[0, 1, 2] = target[1, 3, 0] = 255
    clean = [fn(logits, target, np.ones(3), 255)
             for fn in (kernels.softmax_cross_entropy, reference.softmax_cross_entropy)]
    logits[0, :, 1, 2] = np.nan
    logits[1, 1, 3, 0] = np.inf
    for fn, (loss0, d0) in zip((kernels.softmax_cross_entropy,
                                reference.softmax_cross_entropy), clean):
        with np.errstate(invalid="ignore"):     # the reference's inf − inf, left out after
            loss, d = fn(logits, target, np.ones(3), 255)
        assert loss == loss0
        np.testing.assert_array_equal(d, d0)


def test_known_value_uniform_logits():
    # equal logits: p = 1/K everywhere, loss = log K; dlogits = (1/K − [k==t]) / (N·H·W)
    K, N, H, W = 4, 2, 3, 5
    logits = np.zeros((N, K, H, W))
    target = np.random.default_rng(0).integers(0, K, (N, H, W))
    loss, d = kernels.softmax_cross_entropy(logits, target, np.ones(K), -1)
    assert abs(loss - np.log(K)) < 1e-14
    onehot = np.arange(K)[None, :, None, None] == target[:, None]
    np.testing.assert_allclose(d, (1 / K - onehot) / (N * H * W), atol=1e-16)
