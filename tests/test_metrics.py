"""Confusion matrix, IoU, pixel accuracy: values by hand, empty classes, a set-based oracle."""
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from tinyseg.metrics import (IoUMeter, confusion_matrix, iou_per_class, mean_iou,
                             per_image_iou, person_iou, pixel_accuracy)

# Everything here is counting, so results are exact ratios of integers: compare with 1e-12.
TOL = 1e-12


def test_known_values_by_hand():
    target = np.array([[0, 0, 1],
                       [1, 1, 0]])
    pred = np.array([[0, 1, 1],
                     [1, 0, 0]])
    cm = confusion_matrix(pred, target)
    # truth 0: predicted 0 at (0,0),(1,2); predicted 1 at (0,1)
    # truth 1: predicted 1 at (0,2),(1,0); predicted 0 at (1,1)
    np.testing.assert_array_equal(cm, [[2, 1], [1, 2]])
    assert cm.dtype == np.int64
    # IoU_0 = 2 / (3 + 3 − 2) = 0.5; IoU_1 = 2 / 4 = 0.5
    np.testing.assert_allclose(iou_per_class(cm), [0.5, 0.5], atol=TOL)
    assert mean_iou(cm) == pytest.approx(0.5, abs=TOL)
    assert pixel_accuracy(cm) == pytest.approx(4 / 6, abs=TOL)
    assert person_iou(pred, target) == pytest.approx(0.5, abs=TOL)


def test_three_classes_by_hand():
    target = np.array([0, 1, 2, 2, 2, 1])[None]
    pred = np.array([0, 2, 2, 2, 1, 1])[None]
    cm = confusion_matrix(pred, target, num_classes=3)
    np.testing.assert_array_equal(cm, [[1, 0, 0], [0, 1, 1], [0, 1, 2]])
    # IoU_0 = 1/1, IoU_1 = 1/(2+2−1) = 1/3, IoU_2 = 2/(3+3−2) = 1/2
    np.testing.assert_allclose(iou_per_class(cm), [1, 1 / 3, 1 / 2], atol=TOL)
    assert mean_iou(cm) == pytest.approx((1 + 1 / 3 + 1 / 2) / 3, abs=TOL)


def test_empty_classes_are_nan_and_skipped_in_mean():
    target = np.zeros((2, 3, 3), np.uint8)
    pred = np.zeros((2, 3, 3), np.uint8)
    cm = confusion_matrix(pred, target, num_classes=3)
    iou = iou_per_class(cm)
    assert iou[0] == 1.0 and np.isnan(iou[1]) and np.isnan(iou[2])
    assert mean_iou(cm) == 1.0                  # only class 0 counts
    assert math.isnan(person_iou(pred, target))
    assert np.all(np.isnan(per_image_iou(pred, target)))
    empty = np.zeros((2, 2), np.int64)
    assert math.isnan(mean_iou(empty)) and math.isnan(pixel_accuracy(empty))
    # a person predicted where there is none: union 1, intersection 0 -> 0, not nan
    pred[0, 0, 0] = 1
    assert person_iou(pred, target) == 0.0
    np.testing.assert_array_equal(per_image_iou(pred, target)[0], 0.0)


def test_accumulated_differs_from_mean_of_per_image():
    # image 0: big person, perfect; image 1: one-pixel person, missed
    target = np.zeros((2, 4, 4), np.int64)
    target[0, :, :2] = 1
    target[1, 0, 0] = 1
    pred = target.copy()
    pred[1, 0, 0] = 0
    per_image = per_image_iou(pred, target)
    np.testing.assert_allclose(per_image, [1.0, 0.0], atol=TOL)
    assert person_iou(pred, target) == pytest.approx(8 / 9, abs=TOL)   # 8 ∩, 9 ∪ in total


def _set_iou(pred, target, k):
    """Oracle: IoU from Python sets of pixel coordinates."""
    P = {idx for idx, v in np.ndenumerate(pred) if v == k}
    T = {idx for idx, v in np.ndenumerate(target) if v == k}
    union = P | T
    return len(P & T) / len(union) if union else float("nan")


@settings(max_examples=30, deadline=None)
@given(K=st.integers(1, 4), shape=st.sampled_from([(3, 4), (2, 3, 5), (1, 1, 1), (4, 2, 2)]),
       seed=st.integers(0, 2**31), dtype=st.sampled_from([np.uint8, np.int32, np.int64]))
def test_against_set_computation(K, shape, seed, dtype):
    rng = np.random.default_rng(seed)
    target = rng.integers(0, K, shape).astype(dtype)
    pred = rng.integers(0, K, shape).astype(dtype)
    cm = confusion_matrix(pred, target, num_classes=K)
    assert cm.sum() == target.size
    expected = [_set_iou(pred, target, k) for k in range(K)]
    np.testing.assert_allclose(iou_per_class(cm), expected, atol=TOL)      # nan == nan here
    finite = [e for e in expected if not math.isnan(e)]
    assert mean_iou(cm) == pytest.approx(np.mean(finite), abs=TOL)
    assert pixel_accuracy(cm) == pytest.approx(np.mean(pred == target), abs=TOL)
    if K == 2:
        got = person_iou(pred, target)
        assert (math.isnan(got) and math.isnan(expected[1])) or got == pytest.approx(expected[1])
    p3, t3 = (pred, target) if pred.ndim == 3 else (pred[None], target[None])
    per = per_image_iou(p3, t3, cls=K - 1)
    np.testing.assert_allclose(per, [_set_iou(p3[n], t3[n], K - 1) for n in range(len(p3))],
                               atol=TOL)


def test_meter_accumulates_over_batches():
    rng = np.random.default_rng(0)
    preds = [rng.integers(0, 2, (3, 5, 5)) for _ in range(4)]
    targets = [rng.integers(0, 2, (3, 5, 5)) for _ in range(4)]
    meter = IoUMeter()
    for p, t in zip(preds, targets):
        meter.update(p, t)
    allp, allt = np.concatenate(preds), np.concatenate(targets)
    np.testing.assert_array_equal(meter.cm, confusion_matrix(allp, allt))
    assert meter.person_iou() == pytest.approx(person_iou(allp, allt), abs=TOL)
    assert meter.mean_iou() == mean_iou(meter.cm)
    assert meter.pixel_accuracy() == pixel_accuracy(meter.cm)
    np.testing.assert_array_equal(meter.iou_per_class(), iou_per_class(meter.cm))
    assert "IoUMeter" in repr(meter)
    meter.reset()
    assert meter.cm.sum() == 0


def test_ignore_index():
    target = np.array([[0, 1, 255, 255]])
    pred = np.array([[0, 1, 1, 0]])
    cm = confusion_matrix(pred, target, ignore_index=255)
    np.testing.assert_array_equal(cm, [[1, 0], [0, 1]])
    meter = IoUMeter(ignore_index=255)
    meter.update(pred, target)
    assert meter.person_iou() == 1.0
    with pytest.raises(ValueError, match=r"target values must be in \[0, 2\)"):
        confusion_matrix(pred, target)


def test_bool_labels():
    t = np.array([[True, False], [True, True]])
    p = np.array([[True, True], [False, True]])
    assert person_iou(p, t) == pytest.approx(2 / 4, abs=TOL)


@pytest.mark.parametrize("pred,target,match", [
    (np.zeros((2, 3), int), np.zeros((3, 2), int), r"\(2, 3\) != target shape \(3, 2\)"),
    (np.zeros((2, 3)), np.zeros((2, 3), int), "integer class labels.*argmax"),
    (np.zeros((1, 2, 2, 3), int), np.zeros((1, 2, 2, 3), int), r"\(N, H, W\) or \(H, W\)"),
    (np.full((2, 2), 2), np.zeros((2, 2), int), r"pred values must be in \[0, 2\)"),
    (np.zeros((2, 2), int), np.full((2, 2), -1), r"target values .*min -1"),
    ([[0]], np.zeros((1, 1), int), "ndarray"),
])
def test_validation(pred, target, match):
    with pytest.raises(ValueError, match=match):
        confusion_matrix(pred, target)


def test_cm_validation():
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        iou_per_class(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="NaN or infinite counts"):   # a RuntimeWarning
        iou_per_class(np.array([[1.0, np.nan], [0.0, 2.0]]))
    with pytest.raises(ValueError, match="cls must be a class number >= 0, got -1"):
        per_image_iou(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int), cls=-1)  # was nan
    for cls in (float("nan"), 1.0):     # a bare "cannot convert float NaN to integer" before
        with pytest.raises(ValueError, match="cls must be a class number >= 0"):
            per_image_iou(np.zeros((1, 2, 2), int), np.zeros((1, 2, 2), int), cls=cls)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), num_classes=0)
    with pytest.raises(ValueError, match="num_classes"):
        IoUMeter(num_classes=0)
    with pytest.raises(ValueError, match="num_classes >= 2"):
        IoUMeter(num_classes=1).person_iou()


def test_edge_arguments_are_answered_or_named():
    """No images -> no per-image IoUs (was a reshape error); a list, or an ignore_index that
    no integer label can equal, is named (the list failed on .max, 1.5 ignored nothing)."""
    assert per_image_iou(np.zeros((0, 3, 4), int), np.zeros((0, 3, 4), int)).shape == (0,)
    with pytest.raises(ValueError, match="per_image_iou: pred must be a numpy.ndarray"):
        per_image_iou([[1]], [[1]])
    with pytest.raises(ValueError, match="ignore_index must be an int or None, got 1.5"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 2), int), ignore_index=1.5)
    with pytest.raises(ValueError, match="IoUMeter: ignore_index must be an int or None"):
        IoUMeter(2, ignore_index="x")


def test_confusion_matrix_rows_are_truth_columns_are_prediction():
    target = np.array([[1, 1, 1, 0]])
    pred = np.array([[0, 0, 1, 0]])
    cm = confusion_matrix(pred, target, num_classes=2)
    # truth 1 predicted 0 twice (missed person pixels): C[1, 0] = 2, C[0, 1] = 0
    np.testing.assert_array_equal(cm, [[1, 0], [2, 1]])
    K3 = confusion_matrix(np.array([[2, 2, 0]]), np.array([[0, 1, 0]]), num_classes=3)
    np.testing.assert_array_equal(K3, [[1, 0, 1], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_allclose(iou_per_class(K3), [0.5, 0.0, 0.0], atol=1e-12)


def test_bootstrap_known_distribution():
    """Two images, one right (I = U = 1) and one wrong (I = 0, U = 1): a draw of two holds
    0, 1 or 2 copies of the right one, IoU 0, 1/2, 1 with probability 1/4, 1/2, 1/4."""
    from tinyseg.metrics import bootstrap_iou
    scores = bootstrap_iou(np.array([1, 0]), np.array([1, 1]), 40000, np.random.default_rng(0))
    for value, p in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(scores == value) == pytest.approx(p, abs=0.01)
    same = bootstrap_iou(np.array([[3, 3, 3], [1, 2, 3]]), np.array([[4, 4, 4]] * 2), 50,
                         np.random.default_rng(1))
    assert same.shape == (2, 50) and np.all(same[0] == 0.75)     # identical images: no spread
    # the default generator is seeded: the same draws every time
    np.testing.assert_array_equal(bootstrap_iou([1, 2, 0], [2, 3, 4], 30),
                                  bootstrap_iou([1, 2, 0], [2, 3, 4], 30))


def test_bootstrap_of_nothing_to_measure_and_bad_counts():
    from tinyseg.metrics import bootstrap_iou
    assert np.all(np.isnan(bootstrap_iou([0, 0], [0, 0], 5)))      # no person anywhere
    for inter, union in (([2], [1]), ([-1], [3]), ([1, 2], [3]), ([np.nan], [1.0]), ([], [])):
        with pytest.raises(ValueError, match="bootstrap_iou: expected"):
            bootstrap_iou(inter, union, 5)
    for draws in (0, 2.5, True):
        with pytest.raises(ValueError, match="draws must be a positive integer"):
            bootstrap_iou([1], [2], draws)


def test_bootstrap_in_blocks_gives_the_draws_of_one_big_draw_and_one_model_per_range():
    """The draws are made in blocks (10,000 × N indices at once took ~150 KB per image:
    a gigabyte for a large test split) and give the same numbers as one big draw;
    bootstrap_range takes one model's counts only (K models were pooled into one range:
    review, 2026-11-28)."""
    from tinyseg.metrics import bootstrap_iou, bootstrap_range
    r = np.random.default_rng(3)
    n = 1200                                     # several blocks of draws
    union = r.integers(50, 500, n)
    inter = (union * r.random(n)).astype(np.int64)
    picks = np.random.default_rng(0).integers(0, n, size=(5000, n))
    one_draw = inter[picks].sum(axis=1) / union[picks].sum(axis=1)
    np.testing.assert_array_equal(bootstrap_iou(inter, union, 5000), one_draw)
    with pytest.raises(ValueError, match=r"one model's counts, shape \(N,\)"):
        bootstrap_range([[9, 9, 9], [1, 1, 1]], [[10] * 3] * 2)
