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


def test_relative_error_compares_entry_by_entry_with_signs():
    """A measure that compared only the largest magnitudes (``|max|a| − max|n||``) passed
    every case above and scored 0 for a permuted or sign-flipped gradient (mutation audit,
    2026-11-28): every layer's gradient check would have passed such a backward."""
    assert relative_error(np.array([1.0, 2.0]), np.array([2.0, 1.0])) == 0.5
    assert relative_error(np.array([1.0]), np.array([-1.0])) == 2.0
    assert relative_error(np.array([3.0, -1.0]), np.array([-1.0, 3.0])) == 4.0 / 3.0


class _Flip(ReLU):
    """A linear layer y = x[..., ::-1] with a wrong backward: the gradient not mirrored back,
    or with its sign flipped."""

    def __init__(self, mistake):
        super().__init__()
        self.mistake = mistake

    def forward(self, x):
        return x[..., ::-1].copy()

    def backward(self, dout):
        return -dout[..., ::-1].copy() if self.mistake == "sign" else dout.copy()


@pytest.mark.parametrize("mistake", ["not mirrored", "sign"])
def test_gradcheck_fails_a_wrong_backward(mistake):
    x = np.random.default_rng(1).standard_normal((1, 2, 3, 4))
    assert gradcheck(_Flip(mistake), x)["input"] > 0.1
