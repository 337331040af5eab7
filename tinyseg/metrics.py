"""Segmentation metrics: confusion matrix, IoU (Jaccard index), pixel accuracy.

Everything starts from the confusion matrix ``C`` (K × K) of a set of pixels:

    C[a, b] = number of pixels whose target is class a and whose prediction is class b

(rows = truth, columns = prediction, as scikit-learn).  For class k:

    intersection  I_k = C[k, k]                               (predicted k and truly k)
    union         U_k = Σ_b C[k, b] + Σ_a C[a, k] − C[k, k]   (predicted k or truly k)
    IoU_k         = I_k / U_k
    mean IoU      = average of IoU_k over the classes with U_k > 0
    pixel accuracy = Σ_k C[k, k] / Σ C

**Empty union.**  A class that appears neither in the prediction nor in the target has
U_k = 0 and IoU_k = 0/0.  tinyseg returns ``nan`` for it (per class, per image, and in
``person_iou``), and ``mean_iou`` skips such classes (like ``np.nanmean``).  ``nan`` says
"nothing to measure" instead of inventing a perfect or a failed score; when every class is
empty ``mean_iou`` is ``nan`` too.

Accumulated, not averaged: ``person_iou`` over a batch (and ``IoUMeter`` over an epoch) sums
intersections and unions over *all pixels* before dividing; ``per_image_iou`` gives one IoU
per image if you want the mean of per-image scores instead (it weighs small persons more).

**How far would the figure move on other images?**  ``bootstrap_iou`` draws the split's N
images N times *with replacement*, many times over, and pools each draw's intersections and
unions (Efron's bootstrap): the spread of those IoUs, and the range that holds 95 % of them,
say how much of a test figure is the choice of test images.

Inputs are integer (or bool) label arrays of shape (N, H, W) or (H, W): class indices, not
logits — take ``logits.argmax(axis=1)`` first.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

__all__ = ["confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy", "person_iou",
           "per_image_iou", "bootstrap_iou", "bootstrap_range", "IoUMeter"]

PERSON = 1


def _check_ignore_index(fn: str, ignore_index) -> None:
    if ignore_index is not None and (isinstance(ignore_index, bool)
                                     or not isinstance(ignore_index, (int, np.integer))):
        raise ValueError(f"{fn}: ignore_index must be an int or None, got {ignore_index!r}")


def _check_labels(fn: str, pred: np.ndarray, target: np.ndarray, num_classes: int,
                  ignore_index: Optional[int] = None) -> None:
    _check_ignore_index(fn, ignore_index)
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
            or num_classes < 1:
        raise ValueError(f"{fn}: num_classes must be a positive int, got {num_classes!r}")
    for what, a in (("pred", pred), ("target", target)):
        if not isinstance(a, np.ndarray):
            raise ValueError(f"{fn}: {what} must be a numpy.ndarray, got {type(a).__name__}")
        if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
            raise ValueError(f"{fn}: {what} must hold integer class labels, got dtype {a.dtype} "
                             f"(shape {a.shape}); for logits use logits.argmax(axis=1)")
        if a.ndim not in (2, 3):
            raise ValueError(f"{fn}: {what} must have shape (N, H, W) or (H, W), got {a.shape}")
    if pred.shape != target.shape:
        raise ValueError(f"{fn}: pred shape {pred.shape} != target shape {target.shape}")
    keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    for what, a in (("pred", pred), ("target", target)):
        vals = a[keep]
        if vals.size and (vals.min() < 0 or vals.max() >= num_classes):
            raise ValueError(f"{fn}: {what} values must be in [0, {num_classes}), found "
                             f"min {vals.min()}, max {vals.max()}")


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int = 2,
                     ignore_index: Optional[int] = None) -> np.ndarray:
    """(K, K) int64 matrix, ``C[a, b]`` = #pixels with target a and prediction b.

    Pixels whose target equals ``ignore_index`` (if given) are not counted.
    """
    _check_labels("confusion_matrix", pred, target, num_classes, ignore_index)
    t = target.astype(np.int64).ravel()
    p = pred.astype(np.int64).ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        t, p = t[keep], p[keep]
    K = int(num_classes)
    return np.bincount(t * K + p, minlength=K * K).reshape(K, K).astype(np.int64)


def _check_cm(fn: str, cm: np.ndarray) -> np.ndarray:
    cm = np.asarray(cm)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
        raise ValueError(f"{fn}: expected a square (K, K) confusion matrix, got shape {cm.shape}")
    if cm.dtype.kind not in "biuf":
        raise ValueError(f"{fn}: expected counts, got a {cm.dtype} confusion matrix")
    if not np.all(np.isfinite(cm)):
        raise ValueError(f"{fn}: confusion matrix holds NaN or infinite counts")
    if np.any(cm < 0):
        raise ValueError(f"{fn}: confusion matrix has negative counts")
    return cm.astype(np.float64)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """(K,) float64: IoU_k = C[k,k] / (row_k + col_k − C[k,k]); ``nan`` where the union is 0."""
    c = _check_cm("iou_per_class", cm)
    inter = np.diag(c)
    union = c.sum(axis=1) + c.sum(axis=0) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def mean_iou(cm: np.ndarray) -> float:
    """Mean of ``iou_per_class(cm)`` over classes with a non-empty union (nan if none)."""
    iou = iou_per_class(cm)
    present = ~np.isnan(iou)
    return float(iou[present].mean()) if present.any() else float("nan")


def pixel_accuracy(cm: np.ndarray) -> float:
    """Fraction of pixels classified correctly, Σ_k C[k,k] / Σ C (nan for no pixels)."""
    c = _check_cm("pixel_accuracy", cm)
    total = c.sum()
    return float(np.trace(c) / total) if total > 0 else float("nan")


def person_iou(pred: np.ndarray, target: np.ndarray) -> float:
    """IoU of the person class (1) over all pixels of the batch together.

    |pred == 1 ∧ target == 1| / |pred == 1 ∨ target == 1|, ``nan`` if both are empty.
    Labels must be 0 (background) or 1 (person).
    """
    cm = confusion_matrix(pred, target, num_classes=2)
    return float(iou_per_class(cm)[PERSON])


def per_image_iou(pred: np.ndarray, target: np.ndarray, cls: int = PERSON) -> np.ndarray:
    """(N,) float64: IoU of class ``cls`` in each image separately (nan where absent from both).

    Accepts (N, H, W) or one (H, W) image (then returns shape (1,)).  Labels may take any
    non-negative integer values; only ``== cls`` matters.
    """
    fn = "per_image_iou"
    if isinstance(cls, bool) or not isinstance(cls, (int, np.integer)) or cls < 0:
        raise ValueError(f"{fn}: cls must be a class number >= 0, got {cls!r}")
    biggest = [int(a.max(initial=0)) if isinstance(a, np.ndarray) and a.dtype.kind in "biu"
               else 0 for a in (pred, target)]
    _check_labels(fn, pred, target, num_classes=max(*biggest, cls) + 1)
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    if pred.shape[0] == 0:
        return np.zeros(0)
    p = (pred == cls).reshape(pred.shape[0], -1)
    t = (target == cls).reshape(target.shape[0], -1)
    inter = np.sum(p & t, axis=1).astype(np.float64)
    union = np.sum(p | t, axis=1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def bootstrap_iou(inter, union, draws: int = 10000,
                  rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Pooled IoUs of ``draws`` bootstrap draws of the images: (draws,) float64.

    ``inter`` and ``union`` are each image's pixel counts of one class (N,), or (K, N) for K
    models scored on the *same* draws (a paired bootstrap: then (K, draws)).  Each draw picks
    N images with replacement and gives ``Σ inter / Σ union`` over them; a draw whose union
    is 0 gives ``nan``.  ``rng`` defaults to ``numpy.random.default_rng(0)``: the same
    draws every time.
    """
    inter = np.asarray(inter)
    union = np.asarray(union)
    if inter.shape != union.shape or inter.ndim not in (1, 2) or inter.shape[-1] < 1:
        raise ValueError(f"bootstrap_iou: expected two arrays of the same shape (N,) or (K, N) "
                         f"with N >= 1, got {inter.shape} and {union.shape}")
    if inter.dtype.kind not in "iuf" or union.dtype.kind not in "iuf" \
            or not (np.all(np.isfinite(inter)) and np.all(np.isfinite(union))):
        raise ValueError("bootstrap_iou: expected finite pixel counts")
    if np.any(inter < 0) or np.any(inter > union):
        raise ValueError("bootstrap_iou: expected 0 <= intersection <= union for every image")
    if isinstance(draws, bool) or not isinstance(draws, (int, np.integer)) or draws < 1:
        raise ValueError(f"bootstrap_iou: draws must be a positive integer, got {draws!r}")
    rng = np.random.default_rng(0) if rng is None else rng
    n = inter.shape[-1]
    inter, union = inter.astype(np.float64), union.astype(np.float64)
    i = np.empty(inter.shape[:-1] + (int(draws),))
    u = np.empty_like(i)
    block = max(1, 5_000_000 // n)       # draws at a time: memory stays near 40 MB x 3
    for start in range(0, int(draws), block):
        rows = min(block, int(draws) - start)
        picks = rng.integers(0, n, size=(rows, n))     # the same draws for every model
        i[..., start:start + rows] = inter[..., picks].sum(axis=-1)
        u[..., start:start + rows] = union[..., picks].sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(u > 0, i / np.where(u > 0, u, 1), np.nan)


def bootstrap_range(inter, union, level: float = 0.95, draws: int = 10000,
                    seed: int = 0) -> Optional[dict]:
    """The range holding ``level`` of the pooled IoUs of ``draws`` bootstrap draws.

    ``{"level", "low", "high", "std", "draws", "seed"}`` from :func:`bootstrap_iou` with
    ``numpy.random.default_rng(seed)`` on the counts in the order given (another order
    draws other images: the same range up to the bootstrap's own noise, not the same
    bits); ``None`` when there are no images or no draw has anything to measure.
    """
    if not 0 < level < 1:
        raise ValueError(f"bootstrap_range: level must be between 0 and 1, got {level!r}")
    if np.ndim(inter) != 1 or np.ndim(union) != 1:     # K models would be pooled into one
        raise ValueError(f"bootstrap_range: expected one model's counts, shape (N,), got "
                         f"{np.shape(inter)} and {np.shape(union)}")
    if len(inter) == 0:
        return None
    scores = bootstrap_iou(inter, union, draws, np.random.default_rng(seed))
    scores = scores[np.isfinite(scores)]
    if scores.size == 0:
        return None
    lo, hi = np.percentile(scores, [50 * (1 - level), 50 * (1 + level)])
    return {"level": level, "low": float(lo), "high": float(hi), "std": float(scores.std()),
            "draws": int(draws), "seed": int(seed)}


class IoUMeter:
    """Accumulate a confusion matrix over batches (an epoch) and report IoUs at the end.

    >>> meter = IoUMeter(num_classes=2)
    >>> for x, y in batches: meter.update(model.forward(x).argmax(axis=1), y)
    >>> meter.person_iou(), meter.mean_iou(), meter.pixel_accuracy()
    """

    def __init__(self, num_classes: int = 2, ignore_index: Optional[int] = None) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) \
                or num_classes < 1:
            raise ValueError(f"IoUMeter: num_classes must be a positive int, got {num_classes!r}")
        _check_ignore_index("IoUMeter", ignore_index)
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.cm = np.zeros((self.num_classes, self.num_classes), dtype=np.int64)

    def reset(self) -> None:
        self.cm[...] = 0

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add the pixels of one batch (label arrays (N, H, W) or (H, W))."""
        self.cm += confusion_matrix(pred, target, self.num_classes, self.ignore_index)

    def iou_per_class(self) -> np.ndarray:
        return iou_per_class(self.cm)

    def mean_iou(self) -> float:
        return mean_iou(self.cm)

    def person_iou(self) -> float:
        """IoU of class 1 accumulated over everything seen since the last reset."""
        if self.num_classes < 2:
            raise ValueError("IoUMeter.person_iou: needs num_classes >= 2")
        return float(iou_per_class(self.cm)[PERSON])

    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.cm)

    def __repr__(self) -> str:
        return (f"IoUMeter(num_classes={self.num_classes}, pixels={int(self.cm.sum())}, "
                f"mean_iou={self.mean_iou():.4f})")
