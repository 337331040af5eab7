"""tinyseg.gradcheck itself: known values, and arguments that would make a check meaningless."""
import numpy as np
import pytest

from tinyseg import ReLU
from tinyseg.gradcheck import gradcheck, numerical_gradient, relative_error


def test_relative_error_by_hand():
    assert relative_error(np.array([1.0, -2.0]), np.array([1.0, -1.0])) == 0.5
    assert relative_error(np.zeros(3), np.zeros(3)) == 0.0
    with pytest.raises(ValueError, match=r"different shapes, \(3,\) and \(2, 3\)"):
        relative_error(np.zeros(3), np.ones((2, 3)))       # was broadcast silently


def test_numerical_gradient_of_a_square_is_twice_x():
    x = np.array([[0.5, -1.0], [2.0, 3.0]])
    g = numerical_gradient(lambda: float(np.sum(x ** 2)), x)
    np.testing.assert_allclose(g, 2 * x, rtol=1e-9)
    np.testing.assert_array_equal(x, [[0.5, -1.0], [2.0, 3.0]])   # restored
    with pytest.raises(ValueError, match="eps must be positive, got 0"):
        numerical_gradient(lambda: 0.0, x, eps=0)


def test_gradcheck_refuses_a_check_that_checks_nothing():
    x = np.random.default_rng(0).standard_normal((1, 2, 3, 3)) + 0.5
    assert max(gradcheck(ReLU(), x).values()) < 1e-8
    for bad in (0, -1):
        with pytest.raises(ValueError, match="max_entries must be a positive integer"):
            gradcheck(ReLU(), x, max_entries=bad)   # 0 returned {'input': 0.0}: a "pass"
    with pytest.raises(ValueError, match="eps must be positive"):
        gradcheck(ReLU(), x, eps=0.0)


def test_relative_error_is_scaled_by_the_larger_gradient():
    """|a − n| / max(|a|, |n|): a backward that returns zeros where the finite difference
    is not scores 1 (a total failure), whichever side is the larger."""
    assert relative_error(np.zeros(3), np.array([0.0, 1e-3, 0.0])) == 1.0
    assert relative_error(np.array([0.0, 2.0]), np.array([0.0, 4.0])) == 0.5
    assert relative_error(np.array([4.0]), np.array([2.0])) == 0.5
