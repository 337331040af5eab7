"""From a trained network to person probabilities: the code evaluate, cutout and train share.

A trained model sees a photo through the same window as during training:

1. **the network input**: the photo is letterboxed to the model's training size ``S``
   (``tinyseg.data.images.letterbox``: longer side to ``S``, shorter side padded, the very
   policy of the data cache), scaled to [0, 1] and normalised with the *training* mean and
   standard deviation, ``x = (pixel / 255 − mean) / std``, which travel inside the checkpoint;
2. **the probabilities**: the network gives two scores (logits) ``z_0, z_1`` per pixel; the
   softmax turns them into the person probability

       p = e^{z_1} / (e^{z_0} + e^{z_1}) = 1 / (1 + e^{z_0 − z_1});

   with ``flip=True`` the photo is also run mirrored left-right and the two probability maps
   (the second mirrored back) are averaged ("test-time augmentation");
3. **back to the photo**: the padding is cropped away and the ``h × w`` probability map is
   resized *bilinearly* to the photo's ``H × W`` (:func:`resize_bilinear`), so the outline
   of the person is a smooth curve, not a staircase of ``H/h``-pixel blocks; thresholding
   happens only after that (``p ≥ 0.5``).

Bilinear resizing, half-pixel centres (``align_corners=False`` in PyTorch, also Pillow's
convention): output pixel ``i`` of ``n_out`` sits at source coordinate

    u = (i + ½) · n_in / n_out − ½,   clamped to [0, n_in − 1],

and takes ``(1 − t)·a[⌊u⌋] + t·a[⌊u⌋ + 1]`` with ``t = u − ⌊u⌋``; along the width first
(``(h, w) → (h, W)``, on the small map), then along the height.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np

from .data.batches import normalize
from .data.images import letterbox, letterbox_box

PathLike = Union[str, os.PathLike]

__all__ = ["softmax_person", "predict_probabilities", "predict_labels", "resize_bilinear",
           "Predictor", "photo_probability", "NonFiniteOutput"]


class NonFiniteOutput(ValueError):
    """The network's output holds NaN or inf although its weights are finite numbers."""

    def __init__(self) -> None:
        super().__init__("the network's output holds NaN or infinite values: its weights are "
                         "damaged (finite numbers so large that they overflow)")


def softmax_person(logits: np.ndarray) -> np.ndarray:
    """(N, K, H, W) logits -> (N, H, W) float32 probability of class 1 (person).

    Computed as a softmax over the class axis with the maximum subtracted first, so large
    logits never overflow.
    """
    if not isinstance(logits, np.ndarray) or logits.ndim != 4 or logits.shape[1] < 2:
        raise ValueError(f"softmax_person: expected (N, K, H, W) logits with K >= 2 classes "
                         f"(class 1 = person), got {getattr(logits, 'shape', type(logits))}")
    if logits.dtype.kind not in "iuf":
        raise ValueError(f"softmax_person: expected real logits, got {logits.dtype}")
    z = logits.astype(np.float64, copy=False)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e[:, 1] / e.sum(axis=1)).astype(np.float32)


def predict_probabilities(model, x: np.ndarray, batch_size: int = 16,
                          flip: bool = False) -> np.ndarray:
    """Person probabilities of normalised inputs ``x`` (N, 3, H, W) -> (N, H, W) float32.

    Any H, W of at least 1 work (the Tiramisu pads to a multiple of 2**pools and crops its
    logits back); the model predicts best at the square size it was trained at, which is
    what ``photo_probability`` gives it.

    The model is put in eval mode (batch-norm running statistics, no dropout) and left in
    the mode it was in before.  ``flip=True`` averages with the mirrored image's prediction.
    """
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"predict_probabilities: batch_size must be a positive integer, "
                         f"got {batch_size!r}")
    if not isinstance(x, np.ndarray) or x.ndim != 4:
        raise ValueError(f"predict_probabilities: expected an (N, 3, H, W) array, got "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):     # not the weights' fault
        bad = int(np.argmax(~np.isfinite(x).reshape(len(x), -1).all(axis=1)))
        raise ValueError(f"predict_probabilities: the input holds NaN or infinite values "
                         f"(image {bad} of {len(x)})")
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        out = np.empty((x.shape[0],) + x.shape[2:], dtype=np.float32)
        for i in range(0, x.shape[0], batch_size):
            xb = np.ascontiguousarray(x[i:i + batch_size])
            p = softmax_person(model.forward(xb))
            if flip:
                pf = softmax_person(model.forward(np.ascontiguousarray(xb[..., ::-1])))
                p = 0.5 * (p + pf[..., ::-1])
            if not np.all(np.isfinite(p)):
                raise NonFiniteOutput()
            out[i:i + batch_size] = p
        return out
    finally:
        model.train(was_training)


def predict_labels(model, x: np.ndarray, batch_size: int = 16, flip: bool = False,
                   threshold: float = 0.5) -> np.ndarray:
    """(N, H, W) int64 labels: 1 where the person probability is at least ``threshold``."""
    return (predict_probabilities(model, x, batch_size, flip) >= threshold).astype(np.int64)


def _source_index(n_in: int, n_out: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For each output index: the two source indices and the weight of the second."""
    u = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    u = np.clip(u, 0.0, n_in - 1)
    i0 = np.floor(u).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    return i0, i1, (u - i0).astype(np.float32)


def resize_bilinear(a: np.ndarray, height: int, width: int, rows_per_chunk: int = 512) -> np.ndarray:
    """Resize a 2-D float map ``a`` (h, w) to (height, width), bilinear, half-pixel centres.

    Matches ``torch.nn.functional.interpolate(mode='bilinear', align_corners=False)``.  No
    anti-aliasing: meant for enlarging (a network's output to a photo).  Works in row
    chunks so a 24-megapixel photo needs little more memory than its output.
    """
    if np.asarray(a).dtype.kind not in "biuf":      # complex lost its imaginary part
        raise ValueError(f"resize_bilinear: expected real numbers, got {np.asarray(a).dtype}")
    a = np.asarray(a, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"resize_bilinear: expected a non-empty 2-D array, got shape {a.shape}")
    for v in (height, width, rows_per_chunk):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"resize_bilinear: height, width and rows_per_chunk must be "
                             f"integers, got {v!r}")
    if height < 1 or width < 1:
        raise ValueError(f"resize_bilinear: output size must be positive, got {height}x{width}")
    if rows_per_chunk < 1:
        raise ValueError(f"resize_bilinear: rows_per_chunk must be positive, got {rows_per_chunk}")
    y0, y1, ty = _source_index(a.shape[0], height)
    x0, x1, tx = _source_index(a.shape[1], width)
    # columns first on the small map: (h, width)
    cols = a[:, x0] * (1 - tx) + a[:, x1] * tx
    out = np.empty((height, width), dtype=np.float32)
    for r in range(0, height, rows_per_chunk):
        s = slice(r, r + rows_per_chunk)
        t = ty[s][:, None]
        out[s] = cols[y0[s]] * (1 - t) + cols[y1[s]] * t
    return out


@dataclass
class Predictor:
    """A model ready for photos: the network, its training size and normalisation.

    ``Predictor.from_file(path)`` opens a model file or training checkpoint
    (``tinyseg.checkpoint.load_model``).
    """

    model: object
    size: int
    mean: np.ndarray
    std: np.ndarray
    info: dict = field(default_factory=dict)
    path: Optional[Path] = None

    @classmethod
    def from_file(cls, path: PathLike) -> "Predictor":
        from .checkpoint import load_model
        model, info = load_model(path)
        return cls(model=model, size=int(info["size"]), mean=np.asarray(info["mean"], np.float32),
                   std=np.asarray(info["std"], np.float32), info=info, path=Path(path))

    def normalize(self, images_uint8: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, 3, H, W) float32, ``(pixel/255 − mean) / std``."""
        return normalize(images_uint8, self.mean, self.std)

    def probabilities(self, images_uint8: np.ndarray, batch_size: int = 16,
                      flip: bool = False) -> np.ndarray:
        """Person probabilities of uint8 images (N, H, W, 3) -> (N, H, W).

        Any size works (see ``predict_probabilities``); the letterboxed squares of
        ``self.size`` that ``photo_probability`` passes are what the model was trained on.
        """
        return predict_probabilities(self.model, self.normalize(images_uint8), batch_size, flip)

    def photo_probability(self, rgb: np.ndarray, flip: bool = False) -> np.ndarray:
        """Person probability at every pixel of a photo ``uint8 (H, W, 3)`` -> (H, W) float32."""
        return photo_probability(self, rgb, flip)


def photo_probability(predictor: Predictor, rgb: np.ndarray, flip: bool = False) -> np.ndarray:
    """Letterbox the photo to the model size, predict, crop the padding, resize bilinearly."""
    if (not isinstance(rgb, np.ndarray) or rgb.dtype != np.uint8 or rgb.ndim != 3
            or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1):
        raise ValueError(f"photo_probability: expected a uint8 (H, W, 3) array with H, W >= 1, "
                         f"got {getattr(rgb, 'dtype', type(rgb).__name__)} "
                         f"{getattr(rgb, 'shape', '')}")
    H, W = rgb.shape[:2]
    square, box = letterbox(rgb, predictor.size)
    assert box == letterbox_box(H, W, predictor.size)
    p = predictor.probabilities(square[None], flip=flip)[0]
    top, left, h, w = box
    return resize_bilinear(p[top:top + h, left:left + w], H, W)
