"""MaxPool2d layer: finite differences, PyTorch parity (values, gradients, ties, odd sizes),
errors."""
import numpy as np
import pytest

from tinyseg.gradcheck import gradcheck
from tinyseg.layers.pool import MaxPool2d

GRAD_TOL = 1e-6  # gradcheck relative error bound, float64


def distinct(rng, shape, gap=1e-2):
    """All values distinct and ≥ ``gap`` apart, so x ± 1e-6 never changes a window's winner."""
    return rng.permutation(int(np.prod(shape))).reshape(shape) * gap - 1.0


@pytest.mark.parametrize("k, shape", [(2, (2, 3, 6, 8)), (2, (1, 2, 5, 7)), (3, (2, 2, 7, 6))])
def test_gradcheck(rng, k, shape):
    errors = gradcheck(MaxPool2d(k), distinct(rng, shape), rng=rng)
    assert errors["input"] < GRAD_TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, shape, ties", [(2, (2, 3, 8, 8), False), (2, (2, 3, 7, 9), True),
                                            (3, (1, 4, 10, 11), True), (1, (1, 2, 3, 3), False)])
def test_matches_torch(torch, rng, dtype, k, shape, ties):
    if ties:
        x = rng.integers(0, 3, shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    d = rng.standard_normal((shape[0], shape[1], shape[2] // k, shape[3] // k)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = torch.nn.MaxPool2d(k)(tx)
    ty.backward(torch.from_numpy(d))
    pool = MaxPool2d(k)
    y = pool.forward(x)
    dx = pool.backward(d)
    assert y.dtype == dx.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, ty.detach().numpy())  # exact: selection only
    np.testing.assert_array_equal(dx, tx.grad.numpy())  # ties: same winner gets it


def test_known_values_and_non_contiguous_input():
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4)[:, ::-1]  # channels reversed view
    pool = MaxPool2d()
    assert pool.kernel_size == 2
    y = pool.forward(x)
    np.testing.assert_array_equal(y[0, 0], [[21, 23], [29, 31]])
    np.testing.assert_array_equal(y[0, 1], [[5, 7], [13, 15]])
    dx = pool.backward(np.ones_like(y))
    assert dx.shape == x.shape
    np.testing.assert_array_equal(dx[0, 1], [[0, 0, 0, 0], [0, 1, 0, 1]] * 2)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 4, 4), np.float32), r"MaxPool2d: expected input of shape \(N, C, H, W\), got "
                                      r"shape \(2, 4, 4\)"),
    (np.zeros((1, 1, 4, 4), np.uint8), r"MaxPool2d: expected a float32 or float64 array, got "
                                       r"dtype uint8"),
    (np.zeros((1, 1, 2, 5), np.float32), r"MaxPool2d: kernel_size 3 is larger than the input's "
                                         r"spatial size \(H, W\) = \(2, 5\)"),
    (np.zeros((1, 1, 5, 1), np.float32), r"MaxPool2d: kernel_size 3 is larger .*\(5, 1\)"),
])
def test_input_errors(bad, message):
    with pytest.raises(ValueError, match=message):
        MaxPool2d(3).forward(bad)


def test_other_errors():
    for k in (0, 12, 2.0, True, "2"):
        with pytest.raises(ValueError, match=r"MaxPool2d: kernel_size must be an int in \[1, 11\]"):
            MaxPool2d(k)
    pool = MaxPool2d(2)
    with pytest.raises(ValueError, match="MaxPool2d: backward called before forward"):
        pool.backward(np.zeros((1, 1, 1, 1), np.float32))
    pool.forward(np.zeros((1, 1, 4, 4), np.float32))
    with pytest.raises(ValueError, match=r"MaxPool2d: expected dout of shape \(1, 1, 2, 2\), "
                                         r"got shape \(1, 1, 4, 4\)"):
        pool.backward(np.zeros((1, 1, 4, 4), np.float32))


def test_largest_kernel(rng):
    x = distinct(rng, (1, 1, 11, 12))
    pool = MaxPool2d(11)
    y = pool.forward(x)
    assert y.shape == (1, 1, 1, 1) and y[0, 0, 0, 0] == x[0, 0, :, :11].max()
    dx = pool.backward(np.ones_like(y))
    assert dx[0, 0, :, :11].argmax() == x[0, 0, :, :11].argmax() and dx.sum() == 1


def test_maxpool_backward_dtype_follows_input():
    pool = MaxPool2d(2)
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4)
    pool.forward(x)
    dx = pool.backward(np.ones((1, 1, 2, 2), np.float64))
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx[0, 0], [[0, 0, 0, 0], [0, 1, 0, 1],
                                             [0, 0, 0, 0], [0, 1, 0, 1]])
