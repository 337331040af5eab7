"""Predict at several input sizes and average the probabilities. Does it help?

A network sees a photo letterboxed to one size. Shown the same photo a little smaller or
larger, it sees the person at another scale and makes somewhat different mistakes, so the
average of its probabilities at several sizes (brought back to the model's own size,
bilinearly) might beat any one of them ("multi-scale test-time augmentation").

    python lessons/experiments/sizes.py [--checkpoint FILE] [--sizes 56 64 72]
"""
from __future__ import annotations

import numpy as np

from common import open_predictor, parser, person_iou, predict_split, run, table
from tinyseg.data.images import MAX_SIZE
from tinyseg.infer import resize_bilinear


def to_size(sp, base) -> np.ndarray:
    """The probabilities of ``sp`` (predicted at another size) in the squares of ``base``:
    each photo's part cropped out and resized to its box at the base size, padding 0."""
    out = np.zeros(base.probs.shape, dtype=np.float32)
    for k in range(len(out)):
        top, left, h, w = sp.boxes[k]
        bt, bl, bh, bw = base.boxes[k]
        out[k, bt:bt + bh, bl:bl + bw] = resize_bilinear(sp.probs[k, top:top + h, left:left + w],
                                                         bh, bw)
    return out


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="input sizes (default: the model's size -8, +0, +8)")
    args = p.parse_args(argv)
    if args.sizes is not None and (len(set(args.sizes)) != len(args.sizes)
                                   or not all(1 <= s <= MAX_SIZE for s in args.sizes)):
        p.error(f"--sizes must be different sizes from 1 to {MAX_SIZE}, got {args.sizes}")
    predictor = open_predictor(args.checkpoint)
    sizes = args.sizes or [predictor.size - 8, predictor.size, predictor.size + 8]
    reach = 2 ** predictor.model.config["pools"]
    if min(sizes) < reach:          # a picture mostly of padding, as evaluate refuses
        p.error(f"--sizes: {min(sizes)} is smaller than 2^pools = {reach} of the network")
    averaged = {}
    for split in ("val", "test"):
        base = predict_split(predictor, split, args.filter, data=args.data, cache=args.cache)
        probs = {}
        for s in sizes:
            sp = base if s == predictor.size else predict_split(
                predictor, split, args.filter, s, data=args.data, cache=args.cache)
            if not np.array_equal(sp.ids, base.ids):
                raise SystemExit(f"size {s}: the split holds other images than at "
                                 f"{predictor.size}px")
            probs[s] = to_size(sp, base)
        for s in sizes:
            averaged.setdefault(f"{s}px, brought to {predictor.size}px", []).append(
                person_iou(probs[s] >= 0.5, base.masks, base.boxes))
        mean = np.mean([probs[s] for s in sizes], axis=0)
        averaged.setdefault(f"average of {', '.join(map(str, sizes))}px", []).append(
            person_iou(mean >= 0.5, base.masks, base.boxes))
    rows = [(name, v, t) for name, (v, t) in averaged.items()]
    print(f"{predictor.path}, '{args.filter}' filter, trained at {predictor.size}px")
    print(table(rows, ("input size", "val IoU", "test IoU")))


if __name__ == "__main__":
    run(main)
