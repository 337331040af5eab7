"""Training augmentation: one image and its mask, changed together, from a seeded generator.

Geometry (image and mask through the *same* map, one Pillow affine resampling each: image
bilinear, mask nearest neighbour, so labels stay 0/1)::

    flip  with probability p:      x -> W - x
    zoom  s, log-uniform in [s0, s1]:  output (x, y) shows input ((x + tx) / s, (y + ty) / s)
    shift tx uniform between 0 and W (s - 1), ty likewise

so ``s > 1`` crops a random window of the zoomed picture and ``s < 1`` shrinks it and pads
(image ``PAD_RGB``, mask background).

Light (the original's worst failures were dark and badly lit photos; the ranges lean
towards darker).  With v in [0, 1] and m the image's mean level (the mean of the whole
square after the geometry, letterbox padding included, and the padding is relit with the
picture: a simplification kept because every recorded run was trained with it; the pivot
only moves where contrast leaves values unchanged)::

    v1 = b v                               brightness b, log-uniform
    v2 = m b + c (v1 - m b)                contrast c around the (brightened) mean, log-uniform
    v3 = clip(v2, 0, 1) ** g               gamma g, log-uniform; g > 1 darkens the mid-tones

With the default ranges, on the cached COCO training images, the mean level of an augmented
picture is a median 0.81 of the original's; about a quarter come out below 0.6 (dark), about
one in eight above 1.2 (bright).

All three act on each pixel value alone, so they are applied through one 256-entry lookup
table: exact and cheap.  The random draws happen in a fixed order, so a seed gives the same
result every time.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np
from PIL import Image

from .images import PAD_RGB


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes; a range ``(1, 1)`` (or ``flip_p=0``) turns one off."""

    flip_p: float = 0.5
    scale: Tuple[float, float] = (0.75, 1.33)
    brightness: Tuple[float, float] = (0.5, 1.4)
    contrast: Tuple[float, float] = (0.7, 1.3)
    gamma: Tuple[float, float] = (0.7, 1.6)
    pad_rgb: Tuple[int, int, int] = PAD_RGB

    def __post_init__(self) -> None:
        if not 0.0 <= self.flip_p <= 1.0:
            raise ValueError(f"AugmentConfig: flip_p must be in [0, 1], got {self.flip_p}")
        for name in ("scale", "brightness", "contrast", "gamma"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"AugmentConfig: {name} must be (low, high) with "
                                 f"0 < low <= high, got {(lo, hi)}")


#: Geometry only: flips and zooms, light untouched.
GEOMETRY_ONLY = AugmentConfig(brightness=(1.0, 1.0), contrast=(1.0, 1.0), gamma=(1.0, 1.0))
#: Nothing at all: ``augment`` returns copies of its inputs.
IDENTITY = AugmentConfig(flip_p=0.0, scale=(1.0, 1.0), brightness=(1.0, 1.0),
                         contrast=(1.0, 1.0), gamma=(1.0, 1.0))


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(np.exp(rng.uniform(np.log(lo), np.log(hi)))) if hi > lo else float(lo)


def light_lut(brightness: float, contrast: float, gamma: float, mean: float) -> np.ndarray:
    """The 256-entry ``uint8`` table of v -> clip(m b + c (b v - m b), 0, 1) ** g."""
    v = np.arange(256, dtype=np.float64) / 255.0
    mb = mean * brightness
    out = np.clip(mb + contrast * (brightness * v - mb), 0.0, 1.0) ** gamma
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def affine(image: np.ndarray, mask: np.ndarray, scale: float, tx: float, ty: float,
           flip: bool, pad_rgb=PAD_RGB) -> Tuple[np.ndarray, np.ndarray]:
    """Output (x, y) shows input (((W - x) if flip else x) + tx) / s, (y + ty) / s)."""
    h, w = mask.shape
    if flip:
        coeffs = (-1.0 / scale, 0.0, (w + tx) / scale, 0.0, 1.0 / scale, ty / scale)
    else:
        coeffs = (1.0 / scale, 0.0, tx / scale, 0.0, 1.0 / scale, ty / scale)
    img = Image.fromarray(image).transform((w, h), Image.Transform.AFFINE, coeffs,
                                           resample=Image.Resampling.BILINEAR,
                                           fillcolor=tuple(int(c) for c in pad_rgb))
    msk = Image.fromarray(mask).transform((w, h), Image.Transform.AFFINE, coeffs,
                                          resample=Image.Resampling.NEAREST, fillcolor=0)
    return np.asarray(img), np.asarray(msk)


def augment(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()) -> Tuple[np.ndarray, np.ndarray]:
    """A random variant of ``image`` uint8 (H, W, 3) and ``mask`` uint8 (H, W), same shapes."""
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"augment: expected a uint8 (H, W, 3) image, got {image.dtype} "
                         f"{image.shape}")
    if mask.shape != image.shape[:2]:
        raise ValueError(f"augment: mask shape {mask.shape} differs from the image's "
                         f"{image.shape[:2]}")
    if mask.dtype != np.uint8:
        raise ValueError(f"augment: expected a uint8 mask of labels, got {mask.dtype} (a float "
                         f"or wider mask would be cut to 8 bits)")
    if not isinstance(rng, np.random.Generator):
        raise TypeError("augment: rng must be a numpy.random.Generator")
    h, w = mask.shape
    flip = bool(rng.random() < config.flip_p)
    s = _log_uniform(rng, *config.scale)
    tx = float(rng.uniform(min(0.0, w * (s - 1)), max(0.0, w * (s - 1))))
    ty = float(rng.uniform(min(0.0, h * (s - 1)), max(0.0, h * (s - 1))))
    b = _log_uniform(rng, *config.brightness)
    c = _log_uniform(rng, *config.contrast)
    g = _log_uniform(rng, *config.gamma)
    if flip or s != 1.0 or tx != 0.0 or ty != 0.0:
        image, mask = affine(image, mask.astype(np.uint8, copy=False), s, tx, ty, flip,
                             config.pad_rgb)
    else:
        image, mask = image.copy(), mask.copy()
    if (b, c, g) != (1.0, 1.0, 1.0):
        lut = light_lut(b, c, g, float(image.mean()) / 255.0)
        image = lut[image]
    return image, mask
