"""COCO annotations: where the data is, which images to keep, and their person masks.

A data root is a COCO directory::

    ROOT/annotations/instances_train2017.json   (any annotations/*.json in COCO instances format)
    ROOT/train2017/000000000036.jpg            (or ROOT/images/train2017/, ROOT/images/, ROOT/)

``load_coco`` reads every ``annotations/instances_*.json`` (else every ``annotations/*.json``)
with pycocotools, checks that it is COCO, and finds the image folder of each file.

The reduction of the original write-up, one counted step at a time (``filter_images``):

1. images with at least one person annotation (crowd regions included);
2. without any crowd person annotation (``exclude_crowd``);
3. with ``min_persons`` to ``max_persons`` person annotations;
4. where the union of the person masks covers ``min_coverage`` to ``max_coverage`` of the
   image: coverage = |M| / (H W), with M the union mask below.

The mask of an image is the union of its person instances (polygons or RLE), rasterised by
pycocotools at the image's size::

    M = OR_k mask(annotation_k),  M[y, x] in {0, 1},  shape (H, W)

Polygons that stray outside the image are clipped to the rectangle [0, W] x [0, H] first
(Sutherland-Hodgman); pycocotools itself mis-handles, or crashes on, far-away points.

The split is a function of the image id alone, so adding images never moves old ones:
``b = int(sha256(str(id))[:8 bytes], big-endian) mod 100``, i.e.
``int(hashlib.sha256(str(id).encode()).hexdigest()[:16], 16) % 100``; train if b < 70, val if
b < 90, else test.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from .errors import BadAnnotationWarning, DataError, list_some

PathLike = Union[str, os.PathLike]

ENV_DATA = "TINYSEG_DATA"
SPLITS = ("train", "val", "test")
#: The largest image side an annotation file may state: pycocotools counts a mask's pixels
#: in 32 bits, so its areas go wrong above 65535 x 65535 (and it crashed at 2**31).
MAX_SIDE = 65535
#: Cumulative split boundaries on the hash bucket b in [0, 100): 70 / 20 / 10 per cent.
SPLIT_BOUNDS = {"train": 70, "val": 90, "test": 100}


# -- where the data is ------------------------------------------------------------------
def resolve_data_root(arg: Optional[PathLike] = None) -> Path:
    """The data root: ``arg`` (from ``--data``), else ``$TINYSEG_DATA``; checked to exist.

    Raises ``DataError`` naming what is missing.
    """
    if arg is None or str(arg) == "":
        env = os.environ.get(ENV_DATA, "")
        if not env:
            raise DataError(f"no data directory: pass --data DIR or set {ENV_DATA} to a COCO "
                            "directory (annotations/*.json and its images)")
        arg = env
    root = Path(arg).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, not a data directory (expected a COCO directory "
                        f"with annotations/*.json and its images, or one COCO .json file)")
    if not root.is_dir():
        raise DataError(f"{root}: data directory not found (expected a COCO directory with "
                        "annotations/*.json and its images)")
    if not (root / "annotations").is_dir():
        raise DataError(f"{root}: no 'annotations' folder (expected annotations/*.json in "
                        "COCO instances format, e.g. instances_train2017.json)")
    return root.resolve()


def data_source(arg: Optional[PathLike] = None,
                annotation_files: Optional[Sequence[PathLike]] = None
                ) -> Tuple[Path, Optional[List[Path]]]:
    """``(root, annotation_files)`` for ``--data``, which names a COCO folder (see
    ``resolve_data_root``) or one COCO instances ``.json`` file, as labelling tools export
    it: then the root is the file's folder, the file is the only annotation file, and the
    images are looked for as for any annotation file (``image_dir_candidates``: beside it,
    in ``images/``, ...)."""
    given = arg not in (None, "")
    raw = arg if given else os.environ.get(ENV_DATA, "")
    path = Path(raw).expanduser() if raw else None
    flag = "--data" if given else f"${ENV_DATA}"
    if path is not None and path.suffix.lower() == ".json" and not path.is_dir():
        if not path.is_file():
            raise DataError(f"{path}: annotation file not found ({flag} names a .json file)")
        if annotation_files:
            raise DataError(f"{path}: {flag} names an annotation file already; leave out "
                            f"--annotations, or give {flag} its folder")
        return path.parent.resolve(), [path.resolve()]
    return resolve_data_root(arg), (list(map(Path, annotation_files))
                                    if annotation_files else None)


def find_annotation_files(root: PathLike) -> List[Path]:
    """``annotations/instances_*.json`` if there are any, else ``annotations/*.json``."""
    folder = Path(root) / "annotations"
    if not folder.is_dir():
        raise DataError(f"{folder}: annotation folder not found (expected COCO instances "
                        "files such as instances_train2017.json)")
    files = sorted(folder.glob("instances_*.json")) or sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"{folder}: no *.json annotation file (expected a COCO instances "
                        "file such as instances_train2017.json)")
    return files


# -- filters ----------------------------------------------------------------------------
@dataclass(frozen=True)
class FilterConfig:
    """Which images are kept.  ``max_persons=None`` means no upper limit."""

    min_persons: int = 1
    max_persons: Optional[int] = 2
    min_coverage: float = 0.20
    max_coverage: float = 0.70
    exclude_crowd: bool = True
    category: str = "person"

    def __post_init__(self) -> None:
        if int(self.min_persons) < 1:
            raise ValueError(f"FilterConfig: min_persons must be >= 1, got {self.min_persons}")
        if self.max_persons is not None and self.max_persons < self.min_persons:
            raise ValueError(f"FilterConfig: max_persons ({self.max_persons}) is below "
                             f"min_persons ({self.min_persons})")
        if not (0.0 <= self.min_coverage <= self.max_coverage <= 1.0):
            raise ValueError("FilterConfig: need 0 <= min_coverage <= max_coverage <= 1, got "
                             f"{self.min_coverage} and {self.max_coverage}")
        if not self.category:
            raise ValueError("FilterConfig: category must be a non-empty name")

    def to_dict(self) -> dict:
        return asdict(self)

    def replace(self, **changes) -> "FilterConfig":
        """A copy with ``changes`` (``max_persons=None`` means no limit)."""
        return replace(self, **changes)

    def persons_text(self) -> str:
        if self.max_persons is None:
            return f"at least {self.min_persons}"
        if self.max_persons == self.min_persons:
            return f"exactly {self.min_persons}"
        return f"{self.min_persons} to {self.max_persons}"

    def coverage_text(self) -> str:
        return f"{100 * self.min_coverage:g} %-{100 * self.max_coverage:g} %"

    def describe(self) -> str:
        crowd = "crowd excluded" if self.exclude_crowd else "crowd allowed"
        return (f"{self.persons_text()} {self.category} instances, mask covering "
                f"{self.coverage_text()} of the image, {crowd}")


#: Named filter settings: the seed's (default), a wider one for more training images, none.
FILTER_PRESETS: Dict[str, FilterConfig] = {
    "default": FilterConfig(),
    "wide": FilterConfig(min_coverage=0.05, max_coverage=0.90),
    "all": FilterConfig(max_persons=None, min_coverage=0.0, max_coverage=1.0,
                        exclude_crowd=False),
}


# -- the split --------------------------------------------------------------------------
def split_bucket(image_id) -> int:
    """A stable number in [0, 100) from the image id: the first 8 bytes of the sha256 of
    ``str(id)`` (UTF-8) as a big-endian integer, mod 100."""
    digest = hashlib.sha256(str(image_id).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") % 100


def split_of(image_id) -> str:
    """``'train'`` (70 %), ``'val'`` (20 %) or ``'test'`` (10 %), from the id alone."""
    b = split_bucket(image_id)
    for name in SPLITS:
        if b < SPLIT_BOUNDS[name]:
            return name
    raise AssertionError("unreachable")


# -- polygons and masks -----------------------------------------------------------------
def clip_polygon(coords: Sequence[float], width: float, height: float) -> List[float]:
    """Clip a polygon ``[x0, y0, x1, y1, ...]`` to the rectangle [0, W] x [0, H].

    Sutherland-Hodgman: the polygon is cut by each of the four half-planes in turn; an edge
    p -> q that crosses the boundary contributes its crossing point.  Works for any polygon
    (the clip window is convex).  Returns the clipped coordinates (maybe fewer than 6: empty).
    """
    pts = [(float(coords[i]), float(coords[i + 1])) for i in range(0, len(coords) - 1, 2)]

    def cut(points, inside, crossing):
        out = []
        for i, q in enumerate(points):
            p = points[i - 1]
            if inside(q):
                if not inside(p):
                    out.append(crossing(p, q))
                out.append(q)
            elif inside(p):
                out.append(crossing(p, q))
        return out

    def at_x(c):
        return lambda p, q: (c, p[1] + (q[1] - p[1]) * (c - p[0]) / (q[0] - p[0]))

    def at_y(c):
        return lambda p, q: (p[0] + (q[0] - p[0]) * (c - p[1]) / (q[1] - p[1]), c)

    for inside, crossing in ((lambda p: p[0] >= 0.0, at_x(0.0)),
                             (lambda p: p[0] <= width, at_x(float(width))),
                             (lambda p: p[1] >= 0.0, at_y(0.0)),
                             (lambda p: p[1] <= height, at_y(float(height)))):
        if not pts:
            break
        pts = cut(pts, inside, crossing)
    return [c for p in pts for c in p]


def annotation_rles(segmentation, height: int, width: int) -> list:
    """pycocotools RLEs of one annotation's segmentation at ``height x width``.

    Polygons are clipped to the image first; parts with fewer than 3 points are dropped
    (pycocotools would read a 4-number list as a box).
    """
    if isinstance(segmentation, list):
        polys = [clip_polygon(p, width, height) for p in segmentation]
        polys = [p for p in polys if len(p) >= 6]
        return mask_utils.frPyObjects(polys, height, width) if polys else []
    counts = segmentation["counts"]
    if list(segmentation["size"]) != [height, width] or \
            sum(rle_counts(counts)) != height * width:
        raise ValueError(f"RLE of size {segmentation['size']} does not describe a "
                         f"{height} x {width} mask")
    if isinstance(counts, list):  # uncompressed RLE
        return [mask_utils.frPyObjects(segmentation, height, width)]
    rle = {"size": list(segmentation["size"]),
           "counts": counts.encode("ascii") if isinstance(counts, str) else counts}
    return [rle]


def union_rle(anns: Sequence[dict], height: int, width: int):
    """The union of the annotations' masks as one RLE, or None when they have no pixels."""
    rles = [r for a in anns for r in annotation_rles(a["segmentation"], height, width)]
    if not rles:
        return None
    return mask_utils.merge(rles, intersect=0) if len(rles) > 1 else rles[0]


def union_mask(anns: Sequence[dict], height: int, width: int) -> np.ndarray:
    """M = OR_k mask(ann_k): ``uint8 (height, width)`` with values {0, 1}."""
    rle = union_rle(anns, height, width)
    if rle is None:
        return np.zeros((height, width), dtype=np.uint8)
    with warnings.catch_warnings():
        # pycocotools' own NumPy 2 deprecation notice, about its internals
        warnings.simplefilter("ignore", DeprecationWarning)
        decoded = mask_utils.decode(rle)
    return np.ascontiguousarray(decoded, dtype=np.uint8)


def union_area(anns: Sequence[dict], height: int, width: int) -> int:
    """|M|, the number of pixels in the union mask (computed on the RLE, not decoded)."""
    rle = union_rle(anns, height, width)
    return 0 if rle is None else int(mask_utils.area(rle))


# -- reading and checking annotation files ----------------------------------------------
def same_category(name, wanted: str) -> bool:
    """Category names compared as exporters write them: ``Person`` and ``person `` are
    ``person``."""
    return isinstance(name, str) and name.strip().casefold() == wanted.strip().casefold()


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}")


def read_coco_json(path: PathLike, category: Optional[str] = None) -> dict:
    """Parse ``path`` and check that it is COCO instances format; ``DataError`` if not.

    With ``category``, only that category's segmentations are checked in detail.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found (expected a COCO instances JSON "
                        "file)")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise _fail(path, f"cannot read the annotation file ({e.strerror})") from None
    try:
        data = json.loads(raw)
    except UnicodeDecodeError:
        raise _fail(path, "not a text file, expected COCO instances JSON") from None
    except json.JSONDecodeError as e:
        # a cut-off file ends where the error is, or inside a string (json then reports
        # where the string started)
        cut = e.pos >= len(raw.rstrip()) - 1 or e.msg.startswith("Unterminated string")
        hint = "; the file looks truncated" if cut else ""
        where = "" if e.msg.endswith(" at") else " at"      # "Unterminated string starting at"
        raise _fail(path, f"not valid JSON ({e.msg}{where} line {e.lineno}, column {e.colno})"
                          f"{hint}") from None
    check_coco(data, path, category)
    return data


def check_coco(data, path: PathLike, category: Optional[str] = None) -> None:
    """Raise ``DataError`` (naming ``path`` and the entry) unless ``data`` is COCO instances.

    Segmentations are checked for the annotations of ``category`` (all when None).
    """
    path = Path(path)
    if not isinstance(data, dict):
        raise _fail(path, f"not COCO instances format (the top level is a "
                          f"{type(data).__name__}, expected an object with 'images', "
                          "'annotations' and 'categories')")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            found = ", ".join(sorted(map(str, data))) or "nothing"
            raise _fail(path, f"not COCO instances format: no '{key}' list (found keys: "
                              f"{found})")
    image_ids = set()
    for i, im in enumerate(data["images"]):
        if not isinstance(im, dict):
            raise _fail(path, f"images[{i}] is not an object")
        for key, kind in (("id", int), ("file_name", str), ("width", int), ("height", int)):
            value = im.get(key)
            if not isinstance(value, kind) or isinstance(value, bool):
                raise _fail(path, f"images[{i}] has no valid '{key}' (expected "
                                  f"{kind.__name__}, got {value!r})")
        if not (0 < im["width"] <= MAX_SIDE and 0 < im["height"] <= MAX_SIDE):
            raise _fail(path, f"images[{i}] (id {im['id']}) has size "
                              f"{im['width']}x{im['height']} (each side must be 1 to "
                              f"{MAX_SIDE}: pycocotools' masks go wrong above that)")
        if not -2**63 <= im["id"] < 2**63:
            raise _fail(path, f"images[{i}] has id {im['id']}, which does not fit in 64 bits")
        if im["id"] in image_ids:
            raise _fail(path, f"image id {im['id']} appears twice in 'images'")
        image_ids.add(im["id"])
    for i, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int) \
                or not isinstance(cat.get("name"), str):
            raise _fail(path, f"categories[{i}] needs an integer 'id' and a 'name'")
    checked = {c["id"] for c in data["categories"]
               if category is None or same_category(c["name"], category)}
    sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
    ann_ids = set()
    degenerate: Dict[str, List[str]] = {}
    for i, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            raise _fail(path, f"annotations[{i}] is not an object")
        for key in ("id", "image_id", "category_id"):
            if not isinstance(ann.get(key), int):
                raise _fail(path, f"annotations[{i}] has no integer '{key}'")
        if ann["id"] in ann_ids:      # pycocotools would return one of them twice
            raise _fail(path, f"annotation id {ann['id']} appears twice in 'annotations'")
        ann_ids.add(ann["id"])
        if ann.get("iscrowd", 0) not in (0, 1):      # a string "0" would count as crowd
            raise _fail(path, f"annotation {ann['id']}: 'iscrowd' must be 0 or 1, got "
                              f"{ann.get('iscrowd')!r}")
        if ann["image_id"] not in sizes:
            raise _fail(path, f"annotation {ann['id']} refers to image {ann['image_id']}, "
                              "which is not in 'images'")
        if ann["category_id"] in checked:
            problem = _check_segmentation(ann, sizes[ann["image_id"]], path)
            if problem:
                degenerate.setdefault(problem, []).append(
                    f"annotation {ann['id']} (image {ann['image_id']})")
    for problem, where in degenerate.items():    # said, not refused: official COCO may
        warnings.warn(BadAnnotationWarning(       # hold a few such annotations
            f"{path}: {len(where)} annotation(s) {problem}: {list_some(where, 5)}"),
            stacklevel=2)


_NO_OUTLINE = ("have no polygon of 3 or more points (bounding boxes only?): they count as "
               "persons but add no pixel to the masks")
_ODD = "have a polygon with an odd count of numbers: its last number is ignored"


def _check_segmentation(ann: dict, size: Tuple[int, int], path: Path) -> Optional[str]:
    """Raise ``DataError`` for a segmentation that cannot be read; return a warning's text
    (``_NO_OUTLINE``, ``_ODD``) for one that can be read but is degenerate, else None."""
    seg = ann.get("segmentation")
    where = f"annotation {ann['id']} (image {ann['image_id']})"
    if isinstance(seg, list):
        for poly in seg:
            if not isinstance(poly, list) or not all(
                    isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                    for v in poly):
                raise _fail(path, f"{where}: a polygon must be a list of finite numbers "
                                  "[x0, y0, x1, y1, ...]")
        if not any(len(poly) >= 6 for poly in seg):   # the person is background
            return _NO_OUTLINE
        if any(len(poly) % 2 for poly in seg):        # pycocotools drops the last number
            return _ODD
        return None
    if isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if not isinstance(seg["size"], list) or seg["size"] != [size[0], size[1]]:
            raise _fail(path, f"{where}: RLE size {seg['size']} differs from the image's "
                              f"[height, width] {list(size)}")
        if not isinstance(seg["counts"], (str, list)):
            raise _fail(path, f"{where}: RLE 'counts' must be a string or a list")
        # pycocotools reads past its buffers when the runs do not add up to H x W
        try:
            runs = rle_counts(seg["counts"])
        except (ValueError, TypeError, UnicodeEncodeError) as e:
            raise _fail(path, f"{where}: malformed RLE ({e})") from None
        if any(r < 0 for r in runs):
            raise _fail(path, f"{where}: RLE has a negative run ({min(runs)})")
        if sum(runs) != size[0] * size[1]:
            raise _fail(path, f"{where}: RLE runs add up to {sum(runs)} pixels, expected "
                              f"{size[0]} x {size[1]} = {size[0] * size[1]}")
        return None
    if seg is None:
        raise _fail(path, f"{where}: no 'segmentation' (bounding boxes only?); a person "
                          f"needs an outline (polygons) or an RLE mask")
    raise _fail(path, f"{where}: 'segmentation' must be polygons (a list) or an RLE "
                      f"({{'counts', 'size'}}), got {type(seg).__name__}")


def rle_counts(counts) -> List[int]:
    """The run lengths of an RLE: a list as is, or pycocotools' compressed string decoded.

    The string packs each count in 5-bit groups (character = 48 + group, bit 0x20 = "more
    follows", bit 0x10 of the last group = negative), and from the fourth count on stores the
    difference to the count two places before.  ``ValueError`` if the string is malformed.
    """
    if isinstance(counts, list):
        return [int(c) for c in counts]
    data = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
    out: List[int] = []
    p = 0
    while p < len(data):
        x = k = 0
        more = True
        while more:
            if p >= len(data):
                raise ValueError("RLE string ends in the middle of a number")
            c = data[p] - 48
            if not 0 <= c < 64:
                raise ValueError(f"RLE string has an invalid character {chr(data[p])!r}")
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(out) > 2:
            x += out[-2]
        out.append(x)
    return out


def _pycocotools_index(data: dict) -> COCO:
    """A pycocotools ``COCO`` over already-parsed data, its chatter kept off stdout."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


# -- a data root, loaded ----------------------------------------------------------------
@dataclass
class ImageRecord:
    """One image of the annotation files and its annotations of the chosen category."""

    id: int
    file_name: str
    path: Path
    height: int
    width: int
    anns: List[dict]
    source: Path
    url: Optional[str] = None

    @property
    def n_instances(self) -> int:
        return len(self.anns)

    @property
    def has_crowd(self) -> bool:
        return any(a.get("iscrowd", 0) for a in self.anns)


def image_dir_candidates(root: Path, annotation_file: Path) -> List[Path]:
    """Where the images of ``annotations/instances_<set>.json`` may be, in order."""
    stem = annotation_file.stem
    names = [stem[len("instances_"):]] if stem.startswith("instances_") else []
    names.append(stem)
    out = []
    for n in names:
        out += [root / n, root / "images" / n]
    out += [root / "images", root]
    seen, unique = set(), []
    for c in out:
        if c not in seen:
            seen.add(c)
            unique.append(c)
    return unique


def find_image_dir(root: Path, annotation_file: Path, file_names: Sequence[str]) -> Path:
    """The first candidate folder that holds at least one of ``file_names``."""
    candidates = image_dir_candidates(root, annotation_file)
    names = list(file_names)
    for folder in candidates:
        if not folder.is_dir():
            continue
        listing = set(os.listdir(folder))
        if any(n in listing for n in names) or any((folder / n).is_file() for n in names[:50]):
            return folder
    example = names[0] if names else "?"
    shown = ", ".join(str(c) for c in candidates)
    raise DataError(f"image folder not found for {annotation_file}: none of {shown} holds "
                    f"its images (e.g. {example}); put them there (with python -m "
                    f"tinyseg.data, --images DIR names another folder)")


class CocoData:
    """The annotations of one data root: images, their person annotations, their masks."""

    def __init__(self, root: Path, files: List[Path], category: str,
                 records: Dict[int, ImageRecord], image_dirs: Dict[Path, Optional[Path]],
                 cocos: Dict[Path, COCO]) -> None:
        self.root = root
        self.files = files
        self.category = category
        self.records = records
        self.image_dirs = image_dirs
        self.cocos = cocos

    def __len__(self) -> int:
        return len(self.records)

    def ids(self) -> List[int]:
        return sorted(self.records)

    def mask(self, image_id: int) -> np.ndarray:
        """The union mask of ``image_id``: ``uint8 (H, W)`` in {0, 1}."""
        r = self.records[image_id]
        return union_mask(r.anns, r.height, r.width)

    def coverage(self, image_id: int) -> float:
        """|M| / (H W)."""
        r = self.records[image_id]
        return union_area(r.anns, r.height, r.width) / float(r.height * r.width)


def load_coco(root: PathLike, category: str = "person",
              annotation_files: Optional[Sequence[PathLike]] = None,
              images_dir: Optional[PathLike] = None, require_images: bool = True) -> CocoData:
    """Read the annotation files of ``root`` with pycocotools and find their image folders.

    ``annotation_files`` defaults to ``find_annotation_files(root)``; relative names are
    looked up in ``root/annotations``.  ``images_dir`` overrides the image folder search.
    ``require_images=False`` skips the search (the images may not be there yet).
    """
    root = Path(root)
    if annotation_files:
        files = []
        for f in annotation_files:
            f = Path(f)
            if not f.is_absolute() and not f.exists():
                f = root / "annotations" / f
            files.append(f)
    else:
        files = find_annotation_files(root)
    records: Dict[int, ImageRecord] = {}
    image_dirs: Dict[Path, Optional[Path]] = {}
    cocos: Dict[Path, COCO] = {}
    for f in files:
        data = read_coco_json(f, category)
        cat_ids = [c["id"] for c in data["categories"] if same_category(c["name"], category)]
        if not cat_ids:
            names = sorted({c["name"] for c in data["categories"]})
            hint = ("; train and evaluate use the 'person' category: to train another class, "
                    "name it 'person' in the annotation file" if category == "person" else "")
            raise DataError(f"{f}: no category named {category!r} (categories: "
                            f"{list_some(names, 12) or 'none'}){hint}")
        coco = _pycocotools_index(data)
        cocos[f] = coco
        if images_dir is not None:
            folder = Path(images_dir)
            if not folder.is_dir():
                raise DataError(f"{folder}: image folder not found (expected the images "
                                f"listed in {f})")
        elif require_images and data["images"]:    # a file listing no image needs no folder
            with_cat = coco.getImgIds(catIds=cat_ids) if data["annotations"] else []
            first = [coco.imgs[i]["file_name"] for i in sorted(set(with_cat))] \
                or [im["file_name"] for im in data["images"]]
            folder = find_image_dir(root, f, first)
        else:
            folder = None
        image_dirs[f] = folder
        for im in data["images"]:
            if im["id"] in records:
                raise DataError(f"image id {im['id']} is in both {records[im['id']].source} "
                                f"and {f}; image ids must be unique across annotation files")
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[im["id"]], catIds=cat_ids,
                                                iscrowd=None))
            records[im["id"]] = ImageRecord(
                id=im["id"], file_name=im["file_name"],
                path=(folder / im["file_name"]) if folder is not None else Path(im["file_name"]),
                height=im["height"], width=im["width"], anns=anns, source=f,
                url=im.get("coco_url"))
    return CocoData(root, files, category, records, image_dirs, cocos)


# -- the reduction, step by step --------------------------------------------------------
@dataclass
class FilterResult:
    """What ``filter_images`` kept, and how many images were left after each step."""

    config: FilterConfig
    steps: List[Tuple[str, int]]
    kept: List[int]
    rejected: Dict[int, str] = field(default_factory=dict)   # id -> name of the step
    coverage: Dict[int, float] = field(default_factory=dict)  # ids that reached step 4

    def split_ids(self) -> Dict[str, List[int]]:
        out = {s: [] for s in SPLITS}
        for i in self.kept:
            out[split_of(i)].append(i)
        return out

    def reason(self, image_id: int, data: Optional["CocoData"] = None) -> str:
        """A short reason for a rejection: ``'6 persons'``, ``'covers 3 %'``, ``'crowd'``..."""
        name = self.rejected.get(image_id)
        if name is None:
            return "kept"
        step = [n for n, _ in self.steps].index(name)
        c = self.config.category
        if step == 1:
            return f"no {c}"
        if step == 2:
            return f"crowd {c} region"
        if step == 3:
            n = data.records[image_id].n_instances if data is not None else None
            return f"{n} {c}s" if n is not None else f"not {self.config.persons_text()} {c}s"
        cov = 100.0 * self.coverage[image_id]
        side = "<" if cov < 100.0 * self.config.min_coverage else ">"
        bound = self.config.min_coverage if side == "<" else self.config.max_coverage
        return f"covers {cov:.0f} % {side} {100 * bound:g} %"

    def table(self) -> str:
        width = max(len(name) for name, _ in self.steps)
        return "\n".join(f"  {name:<{width}}  {n:>7}" for name, n in self.steps)

    def inline(self) -> str:
        return " -> ".join(f"{n} {name}" for name, n in self.steps)


STEP_ALL = "images in the annotation files"


def step_names(cfg: FilterConfig) -> List[str]:
    c = cfg.category
    return [STEP_ALL,
            f"with at least one {c}",
            f"without crowd {c} annotations" if cfg.exclude_crowd
            else f"crowd {c} annotations allowed (step off)",
            f"with {cfg.persons_text()} {c} instances",
            f"{c} mask covers {cfg.coverage_text()} of the image"]


def filter_images(data: CocoData, cfg: FilterConfig = FilterConfig(),
                  require_nonempty: bool = True) -> FilterResult:
    """Apply the four steps in order; count the images left after each.

    Raises ``DataError`` listing the counts when nothing is left (unless
    ``require_nonempty=False``).
    """
    if cfg.category != data.category:
        raise ValueError(f"filter_images: filters are for {cfg.category!r} but the data was "
                         f"loaded for {data.category!r}")
    names = step_names(cfg)
    ids = data.ids()
    counts = [len(ids)]
    rejected: Dict[int, str] = {}
    coverage: Dict[int, float] = {}

    def keep(ids, test, name):
        out = []
        for i in ids:
            if test(data.records[i]):
                out.append(i)
            else:
                rejected[i] = name
        counts.append(len(out))
        return out

    ids = keep(ids, lambda r: r.n_instances >= 1, names[1])
    ids = keep(ids, lambda r: not (cfg.exclude_crowd and r.has_crowd), names[2])
    ids = keep(ids, lambda r: r.n_instances >= cfg.min_persons and (
        cfg.max_persons is None or r.n_instances <= cfg.max_persons), names[3])

    def covers(r: ImageRecord) -> bool:
        cov = data.coverage(r.id)
        coverage[r.id] = cov
        return cfg.min_coverage <= cov <= cfg.max_coverage

    ids = keep(ids, covers, names[4])
    result = FilterResult(cfg, list(zip(names, counts)), ids, rejected, coverage)
    if require_nonempty and not ids:
        if not counts[0]:       # nothing to filter: say where the images should be listed
            listing = list_some([str(f) for f in data.files], 3)
            raise DataError(f"{listing}: no image listed ('images' is empty)")
        raise DataError(f"the filters leave no image: {result.inline()}")
    return result
