"""Channel concatenation: values, the backward as the exact adjoint, PyTorch, errors."""
import numpy as np
import pytest

from tinyseg.gradcheck import gradcheck
from tinyseg.layers.base import Layer
from tinyseg.layers.concat import Concat, concat, split_grad

GRAD_TOL = 1e-6  # gradcheck relative error bound, float64


def test_values_and_split_roundtrip(rng):
    xs = [rng.standard_normal((2, c, 3, 4)) for c in (3, 1, 5)]
    y = concat(xs)
    assert y.shape == (2, 9, 3, 4) and y.flags.c_contiguous
    np.testing.assert_array_equal(y[:, 3:4], xs[1])
    parts = split_grad(y, [3, 1, 5])
    for p, x in zip(parts, xs):
        np.testing.assert_array_equal(p, x)
        assert np.shares_memory(p, y)  # views, no copy
    assert concat(xs[:1]) is not xs[0]  # a single input is copied, not aliased


def test_backward_is_adjoint(rng):
    """<concat(xs), dy> = Σ_k <x_k, dx_k>: split_grad is exactly the transpose of concat."""
    sizes = [2, 4, 1]
    xs = [rng.standard_normal((3, c, 2, 5)) for c in sizes]
    dy = rng.standard_normal((3, sum(sizes), 2, 5))
    lhs = np.sum(concat(xs) * dy)
    rhs = sum(np.sum(x * g) for x, g in zip(xs, split_grad(dy, sizes)))
    assert lhs == pytest.approx(rhs, rel=1e-12)


class _ConcatOfParts(Layer):
    """x -> concat([x[:, 2:], 3·x[:, :2], x[:, :1]]) through a Concat layer (for gradcheck)."""

    def __init__(self):
        super().__init__()
        self.cat = Concat()

    def forward(self, x):
        return self.cat.forward([x[:, 2:], 3.0 * x[:, :2], x[:, :1]])

    def backward(self, dout):
        a, b, c = self.cat.backward(dout)
        dx = np.zeros((dout.shape[0], a.shape[1] + 2) + dout.shape[2:])
        dx[:, 2:] += a
        dx[:, :2] += 3.0 * b
        dx[:, :1] += c
        return dx


def test_gradcheck_through_concat_layer(rng):
    errors = gradcheck(_ConcatOfParts(), rng.standard_normal((2, 5, 3, 3)), rng=rng)
    assert errors["input"] < GRAD_TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_matches_torch(torch, rng, dtype):
    xs = [rng.standard_normal((2, c, 4, 3)).astype(dtype) for c in (1, 3, 2)]
    txs = [torch.from_numpy(x.copy()).requires_grad_(True) for x in xs]
    ty = torch.cat(txs, dim=1)
    dy = rng.standard_normal(ty.shape).astype(dtype)
    ty.backward(torch.from_numpy(dy))
    layer = Concat()
    y = layer.forward(xs)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(y, ty.detach().numpy())
    for g, t in zip(layer.backward(dy), txs):
        np.testing.assert_array_equal(g, t.grad.numpy())


def test_errors():
    a = np.zeros((2, 3, 4, 4), np.float32)
    with pytest.raises(ValueError, match="Concat: expected a non-empty list .* got list of "
                                         "length 0"):
        concat([])
    with pytest.raises(ValueError, match="Concat: expected a non-empty list .* got ndarray"):
        concat(a)
    with pytest.raises(ValueError, match=r"Concat: all inputs need the same N, H, W; input 0 has "
                                         r"shape \(2, 3, 4, 4\), input 1 has shape "
                                         r"\(2, 3, 4, 5\)"):
        concat([a, np.zeros((2, 3, 4, 5), np.float32)])
    with pytest.raises(ValueError, match=r"Concat: all inputs need the same N, H, W; .*input 2 "
                                         r"has shape \(1, 3, 4, 4\)"):
        concat([a, a, np.zeros((1, 3, 4, 4), np.float32)])
    with pytest.raises(ValueError, match=r"Concat: all inputs need the same dtype; input 0 is "
                                         r"float32 \(shape \(2, 3, 4, 4\)\), input 1 is float64"):
        concat([a, np.zeros((2, 1, 4, 4))])
    with pytest.raises(ValueError, match=r"Concat \(input 1\): expected a float32 or float64 "
                                         r"array, got dtype int64"):
        concat([a, np.zeros((2, 1, 4, 4), np.int64)])
    with pytest.raises(ValueError, match=r"Concat \(input 0\): expected input of shape "
                                         r"\(N, C, H, W\), got shape \(3, 4, 4\)"):
        concat([np.zeros((3, 4, 4), np.float32), a])
    with pytest.raises(ValueError, match=r"Concat.split_grad: channel sizes \[3, 2\] \(sum 5\) "
                                         r"do not match dy of shape \(2, 3, 4, 4\)"):
        split_grad(a, [3, 2])
    layer = Concat()
    with pytest.raises(ValueError, match="Concat: backward called before forward"):
        layer.backward(a)
    layer.forward([a, a])
    with pytest.raises(ValueError, match=r"Concat: expected dout of shape \(2, 6, 4, 4\), got "
                                         r"shape \(2, 6, 4, 3\)"):
        layer.backward(np.zeros((2, 6, 4, 3), np.float32))
