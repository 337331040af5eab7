"""ReLU and Dropout layers: known values, finite differences, mask statistics, PyTorch."""
import numpy as np
import pytest

from tinyseg.gradcheck import gradcheck
from tinyseg.layers.activation import Dropout, ReLU

GRAD_TOL = 1e-6  # gradcheck relative error bound, float64


def away_from_zero(rng, shape):
    """Values with |x| ≥ 0.1, so x ± 1e-6 never crosses the ReLU kink."""
    return rng.choice([-1.0, 1.0], shape) * (0.1 + np.abs(rng.standard_normal(shape)))


# -- ReLU ---------------------------------------------------------------------------------

def test_relu_known_values():
    x = np.array([[-2.0, -0.0, 0.0, 1.5, np.inf, -np.inf]], dtype=np.float32)
    relu = ReLU()
    y = relu.forward(x)
    np.testing.assert_array_equal(y, [[0, 0, 0, 1.5, np.inf, 0]])
    assert y.dtype == np.float32
    dx = relu.backward(np.full_like(x, 3.0))
    np.testing.assert_array_equal(dx, [[0, 0, 0, 3, 3, 0]])  # gradient at 0 is 0
    assert dx.dtype == np.float32
    assert np.isnan(relu.forward(np.array([np.nan]))[0])


def test_relu_gradcheck(rng):
    errors = gradcheck(ReLU(), away_from_zero(rng, (2, 3, 4, 5)), rng=rng)
    assert errors["input"] < GRAD_TOL


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_torch(torch, rng, dtype):
    x = rng.standard_normal((2, 3, 4, 5)).astype(dtype)
    d = rng.standard_normal(x.shape).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = torch.relu(tx)
    ty.backward(torch.from_numpy(d))
    relu = ReLU()
    np.testing.assert_array_equal(relu.forward(x), ty.detach().numpy())
    np.testing.assert_array_equal(relu.backward(d), tx.grad.numpy())


def test_relu_errors():
    relu = ReLU()
    with pytest.raises(ValueError, match="ReLU: backward called before forward"):
        relu.backward(np.zeros(3))
    with pytest.raises(ValueError, match="ReLU: expected a float32 or float64 array, got dtype "
                                         r"int64 \(shape \(2, 2\)\)"):
        relu.forward(np.zeros((2, 2), np.int64))
    with pytest.raises(ValueError, match="ReLU: expected a numpy.ndarray, got list"):
        relu.forward([1.0, -1.0])
    relu.forward(np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"ReLU: expected dout of shape \(2, 3\), got shape "
                                         r"\(3, 2\)"):
        relu.backward(np.zeros((3, 2)))


# -- Dropout ------------------------------------------------------------------------------

@pytest.mark.parametrize("p", [0.2, 0.5, 0.8])
def test_dropout_mask_statistics_and_scaling(p):
    drop = Dropout(p, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).uniform(1.0, 2.0, (8, 16, 32, 32)).astype(np.float32)
    y = drop.forward(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    kept = y != 0
    np.testing.assert_array_equal(kept, drop.mask)
    # kept fraction ~ Binomial(n, 1 − p) / n: within 5 standard deviations
    n = x.size
    assert abs(kept.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    # kept values are scaled by 1/(1 − p) (to float32 rounding), dropped ones are exactly 0
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    assert np.all(y[~kept] == 0)
    # the mean is preserved in expectation
    assert abs(y.mean() / x.mean() - 1) < 0.01
    # no visible structure: kept fraction per channel and per row close to 1 − p
    assert np.all(np.abs(kept.mean(axis=(0, 2, 3)) - (1 - p)) < 6 * np.sqrt(p * (1 - p) / (n / 16)))
    # backward uses the same mask and scale
    dx = drop.backward(np.ones_like(x))
    assert dx.dtype == np.float32
    np.testing.assert_array_equal(dx, np.where(kept, np.float32(1 / (1 - p)), 0))


def test_dropout_deterministic_by_seed():
    x = np.ones((2, 3, 8, 8))
    a = Dropout(0.5, rng=np.random.default_rng(42))
    b = Dropout(0.5, rng=np.random.default_rng(42))
    c = Dropout(0.5, rng=np.random.default_rng(43))
    ya, yb, yc = a.forward(x), b.forward(x), c.forward(x)
    np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(ya, yc)
    # the next draw differs from the first (fresh mask per call by default), and is again
    # the same for the same seed
    ya2, yb2 = a.forward(x), b.forward(x)
    assert not np.array_equal(ya2, ya)
    np.testing.assert_array_equal(ya2, yb2)
    # same seed -> same mask in both dtypes (drawn in float32 either way)
    y32 = Dropout(0.5, rng=np.random.default_rng(42)).forward(x.astype(np.float32))
    np.testing.assert_array_equal(y32 != 0, ya != 0)


def test_dropout_eval_and_p0_are_identity(rng):
    x = rng.standard_normal((2, 3, 4, 4))
    d = rng.standard_normal(x.shape)
    drop = Dropout(0.5, rng=np.random.default_rng(0)).eval()
    assert drop.forward(x) is x
    assert drop.backward(d) is d
    state = np.random.default_rng(5)
    zero = Dropout(0.0, rng=state)
    assert zero.forward(x) is x and zero.backward(d) is d
    # p = 0 draws nothing from the generator
    assert state.bit_generator.state == np.random.default_rng(5).bit_generator.state


def test_dropout_freeze_mask_and_gradcheck(rng):
    drop = Dropout(0.3, rng=np.random.default_rng(0)).freeze_mask()
    x = rng.standard_normal((2, 3, 4, 5))
    y1 = drop.forward(x)
    np.testing.assert_array_equal(drop.forward(x), y1)  # frozen: same mask
    errors = gradcheck(drop, x, rng=rng)
    assert errors["input"] < GRAD_TOL
    # a new shape needs a new mask even when frozen
    assert drop.forward(np.ones((1, 2, 3, 3))).shape == (1, 2, 3, 3)
    drop.freeze_mask(False)
    assert not np.array_equal(drop.forward(x), y1)


def test_dropout_unfrozen_is_not_deterministic(rng):
    """Why gradcheck needs a frozen mask: with fresh masks it reports large errors."""
    drop = Dropout(0.5, rng=np.random.default_rng(0))
    errors = gradcheck(drop, rng.standard_normal((2, 2, 3, 3)), rng=rng)
    assert errors["input"] > 1e-2


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dropout_scaling_matches_torch(torch, rng, dtype):
    """Masks differ (different generators); the rule y ∈ {0, x/(1 − p)} must be the same."""
    p = 0.2
    x = rng.uniform(1.0, 2.0, (4, 8, 16, 16)).astype(dtype)
    tx = torch.from_numpy(x.copy()).requires_grad_(True)
    ty = torch.nn.functional.dropout(tx, p, training=True)
    ty.backward(torch.ones_like(ty))
    t_kept = ty.detach().numpy() != 0
    t_y = ty.detach().numpy()
    drop = Dropout(p, rng=np.random.default_rng(0))
    y = drop.forward(x)
    kept = y != 0
    # the same rule in both: kept values x / (1 − p), the others 0 ...
    np.testing.assert_allclose(y[kept], x[kept] / (1 - p), rtol=1e-6)
    np.testing.assert_allclose(t_y[t_kept], x[t_kept] / (1 - p), rtol=1e-6)
    both = kept & t_kept
    assert both.sum() > 0.5 * x.size
    np.testing.assert_allclose(y[both], t_y[both], rtol=1e-6)
    # ... and gradients mask / (1 − p)
    np.testing.assert_allclose(drop.backward(np.ones_like(x))[kept], 1 / (1 - p), rtol=1e-6)
    np.testing.assert_allclose(tx.grad.numpy()[t_kept], 1 / (1 - p), rtol=1e-6)
    assert np.all(tx.grad.numpy()[~t_kept] == 0)
    assert abs(kept.mean() - t_kept.mean()) < 0.02


def test_dropout_errors():
    for p in (-0.1, 1.0, 1.5, "0.5", None, True):
        with pytest.raises(ValueError, match=r"Dropout: p must be a number in \[0, 1\)"):
            Dropout(p)
    with pytest.raises(ValueError, match="Dropout: rng must be a numpy.random.Generator"):
        Dropout(0.5, rng=3)
    drop = Dropout(0.5, rng=np.random.default_rng(0))
    with pytest.raises(ValueError, match="Dropout: backward called before forward"):
        drop.backward(np.zeros(3))
    with pytest.raises(ValueError, match="Dropout: expected a float32 or float64 array, got "
                                         "dtype int32"):
        drop.forward(np.zeros((2, 2), np.int32))
    drop.forward(np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"Dropout: expected dout of shape \(2, 2\)"):
        drop.backward(np.zeros(4))


def test_backward_refuses_a_dout_that_is_no_float_array():
    """An int dout came back as an int gradient from ReLU, a complex one lost its imaginary
    part in batch norm and max-pool; Dropout failed inside NumPy."""
    from tinyseg import BatchNorm2d, Dropout, MaxPool2d, ReLU
    x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(np.float32)
    layers = [("ReLU", ReLU()), ("Dropout", Dropout(0.5, rng=np.random.default_rng(1))),
              ("BatchNorm2d", BatchNorm2d(3)), ("MaxPool2d", MaxPool2d(2))]
    for name, layer in layers:
        y = layer.forward(x)
        for dtype in (np.int64, np.complex64):
            with pytest.raises(ValueError, match=f"{name}: expected a float dout, got"):
                layer.backward(np.ones(y.shape, dtype))
        assert layer.backward(np.ones(y.shape, np.float32)).shape == x.shape


@pytest.mark.parametrize("make", ["ReLU", "Dropout", "Dropout-eval"])
def test_backward_returns_the_forward_inputs_dtype(make):
    """A float16 dout came back from ReLU and Dropout as a float16 gradient (batch norm and
    max-pool cast it to their input's dtype); now all four do (a fuzzing helper)."""
    from tinyseg import Dropout, ReLU
    layer = ReLU() if make == "ReLU" else Dropout(0.5, rng=np.random.default_rng(1))
    if make == "Dropout-eval":
        layer.eval()
    for dtype in (np.float32, np.float64):
        x = np.random.default_rng(0).standard_normal((2, 3, 4, 4)).astype(dtype)
        y = layer.forward(x)
        dout = np.random.default_rng(2).standard_normal(y.shape)
        dx = layer.backward(dout.astype(np.float16))
        assert dx.dtype == dtype
        np.testing.assert_array_equal(dx, layer.backward(dout.astype(np.float16).astype(dtype)))
