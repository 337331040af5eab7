"""softmax_cross_entropy: finite differences, known values, ±1e4 logits, PyTorch, validation."""
import math

import numpy as np
import pytest

from tinyseg.gradcheck import numerical_gradient, relative_error
from tinyseg.losses import softmax_cross_entropy

GRAD_TOL = 1e-6      # relative error of analytic vs central-difference gradient, float64
TORCH_TOL = {np.float64: 1e-12, np.float32: 2e-6}   # relative, loss and gradient


def _problem(rng, N=2, K=3, H=4, W=5, ignore=None, frac_ignored=0.3):
    logits = rng.standard_normal((N, K, H, W))
    target = rng.integers(0, K, (N, H, W))
    if ignore is not None:
        target[rng.random((N, H, W)) < frac_ignored] = ignore
    return logits, target


@pytest.mark.parametrize("weight,ignore", [(None, None), ([0.3, 1.0, 2.5], None),
                                           (None, 255), ([0.3, 1.0, 2.5], 1)])
def test_gradient_finite_differences(rng, weight, ignore):
    logits, target = _problem(rng, ignore=ignore)
    loss, d = softmax_cross_entropy(logits, target, weight, ignore)
    num = numerical_gradient(lambda: softmax_cross_entropy(logits, target, weight, ignore)[0],
                             logits, eps=1e-6)
    assert relative_error(d, num) < GRAD_TOL


def test_known_values_by_hand():
    # one image, 2 classes, 1x2 pixels: logits (0, log 3) -> p = (1/4, 3/4)
    logits = np.array([[[[0.0, 0.0]], [[math.log(3), math.log(3)]]]])
    target = np.array([[[1, 0]]])
    loss, d = softmax_cross_entropy(logits, target)
    assert math.isclose(loss, (-math.log(0.75) - math.log(0.25)) / 2, rel_tol=1e-14)
    expected = np.array([[[[0.25, 0.25 - 1]], [[0.75 - 1, 0.75]]]]) / 2
    np.testing.assert_allclose(d, expected, atol=1e-15)
    # weighted: pixel 0 (class 1) weight 3, pixel 1 (class 0) weight 1 -> divide by 3 + 1
    loss_w, d_w = softmax_cross_entropy(logits, target, weight=[1.0, 3.0])
    assert math.isclose(loss_w, (3 * -math.log(0.75) + 1 * -math.log(0.25)) / 4, rel_tol=1e-14)
    # pixel 0: (3/4)(p − onehot(1)) = (3/4)(0.25, −0.25); pixel 1: (1/4)(0.25 − 1, 0.75)
    np.testing.assert_allclose(d_w[0, :, 0, 0], 3 / 4 * np.array([0.25, -0.25]), atol=1e-15)
    np.testing.assert_allclose(d_w[0, :, 0, 1], 1 / 4 * np.array([-0.75, 0.75]), atol=1e-15)
    # ignore the second pixel: mean over the first only, zero gradient on the second
    loss_i, d_i = softmax_cross_entropy(logits, target, ignore_index=0)
    assert math.isclose(loss_i, -math.log(0.75), rel_tol=1e-14)
    assert not d_i[..., 1].any()


def test_ignored_pixels_have_zero_gradient_and_do_not_change_loss(rng):
    logits, target = _problem(rng, ignore=-100, frac_ignored=0.5)
    loss, d = softmax_cross_entropy(logits, target, ignore_index=-100)
    ignored = target == -100
    assert ignored.any() and not d.transpose(0, 2, 3, 1)[ignored].any()
    changed = logits.copy()
    changed.transpose(0, 2, 3, 1)[ignored] = 50.0     # ignored logits cannot matter
    assert softmax_cross_entropy(changed, target, ignore_index=-100)[0] == loss


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_ignored_is_zero_not_nan(dtype):
    logits = np.ones((1, 2, 3, 3), dtype)
    loss, d = softmax_cross_entropy(logits, np.full((1, 3, 3), 9), ignore_index=9)
    assert loss == 0.0 and not d.any() and d.dtype == dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_huge_logits_are_finite_and_correct(dtype):
    # pixel 0: right class has +1e4, other -1e4 -> loss 0, grad 0
    # pixel 1: right class has -1e4, other +1e4 -> loss 2e4, grad (+1, -1) / 2
    logits = np.array([[[[1e4, 1e4]], [[-1e4, -1e4]]]], dtype)
    target = np.array([[[0, 1]]])
    loss, d = softmax_cross_entropy(logits, target)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert math.isclose(loss, (0 + 2e4) / 2, rel_tol=1e-7)
    np.testing.assert_allclose(d[0, :, 0], np.array([[0, 0.5], [0, -0.5]]), atol=1e-7)
    # and a random mixture of ±1e4 logits agrees with a float64 log-sum-exp computed in Python
    rng = np.random.default_rng(3)
    big = (1e4 * rng.choice([-1.0, 1.0], (2, 3, 4, 4)) + rng.standard_normal((2, 3, 4, 4)))
    t = rng.integers(0, 3, (2, 4, 4))
    loss, d = softmax_cross_entropy(big.astype(dtype), t)
    x = big.astype(dtype).astype(np.float64)
    nll = [math.log(sum(math.exp(x[n, k, h, w] - x[n, :, h, w].max()) for k in range(3)))
           + x[n, :, h, w].max() - x[n, t[n, h, w], h, w]
           for n in range(2) for h in range(4) for w in range(4)]
    assert math.isclose(loss, np.mean(nll), rel_tol=1e-6)
    assert np.all(np.isfinite(d))


@pytest.mark.parametrize("tdtype", [np.uint8, np.int32, np.int64])
def test_target_integer_dtypes_and_output_dtype(rng, tdtype):
    logits, target = _problem(rng)
    ref = softmax_cross_entropy(logits, target)
    out = softmax_cross_entropy(logits.astype(np.float32), target.astype(tdtype))
    assert out[1].dtype == np.float32 and isinstance(out[0], float)
    assert math.isclose(out[0], ref[0], rel_tol=1e-6)


def test_non_contiguous_logits(rng):
    logits, target = _problem(rng)
    nhwc = np.ascontiguousarray(logits.transpose(0, 2, 3, 1))
    view = nhwc.transpose(0, 3, 1, 2)            # same values, not C-contiguous
    a, da = softmax_cross_entropy(logits, target)
    b, db = softmax_cross_entropy(view, target)
    assert a == b and np.array_equal(da, db)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("weight,ignore", [(None, None), ([0.2, 1.5, 0.7], None),
                                           (None, 2), ([0.2, 1.5, 0.7], -100),
                                           ([0.2, 1.5, 0.7], 0)])
def test_matches_torch(torch, rng, dtype, weight, ignore):
    logits, target = _problem(rng, N=3, K=3, H=5, W=6, ignore=ignore)
    logits = (3 * logits).astype(dtype)
    loss, d = softmax_cross_entropy(logits, target, weight, ignore)
    x = torch.tensor(logits, requires_grad=True)
    wt = None if weight is None else torch.tensor(weight, dtype=x.dtype)
    tl = torch.nn.functional.cross_entropy(x, torch.tensor(target), weight=wt,
                                           ignore_index=-100 if ignore is None else ignore)
    tl.backward()
    tol = TORCH_TOL[dtype]
    assert math.isclose(loss, tl.item(), rel_tol=tol)
    g = x.grad.numpy()
    np.testing.assert_allclose(d, g, rtol=0, atol=tol * np.abs(g).max())


def test_all_ignored_torch_gives_nan_we_give_zero(torch):
    """Documents the one intended difference from PyTorch."""
    x = torch.zeros(1, 2, 2, 2, dtype=torch.float64)
    t = torch.full((1, 2, 2), 5)
    assert math.isnan(torch.nn.functional.cross_entropy(x, t, ignore_index=5).item())
    assert softmax_cross_entropy(x.numpy(), t.numpy(), ignore_index=5)[0] == 0.0


@pytest.mark.parametrize("logits,target,kw,match", [
    (np.zeros((2, 3, 4)), np.zeros((2, 3), int), {}, r"\(N, C, H, W\)"),
    (np.zeros((1, 2, 3, 4), np.int64), np.zeros((1, 3, 4), int), {}, "float32 or float64"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4)), {}, "integer"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 4, 3), int), {}, r"\(1, 3, 4\)"),
    (np.zeros((1, 2, 3, 4)), np.full((1, 3, 4), 2), {}, r"\[0, 2\).*found 2"),
    (np.zeros((1, 2, 3, 4)), np.full((1, 3, 4), -1), {}, r"found -1"),
    (np.zeros((1, 2, 3, 4)), np.full((1, 3, 4), 7), {"ignore_index": 6}, "ignore_index=6"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4), int), {"weight": [1.0]}, r"\(2,\)"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4), int), {"weight": [1.0, -1]}, "non-negative"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4), int), {"weight": [0, 0]}, "not be all zero"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4), int), {"ignore_index": 1.5}, "ignore_index"),
    ([[[[0.0]]]], np.zeros((1, 1, 1), int), {}, "ndarray"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4), int), {"ignore_index": 2**63}, "fit in 64 bits"),
    (np.zeros((1, 2, 3, 4)), np.full((1, 3, 4), 2**64 - 1, np.uint64), {},
     "found 18446744073709551615"),                      # was reported as -1
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4), int), {"weight": ["a", "b"]}, "real numbers"),
    (np.zeros((1, 2, 3, 4)), np.zeros((1, 3, 4), int), {"weight": [1j, 1]}, "real numbers"),
])
def test_validation(logits, target, kw, match):
    with pytest.raises(ValueError, match=match) as e:
        softmax_cross_entropy(logits, target, **kw)
    assert "softmax_cross_entropy" in str(e.value)


def test_a_class_of_weight_zero_does_not_count():
    """Weight 0 is allowed (as in PyTorch): that class's pixels add nothing to the weighted
    mean and get no gradient."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((2, 3, 4, 5))
    target = rng.integers(0, 3, size=(2, 4, 5))
    weight = np.array([1.0, 0.0, 2.0])
    loss, d = softmax_cross_entropy(logits, target, weight=weight)
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    nll = -np.log(np.take_along_axis(p, target[:, None], axis=1)[:, 0])
    w = weight[target]
    assert loss == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-10)
    assert not d.transpose(1, 0, 2, 3)[:, target == 1].any()


def test_reference_loss_matches_torch_with_ignore_and_weights(torch):
    from tinyseg.reference.loss import softmax_cross_entropy
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 4, 5))
    t = rng.integers(0, 3, (2, 4, 5))
    t[0, :2] = 255
    w = np.array([0.5, 2.0, 1.0])
    loss, d = softmax_cross_entropy(x, t, w, 255)
    xt = torch.tensor(x, requires_grad=True)
    lt = torch.nn.functional.cross_entropy(xt, torch.tensor(t), weight=torch.tensor(w),
                                           ignore_index=255)
    lt.backward()
    assert loss == pytest.approx(lt.item(), rel=1e-12)
    np.testing.assert_allclose(d, xt.grad.numpy(), rtol=1e-10, atol=1e-14)
