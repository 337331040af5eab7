"""He-uniform initialisation: bounds, determinism, variance 2/fan_in, argument checks."""
import math

import numpy as np
import pytest

from tinyseg.init import he_uniform


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,fan_in", [((16, 3, 3, 3), 27), ((8, 4, 1, 1), 4), ((5,), 1),
                                          ((48, 16, 3, 3), 16 * 9)])
def test_bounds_shape_dtype(shape, fan_in, dtype):
    w = he_uniform(shape, fan_in, np.random.default_rng(0), dtype=dtype)
    b = math.sqrt(6 / fan_in)
    assert w.shape == shape and w.dtype == dtype
    assert np.all(np.abs(w) <= dtype(b))


def test_bounds_are_reached_and_distribution_uniform():
    b = math.sqrt(6 / 10)
    w = he_uniform((100_000,), 10, np.random.default_rng(1), dtype=np.float64)
    # A uniform sample of 1e5 comes within 1e-3·b of both ends with overwhelming probability.
    assert w.max() > 0.999 * b and w.min() < -0.999 * b
    # Half of U(-b, b) lies in [-b/2, b/2]: binomial sd = 0.0016, tolerance 0.01 (>6 sd).
    assert abs(np.mean(np.abs(w) <= b / 2) - 0.5) < 0.01


@pytest.mark.parametrize("fan_in", [9, 27, 432])
def test_variance_is_two_over_fan_in(fan_in):
    # Var(U(-b, b)) = b²/3 = 2/fan_in.  The sample variance of n = 1e5 draws has relative sd
    # 3·sqrt(4/45/n) ≈ 0.28%; tolerance 2% (about 7 sd).  Mean: sd = sqrt(2/fan_in/n).
    n = 100_000
    w = he_uniform((n,), fan_in, np.random.default_rng(fan_in), dtype=np.float64)
    assert abs(w.var() / (2 / fan_in) - 1) < 0.02
    assert abs(w.mean()) < 7 * math.sqrt(2 / fan_in / n)


def test_seed_determinism():
    a = he_uniform((4, 3, 3, 3), 27, np.random.default_rng(7))
    b = he_uniform((4, 3, 3, 3), 27, np.random.default_rng(7))
    c = he_uniform((4, 3, 3, 3), 27, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    # the generator advances: two draws from one generator differ
    r = np.random.default_rng(7)
    assert not np.array_equal(he_uniform((10,), 3, r), he_uniform((10,), 3, r))


@pytest.mark.parametrize("bad", [None, 0, np.random.RandomState(0), "seed"])
def test_rng_must_be_generator(bad):
    with pytest.raises(ValueError, match="Generator"):
        he_uniform((3,), 3, bad)


@pytest.mark.parametrize("fan_in", [0, -3, 2.5, True])
def test_bad_fan_in(fan_in):
    with pytest.raises(ValueError, match="fan_in"):
        he_uniform((3,), fan_in, np.random.default_rng(0))


def test_bad_dtype():
    with pytest.raises(ValueError, match="dtype"):
        he_uniform((3,), 3, np.random.default_rng(0), dtype=np.int32)


def test_fan_in_convention_matches_torch(torch):
    """The documented fan-ins equal PyTorch's, and our bound is kaiming_uniform_'s (relu)."""
    from torch.nn.init import _calculate_fan_in_and_fan_out, calculate_gain
    conv = torch.nn.Conv2d(5, 7, 3)              # weight (out, in, kh, kw)
    tconv = torch.nn.ConvTranspose2d(5, 7, 3)    # weight (in, out, kh, kw)
    assert _calculate_fan_in_and_fan_out(conv.weight)[0] == 5 * 9
    assert _calculate_fan_in_and_fan_out(tconv.weight)[0] == 7 * 9   # out · kh · kw
    # kaiming_uniform_(a=0, relu) bound = gain · sqrt(3 / fan_in) = sqrt(6 / fan_in)
    fan_in = 45
    assert math.isclose(calculate_gain("relu") * math.sqrt(3 / fan_in), math.sqrt(6 / fan_in))
    w = torch.empty(100_000, fan_in, dtype=torch.float64)
    torch.nn.init.kaiming_uniform_(w, a=0, nonlinearity="relu")
    ours = he_uniform((100_000, fan_in), fan_in, np.random.default_rng(0), np.float64)
    b = math.sqrt(6 / fan_in)
    assert float(w.abs().max()) <= b and float(w.abs().max()) > 0.999 * b
    assert abs(float(w.var()) / ours.var() - 1) < 0.01
