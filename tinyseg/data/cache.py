"""The training-size cache: ``load_split`` and the ``Dataset`` it returns.

Decoding JPEGs and rasterising polygons for every batch would cost more than it should, so
the kept images of a split are decoded once, letterboxed to ``size x size`` (see
``tinyseg.data.images``: aspect kept, padded; masks by nearest neighbour) and stored as one
compressed ``.npz`` per size and split::

    $TINYSEG_CACHE/data/<root name>-<size>px-<key>-<split>.npz   (default ~/.cache/tinyseg)

holding ``images`` uint8 (N, S, S, 3), ``masks`` uint8 (N, S, S), ``ids`` int64 (N,),
``boxes`` int32 (N, 4) = (top, left, height, width) of the picture in the square, and
``mean``, ``std`` float32 (3,): the per-channel statistics of the *train* split's pictures
(padding excluded) scaled to [0, 1],

    mean_c = (1/P) sum_p x_pc,   std_c = sqrt((1/P) sum_p x_pc^2 - mean_c^2),

written into all three splits so validation and test are normalised like training.

The key is a hash of everything that changes the content: format version, data root,
annotation files (name, size, mtime), image folders (name, mtime), filters, size, resizing
policy and the kept image ids.  (An image overwritten in place, or added in a sub-folder,
does not change its folder's mtime.  So a cache that skipped an image is built again when
that file has changed since, as when a missing or damaged image is put right; another
image overwritten in place needs ``rebuild=True``, or the cache folder removed.)  Change any
of them and a new cache is built; files are written atomically
(``tinyseg.io.atomic_save_npz``), so an interrupted build leaves no broken cache.  Nothing is
ever written inside the data root (it may be read-only).

A small index (``...-index-<key>.json``) remembers the filter counts and kept ids for given
annotation files and filters, so that loading a built cache does not re-read a 450 MB
annotation file.

A cache file is checked before use (``well_formed``: names, dtypes, shapes, labels 0/1,
boxes inside the square, finite statistics) and rebuilt when it fails.  An index is checked
against the annotations' own filter outcome whenever a cache is built from it (an edited
index changes the key, which holds the ids, so a cache is built), and redone when they
differ.

Unreadable images (corrupt, truncated, missing, size differing from the annotation) are
skipped when the cache is built, counted, stored in the cache's metadata and reported with a
``BadImageWarning`` each time their split is loaded (once per split: a training run that
loads train, val and test names each image once); training never meets them, so an epoch
cannot die half way.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..io import atomic_save_npz, atomic_write_bytes
from .coco import (SPLIT_BOUNDS, SPLITS, CocoData, FilterConfig, FilterResult, ImageRecord,
                   data_source, filter_images, find_annotation_files, load_coco, split_of)
from .errors import BadImageWarning, DataError, list_some
from .images import MAX_SIZE, RESIZE_POLICY, BadImage, letterbox, read_image
from .progress import Progress

PathLike = Union[str, os.PathLike]

ENV_CACHE = "TINYSEG_CACHE"
#: Bump when the cache layout or content changes, or what ``filter_images`` keeps; old caches
#: and indexes are then ignored.  (The split bounds are in the keys themselves.)
CACHE_VERSION = 1


def default_cache_dir() -> Path:
    """``$TINYSEG_CACHE``, else ``~/.cache/tinyseg``."""
    env = os.environ.get(ENV_CACHE, "")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tinyseg"


@dataclass
class Dataset:
    """One split at one size, in memory.

    ``images`` uint8 (N, S, S, 3), ``masks`` uint8 (N, S, S) in {0, 1}, ``ids`` int64 (N,),
    ``mean``/``std`` float32 (3,) of the train split on [0, 1], ``boxes`` int32 (N, 4) where
    each picture sits in its padded square.  The rest says what produced it.
    """

    images: np.ndarray
    masks: np.ndarray
    ids: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    boxes: Optional[np.ndarray] = None
    split: str = "train"
    size: int = 0
    filters: Optional[FilterConfig] = None
    cache_key: str = ""
    cache_path: Optional[Path] = None
    root: Optional[Path] = None
    resize_policy: str = RESIZE_POLICY
    steps: List[Tuple[str, int]] = field(default_factory=list)
    skipped: List[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim != 4 or self.images.shape[3] != 3 or self.images.dtype != np.uint8:
            raise ValueError(f"Dataset: images must be uint8 (N, H, W, 3), got "
                             f"{self.images.dtype} {self.images.shape}")
        if self.masks.shape != self.images.shape[:3]:
            raise ValueError(f"Dataset: masks must be (N, H, W) = {self.images.shape[:3]}, got "
                             f"{self.masks.shape}")
        if len(self.ids) != n:
            raise ValueError(f"Dataset: {len(self.ids)} ids for {n} images")
        if self.boxes is None:
            h, w = self.images.shape[1:3]
            self.boxes = np.tile(np.array([0, 0, h, w], dtype=np.int32), (n, 1))
        self.mean = np.asarray(self.mean, dtype=np.float32).reshape(3)
        self.std = np.asarray(self.std, dtype=np.float32).reshape(3)
        if not self.size:
            self.size = int(self.images.shape[1])

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return (f"Dataset(split={self.split!r}, n={len(self)}, size={self.size}, "
                f"key={self.cache_key[:12]!r})")


# -- keys ---------------------------------------------------------------------------------
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode("utf-8")).hexdigest()


def _file_stamp(path: Path) -> list:
    st = path.stat()
    return [str(path), st.st_size, st.st_mtime_ns]


def _sources(root: Path, annotation_files: Optional[Sequence[PathLike]],
             images_dir: Optional[PathLike]) -> dict:
    if annotation_files:
        files = []
        for f in annotation_files:
            f = Path(f)
            files.append(f if f.is_absolute() or f.exists() else root / "annotations" / f)
    else:
        files = find_annotation_files(root)
    for f in files:
        if not f.is_file():
            raise DataError(f"{f}: annotation file not found (expected a COCO instances JSON "
                            "file)")
    return {"root": str(root), "files": [_file_stamp(Path(f).resolve()) for f in files],
            "images_dir": str(Path(images_dir).resolve()) if images_dir else None}


def _dir_stamp(folder: str) -> list:
    try:
        return [folder, os.stat(folder).st_mtime_ns]
    except OSError:
        return [folder, None]


def cache_key(sel: "Selection", size: int) -> str:
    """sha256 of everything that changes a cache's content.

    The image folders enter with their modification time, which changes when files are
    added, removed or replaced by a rename (as ``download`` does), so that images which
    were missing when a cache was built are picked up once they arrive.
    """
    return _digest({"version": CACHE_VERSION, "sources": sel.sources,
                    "image_dirs": [_dir_stamp(d) for d in sel.image_dirs],
                    "filters": sel.filters.to_dict(), "size": int(size),
                    "policy": RESIZE_POLICY, "ids": {s: sel.ids[s] for s in SPLITS}})


def cache_path(cache_dir: Path, root: Path, size: int, key: str, split: str) -> Path:
    return Path(cache_dir) / "data" / f"{root.name}-{size}px-{key[:16]}-{split}.npz"


# -- the index: filter counts and kept ids, without re-reading the annotations -----------
@dataclass
class Selection:
    """The outcome of the filters for a data root: counts per step and kept ids per split."""

    root: Path
    filters: FilterConfig
    sources: dict
    steps: List[Tuple[str, int]]
    ids: Dict[str, List[int]]
    image_dirs: List[str] = field(default_factory=list)
    result: Optional[FilterResult] = None   # present when just computed
    data: Optional[CocoData] = None         # present when the annotations were read

    @property
    def all_ids(self) -> List[int]:
        return sorted(i for s in SPLITS for i in self.ids[s])


class StaleIndex(Exception):
    """The index disagrees with the annotations' own filter outcome (it was edited or
    damaged): ``load_split`` filters the annotations again."""


def select(root: Optional[PathLike], filters: FilterConfig = FilterConfig(),
           cache_dir: Optional[PathLike] = None, *,
           annotation_files: Optional[Sequence[PathLike]] = None,
           images_dir: Optional[PathLike] = None, use_index: bool = True) -> Selection:
    """Filter the data root's images (or read the remembered outcome); ``DataError`` if none.
    ``root`` may also name one COCO ``.json`` file (``data_source``)."""
    root, annotation_files = data_source(root, annotation_files)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sources = _sources(root, annotation_files, images_dir)
    index = Path(cache_dir) / "data" / (
        f"{root.name}-index-"
        f"{_digest([CACHE_VERSION, sources, filters.to_dict(), SPLIT_BOUNDS])[:16]}.json")
    if use_index and index.is_file():
        try:
            saved = json.loads(index.read_text())
            steps = [(str(n), int(c)) for n, c in saved["steps"]]
            ids = {s: [int(i) for i in saved["ids"][s]] for s in SPLITS}
            if saved["sources"] == sources and steps[-1][1] > 0:
                return Selection(root, filters, sources, steps, ids,
                                 [str(d) for d in saved["image_dirs"]])
        except (ValueError, KeyError, TypeError, IndexError):
            pass  # unreadable index: recompute it
    data = load_coco(root, filters.category, annotation_files, images_dir)
    result = filter_images(data, filters)
    ids = result.split_ids()
    dirs = sorted({str(d) for d in data.image_dirs.values() if d is not None})
    sel = Selection(root, filters, sources, result.steps, ids, dirs, result, data)
    try:
        atomic_write_bytes(index, json.dumps({"sources": sources, "steps": result.steps,
                                              "ids": ids, "image_dirs": dirs}).encode("utf-8"))
    except OSError:
        pass  # an index is an optimisation; a read-only cache dir must not stop the work
    return sel


# -- building ---------------------------------------------------------------------------
def _meta(sel: Selection, split: str, size: int, key: str, skipped: List[dict]) -> dict:
    return {"version": CACHE_VERSION, "key": key, "split": split, "size": size,
            "root": str(sel.root), "filters": sel.filters.to_dict(), "policy": RESIZE_POLICY,
            "steps": sel.steps, "skipped": skipped}


def read_record_image(rec: ImageRecord) -> np.ndarray:
    """The image of an annotation record, RGB; ``BadImage`` if unreadable or of another size
    than the annotation says (its polygons would not fit)."""
    image = read_image(rec.path)
    if image.shape[:2] != (rec.height, rec.width):
        raise BadImage(f"size {image.shape[1]}x{image.shape[0]} differs from the "
                       f"annotation's {rec.width}x{rec.height}")
    return image


def prepare_sample(data: CocoData, image_id: int, size: int):
    """One image as training sees it: ``(image uint8 (S, S, 3), mask uint8 (S, S), box)``.

    Read, checked against the annotation's size, letterboxed; raises ``BadImage``.
    """
    image = read_record_image(data.records[image_id])
    square, box = letterbox(image, size)
    mask, _ = letterbox(data.mask(image_id), size, nearest=True)
    return square, mask, box


def warn_skipped(skipped: List[dict], split: str, stacklevel: int = 3) -> None:
    """One warning per split loaded: each unreadable image is named once, when its split is
    loaded (built or read from the cache), not again by the splits loaded after it."""
    if skipped:
        listing = list_some([f"{s['file']} ({s['reason']})" for s in skipped], 10)
        warnings.warn(BadImageWarning(f"skipped {len(skipped)} unreadable image(s) of the "
                                      f"{split} split: {listing}"), stacklevel=stacklevel)


def build_cache(sel: Selection, size: int, cache_dir: Optional[PathLike] = None,
                progress: bool = True, key: Optional[str] = None) -> Dict[str, Path]:
    """Decode, letterbox and store all three splits (train first: it gives mean and std)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder = cache_dir / "data"
    blocked = next((q for q in (folder, *folder.parents) if q.exists() and not q.is_dir()), None)
    if blocked is not None:        # said before the images are decoded, not after
        raise DataError(f"{folder}: cannot write the cache ({blocked} is a file, not a "
                        f"folder); choose another folder with --cache (train, evaluate), "
                        f"--cache-dir (tinyseg.data) or ${ENV_CACHE}")
    data = sel.data
    if data is None:
        data = load_coco(sel.root, sel.filters.category,
                         [f[0] for f in sel.sources["files"]], sel.sources["images_dir"])
        result = filter_images(data, sel.filters)   # cheap next to decoding the images
        if result.split_ids() != sel.ids or [list(s) for s in result.steps] != \
                [list(s) for s in sel.steps]:
            raise StaleIndex()
        sel.data, sel.result = data, result
    key = key or cache_key(sel, size)
    paths: Dict[str, Path] = {}
    mean = std = None
    for split in SPLITS:
        ids = sel.ids[split]
        images = np.empty((len(ids), size, size, 3), dtype=np.uint8)
        masks = np.empty((len(ids), size, size), dtype=np.uint8)
        boxes = np.empty((len(ids), 4), dtype=np.int32)
        kept: List[int] = []
        skipped: List[dict] = []
        with Progress(f"caching {split} at {size}px", len(ids), "images",
                      enabled=progress) as bar:
            for image_id in ids:
                try:
                    sq, m, box = prepare_sample(data, image_id, size)
                except BadImage as e:
                    path = data.records[image_id].path
                    skipped.append({"id": int(image_id), "file": str(path), "reason": str(e),
                                    "stamp": _stamp_or_none(path)})
                else:
                    n = len(kept)
                    images[n], masks[n], boxes[n] = sq, m, box
                    kept.append(image_id)
                bar.update()
        n = len(kept)
        images, masks, boxes = images[:n], masks[:n], boxes[:n]
        if split == "train":
            if n == 0:
                why = list_some([f"{x['file']} ({x['reason']})" for x in skipped], 3)
                raise DataError(f"no readable training image in {sel.root} (train split: "
                                f"{len(ids)} listed, {len(skipped)} unreadable: {why})")
            mean, std = channel_stats(images, boxes)
        path = cache_path(cache_dir, sel.root, size, key, split)
        meta = _meta(sel, split, size, key, skipped)
        try:
            atomic_save_npz(path, {"images": images, "masks": masks,
                                   "ids": np.asarray(kept, dtype=np.int64), "boxes": boxes,
                                   "mean": mean, "std": std,
                                   "meta": np.array(json.dumps(meta))})
        except OSError as e:
            raise DataError(f"{path.parent}: cannot write the cache ({e.strerror or e}); "
                            f"choose another folder with --cache (train, evaluate), "
                            f"--cache-dir (tinyseg.data) or ${ENV_CACHE}") from None
        paths[split] = path
        del images, masks
    return paths


def channel_stats(images: np.ndarray, boxes: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and std of the pictures (padding excluded), pixel values / 255."""
    s = np.zeros(3, dtype=np.float64)
    s2 = np.zeros(3, dtype=np.float64)
    count = 0
    for img, (top, left, h, w) in zip(images, boxes):
        x = img[top:top + h, left:left + w].reshape(-1, 3).astype(np.float64) / 255.0
        s += x.sum(axis=0)
        s2 += (x * x).sum(axis=0)
        count += x.shape[0]
    mean = s / count
    std = np.sqrt(np.maximum(s2 / count - mean * mean, 0.0))
    std = np.maximum(std, 1e-3)  # a constant channel must not divide by zero
    return mean.astype(np.float32), std.astype(np.float32)


# -- loading ----------------------------------------------------------------------------
def well_formed(arrays: dict, meta, size: int) -> bool:
    """Whether a cache file's arrays and metadata are what ``build_cache`` writes: the right
    names, dtypes and shapes, labels 0/1, boxes inside the square, finite statistics.  A file
    that fails is rebuilt (it was damaged or edited), never handed to training."""
    try:
        images, masks, ids, boxes = (arrays[k] for k in ("images", "masks", "ids", "boxes"))
        mean, std = arrays["mean"], arrays["std"]
        n = len(images)
        top, left, h, w = boxes.T if boxes.ndim == 2 else (None,) * 4
        return bool(
            isinstance(meta, dict) and isinstance(meta.get("skipped"), list)
            and isinstance(meta.get("policy"), str) and isinstance(meta.get("steps"), list)
            and images.dtype == np.uint8 and images.shape == (n, size, size, 3)
            and masks.dtype == np.uint8 and masks.shape == (n, size, size)
            and np.all(masks <= 1)
            and ids.dtype.kind == "i" and ids.shape == (n,) and len(np.unique(ids)) == n
            and boxes.dtype.kind == "i" and boxes.shape == (n, 4)
            and np.all((top >= 0) & (left >= 0) & (h >= 1) & (w >= 1)
                       & (top + h <= size) & (left + w <= size))
            and mean.shape == (3,) and np.all(np.isfinite(mean))
            and std.shape == (3,) and np.all(np.isfinite(std)) and np.all(std > 0))
    except (KeyError, AttributeError, TypeError, ValueError):
        return False


def _read_cache(path: Path, key: str, size: int, check_skipped: bool = True) -> Optional[dict]:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = json.loads(str(arrays.pop("meta")))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None  # unreadable (a truncated copy, another file): rebuilt
    if not isinstance(meta, dict) or meta.get("key") != key \
            or meta.get("version") != CACHE_VERSION or not well_formed(arrays, meta, size):
        return None
    if check_skipped and _skipped_changed(meta.get("skipped", [])):
        return None     # a skipped image was put right since: build again, with it
    arrays["meta"] = meta
    return arrays


def _stamp_or_none(path) -> Optional[list]:
    """``_file_stamp`` (path, size, mtime) of a file, or None when it cannot be seen."""
    try:
        return _file_stamp(Path(path))
    except (OSError, TypeError, ValueError):
        return None


def _skipped_changed(skipped: List[dict]) -> bool:
    """Whether a file that a cache skipped has changed since (appeared, was replaced or
    rewritten): then the image may be readable now."""
    return any(isinstance(s, dict) and _stamp_or_none(s.get("file")) != s.get("stamp")
               for s in skipped)


def load_split(root: Optional[PathLike], split: str, size: int,
               filters: FilterConfig = FilterConfig(), cache_dir: Optional[PathLike] = None,
               *, annotation_files: Optional[Sequence[PathLike]] = None,
               images_dir: Optional[PathLike] = None, progress: bool = True,
               rebuild: bool = False) -> Dataset:
    """One split (``'train'``, ``'val'``, ``'test'``) at ``size x size``, cached.

    ``root`` is the data root (None: ``$TINYSEG_DATA``).  The first call builds the caches
    of all three splits (progress on stderr); later calls load the ``.npz``.
    """
    if split not in SPLITS:
        raise ValueError(f"load_split: split must be one of {SPLITS}, got {split!r}")
    if not isinstance(size, (int, np.integer)) or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"load_split: size must be an integer from 1 to {MAX_SIZE}, "
                         f"got {size!r}")
    size = int(size)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    sel = select(root, filters, cache_dir, annotation_files=annotation_files,
                 images_dir=images_dir)
    key = cache_key(sel, size)
    path = cache_path(cache_dir, sel.root, size, key, split)
    arrays = None if rebuild else _read_cache(path, key, size)
    if arrays is None:
        try:
            build_cache(sel, size, cache_dir, progress=progress, key=key)
        except StaleIndex:                  # the remembered ids are not in the annotations
            sel = select(root, filters, cache_dir, annotation_files=annotation_files,
                         images_dir=images_dir, use_index=False)
            key = cache_key(sel, size)
            path = cache_path(cache_dir, sel.root, size, key, split)
            build_cache(sel, size, cache_dir, progress=progress, key=key)
        # just built: a skipped image that appeared during the build (a download still
        # running) is taken in by the next load, not reported as an unreadable cache
        arrays = _read_cache(path, key, size, check_skipped=False)
        if arrays is None:
            raise DataError(f"{path}: the cache just written cannot be read back")
    meta = arrays["meta"]
    warn_skipped(meta["skipped"], split)
    return Dataset(images=arrays["images"], masks=arrays["masks"], ids=arrays["ids"],
                   mean=arrays["mean"], std=arrays["std"], boxes=arrays["boxes"], split=split,
                   size=size, filters=filters, cache_key=key, cache_path=path, root=sel.root,
                   resize_policy=meta["policy"],
                   steps=[(str(n), int(c)) for n, c in meta["steps"]],
                   skipped=list(meta["skipped"]))


def split_counts(ids: Sequence[int]) -> Dict[str, int]:
    out = {s: 0 for s in SPLITS}
    for i in ids:
        out[split_of(i)] += 1
    return out
