"""What the experiment scripts share: a model's person probabilities on one split, and a score.

Every script here tries one idea *after* training (a threshold, a clean-up of the mask, a
filter at full resolution, several input sizes) and prints the person IoU it gives next to
the plain prediction's, on the validation split (which decides) and the test split (which is
only reported). The score is the one ``python -m tinyseg.evaluate`` prints: person IoU with
every pixel of the split pooled, the letterbox padding not counted.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tinyseg.checkpoint import CheckpointError, default_weights
from tinyseg.cli import data_dir
from tinyseg.data.cache import load_split
from tinyseg.data.coco import FILTER_PRESETS
from tinyseg.data.errors import DataError
from tinyseg.data.images import BadImage
from tinyseg.evaluate import IGNORE, eval_targets
from tinyseg.infer import NonFiniteOutput, Predictor
from tinyseg.metrics import confusion_matrix, iou_per_class


@dataclass
class SplitPrediction:
    """One split at one size and the model's person probability at every pixel."""

    probs: np.ndarray     # float32 (N, S, S)
    masks: np.ndarray     # uint8 (N, S, S), the truth
    boxes: np.ndarray     # int (N, 4): (top, left, h, w) of each photo in its square
    ids: np.ndarray       # int64 (N,) COCO image ids
    images: np.ndarray    # uint8 (N, S, S, 3), letterboxed photos


def predict_split(predictor: Predictor, split: str, filter_name: str = "default",
                  size: int | None = None, data=None, cache=None) -> SplitPrediction:
    """Load ``split`` (cached, at ``size`` or the model's own size) and predict it."""
    ds = load_split(data, split, predictor.size if size is None else size,
                    FILTER_PRESETS[filter_name], cache, progress=False)
    probs = predictor.probabilities(ds.images)
    return SplitPrediction(probs, ds.masks, ds.boxes, ds.ids, ds.images)


def person_iou(pred: np.ndarray, masks: np.ndarray, boxes: np.ndarray) -> float:
    """Pooled person IoU of 0/1 predictions (N, S, S), pixels outside the boxes ignored."""
    cm = confusion_matrix(pred.astype(np.int64), eval_targets(masks, boxes), 2,
                          ignore_index=IGNORE)
    return float(iou_per_class(cm)[1])


def pooled_iou(pairs) -> float:
    """Person IoU with all pixels of several ``(prediction, truth)`` pairs of 0/1 maps pooled
    (maps of different sizes, such as photos at their own resolution)."""
    inter = union = 0
    for pred, truth in pairs:
        p, t = pred.astype(bool), truth.astype(bool)
        inter += int(np.sum(p & t))
        union += int(np.sum(p | t))
    return inter / union if union else float("nan")


def parser(description: str) -> argparse.ArgumentParser:
    """The flags every script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--checkpoint", default=None,
                   help="model file, training checkpoint or ensemble (default: the bundled model)")
    p.add_argument("--filter", default="default", choices=sorted(FILTER_PRESETS),
                   help="which filter's val and test splits (default: %(default)s)")
    p.add_argument("--data", default=None, type=data_dir,
                   help="data root (default: $TINYSEG_DATA)")
    p.add_argument("--cache", default=None, help="cache folder (default: $TINYSEG_CACHE)")
    return p


def run(main) -> None:
    """Run a script's ``main``: a checkpoint, data folder or image that cannot be used ends
    it with one line naming it (exit 1), as the tinyseg commands do, not a traceback."""
    try:
        main()
    except (CheckpointError, DataError, BadImage, NonFiniteOutput) as e:
        sys.exit(f"{Path(sys.argv[0]).name}: error: {e}")


def open_predictor(checkpoint: str | None) -> Predictor:
    return Predictor.from_file(checkpoint or default_weights())


def best_on_validation(rows, plain) -> str:
    """The row with the highest validation IoU, as a change from the ``plain`` row."""
    best = max((r for r in rows if r is not plain), key=lambda r: r[1])
    return (f"best on validation: {best[0]}, {best[1] - plain[1]:+.4f} val "
            f"({best[2] - plain[2]:+.4f} test) against {plain[0]}")


def table(rows, header) -> str:
    """A plain-text table: ``rows`` of (name, val, test) floats."""
    lines = [f"{header[0]:<44} {header[1]:>8} {header[2]:>8}"]
    lines += [f"{name:<44} {v:8.4f} {t:8.4f}" for name, v, t in rows]
    return "\n".join(lines)
