"""``python -m tinyseg.evaluate``: how good is a model, and where does it fail?

On a checkpoint and a split (by default the bundled model on the test split of both the
original's filter and the wider one) it reports

* **person IoU** = |P ∩ T| / |P ∪ T| with all the split's pixels pooled (P: pixels predicted
  person, T: pixels labelled person) -- the number the original write-up and the training
  log use;
* **mean IoU** over the two classes (person and background), and **pixel accuracy**;
* how far the person IoU would move on **other draws of the same number of images** like
  these: the range holding 95 % of 10,000 bootstrap draws (``tinyseg.metrics.bootstrap_range``
  of each image's intersection and union in order of image id, which ``results.json`` lists,
  so it can be redone);
* the **distribution of per-image IoU** (one IoU per image, then quantiles and a histogram):
  pooled IoU is dominated by large persons, the per-image view shows the small ones;
* a picture of the **worst images** (image | truth | prediction), the original's failure
  analysis: clothing taken for background, holes, cut-off limbs, darkness.  Each image's
  record also has numbers that help sort the failures: its brightness, how much of the
  person was missed and how much of the prediction is not person.

Pixels of the letterbox padding (see ``tinyseg.data.images``) are not counted: they are not
part of the photo.  ``--flip`` averages the probabilities of the image and its mirror image
(test-time augmentation).
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from .cli import HelpFormatter, UserError, data_dir, run_main, set_threads
from .data.batches import normalize
from .data.images import MAX_SIZE
from .losses import softmax_cross_entropy
from .metrics import (bootstrap_range, confusion_matrix, iou_per_class, mean_iou,
                      pixel_accuracy)

PROG = "tinyseg.evaluate"

#: Target value of the letterbox padding: ignored by the loss and the metrics.
IGNORE = 255


def eval_targets(masks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """int64 (N, S, S) targets: the masks inside each picture's box, ``IGNORE`` outside."""
    t = np.full(masks.shape, IGNORE, dtype=np.int64)
    for k, (top, left, h, w) in enumerate(np.asarray(boxes, dtype=np.int64)):
        t[k, top:top + h, left:left + w] = masks[k, top:top + h, left:left + w]
    return t


@dataclass
class Evaluation:
    """Pooled confusion matrix, mean loss and per-image numbers of one evaluation."""

    cm: np.ndarray                    # (2, 2): rows truth, columns prediction
    loss: float                       # mean cross-entropy over the counted pixels
    per_image: np.ndarray             # (N,) person IoU of each image (nan: no person in either)
    pred_coverage: np.ndarray         # (N,) fraction of the picture predicted person
    coverage: np.ndarray              # (N,) fraction of the picture labelled person
    missed: np.ndarray                # (N,) |T \ P| / |T|: share of the person missed
    extra: np.ndarray                 # (N,) |P \ T| / |P|: share of the prediction that is wrong
    predictions: Optional[np.ndarray] = field(default=None, repr=False)  # (N, S, S) uint8
    finite: bool = True               # False: some logits were NaN or inf (damaged weights)
    intersection: Optional[np.ndarray] = None   # (N,) int64 |P ∩ T| of each image, in pixels
    union: Optional[np.ndarray] = None          # (N,) int64 |P ∪ T|: Σ∩ / Σ∪ = person IoU

    @property
    def person_iou(self) -> float:
        return float(iou_per_class(self.cm)[1])

    @property
    def mean_iou(self) -> float:
        return mean_iou(self.cm)

    @property
    def pixel_accuracy(self) -> float:
        return pixel_accuracy(self.cm)

    def distribution(self) -> dict:
        """Quantiles and a 10-bin histogram of the per-image IoU."""
        v = self.per_image[np.isfinite(self.per_image)]
        if v.size == 0:
            return {"images": 0}
        hist, _ = np.histogram(v, bins=10, range=(0.0, 1.0))
        q = np.quantile(v, [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0])
        return {"images": int(v.size), "mean": float(v.mean()), "min": float(q[0]),
                "p10": float(q[1]), "p25": float(q[2]), "median": float(q[3]),
                "p75": float(q[4]), "p90": float(q[5]), "max": float(q[6]),
                "histogram": hist.tolist(), "bins": [round(0.1 * i, 1) for i in range(11)]}

    def worst(self, count: int) -> np.ndarray:
        """Indices of the ``count`` images with the lowest IoU, worst first (ties in image
        order; images with no person in truth or prediction, IoU nan, last)."""
        return np.argsort(np.nan_to_num(self.per_image, nan=2.0), kind="stable")[:count]

    def summary(self) -> dict:
        return {"person_iou": self.person_iou, "mean_iou": self.mean_iou,
                "pixel_accuracy": self.pixel_accuracy, "loss": self.loss,
                "per_image_iou": self.distribution()}


def evaluate_dataset(model, images: np.ndarray, masks: np.ndarray, boxes: np.ndarray, mean,
                     std, batch_size: int = 16, flip: bool = False,
                     keep_predictions: bool = False, on_batch=None) -> Evaluation:
    """Run ``model`` (in eval mode) over letterboxed ``images`` uint8 (N, S, S, 3) and score
    its predictions against ``masks`` (N, S, S); padding outside ``boxes`` is not counted.

    With ``flip`` the person probability is the mean of the image's and its mirror's; the
    loss is always that of the plain image.  ``on_batch(k)`` is called after each batch of
    ``k`` images (the command's progress line).
    """
    from .infer import softmax_person

    n = len(images)
    targets = eval_targets(masks, boxes)
    cm = np.zeros((2, 2), dtype=np.int64)
    loss_sum, counted = 0.0, 0
    per = np.full(n, np.nan)
    pred_cov, cov, missed, extra = (np.zeros(n) for _ in range(4))
    inters, unions = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    keep = np.zeros(masks.shape, dtype=np.uint8) if keep_predictions else None
    finite = True
    was_training = getattr(model, "training", False)
    model.eval()
    try:
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            x = normalize(np.ascontiguousarray(images[sl]), mean, std)
            t = targets[sl]
            logits = model.forward(x)
            valid = int(np.sum(t != IGNORE))
            if valid:
                loss, _ = softmax_cross_entropy(logits, t, ignore_index=IGNORE)
                loss_sum += loss * valid
                counted += valid
            p = softmax_person(logits)
            if flip:
                pf = softmax_person(model.forward(np.ascontiguousarray(x[..., ::-1])))
                p = 0.5 * (p + pf[..., ::-1])
            finite = finite and bool(np.all(np.isfinite(p)))
            pred = (p >= 0.5).astype(np.int64)
            cm += confusion_matrix(pred, t, 2, ignore_index=IGNORE)
            inside = t != IGNORE
            P = (pred == 1) & inside
            T = t == 1
            for k in range(P.shape[0]):
                j = i + k
                inter = np.sum(P[k] & T[k])
                union = np.sum(P[k] | T[k])
                area = max(int(np.sum(inside[k])), 1)
                per[j] = inter / union if union else np.nan
                inters[j], unions[j] = inter, union
                pred_cov[j] = np.sum(P[k]) / area
                cov[j] = np.sum(T[k]) / area
                missed[j] = 1.0 - inter / np.sum(T[k]) if np.sum(T[k]) else 0.0
                extra[j] = 1.0 - inter / np.sum(P[k]) if np.sum(P[k]) else 0.0
            if keep is not None:
                keep[sl] = P
            if on_batch is not None:
                on_batch(len(t))
    finally:
        model.train(was_training)
    return Evaluation(cm=cm, loss=loss_sum / counted if counted else float("nan"),
                      per_image=per, pred_coverage=pred_cov, coverage=cov, missed=missed,
                      extra=extra, predictions=keep, finite=finite, intersection=inters,
                      union=unions)


def brightness(images: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N,) mean luma (0.299 R + 0.587 G + 0.114 B) / 255 of each picture, padding excluded."""
    out = np.zeros(len(images))
    for k, (top, left, h, w) in enumerate(np.asarray(boxes, dtype=np.int64)):
        pic = images[k, top:top + h, left:left + w].astype(np.float64)
        out[k] = float(np.mean(pic @ np.array([0.299, 0.587, 0.114]))) / 255.0
    return out


def worst_picture(images, masks, ids, ev: Evaluation, count: int, zoom: int = 1,
                  pairs_per_row: int = 2) -> np.ndarray:
    """A grid of the ``count`` images with the lowest IoU: image | truth | prediction."""
    from .viz import grid, overlay

    if ev.predictions is None:
        raise ValueError("worst_picture: evaluate with keep_predictions=True")
    order = ev.worst(count)
    tiles, labels = [], []
    z = np.ones((zoom, zoom, 1), dtype=np.uint8)
    for j in order:
        img = images[j]
        tiles += [np.kron(img, z), np.kron(overlay(img, masks[j]), z),
                  np.kron(overlay(img, ev.predictions[j]), z)]
        labels += [f"id {int(ids[j])}", "truth",
                   f"IoU {ev.per_image[j]:.2f}\nmissed {ev.missed[j]:.0%}\n"
                   f"extra {ev.extra[j]:.0%}"]          # one short line each: 96-px tiles
    return grid(tiles, ncols=3 * pairs_per_row, labels=labels)


def histogram_text(dist: dict, width: int = 40) -> str:
    """The per-image IoU histogram as text bars."""
    if not dist.get("images"):
        return "  (no images)"
    hist = dist["histogram"]
    top = max(max(hist), 1)
    lines = []
    for i, c in enumerate(hist):
        bar = "#" * int(round(width * c / top))
        lines.append(f"  {0.1 * i:.1f}-{0.1 * (i + 1):.1f} {c:5d} {bar}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------
DEFAULT_FILTERS = ["default", "wide"]     # scored unless --filter says otherwise


def build_parser() -> argparse.ArgumentParser:
    from .data.coco import FILTER_PRESETS, SPLITS

    p = argparse.ArgumentParser(
        prog="python -m tinyseg.evaluate",
        description="Score a checkpoint on a data split: person IoU, mean IoU, pixel "
                    "accuracy, the distribution of per-image IoU, and a picture of the worst "
                    "images.",
        epilog="Exit codes: 0 done, 1 error (message on stderr), 2 bad flags.",
        formatter_class=HelpFormatter)
    a = p.add_argument
    a("--checkpoint", metavar="FILE", default=None,
      help="best.npz / last.npz of a run, or any tinyseg checkpoint (default: the bundled "
           "model, tinyseg/weights/person.npz)")
    a("--data", metavar="DIR", default=None, type=data_dir,
      help="COCO data root, or one COCO .json file with its images beside it (default: "
           "$TINYSEG_DATA)")
    a("--split", choices=list(SPLITS), default="test", help="which split to score")
    a("--filter", choices=list(FILTER_PRESETS), nargs="+", default=list(DEFAULT_FILTERS),
      help="image filter(s), each scored on its own: 'default' = the original's 1-2 "
           "persons covering 20-70 %%, 'wide' = 5-90 %% (default: default wide)")
    a("--size", type=int, metavar="S", default=None,
      help=f"image side for the network, at most {MAX_SIZE} (default: the checkpoint's "
           "training size)")
    a("--flip", action="store_true",
      help="test-time augmentation: average with the left-right mirrored prediction (the "
           "IoUs and accuracy use the average; the loss stays that of the plain image)")
    a("--worst", type=int, metavar="N", default=16,
      help="images in the worst-cases picture (0: no picture)")
    a("--out", metavar="DIR", default=None,
      help="where results.json and the pictures go (default: <run dir>/eval-<split> for a "
           "checkpoint inside a run directory, one with a config.json or an ensemble.json; "
           "else ./eval-<split>; with -<name> for a checkpoint not named best.npz, -<S>px for "
           "another --size, -flip for --flip, -<filter> for other filters than both and "
           "-first<N> for --limit, so that one scoring never overwrites another's; a folder "
           "holding another checkpoint's scores is refused)")
    a("--limit", type=int, metavar="N", default=None,
      help="score only the first N images of each split (default: all)")
    a("--batch-size", type=int, metavar="N", default=16, help="images per forward pass")
    a("--threads", type=int, metavar="N", default=None,
      help="threads for the numba kernels; BLAS keeps one thread, see tinyseg/cli.py (default: all cores)")
    a("--cache", metavar="DIR", default=None,
      help="data cache directory (default: $TINYSEG_CACHE or ~/.cache/tinyseg)")
    a("--json", action="store_true", help="print the results as JSON instead of text")
    return p


def resolve_checkpoint(arg: Optional[str]) -> Path:
    """``--checkpoint``, or the bundled model; ``UserError`` if there is none."""
    from .checkpoint import default_weights

    if arg is not None:
        if not arg.strip():
            raise UserError("--checkpoint is empty: give a file, or leave the flag out for the "
                            "bundled model")
        path = Path(arg)
        if path.is_dir():
            hint = f": did you mean {path / 'best.npz'}?" if (path / "best.npz").is_file() else ""
            raise UserError(f"{path}: is a directory, not a checkpoint file{hint}")
        if path.exists() and not path.is_file():
            raise UserError(f"{path}: not a regular file (a device or pipe), not a checkpoint")
        if not path.is_file():
            raise UserError(f"{path}: checkpoint not found")
        return path
    path = default_weights()
    if not path.is_file():
        raise UserError(f"no bundled model in this installation ({path} is missing) and no "
                        "--checkpoint given: train one with 'python -m tinyseg.train' and pass "
                        "--checkpoint RUN/best.npz")
    return path


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .checkpoint import CheckpointError, load_model
    from .data.cache import load_split
    from .data.coco import FILTER_PRESETS
    from .data.errors import DataError
    from .data.progress import Progress
    from .infer import NonFiniteOutput
    from .io import atomic_write_bytes
    from .viz import save_png

    args = build_parser().parse_args(argv)
    set_threads(args.threads)
    if args.worst < 0:
        raise UserError(f"--worst must be >= 0, got {args.worst}")
    for flag in ("limit", "batch_size", "size"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise UserError(f"--{flag.replace('_', '-')} must be at least 1, got {value}")
    if args.size is not None and args.size > MAX_SIZE:
        raise UserError(f"--size must be at most {MAX_SIZE}, got {args.size}")
    ckpt = resolve_checkpoint(args.checkpoint)
    try:
        model, info = load_model(ckpt)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    size = args.size or info["size"]
    reach = 2 ** model.config["pools"]
    if size < reach:                          # the picture would be mostly padding
        raise UserError(f"--size {size} is smaller than 2^pools = {reach} of {ckpt}'s "
                        f"network; give --size {reach} or more")
    if args.out:
        out = Path(args.out)
    else:
        filters = list(dict.fromkeys(args.filter))
        name = (f"eval-{args.split}" + ("" if ckpt.name == "best.npz" else f"-{ckpt.stem}")
                + ("" if size == info["size"] else f"-{size}px") + ("-flip" if args.flip else "")
                + ("" if filters == DEFAULT_FILTERS else "-" + "-".join(filters))
                + ("" if args.limit is None else f"-first{args.limit}"))
        in_run = any((ckpt.parent / f).is_file() for f in ("config.json", "ensemble.json"))
        out = ckpt.parent / name if in_run else Path(name)
        scored = _scored_checkpoint(out / "results.json")
        if scored is not None and Path(scored).resolve() != ckpt.resolve():
            raise UserError(f"{out} holds the scores of {scored}; give --out DIR for those of "
                            f"{ckpt}")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder (the results go in a folder: "
                        f"results.json and the worst pictures)")
    # the absolute path: a later scoring from another folder can tell whose scores these are
    results: Dict[str, dict] = {"checkpoint": str(ckpt.resolve()), "split": args.split,
                                "size": size,
                                "flip": args.flip, "filters": {}}
    for name in dict.fromkeys(args.filter):
        try:
            ds = load_split(args.data, args.split, size, FILTER_PRESETS[name], args.cache,
                            progress=not args.json)
        except DataError as e:
            raise UserError(str(e)) from None
        n = len(ds) if args.limit is None else min(args.limit, len(ds))
        if n == 0:
            results["filters"][name] = {"images": 0}
            continue
        images, masks, boxes, ids = ds.images[:n], ds.masks[:n], ds.boxes[:n], ds.ids[:n]
        with Progress(f"scoring the {args.split} split, '{name}' filter", total=n,
                      enabled=not args.json) as progress, \
                np.errstate(over="ignore", invalid="ignore"):   # checked: ev.finite
            ev = evaluate_dataset(model, images, masks, boxes, info["mean"], info["std"],
                                  batch_size=args.batch_size, flip=args.flip,
                                  keep_predictions=args.worst > 0, on_batch=progress.update)
        if not ev.finite:
            raise UserError(f"{ckpt}: {NonFiniteOutput()}")
        light = brightness(images, boxes)
        per_image = [{"id": int(ids[k]), "iou": _num(ev.per_image[k]),
                      "coverage": float(ev.coverage[k]),
                      "predicted_coverage": float(ev.pred_coverage[k]),
                      "missed": float(ev.missed[k]), "extra": float(ev.extra[k]),
                      "intersection": int(ev.intersection[k]), "union": int(ev.union[k]),
                      "brightness": float(light[k])} for k in range(n)]
        by_id = sorted(per_image, key=lambda r: r["id"])
        per_image.sort(key=lambda r: (r["iou"] is None, r["iou"]))      # worst first
        entry = {"images": n, "filter": FILTER_PRESETS[name].to_dict(), **ev.summary(),
                 # the images in order of id, as train's test.json: the same draws for any
                 # model scored on this split, and redone from the per_image list below
                 "person_iou_bootstrap": bootstrap_range(
                     [r["intersection"] for r in by_id], [r["union"] for r in by_id]),
                 "per_image": per_image}
        if args.worst > 0:
            zoom = max(1, 128 // size)
            pic = worst_picture(images, masks, ids, ev, args.worst, zoom)
            path = save_png(out / f"worst-{name}.png", pic)
            entry["worst_picture"] = str(path)
        results["filters"][name] = entry
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "results.json", (json.dumps(results, indent=2) + "\n").encode())
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    members = info.get("ensemble", {}).get("members")
    print(f"{ckpt} (trained at {info['size']}px"
          + (f", an ensemble of {members} networks" if members else "")
          + f") on the {args.split} split at {size}px"
          + (", flip averaging" if args.flip else ""))
    for name, r in results["filters"].items():
        if not r.get("images"):
            print(f"\n'{name}' filter: no images in this split")
            continue
        d = r["per_image_iou"]
        print(f"\n'{name}' filter ({FILTER_PRESETS[name].describe()}): {r['images']} images")
        print(f"  person IoU {r['person_iou']:.4f}   mean IoU {r['mean_iou']:.4f}   "
              f"pixel accuracy {r['pixel_accuracy']:.4f}   loss {r['loss']:.4f}")
        b = r.get("person_iou_bootstrap")
        if b:
            print(f"  person IoU on other draws of {r['images']} images like these (bootstrap): "
                  f"95 % within {b['low']:.3f}-{b['high']:.3f}, spread (std) {b['std']:.3f}")
        if not d.get("images"):     # no person in any image's labels or prediction
            print("  per-image IoU: none (no image has a person in its labels or in the "
                  "prediction)")
        else:
            print(f"  per-image IoU: mean {d['mean']:.3f}, median {d['median']:.3f}, "
                  f"10 % {d['p10']:.3f}, 25 % {d['p25']:.3f}, 75 % {d['p75']:.3f}, "
                  f"min {d['min']:.3f}")
            print(histogram_text(d))
        worst = ", ".join(f"{w['id']} ({w['iou']:.2f})" for w in r["per_image"][:5]
                          if w["iou"] is not None)
        print(f"  worst: {worst}")
        if "worst_picture" in r:
            print(f"  picture of the {min(args.worst, r['images'])} worst: {r['worst_picture']}")
    print(f"\nresults: {out / 'results.json'}")
    return 0


def _scored_checkpoint(results: Path) -> Optional[str]:
    """The checkpoint whose scores ``results`` holds (``None``: no file, or not ours)."""
    try:
        scored = json.loads(results.read_text()).get("checkpoint")
    except (OSError, ValueError, AttributeError):
        return None
    return scored if isinstance(scored, str) else None


def _num(v: float):
    return None if not np.isfinite(v) else float(v)


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
