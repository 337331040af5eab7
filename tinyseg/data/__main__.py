"""``python -m tinyseg.data info|show|download|bench``: look at the data before training on it.

* ``info``: the images left after each filter step, per split, and the cache's state;
* ``show``: a PNG contact sheet of samples with their person masks overlaid (kept images,
  rejected ones with the step that rejected them, or augmented variants);
* ``download --root DIR``: COCO 2017 annotations, then only the images the filters keep;
* ``bench``: milliseconds to produce one training batch from the cache.

Exit status: 0 success, 1 user error (one line on stderr, no traceback), 2 bad flags.
Progress and warnings go to stderr; results to stdout.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import time
from pathlib import Path
from typing import List, Optional

import numpy as np

from ..cli import data_dir, plain_warnings
from .augment import AugmentConfig, augment
from .batches import batches
from .cache import (ENV_CACHE, cache_key, cache_path, default_cache_dir, load_split,
                    prepare_sample, read_record_image, select)
from .coco import (ENV_DATA, FILTER_PRESETS, SPLITS, FilterConfig, filter_images, load_coco,
                   data_source, split_of)
from .download import (ANNOTATIONS_URL, DEFAULT_SETS, ENV_ANNOTATIONS_URL, ENV_IMAGES_URL,
                       download)
from .errors import DataError
from .images import MAX_SIZE, BadImage

PROG = "tinyseg.data"
_UNSET = object()  # --max-persons not given (None means "no limit")


class _Invalid(str):
    """What a flag's type function returns for a value that parses but cannot work (``--size
    0``): ``main`` reports it as a user error, exit 1, as the other commands do; argparse's
    own errors (a word where a number goes, an unknown flag) stay exit 2."""


def _fraction(text: str) -> float:
    try:
        v = float(text.rstrip("%")) / (100.0 if text.endswith("%") else 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= v <= 1.0:
        return _Invalid(f"must be a fraction in [0, 1] (or a percentage), got {text!r}")
    return v


def _count_or_none(text: str) -> Optional[int]:
    if text.lower() in ("none", "inf", "any"):
        return None
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 1:
        return _Invalid(f"must be >= 1, got {v}")
    return v


def _seconds(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and v < float("inf")):
        return _Invalid(f"must be a finite number of seconds > 0, got {text}")
    return v


def _url(text: str) -> str:
    if not text.startswith(("http://", "https://", "file://")):
        return _Invalid(f"not an http(s):// or file:// URL: {text!r}")
    return text


def _integer(text: str, low: int, why: str = "") -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < low:
        return _Invalid(f"must be >= {low}{why}, got {v}")
    return v


def _positive(text: str) -> int:
    return _integer(text, 1)


def _seed(text: str) -> int:
    return _integer(text, 0, " (numpy's generators take no negative seed)")


def _side(text: str) -> int:
    v = _positive(text)
    if not isinstance(v, _Invalid) and v > MAX_SIZE:
        return _Invalid(f"must be at most {MAX_SIZE}, got {v}")
    return v


def _filter_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("filters (a preset, then any single setting overridden)")
    g.add_argument("--filter", "--preset", dest="preset", choices=sorted(FILTER_PRESETS),
                   default="default",
                   help="filter preset (--filter, as in train and evaluate; --preset is the "
                        "older name): default = 1-2 persons covering 20-70 %% of the image, "
                        "no crowd (the original write-up); wide = 1-2 persons covering "
                        "5-90 %%; all = every image with the category (default: %(default)s)")
    g.add_argument("--category", default=None,
                   help="COCO category name to inspect, matched without regard to case "
                        "(default: person; train and evaluate use person only: to train "
                        "another class, name it 'person' in the annotation file)")
    g.add_argument("--min-persons", type=_positive, default=None, metavar="N",
                   help="fewest instances of the category (default: preset's, 1)")
    g.add_argument("--max-persons", type=_count_or_none, default=_UNSET, metavar="N",
                   help="most instances, or 'none' for no limit (default: preset's, 2)")
    g.add_argument("--min-coverage", type=_fraction, default=None, metavar="F",
                   help="smallest fraction of the image the union mask covers, e.g. 0.2 or "
                        "20%% (default: preset's, 0.2)")
    g.add_argument("--max-coverage", type=_fraction, default=None, metavar="F",
                   help="largest covered fraction (default: preset's, 0.7)")
    crowd = g.add_mutually_exclusive_group()
    crowd.add_argument("--allow-crowd", dest="exclude_crowd", action="store_false",
                       default=None, help="keep images with crowd annotations of the category "
                                          "(default: excluded)")
    crowd.add_argument("--exclude-crowd", dest="exclude_crowd", action="store_true",
                       default=None, help="drop images with crowd annotations (the default)")


def _data_flags(p: argparse.ArgumentParser, size_default: Optional[int] = 224) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", default=None, metavar="DIR", type=data_dir,
                   help=f"COCO directory: annotations/*.json and the images they list, or "
                        f"one COCO .json file with its images beside it (default: ${ENV_DATA})")
    g.add_argument("--annotations", nargs="+", default=None, metavar="FILE",
                   help="annotation file(s) to read, relative to DIR/annotations or paths "
                        "(default: every annotations/instances_*.json, else every "
                        "annotations/*.json)")
    g.add_argument("--images", default=None, metavar="DIR",
                   help="image folder (default: searched next to each annotation file: "
                        "DIR/<set>, DIR/images/<set>, DIR/images, DIR)")
    g.add_argument("--size", type=_side, default=size_default, metavar="S",
                   help="training size: images letterboxed to S x S (default: %(default)s)"
                   if size_default is not None else
                   "report the cache at this training size only (default: every size "
                   "whose cache is built for these filters)")
    g.add_argument("--cache-dir", default=None, metavar="DIR",
                   help=f"where caches are kept (default: ${ENV_CACHE}, else ~/.cache/tinyseg)")
    _filter_flags(p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tinyseg.data",
        description="Inspect, preview, benchmark and download the COCO person data.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="images left after each filter step and per split",
                       description="Count the images left after each filter step, per split, "
                                   "and say which training sizes have their cache built.")
    _data_flags(p, size_default=None)
    p.add_argument("--check-images", action="store_true",
                   help="also open every kept image and list the unreadable ones "
                        "(default: off)")

    p = sub.add_parser("show", help="a PNG grid of samples with their masks overlaid",
                       description="Write a contact sheet of letterboxed samples with the "
                                   "person mask overlaid.")
    _data_flags(p, size_default=160)
    p.add_argument("--split", choices=SPLITS, default="train",
                   help="split to sample from (default: %(default)s)")
    p.add_argument("--n", type=_positive, default=12,
                   help="number of tiles in the picture: samples, or with --augment four "
                        "tiles per sample (default: %(default)s)")
    p.add_argument("--cols", type=_positive, default=4, help="grid columns (default: "
                                                             "%(default)s)")
    p.add_argument("--seed", type=_seed, default=0, help="sampling and augmentation seed "
                                                       "(default: %(default)s)")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--rejected", action="store_true",
                      help="show images the filters rejected, labelled with the step that "
                           "rejected them (default: kept images)")
    what.add_argument("--augment", action="store_true",
                      help="show each sample once plain and three times augmented "
                           "(default: off)")
    p.add_argument("--out", default="samples.png", metavar="PNG",
                   help="output file (default: %(default)s)")

    p = sub.add_parser("download", help="COCO 2017 annotations and the filtered images",
                       description="Fetch the official COCO 2017 annotation archive, then "
                                   "only the images that pass the filters; resumable, "
                                   "verified, atomic.")
    p.add_argument("--root", required=True, metavar="DIR",
                   help="where to put annotations/ and the <set>/ image folders (required)")
    p.add_argument("--sets", nargs="+", default=list(DEFAULT_SETS), metavar="SET",
                   help="COCO sets whose instances file is used (default: %(default)s)")
    p.add_argument("--annotations-url", type=_url, default=None, metavar="URL",
                   help=f"annotation archive (default: ${ENV_ANNOTATIONS_URL}, else "
                        f"{ANNOTATIONS_URL})")
    p.add_argument("--images-url", type=_url, default=None, metavar="URL",
                   help=f"replaces scheme and host of each image's coco_url (default: "
                        f"${ENV_IMAGES_URL}, else the coco_url as is)")
    p.add_argument("--workers", type=_positive, default=4, metavar="N",
                   help="parallel image downloads (default: %(default)s)")
    p.add_argument("--retries", type=_positive, default=3, metavar="N",
                   help="attempts per file (default: %(default)s)")
    p.add_argument("--timeout", type=_seconds, default=60.0, metavar="SECONDS",
                   help="seconds before a stalled connection is retried (default: "
                        "%(default)s)")
    _filter_flags(p)

    p = sub.add_parser("bench", help="milliseconds to produce one training batch",
                       description="Time the batch iterator on the cached train split.")
    _data_flags(p, size_default=128)
    p.add_argument("--batch-size", type=_positive, default=8,
                   help="images per batch (default: %(default)s)")
    p.add_argument("--batches", type=_positive, default=40,
                   help="batches to time (default: %(default)s)")
    p.add_argument("--no-augment", dest="augment", action="store_false",
                   help="time without augmentation (default: with)")
    p.add_argument("--seed", type=_seed, default=0, help="seed (default: %(default)s)")
    return parser


def checked(args) -> None:
    """``DataError`` naming the first flag whose value parsed but cannot work."""
    for dest, value in vars(args).items():
        if isinstance(value, _Invalid):
            raise DataError(f"argument --{dest.replace('_', '-')}: {value}")


def filters_from(args) -> FilterConfig:
    """The preset, with every filter flag that was given put in."""
    changes = {k: getattr(args, k) for k in ("category", "min_persons", "min_coverage",
                                              "max_coverage", "exclude_crowd")
               if getattr(args, k) is not None}
    if args.max_persons is not _UNSET:
        changes["max_persons"] = args.max_persons
    try:
        return dataclasses.replace(FILTER_PRESETS[args.preset], **changes)
    except ValueError as e:     # --min-coverage 0.8 --max-coverage 0.5: a user error, exit 1
        raise DataError(str(e).replace("FilterConfig: ", "")) from None


def _say(text: str = "") -> None:
    print(text, flush=True)


# -- commands ---------------------------------------------------------------------------
def cmd_info(args, filters: FilterConfig) -> int:
    sel = select(args.data, filters, args.cache_dir, annotation_files=args.annotations,
                 images_dir=args.images)
    _say(f"data:    {sel.root}")
    for f, *_ in sel.sources["files"]:
        _say(f"annotations: {f}")
    _say(f"filters: {args.preset} preset: {filters.describe()}")
    _say("")
    width = max(len(n) for n, _ in sel.steps)
    _say(f"  {'step':<{width}}  {'images':>7}")
    for name, n in sel.steps:
        _say(f"  {name:<{width}}  {n:>7}")
    total = sum(len(v) for v in sel.ids.values())
    _say("")
    _say(f"  {'split':<6} {'images':>7}  share   (sha256 of the image id: 70 / 20 / 10 %)")
    for s in SPLITS:
        n = len(sel.ids[s])
        _say(f"  {s:<6} {n:>7}  {100.0 * n / total:5.1f} %")
    cache_dir = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
    _say("")
    for line in _cache_lines(sel, cache_dir, args.size):
        _say(line)
    if args.check_images:
        data = sel.data or load_coco(sel.root, filters.category,   # the files select used
                                     [f[0] for f in sel.sources["files"]],
                                     sel.sources["images_dir"])
        bad = []
        for i in sel.all_ids:
            try:
                read_record_image(data.records[i])
            except BadImage as e:
                bad.append(f"{data.records[i].path} ({e})")
        _say(f"images checked: {len(sel.all_ids)}, unreadable: {len(bad)}")
        for b in bad:
            _say(f"  {b}")
    return 0


def _cache_lines(sel, cache_dir: Path, size: Optional[int]) -> List[str]:
    """One line per training size: is the cache of these filters built there?  ``size``
    None: every size with a cache file of this data root (the key tells which of them
    belong to these filters and data)."""
    if size is None:
        pattern = re.compile(re.escape(sel.root.name) + r"-(\d+)px-[0-9a-f]{16}-\w+\.npz")
        found = (pattern.fullmatch(f.name) for f in (cache_dir / "data").glob("*.npz"))
        sizes = sorted({int(m.group(1)) for m in found if m})
    else:
        sizes = [size]
    for folder in (cache_dir, cache_dir / "data"):
        if folder.exists() and not folder.is_dir():
            return [f"cache: {folder} is a file, not a folder, so no cache can be kept there "
                    f"(--cache-dir, or ${ENV_CACHE})"]
    lines = []
    for s in sizes:
        key = cache_key(sel, s)
        built = [sp for sp in SPLITS if cache_path(cache_dir, sel.root, s, key, sp).is_file()]
        if size is None and not built:
            continue                    # a cache of other filters or older data
        where = cache_path(cache_dir, sel.root, s, key, "<split>")
        state = "built" if len(built) == 3 else ("partly built" if built else "not built yet")
        lines.append(f"cache at {s}px: {state} ({where})")
    if not lines:
        builds = ("training builds it" if sel.filters.category == "person" else
                  "built by 'show' or 'bench'; training uses the person category only")
        lines.append(f"cache: not built yet for these filters (in {cache_dir / 'data'}; "
                     f"{builds})")
    return lines


#: Largest contact sheet ``show`` draws (tiles × size²): 100 megapixels, about 0.3 GB as RGB.
MAX_SHEET_PIXELS = 100_000_000


def cmd_show(args, filters: FilterConfig) -> int:
    from .. import viz

    if Path(args.out).suffix.lower() != ".png":
        raise DataError(f"--out {args.out!r}: the picture is a PNG; give a name ending in .png")
    pixels = args.n * args.size ** 2
    if pixels > MAX_SHEET_PIXELS:   # refused at once: it used to page for minutes, then fail
        raise DataError(f"--n {args.n} tiles of --size {args.size} would make a picture of "
                        f"{pixels / 1e6:,.0f} megapixels; at most "
                        f"{MAX_SHEET_PIXELS / 1e6:.0f}: give a smaller --size or --n")
    root, files = data_source(args.data, args.annotations)
    data = load_coco(root, filters.category, files, args.images)
    result = filter_images(data, filters, require_nonempty=not args.rejected)
    rng = np.random.default_rng(args.seed)
    if args.rejected:
        pool = [i for i in sorted(result.rejected) if split_of(i) == args.split]
    else:
        pool = [i for i in result.kept if split_of(i) == args.split]
    if not pool:
        raise DataError(f"no {'rejected' if args.rejected else 'kept'} image in the "
                        f"{args.split} split ({result.inline()})")
    per = 4 if args.augment else 1
    chosen = [int(i) for i in rng.permutation(pool)[: max(1, args.n // per)]]
    tiles, labels = [], []
    for i in chosen:
        rec = data.records[i]
        try:
            img, mask, _ = prepare_sample(data, i, args.size)
        except BadImage as e:
            print(f"{PROG} show: warning: skipped {rec.path} ({e})", file=sys.stderr)
            continue
        cov = result.coverage.get(i, data.coverage(i))
        persons = f"{rec.n_instances} {filters.category}{'s' if rec.n_instances != 1 else ''}"
        text = f"{i}: {persons}, {100 * cov:.0f} %"
        if args.rejected:
            text += "\nrejected: " + result.reason(i, data)
        variants = [(img, mask, text)]
        for k in range(per - 1):
            a, m = augment(img, mask, rng, AugmentConfig())
            variants.append((a, m, f"{i}: augmented {k + 1}"))
        for a, m, t in variants:
            color = viz.REJECTED if args.rejected else viz.PERSON
            tiles.append(viz.overlay(a, m, color))
            labels.append(t)
    if not tiles:
        raise DataError("no readable image among the samples")
    ncols = per if args.augment else args.cols  # augmented: one sample per row
    out = viz.save_png(args.out, viz.grid(tiles, ncols, labels))
    _say(f"wrote {out} ({len(tiles)} tiles from the {args.split} split, "
         f"{'rejected' if args.rejected else 'kept'} images)")
    return 0


def cmd_download(args, filters: FilterConfig) -> int:
    report = download(args.root, filters, sets=list(dict.fromkeys(args.sets)),  # once each
                      annotations_url=args.annotations_url, images_url=args.images_url,
                      workers=args.workers, retries=args.retries, timeout=args.timeout,
                      progress=True,
                      log=lambda s: print(s, file=sys.stderr, flush=True))
    width = max(len(n) for n, _ in report.steps)
    for name, n in report.steps:
        _say(f"  {name:<{width}}  {n:>7}")
    _say(f"images: {report.wanted} wanted, {report.present} were present, "
         f"{report.fetched} fetched -> {report.root}")
    _say(f"use it with: --data {report.root}")
    return 0


def cmd_bench(args, filters: FilterConfig) -> int:
    sel = select(args.data, filters, args.cache_dir, annotation_files=args.annotations,
                 images_dir=args.images)        # counts the images before caching them
    n_train = len(sel.ids["train"])
    if n_train < args.batch_size:
        raise DataError(f"the train split of these filters has {n_train} images, fewer than "
                        f"--batch-size {args.batch_size}")
    ds = load_split(args.data, "train", args.size, filters, args.cache_dir,
                    annotation_files=args.annotations, images_dir=args.images)
    rng = np.random.default_rng(args.seed)
    times: List[float] = []
    while len(times) < args.batches:
        it = batches(ds, args.batch_size, rng, augment=args.augment, drop_last=True)
        while len(times) < args.batches:
            t0 = time.perf_counter()
            try:
                next(it)
            except StopIteration:
                break
            times.append(time.perf_counter() - t0)
        if not times:
            raise DataError(f"the train split has fewer than {args.batch_size} images")
    t = np.array(times) * 1e3
    _say(f"batch of {args.batch_size} at {args.size}x{args.size}, augment={args.augment}: "
         f"median {np.median(t):.2f} ms, min {t.min():.2f} ms, mean {t.mean():.2f} ms "
         f"over {len(t)} batches")
    return 0


COMMANDS = {"info": cmd_info, "show": cmd_show, "download": cmd_download, "bench": cmd_bench}


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        checked(args)
        filters = filters_from(args)
        with plain_warnings(f"{PROG} {args.command}"):
            return COMMANDS[args.command](args, filters)
    except DataError as e:
        print(f"{PROG} {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG} {args.command}: interrupted"
              + ("; run the same command again to resume the download"
                 if args.command == "download" else ""), file=sys.stderr)
        return 130


if __name__ == "__main__":
    from ..cli import run_main
    sys.exit(run_main(main, PROG))
