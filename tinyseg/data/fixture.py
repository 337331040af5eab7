"""Tiny made-up COCO directories, for tests and examples that must not need the real data.

``make_coco_dir(root, images)`` writes ``root/annotations/<annotation_name>`` and the JPEGs
in ``root/<image_dir>/``.  Each ``FakeImage`` lists its persons as rectangles
``(x0, y0, x1, y1)`` in pixels; with integer corners pycocotools rasterises a rectangle to
exactly ``(x1 - x0) (y1 - y0)`` pixels, so every filter count and coverage is known in
advance.  Persons are painted in a warm colour on a textured cool background, so the
pictures also carry the signal a small network can learn.

``random_images(n, rng)`` draws a varied set: 0-3 persons, some crowd regions, a few other
objects (category ``dog``), coverages from tiny to nearly full.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

PathLike = Union[str, os.PathLike]
Rect = Tuple[int, int, int, int]

CATEGORIES = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 18, "name": "dog", "supercategory": "animal"}]


@dataclass
class FakeImage:
    """One made-up picture: ``persons`` rectangles (polygons), ``crowd`` rectangles (RLE)."""

    persons: List[Rect] = field(default_factory=list)
    crowd: List[Rect] = field(default_factory=list)
    dogs: List[Rect] = field(default_factory=list)
    height: int = 48
    width: int = 64


def rect_polygon(r: Rect) -> List[float]:
    x0, y0, x1, y1 = r
    return [float(v) for v in (x0, y0, x1, y0, x1, y1, x0, y1)]


def rect_mask(rects: Sequence[Rect], height: int, width: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=np.uint8)
    for x0, y0, x1, y1 in rects:
        m[max(0, y0):max(0, y1), max(0, x0):max(0, x1)] = 1
    return m


def paint(spec: FakeImage, rng: np.random.Generator) -> np.ndarray:
    """The picture: cool noisy background, warm persons, brown dogs; uint8 (H, W, 3)."""
    h, w = spec.height, spec.width
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([40 + 60 * xx / w, 90 + 50 * yy / h, 150 + 40 * (1 - xx / w)], axis=2)
    img = base + rng.normal(0, 12, size=(h, w, 3))
    people = rect_mask(spec.persons + spec.crowd, h, w).astype(bool)
    img[people] = np.array([205, 120, 95]) + rng.normal(0, 15, size=(int(people.sum()), 3))
    dogs = rect_mask(spec.dogs, h, w).astype(bool) & ~people
    img[dogs] = np.array([120, 80, 40]) + rng.normal(0, 10, size=(int(dogs.sum()), 3))
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def coco_dict(specs: Sequence[FakeImage], first_id: int = 1,
              file_pattern: str = "{id:012d}.jpg",
              url_base: str = "http://images.cocodataset.org/train2017") -> dict:
    """The COCO instances JSON for ``specs`` (image ids ``first_id, first_id + 1, ...``)."""
    images, anns = [], []
    ann_id = 1000 * first_id
    for k, spec in enumerate(specs):
        image_id = first_id + k
        name = file_pattern.format(id=image_id)
        images.append({"id": image_id, "file_name": name, "width": spec.width,
                       "height": spec.height, "coco_url": f"{url_base}/{name}"})
        for r in spec.persons:
            ann_id += 1
            x0, y0, x1, y1 = r
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                         "segmentation": [rect_polygon(r)], "area": float((x1 - x0) * (y1 - y0)),
                         "bbox": [x0, y0, x1 - x0, y1 - y0]})
        for r in spec.crowd:
            ann_id += 1
            m = np.asfortranarray(rect_mask([r], spec.height, spec.width))
            rle = mask_utils.encode(m)
            x0, y0, x1, y1 = r
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 1,
                         "segmentation": {"size": [spec.height, spec.width],
                                          "counts": rle["counts"].decode("ascii")},
                         "area": float(m.sum()), "bbox": [x0, y0, x1 - x0, y1 - y0]})
        for r in spec.dogs:
            ann_id += 1
            x0, y0, x1, y1 = r
            anns.append({"id": ann_id, "image_id": image_id, "category_id": 18, "iscrowd": 0,
                         "segmentation": [rect_polygon(r)], "area": float((x1 - x0) * (y1 - y0)),
                         "bbox": [x0, y0, x1 - x0, y1 - y0]})
    return {"info": {"description": "tinyseg fixture"}, "licenses": [], "images": images,
            "annotations": anns, "categories": [dict(c) for c in CATEGORIES]}


def make_coco_dir(root: PathLike, specs: Optional[Sequence[FakeImage]] = None, *,
                  seed: int = 0, annotation_name: str = "instances_train2017.json",
                  image_dir: str = "train2017", first_id: int = 1,
                  quality: int = 95) -> dict:
    """Write a COCO directory under ``root``; returns the annotation dict.

    ``specs`` defaults to ``random_images(24, rng)``.
    """
    rng = np.random.default_rng(seed)
    if specs is None:
        specs = random_images(24, rng)
    root = Path(root)
    data = coco_dict(specs, first_id)
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / annotation_name).write_text(json.dumps(data))
    folder = root / image_dir
    folder.mkdir(parents=True, exist_ok=True)
    for spec, im in zip(specs, data["images"]):
        Image.fromarray(paint(spec, rng)).save(folder / im["file_name"], quality=quality)
    return data


def random_images(n: int, rng: np.random.Generator, height: int = 48,
                  width: int = 64) -> List[FakeImage]:
    """A varied set of ``n`` made-up pictures (see the module docstring)."""
    out = []
    for _ in range(n):
        spec = FakeImage(height=height, width=width)
        k = int(rng.choice([0, 1, 1, 1, 2, 2, 3]))
        for _ in range(k):
            rw = int(rng.integers(4, width))
            rh = int(rng.integers(6, height))
            x0 = int(rng.integers(0, width - rw + 1))
            y0 = int(rng.integers(0, height - rh + 1))
            spec.persons.append((x0, y0, x0 + rw, y0 + rh))
        if rng.random() < 0.1:
            spec.crowd.append((0, height - 8, width // 2, height))
        if rng.random() < 0.3:
            spec.dogs.append((width - 16, height - 12, width - 2, height - 1))
        out.append(spec)
    return out
