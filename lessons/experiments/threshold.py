"""Choose the decision threshold on the validation split instead of 0.5. Does it help?

A pixel is "person" when the network's person probability is at least a threshold; 0.5 is
the choice that matches the loss (each pixel's likelier class). A network trained on few
photos may be biased one way, so a threshold chosen on the validation split could score
better. The test split then says whether the choice carries over to photos it never saw.

    python lessons/experiments/threshold.py [--checkpoint FILE] [--filter default|wide]
"""
from __future__ import annotations

import numpy as np

from common import (best_on_validation, open_predictor, parser, person_iou, predict_split,
                    run, table)

THRESHOLDS = np.round(np.arange(0.30, 0.701, 0.05), 2)


def main(argv=None) -> None:
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    predictor = open_predictor(args.checkpoint)
    splits = {s: predict_split(predictor, s, args.filter, data=args.data, cache=args.cache)
              for s in ("val", "test")}
    rows = [(f"threshold {t:.2f}",
             *(person_iou(sp.probs >= t, sp.masks, sp.boxes) for sp in splits.values()))
            for t in THRESHOLDS]
    print(f"{predictor.path}, '{args.filter}' filter, {predictor.size}px")
    print(table(rows, ("threshold", "val IoU", "test IoU")))
    print(best_on_validation(rows, rows[list(THRESHOLDS).index(0.5)]))


if __name__ == "__main__":
    run(main)
