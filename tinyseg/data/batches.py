"""Batches for training and evaluation.

``normalize`` turns cached ``uint8`` pictures into network input::

    x[n, c, h, w] = (images[n, h, w, c] / 255 - mean[c]) / std[c]      float32, NCHW

(through a 256-entry table per channel, computed in float64: exact to float32 rounding).

``batches`` is one epoch: the order is a fresh permutation drawn from the generator you pass
(so epochs differ, and a seed repeats the whole run), augmentation (if asked) draws from the
same generator, and each step yields ``(x float32 (B, 3, S, S), y int64 (B, S, S))``.
"""
from __future__ import annotations

from typing import Iterator, Optional, Tuple

import numpy as np

from .augment import AugmentConfig, augment as augment_pair


def checked_statistics(mean, std) -> Tuple[np.ndarray, np.ndarray]:
    """``(mean, std)`` as float64 (3,) arrays, or ``ValueError`` saying what is wrong: three
    finite values each, std > 0, both on the 0-1 scale of ``v / 255``."""
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (3,) or std.shape != (3,):
        raise ValueError(f"mean and std must have 3 values, got {mean.shape} and {std.shape}")
    if not (np.all(np.isfinite(mean)) and np.all(np.isfinite(std)) and np.all(std > 0)):
        raise ValueError(f"mean must be finite and std finite and positive, got mean {mean}, "
                         f"std {std}")
    if np.any(np.abs(mean) > 1) or np.any(std > 1):   # pixel values here are v / 255
        raise ValueError(f"mean and std are on the 0-1 scale of v / 255, got mean {mean}, "
                         f"std {std} (on the 0-255 scale?)")
    return mean, std


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W), ``(v / 255 - mean_c) / std_c``."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 \
            or images.shape[3] != 3:
        shape = getattr(images, "shape", None)
        dtype = getattr(images, "dtype", type(images).__name__)
        raise ValueError(f"normalize: expected uint8 images (N, H, W, 3), got {dtype} {shape}")
    try:
        mean, std = checked_statistics(mean, std)
    except ValueError as e:
        raise ValueError(f"normalize: {e}") from None
    v = np.arange(256, dtype=np.float64) / 255.0
    tables = ((v[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)  # (3, 256)
    n, h, w, _ = images.shape
    out = np.empty((n, 3, h, w), dtype=np.float32)
    for c in range(3):
        np.take(tables[c], images[..., c], out=out[:, c])
    return out


def batches(dataset, batch_size: int, rng: np.random.Generator, augment: bool = False,
            shuffle: bool = True, drop_last: bool = False,
            augment_config: Optional[AugmentConfig] = None
            ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """One epoch of ``(x, y)`` batches from ``dataset`` (anything with ``images``,
    ``masks``, ``mean``, ``std``, e.g. a ``Dataset``).

    The permutation is drawn when iteration starts.  The last batch is smaller unless
    ``drop_last``.
    """
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batches: batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("batches: rng must be a numpy.random.Generator "
                        "(np.random.default_rng(seed))")
    images, masks = getattr(dataset, "images", None), getattr(dataset, "masks", None)
    if not (isinstance(images, np.ndarray) and isinstance(masks, np.ndarray)
            and images.ndim == 4 and images.shape[:3] == masks.shape):
        raise ValueError(f"batches: expected a dataset with images (N, S, S, 3) and masks "
                         f"(N, S, S) of the same N and S, got "
                         f"{getattr(images, 'shape', None)} and {getattr(masks, 'shape', None)}")
    config = augment_config if augment_config is not None else AugmentConfig()
    return _epoch(dataset, int(batch_size), rng, augment, shuffle, drop_last, config)


def _epoch(dataset, batch_size, rng, augment, shuffle, drop_last, config):
    images, masks = dataset.images, dataset.masks
    n = len(images)
    order = rng.permutation(n) if shuffle else np.arange(n)
    for start in range(0, n, batch_size):
        idx = order[start:start + batch_size]
        if drop_last and len(idx) < batch_size:
            break
        x = images[idx]
        y = masks[idx]
        if augment:
            x = x.copy()
            y = y.copy()
            for k in range(len(idx)):
                x[k], y[k] = augment_pair(x[k], y[k], rng, config)
        yield normalize(x, dataset.mean, dataset.std), y.astype(np.int64)
