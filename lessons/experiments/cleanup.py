"""Clean up the predicted mask: keep the large regions, fill the holes. Does it help?

The original's failure modes include holes in the person and stray blobs of "person" in the
background. Both can be removed after the prediction, without the network:

* a **region** is a set of person pixels connected through their four neighbours (up, down,
  left, right); keep the largest, or every region of at least a fraction ``f`` of it;
* a **hole** is a region of background pixels that does not touch the photo's border;
  filling it makes it person.

    python lessons/experiments/cleanup.py [--checkpoint FILE] [--filter default|wide]

prints the person IoU of each variant on the validation and the test split. The README's
rule: a change is adopted only if it raises the validation IoU by at least 0.01.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from common import (best_on_validation, open_predictor, parser, person_iou, predict_split,
                    run, table)


def regions(mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """Label the 4-connected regions of the True pixels of a 2-D mask.

    Returns ``(labels, sizes)``: ``labels`` int32, 0 outside the mask and k = 1, 2, ... in
    the k-th region found (row by row); ``sizes[k - 1]`` its pixel count.
    """
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    sizes: list[int] = []
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        k = len(sizes) + 1
        labels[y0, x0] = k
        queue, count = deque([(y0, x0)]), 0
        while queue:
            y, x = queue.popleft()
            count += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = k
                    queue.append((ny, nx))
        sizes.append(count)
    return labels, sizes


def keep_large(mask: np.ndarray, fraction: float) -> np.ndarray:
    """Keep the regions of at least ``fraction`` of the largest one's size (1.0: the
    largest only; on a tie, every region of that size)."""
    labels, sizes = regions(mask)
    if not sizes:
        return mask.copy()
    big = max(sizes)
    kept = [k + 1 for k, s in enumerate(sizes) if s >= fraction * big]
    return np.isin(labels, kept)


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Make person every background region that does not touch the border."""
    labels, sizes = regions(~mask)
    border = set(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]).tolist())
    holes = [k for k in range(1, len(sizes) + 1) if k not in border]
    return mask | np.isin(labels, holes)


def variants():
    """``(name, function of a 2-D bool mask)`` for every clean-up tried."""
    out = [("plain (threshold 0.5)", lambda m: m)]
    for f in (1.0, 0.5, 0.25, 0.10, 0.05):
        name = "largest region" if f == 1.0 else f"regions >= {f:.0%} of the largest"
        out.append((name, lambda m, f=f: keep_large(m, f)))
        out.append((name + " + holes", lambda m, f=f: fill_holes(keep_large(m, f))))
    out.append(("holes filled", fill_holes))
    return out


def apply(fn, pred: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """``fn`` on each photo's own pixels (inside its letterbox box), padding left as is."""
    out = pred.copy()
    for k, (top, left, h, w) in enumerate(boxes):
        out[k, top:top + h, left:left + w] = fn(pred[k, top:top + h, left:left + w])
    return out


def main(argv=None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    predictor = open_predictor(args.checkpoint)
    splits = {s: predict_split(predictor, s, args.filter, data=args.data, cache=args.cache)
              for s in ("val", "test")}
    preds = {s: sp.probs >= 0.5 for s, sp in splits.items()}
    rows = []
    for name, fn in variants():
        ious = [person_iou(apply(fn, preds[s], splits[s].boxes), splits[s].masks,
                           splits[s].boxes) for s in ("val", "test")]
        rows.append((name, *ious))
    print(f"{predictor.path}, '{args.filter}' filter, {predictor.size}px")
    print(table(rows, ("clean-up", "val IoU", "test IoU")))
    print(best_on_validation(rows, rows[0]))


if __name__ == "__main__":
    run(main)
