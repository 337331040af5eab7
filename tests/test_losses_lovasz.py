"""lovasz_softmax: 1 − IoU on hard predictions, the threshold integral, finite differences."""
import numpy as np
import pytest

from tinyseg.gradcheck import numerical_gradient, relative_error
from tinyseg.losses import lovasz_jumps, lovasz_softmax

GRAD_TOL = 1e-6      # relative error of analytic vs central-difference gradient, float64


def _softmax(x):
    p = np.exp(x - x.max(axis=1, keepdims=True))
    return p / p.sum(axis=1, keepdims=True)


def _jaccard_loss(wrong, fg):
    """Δ(M) = 1 − |F ∖ M| / |F ∪ M| for boolean pixel sets M (``wrong``) and F (``fg``)."""
    union = (fg | wrong).sum()
    return 0.0 if union == 0 else 1.0 - (fg & ~wrong).sum() / union


def _threshold_integral(e, fg):
    """∫₀¹ Δ({i : e_i ≥ u}) du, exactly: Δ is constant between consecutive error values."""
    levels = np.concatenate([[0.0], np.unique(e)])
    return sum((hi - lo) * _jaccard_loss(e >= hi, fg) for lo, hi in zip(levels, levels[1:]))


def test_hard_predictions_give_one_minus_iou(rng):
    # logits ±60 make every probability 0 or 1 to the last bit: the errors are the mistakes
    target = rng.integers(0, 2, (3, 5, 6))
    person = rng.random((3, 5, 6)) < 0.5
    logits = np.stack([np.zeros(person.shape), np.where(person, 60.0, -60.0)], axis=1)
    t = target == 1
    iou = (person & t).sum() / (person | t).sum()
    loss, _ = lovasz_softmax(logits, target, classes=[1])
    assert loss == pytest.approx(1 - iou, abs=1e-15)
    # both classes: the mean of the two classes' 1 − IoU
    iou0 = (~person & ~t).sum() / (~person | ~t).sum()
    loss, _ = lovasz_softmax(logits, target)
    assert loss == pytest.approx(1 - (iou + iou0) / 2, abs=1e-15)


def test_known_value_by_hand():
    # 1 image, 1 x 3 pixels, target (1, 0, 1); person probabilities 0.8, 0.5, 0.2:
    # errors 0.2, 0.5, 0.8, sorted 0.8 (fg), 0.5 (bg), 0.2 (fg), |F| = 2
    # Δ(M_1) = 1 − 1/2, Δ(M_2) = 1 − 1/3, Δ(M_3) = 1 − 0/3 → jumps 1/2, 1/6, 1/3
    p = np.array([0.8, 0.5, 0.2])
    logits = np.stack([np.zeros(3), np.log(p / (1 - p))])[None, :, None, :]
    target = np.array([[[1, 0, 1]]])
    loss, _ = lovasz_softmax(logits, target, classes=[1])
    assert loss == pytest.approx(0.8 / 2 + 0.5 / 6 + 0.2 / 3, rel=1e-14)
    np.testing.assert_allclose(lovasz_jumps(np.array([1.0, 0.0, 1.0])), [1 / 2, 1 / 6, 1 / 3],
                               rtol=1e-15)


@pytest.mark.parametrize("K,classes", [(2, [1]), (2, None), (3, [0, 2]), (4, None)])
def test_equals_the_threshold_integral(rng, K, classes):
    # the Lovász extension is the average of Δ over thresholds of the errors (an independent
    # route to the same number, with no sorting or jumps)
    logits = 2 * rng.standard_normal((2, K, 4, 5))
    target = rng.integers(0, K, (2, 4, 5))
    p = _softmax(logits)
    expected = np.mean([_threshold_integral(np.abs((target == c) - p[:, c]).ravel(),
                                            (target == c).ravel())
                        for c in (range(K) if classes is None else classes)])
    loss, _ = lovasz_softmax(logits, target, classes=classes)
    assert loss == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("K,classes", [(2, [1]), (2, None), (3, [1, 2])])
def test_gradient_finite_differences(rng, K, classes):
    logits = rng.standard_normal((2, K, 4, 5))
    target = rng.integers(0, K, (2, 4, 5))
    loss, d = lovasz_softmax(logits, target, classes)
    num = numerical_gradient(lambda: lovasz_softmax(logits, target, classes)[0], logits,
                             eps=1e-6)
    assert relative_error(d, num) < GRAD_TOL


def test_a_class_absent_from_the_batch(rng):
    # no person pixel: every mistake is a false positive, Δ(M) = 1 for any non-empty M, so
    # the loss is the largest error, and only that pixel gets a gradient
    logits = rng.standard_normal((1, 2, 3, 4))
    target = np.zeros((1, 3, 4), dtype=np.int64)
    loss, d = lovasz_softmax(logits, target, classes=[1])
    p = _softmax(logits)[:, 1]
    assert loss == pytest.approx(p.max(), rel=1e-14)
    assert np.count_nonzero(d[:, 1]) == 1 and np.isfinite(d).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_output_dtype_and_float32_agrees(rng, dtype):
    logits = rng.standard_normal((2, 2, 8, 8))
    target = rng.integers(0, 2, (2, 8, 8))
    loss64, d64 = lovasz_softmax(logits, target, [1])
    loss, d = lovasz_softmax(logits.astype(dtype), target.astype(np.uint8), [1])
    assert d.dtype == dtype and d.shape == logits.shape
    assert loss == pytest.approx(loss64, rel=1e-6)
    np.testing.assert_allclose(d, d64, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("logits,target,classes,match", [
    (np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 3), dtype=int), None, r"shape \(N, H, W\)"),
    (np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2)), None, "integer array"),
    (np.zeros((1, 2, 2, 2), dtype=np.int64), np.zeros((1, 2, 2), dtype=int), None, "float32"),
    (np.zeros((1, 2, 2, 2)), np.full((1, 2, 2), 2), None, r"in \[0, 2\).*max 2"),
    (np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2), dtype=int), [2], "classes"),
    (np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2), dtype=int), [], "classes"),
    (np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2), dtype=int), [True], "classes"),
    # "'int' object is not iterable" (a fuzzing helper)
    (np.zeros((1, 2, 2, 2)), np.zeros((1, 2, 2), dtype=int), 1, r"a list of class numbers"),
])
def test_validation(logits, target, classes, match):
    with pytest.raises(ValueError, match=match):
        lovasz_softmax(logits, target, classes)
