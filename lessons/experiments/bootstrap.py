"""How much of a test figure is the choice of test images? A bootstrap over the split's images.

The test split of the original's filter has 38 images. Draw 38 of them *with replacement*,
score the model on that draw (person IoU, all pixels pooled, as ``tinyseg.evaluate``), and
repeat: the spread of those scores says how far the figure could move on another 38 photos
like these (Efron's bootstrap; ``tinyseg.metrics.bootstrap_iou``, which ``evaluate`` uses for
the 95 % range it prints). With ``--against B`` both models are scored on the same
draws, and the spread of the *difference* says whether one is really better than the other
(a paired bootstrap: the photos that are hard for one are mostly hard for the other).

    python lessons/experiments/bootstrap.py [--checkpoint A] [--against B] [--draws 10000]
"""
from __future__ import annotations

import numpy as np

from common import open_predictor, parser, predict_split, run

from tinyseg.data.errors import DataError
from tinyseg.evaluate import IGNORE, eval_targets
from tinyseg.metrics import bootstrap_iou


def per_image_counts(pred: np.ndarray, masks: np.ndarray, boxes: np.ndarray):
    """``(intersection, union)``, two (N,) int64 arrays: person pixels of each image, the
    letterbox padding not counted. Their sums give the pooled person IoU."""
    truth = eval_targets(masks, boxes)            # 0, 1, or IGNORE on the padding
    inside = truth != IGNORE
    p, t = (pred == 1) & inside, (truth == 1)
    inter = np.sum(p & t, axis=(1, 2), dtype=np.int64)
    union = np.sum(p | t, axis=(1, 2), dtype=np.int64)
    return inter, union


def summary(name: str, point: float, scores: np.ndarray, goal: float | None = None) -> str:
    lo, hi = np.percentile(scores, [2.5, 97.5])
    text = (f"{name:<34} {point:.4f}   spread (std) {scores.std():.4f}   "
            f"95 % of draws in [{lo:.4f}, {hi:.4f}]")
    if goal is not None:
        text += f"   draws >= {goal}: {np.mean(scores >= goal):.1%}"
    return text


def main(argv=None) -> None:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--against", default=None, help="a second model, scored on the same draws")
    p.add_argument("--split", default="test", choices=["val", "test"])
    p.add_argument("--draws", type=int, default=10000, help="bootstrap draws (default: 10000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default: 0)")
    p.add_argument("--goal", type=float, default=0.60,
                   help="report the share of draws at or above this IoU (default: 0.60)")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error(f"--draws must be at least 1, got {args.draws}")
    names = [args.checkpoint] + ([args.against] if args.against else [])
    counts, ids = [], None
    for name in names:
        predictor = open_predictor(name)   # each model at its own size: the same photos
        sp = predict_split(predictor, args.split, args.filter, data=args.data, cache=args.cache)
        if ids is not None and not np.array_equal(ids, sp.ids):
            raise DataError(f"{name} was scored on other photos than {names[0]}")
        ids = sp.ids
        counts.append(per_image_counts((sp.probs >= 0.5).astype(np.int64), sp.masks, sp.boxes))
        print(f"{predictor.path}: {len(sp.ids)} images, '{args.filter}' filter, {args.split}")
    inter = np.stack([c[0] for c in counts])
    union = np.stack([c[1] for c in counts])
    scores = bootstrap_iou(inter, union, args.draws, np.random.default_rng(args.seed))
    points = inter.sum(axis=1) / union.sum(axis=1)
    for k, name in enumerate(names):
        print(summary(f"model {'AB'[k]}", points[k], scores[k], args.goal))
    if len(names) == 2:
        diff = scores[0] - scores[1]
        print(summary("A - B", points[0] - points[1], diff)
              + f"   draws with A > B: {np.mean(diff > 0):.1%}")


if __name__ == "__main__":
    run(main)
