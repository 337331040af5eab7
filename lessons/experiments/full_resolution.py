"""Score at the photo's own resolution, and snap the mask to the photo's edges. Does it help?

``cutout`` up-samples the network's person probabilities bilinearly to the photo's size and
thresholds them there (lesson 12). This script scores exactly that, against the truth drawn
from the COCO polygons at the photo's size, and then tries a **guided filter** (He, Sun and
Tang, 2010) on the up-sampled probabilities ``p``, with the photo's grey level ``I`` (in
[0, 1]) as the guide. In every window of radius ``r`` it fits ``q = a I + b`` to ``p``:

    a = cov(I, p) / (var(I) + eps),   b = mean(p) - a mean(I),

then averages ``a`` and ``b`` over the windows that cover each pixel: ``q = mean(a) I +
mean(b)``. Where the photo has an edge (large var(I)) the mask can follow it; where the photo
is flat (var(I) << eps) ``q`` is the smoothed ``p``.

    python lessons/experiments/full_resolution.py [--checkpoint FILE] [--filter default|wide]
"""
from __future__ import annotations

import sys

import numpy as np

from common import best_on_validation, open_predictor, parser, pooled_iou, run, table
from tinyseg.data.cache import read_record_image, select
from tinyseg.data.coco import FILTER_PRESETS, load_coco
from tinyseg.data.images import BadImage


def box_mean(a: np.ndarray, r: int) -> np.ndarray:
    """Mean of ``a`` (2-D) over the (2r+1)^2 window around each pixel, the window cut at the
    borders (so the mean is over the pixels that exist). Computed with cumulative sums."""
    h, w = a.shape
    c = np.zeros((h + 1, w + 1))
    c[1:, 1:] = np.cumsum(np.cumsum(a, axis=0), axis=1)
    y0 = np.clip(np.arange(h) - r, 0, h)
    y1 = np.clip(np.arange(h) + r + 1, 0, h)
    x0 = np.clip(np.arange(w) - r, 0, w)
    x1 = np.clip(np.arange(w) + r + 1, 0, w)
    total = c[y1][:, x1] - c[y0][:, x1] - c[y1][:, x0] + c[y0][:, x0]
    area = (y1 - y0)[:, None] * (x1 - x0)[None, :]
    return total / area


def guided_filter(guide: np.ndarray, p: np.ndarray, r: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter of ``p`` with the grey ``guide`` (both 2-D, in [0, 1])."""
    mean_i, mean_p = box_mean(guide, r), box_mean(p, r)
    cov_ip = box_mean(guide * p, r) - mean_i * mean_p
    var_i = box_mean(guide * guide, r) - mean_i * mean_i
    a = cov_ip / (var_i + eps)
    b = mean_p - a * mean_i
    return box_mean(a, r) * guide + box_mean(b, r)


def grey(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma in [0, 1]."""
    return (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])) / 255.0


def photos(split: str, filter_name: str, data=None, cache=None):
    """``(rgb, truth)`` at the stored photo's own size for each image of the split."""
    sel = select(data, FILTER_PRESETS[filter_name], cache)
    coco = load_coco(sel.root, FILTER_PRESETS[filter_name].category)
    for image_id in sel.ids[split]:
        rec = coco.records[image_id]
        try:
            yield read_record_image(rec), coco.mask(image_id)
        except BadImage as e:     # the cache skipped it too (and said so when it was built)
            print(f"skipped {rec.path}: {e}", file=sys.stderr)


def main(argv=None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    predictor = open_predictor(args.checkpoint)
    filters = [(r, eps) for r in (2, 4, 8) for eps in (1e-4, 1e-3, 1e-2)]
    results = {}
    for split in ("val", "test"):
        pairs = {name: [] for name in ["plain (bilinear, threshold 0.5)"] + [
            f"guided filter r={r}, eps={eps:g}" for r, eps in filters]}
        for rgb, truth in photos(split, args.filter, args.data, args.cache):
            p = predictor.photo_probability(rgb).astype(np.float64)
            pairs["plain (bilinear, threshold 0.5)"].append((p >= 0.5, truth))
            g = grey(rgb)
            for r, eps in filters:
                q = guided_filter(g, p, r, eps)
                pairs[f"guided filter r={r}, eps={eps:g}"].append((q >= 0.5, truth))
        results[split] = {name: pooled_iou(v) for name, v in pairs.items()}
    rows = [(name, results["val"][name], results["test"][name]) for name in results["val"]]
    print(f"{predictor.path}, '{args.filter}' filter, scored at each photo's own size")
    print(table(rows, ("full resolution", "val IoU", "test IoU")))
    print(best_on_validation(rows, rows[0]))


if __name__ == "__main__":
    run(main)
