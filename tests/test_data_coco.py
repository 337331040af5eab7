"""tinyseg.data.coco: data root, annotation checks, polygons and masks, filter steps, split."""
import copy
import json
import subprocess
import sys

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tinyseg.data.coco import (FILTER_PRESETS, SPLIT_BOUNDS, FilterConfig, clip_polygon,
                               filter_images, load_coco, read_coco_json, resolve_data_root,
                               split_bucket, split_of, union_area, union_mask)
from tinyseg.data.errors import DataError
from tinyseg.data.fixture import FakeImage, coco_dict, make_coco_dir, rect_mask

# pycocotools' decode warns about its own NumPy 2 internals
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# -- data root ----------------------------------------------------------------------------
def test_resolve_data_root_from_argument_and_env(tmp_path, monkeypatch):
    (tmp_path / "annotations").mkdir()
    assert resolve_data_root(str(tmp_path)) == tmp_path.resolve()
    monkeypatch.setenv("TINYSEG_DATA", str(tmp_path))
    assert resolve_data_root(None) == tmp_path.resolve()


def test_resolve_data_root_errors_name_the_problem(tmp_path, monkeypatch):
    monkeypatch.delenv("TINYSEG_DATA", raising=False)
    with pytest.raises(DataError, match="TINYSEG_DATA"):
        resolve_data_root(None)
    with pytest.raises(DataError, match="not found"):
        resolve_data_root(tmp_path / "nope")
    with pytest.raises(DataError, match=r"no 'annotations' folder"):
        resolve_data_root(tmp_path)


# -- filters configuration ----------------------------------------------------------------
def test_filter_config_defaults_and_presets():
    f = FilterConfig()
    assert (f.min_persons, f.max_persons, f.min_coverage, f.max_coverage, f.exclude_crowd,
            f.category) == (1, 2, 0.20, 0.70, True, "person")
    wide = FILTER_PRESETS["wide"]
    assert (wide.min_persons, wide.max_persons, wide.min_coverage, wide.max_coverage) == \
        (1, 2, 0.05, 0.90)
    assert FILTER_PRESETS["default"] == f
    assert f.to_dict()["min_coverage"] == 0.2


@pytest.mark.parametrize("kwargs", [dict(min_persons=0), dict(min_persons=3, max_persons=2),
                                    dict(min_coverage=0.8, max_coverage=0.7),
                                    dict(max_coverage=1.5), dict(category="")])
def test_filter_config_rejects_nonsense(kwargs):
    with pytest.raises(ValueError, match="FilterConfig"):
        FilterConfig(**kwargs)


# -- the split ----------------------------------------------------------------------------
def test_split_is_a_stable_hash_of_the_id():
    ids = range(20000)
    splits = [split_of(i) for i in ids]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    # binomial standard deviation at n = 20000 is about 0.003: allow 0.015
    assert abs(share["train"] - 0.70) < 0.015
    assert abs(share["val"] - 0.20) < 0.015
    assert abs(share["test"] - 0.10) < 0.015
    assert SPLIT_BOUNDS == {"train": 70, "val": 90, "test": 100}


def test_split_values_pinned():
    # pinned: a change of the hash function would reshuffle every user's splits
    assert [split_bucket(i) for i in (1, 36, 49, 61, 123456)] == [13, 85, 87, 93, 70]
    assert [split_of(i) for i in (1, 36, 61, 123456)] == ["train", "val", "test", "val"]


def test_adding_images_moves_no_existing_image(tmp_path):
    root = tmp_path / "d"
    specs = [FakeImage(persons=[(0, 0, 30, 30)]) for _ in range(40)]
    make_coco_dir(root, specs)
    before = {i: split_of(i) for i in load_coco(root).ids()}
    make_coco_dir(root, specs + [FakeImage(persons=[(0, 0, 30, 30)]) for _ in range(40)])
    after = {i: split_of(i) for i in load_coco(root).ids()}
    assert len(after) == 80
    assert all(after[i] == s for i, s in before.items())


# -- polygons and masks -------------------------------------------------------------------
def test_clip_polygon_inside_is_unchanged():
    poly = [1.0, 1.0, 5.0, 1.0, 5.0, 4.0]
    assert clip_polygon(poly, 10, 10) == poly


def test_clip_polygon_square_against_window():
    out = np.array(clip_polygon([-5, -5, 15, -5, 15, 15, -5, 15], 10, 8)).reshape(-1, 2)
    assert out[:, 0].min() == 0 and out[:, 0].max() == 10
    assert out[:, 1].min() == 0 and out[:, 1].max() == 8
    # the clipped polygon is the window itself: area by the shoelace formula
    x, y = out[:, 0], out[:, 1]
    assert 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) == pytest.approx(80)


def test_clip_polygon_fully_outside_is_empty():
    assert clip_polygon([20, 20, 30, 20, 30, 30], 10, 10) == []


def _star(rng):
    n = int(rng.integers(3, 12))
    ang = np.sort(rng.uniform(0, 2 * np.pi, n))
    r = rng.uniform(5, 40, n)
    c = rng.uniform(-10, 30, 2)
    return np.stack([c[0] + r * np.cos(ang), c[1] + r * np.sin(ang)], 1)


def test_clipped_polygon_mask_matches_big_canvas(rng):
    """A polygon straying out of a 20 x 20 image: its clipped mask equals the crop of the
    mask drawn on a canvas large enough to hold all of it, except for pixels on the clipped
    edges, where the rasteriser rounds the new vertices.  Bound: at most 2 % of the
    pixels differ for any polygon, 0.5 % on average."""
    diffs = []
    for _ in range(200):
        pts = _star(rng)
        big = mask_utils.decode(mask_utils.frPyObjects([list((pts + 100).ravel())], 300,
                                                       300))[100:120, 100:120, 0]
        ann = {"segmentation": [list(pts.ravel())]}
        small = union_mask([ann], 20, 20)
        diffs.append(np.mean(big != small))
    assert max(diffs) <= 0.02
    assert np.mean(diffs) <= 0.005


def test_far_away_polygon_points_are_clipped_not_crashing():
    """pycocotools alone segfaults on coordinates near 1e9; clipped, the mask is exact.
    Run in a child process, so that a regression fails this test instead of killing the
    whole test run."""
    code = (
        "import numpy as np\n"
        "from tinyseg.data.coco import union_mask\n"
        "far = 1e9\n"
        "ann = {'segmentation': [[-far, -far, 10.0, -far, 10.0, 5.0, -far, 5.0]]}\n"
        "m = union_mask([ann], 10, 10)\n"
        "assert m.shape == (10, 10) and m.dtype == np.uint8\n"
        "assert m.sum() == 50 and m[:5].all()\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", (r.returncode, r.stderr[-500:])


def test_union_of_polygons_and_rle_at_image_size():
    h, w = 12, 16
    a = {"segmentation": [[0, 0, 8, 0, 8, 6, 0, 6]], "iscrowd": 0}           # 8 x 6
    b = {"segmentation": [[4, 3, 12, 3, 12, 9, 4, 9]], "iscrowd": 0}          # overlaps a
    rle = mask_utils.encode(np.asfortranarray(rect_mask([(10, 10, 16, 12)], h, w)))
    c = {"segmentation": {"size": [h, w], "counts": rle["counts"].decode()}, "iscrowd": 1}
    # column-major runs: rows 0-1 of columns 0 and 1 set, the rest clear
    uncompressed = {"size": [h, w], "counts": [0, 2, h - 2, 2, h * w - h - 2]}
    d = {"segmentation": uncompressed, "iscrowd": 1}
    m = union_mask([a, b, c, d], h, w)
    expect = rect_mask([(0, 0, 8, 6), (4, 3, 12, 9), (10, 10, 16, 12)], h, w)
    expect[0:2, 0] = 1
    expect[0:2, 1] = 1  # the uncompressed RLE covers rows 0-1 of columns 0 and 1
    assert m.shape == (h, w) and set(np.unique(m)) <= {0, 1}
    np.testing.assert_array_equal(m, expect)
    assert union_area([a, b, c, d], h, w) == expect.sum()
    assert union_mask([], h, w).sum() == 0


def test_degenerate_polygons_are_dropped_not_read_as_boxes():
    # pycocotools reads a 4-number list as a box [x, y, w, h]; it is not a polygon
    ann = {"segmentation": [[1, 1, 5, 5]]}
    assert union_mask([ann], 8, 8).sum() == 0


# -- bad annotation files -----------------------------------------------------------------
def test_missing_annotation_folder_and_file(tmp_path):
    (tmp_path / "annotations").mkdir()
    with pytest.raises(DataError, match=r"no \*\.json annotation file"):
        load_coco(tmp_path)
    with pytest.raises(DataError, match="annotation file not found"):
        load_coco(tmp_path, annotation_files=["instances_missing.json"])
    with pytest.raises(DataError, match="annotation folder not found"):
        load_coco(tmp_path / "elsewhere")


def test_missing_image_folder_names_the_paths(tmp_path):
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)])])
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "instances_val2017.json").write_text(json.dumps(data))
    with pytest.raises(DataError) as e:
        load_coco(tmp_path)
    msg = str(e.value)
    assert "image folder not found" in msg and "val2017" in msg and "000000000001.jpg" in msg
    with pytest.raises(DataError, match="image folder not found"):
        load_coco(tmp_path, images_dir=tmp_path / "pics")


def test_truncated_json_is_a_clear_error(tmp_path):
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)])])
    path = tmp_path / "instances_x.json"
    text = json.dumps(data)
    path.write_text(text[: len(text) // 2])
    with pytest.raises(DataError) as e:
        read_coco_json(path)
    assert str(path) in str(e.value) and "not valid JSON" in str(e.value)
    assert "truncated" in str(e.value)


@pytest.mark.parametrize("content, match", [
    ([1, 2, 3], "top level is a list"),
    ({"images": []}, "no 'annotations' list"),
    ({"images": [{"id": 1}], "annotations": [], "categories": []}, r"images\[0\].*file_name"),
    ({"images": [], "annotations": [{"id": 1, "image_id": 5, "category_id": 1}],
      "categories": []}, "refers to image 5"),
])
def test_non_coco_json_is_a_clear_error(tmp_path, content, match):
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps(content))
    with pytest.raises(DataError, match=match):
        read_coco_json(path)


def test_binary_file_is_a_clear_error(tmp_path):
    path = tmp_path / "instances_x.json"
    path.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)))
    with pytest.raises(DataError, match=str(path).replace("\\", "\\\\")):
        read_coco_json(path)


@pytest.mark.parametrize("segmentation, says", [
    ([[0, 0, 10, 0, 10, 10, 0]], "polygon with an odd count of numbers"),
    ([], "no polygon of 3 or more points"),
    ([[0, 0, 10, 10]], "no polygon of 3 or more points"),
    ([[0, 0, 10, 10], []], "count as persons but add no pixel to the masks"),
])
def test_polygons_that_give_no_mask_or_lose_a_point_are_said(tmp_path, segmentation, says):
    """An odd-length polygon lost its last x without a word; a person with no polygon of
    3 or more points (bounding-box-only exports: ``[]``) counted as one of the image's
    persons but was background in its mask (own-data audit, 2026-11-28). Said in one
    warning per file naming the annotations, not refused: official COCO files may hold a
    few such annotations among hundreds of thousands."""
    from tinyseg.data.errors import BadAnnotationWarning
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)]), FakeImage(persons=[(0, 0, 9, 9)])])
    data["annotations"][0]["segmentation"] = segmentation
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps(data))
    with pytest.warns(BadAnnotationWarning, match=says) as record:
        read_coco_json(path)
    assert len(record) == 1 and "1 annotation(s)" in str(record[0].message)
    assert f"annotation {data['annotations'][0]['id']} (image " in str(record[0].message)


def test_an_annotation_without_segmentation_is_a_clear_error(tmp_path):
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)])])
    del data["annotations"][0]["segmentation"]
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=r"no 'segmentation' \(bounding boxes only\?\)"):
        read_coco_json(path)


def test_bad_segmentations_are_clear_errors(tmp_path):
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)])])
    data["annotations"][0]["segmentation"] = [[0, 0, float("nan"), 1, 2, 2]]
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps(data).replace("NaN", "NaN"))
    with pytest.raises(DataError, match="finite numbers"):
        read_coco_json(path)
    data["annotations"][0]["segmentation"] = {"size": [3, 3], "counts": "abc"}
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="RLE size"):
        read_coco_json(path)
    # runs that do not add up to H x W (pycocotools would read past its buffer)
    data["annotations"][0]["segmentation"] = {"size": [48, 64], "counts": [0, 2, 10, 2]}
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="add up to 14 pixels, expected 48 x 64"):
        read_coco_json(path)
    data["annotations"][0]["segmentation"] = {"size": [48, 64], "counts": "PPP"}
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="malformed RLE"):
        read_coco_json(path)


def test_rle_counts_decodes_pycocotools_strings(rng):
    from tinyseg.data.coco import rle_counts
    for _ in range(50):
        m = (rng.random((int(rng.integers(1, 30)), int(rng.integers(1, 30))))
             < rng.random()).astype(np.uint8)
        rle = mask_utils.encode(np.asfortranarray(m))
        flat = m.T.ravel()  # column-major, runs start with zeros
        edges = np.flatnonzero(np.diff(flat)) + 1
        runs = np.diff(np.concatenate([[0], edges, [flat.size]])).tolist()
        if flat[0] == 1:
            runs = [0] + runs
        assert rle_counts(rle["counts"].decode()) == runs


def test_unknown_category_lists_the_available_ones(tmp_path):
    make_coco_dir(tmp_path, [FakeImage(persons=[(0, 0, 10, 10)])])
    with pytest.raises(DataError, match=r"no category named 'cat'.*dog, person"):
        load_coco(tmp_path, category="cat")


def test_category_names_as_exporters_write_them(tmp_path):
    """'Person' (as labelling tools export it) failed with 'no category named person'; a
    class that is not person says how to train it (own-data audit, 2026-11-28)."""
    data = copy.deepcopy(make_coco_dir(tmp_path, [FakeImage(persons=[(0, 0, 10, 10)])]))
    path = tmp_path / "annotations" / "instances_train2017.json"
    for c in data["categories"]:
        c["name"] = {"person": "Person ", "dog": "dog"}[c["name"]]
    path.write_text(json.dumps(data))
    assert len(load_coco(tmp_path).ids()) == 1
    for c in data["categories"]:
        c["name"] = {"Person ": "people", "dog": "dog"}[c["name"]]
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match="name it 'person' in the annotation file"):
        load_coco(tmp_path)


def test_pycocotools_chatter_stays_off_stdout(tmp_path, capsys):
    make_coco_dir(tmp_path, [FakeImage(persons=[(0, 0, 10, 10)])])
    load_coco(tmp_path)
    assert capsys.readouterr().out == ""


# -- the filter steps ---------------------------------------------------------------------
# 48 x 64 images (3072 pixels): 20 % = 614.4, 70 % = 2150.4 pixels
SPECS = [
    FakeImage(),                                                   # 0: no person
    FakeImage(dogs=[(0, 0, 40, 40)]),                              # 1: a dog only
    FakeImage(persons=[(0, 0, 32, 30)], crowd=[(40, 40, 64, 48)]),  # 2: crowd
    FakeImage(persons=[(0, 0, 10, 10)] * 3),                       # 3: three persons
    FakeImage(persons=[(0, 0, 10, 10)]),                           # 4: 100 px = 3 %
    FakeImage(persons=[(0, 0, 32, 24)]),                           # 5: 768 px = 25 % keep
    FakeImage(persons=[(0, 0, 32, 24), (16, 12, 48, 36)]),         # 6: union 1344 = 44 % keep
    FakeImage(persons=[(0, 0, 64, 40)]),                           # 7: 2560 = 83 %
    FakeImage(persons=[(-30, -30, 40, 40)]),                       # 8: clipped 1600 = 52 % keep
]


def test_filter_steps_are_counted(tmp_path):
    make_coco_dir(tmp_path, SPECS)
    data = load_coco(tmp_path)
    r = filter_images(data)
    assert [n for _, n in r.steps] == [9, 7, 6, 5, 3]
    assert r.kept == [6, 7, 9]  # ids are list positions + 1
    assert r.coverage[6] == pytest.approx(768 / 3072)
    assert r.coverage[7] == pytest.approx(1344 / 3072)  # 768 + 768 - 16 x 12
    assert r.coverage[9] == pytest.approx(1600 / 3072)
    assert r.reason(1) == "no person" and r.reason(2) == "no person"
    assert r.reason(3) == "crowd person region" and r.reason(6) == "kept"
    assert r.reason(4, data) == "3 persons" and r.reason(5).startswith("covers 3 % <")
    assert r.reason(8).startswith("covers 83 % >")
    # each step configurable
    r = filter_images(data, FilterConfig(exclude_crowd=False))
    # the crowd image has 2 instances covering (960 + 192) / 3072 = 37.5 %
    assert [n for _, n in r.steps] == [9, 7, 7, 6, 4]
    assert r.coverage[3] == pytest.approx(1152 / 3072)
    # both coverage bounds are inclusive: image 6 covers exactly 25 %
    assert r.coverage[6] == 0.25
    for lo, hi in ((0.25, 0.25), (0.25, 0.5), (0.1, 0.25)):
        assert 6 in filter_images(data, FilterConfig(min_coverage=lo, max_coverage=hi)).kept
    r = filter_images(data, FilterConfig(max_persons=None, min_coverage=0.0))
    assert [n for _, n in r.steps] == [9, 7, 6, 6, 5]
    assert r.kept == [4, 5, 6, 7, 9]
    r = filter_images(data, FILTER_PRESETS["wide"])
    assert r.kept == [6, 7, 8, 9]
    # another category
    dogs = filter_images(load_coco(tmp_path, category="dog"),
                         FilterConfig(category="dog", min_coverage=0.1))
    assert dogs.kept == [2]


def test_filter_that_leaves_nothing_shows_the_counts(tmp_path):
    make_coco_dir(tmp_path, SPECS)
    with pytest.raises(DataError) as e:
        filter_images(load_coco(tmp_path), FilterConfig(min_coverage=0.95, max_coverage=1.0))
    msg = str(e.value)
    assert "leave no image" in msg
    for n in ("9 images", "7 with at least one person", "6 without crowd", "5 with 1 to 2",
              "0 person mask covers 95 %-100 %"):
        assert n in msg


def test_several_annotation_files_and_image_folders(tmp_path):
    make_coco_dir(tmp_path, SPECS[:5], annotation_name="instances_train2017.json",
                  image_dir="train2017", first_id=1)
    make_coco_dir(tmp_path, SPECS[5:], annotation_name="instances_val2017.json",
                  image_dir="images/val2017", first_id=100)
    data = load_coco(tmp_path)
    assert len(data) == 9
    assert data.records[100].path == tmp_path / "images" / "val2017" / "000000000100.jpg"
    assert data.records[1].path == tmp_path / "train2017" / "000000000001.jpg"
    assert filter_images(data).kept == [100, 101, 103]


def test_duplicate_ids_across_files_are_refused(tmp_path):
    make_coco_dir(tmp_path, SPECS[:2], annotation_name="instances_a.json", image_dir="a")
    make_coco_dir(tmp_path, SPECS[:2], annotation_name="instances_b.json", image_dir="b")
    with pytest.raises(DataError, match="image ids must be unique"):
        load_coco(tmp_path)


# -- the real data --------------------------------------------------------------------------
@pytest.mark.data
def test_real_data_counts_match_the_readme(coco_root):
    data = load_coco(coco_root)
    r = filter_images(data)
    # README of the subset: 1,293 -> 1,265 -> 1,167 -> 271
    assert [n for _, n in r.steps] == [1293, 1293, 1265, 1167, 271]
    assert sum(1 for i in r.kept if data.records[i].n_instances == 2) == 12
    # without the crowd step the last two counts are the same (README)
    r2 = filter_images(data, FilterConfig(exclude_crowd=False))
    assert [n for _, n in r2.steps][-2:] == [1167, 271]
    # masks: the union's pixel count equals the annotation's area for one-person images
    one = [i for i in r.kept if data.records[i].n_instances == 1][:20]
    for i in one:
        rec = data.records[i]
        assert data.mask(i).sum() == pytest.approx(rec.anns[0]["area"], abs=1)
        assert data.mask(i).shape == (rec.height, rec.width)


def test_fixture_crowd_area_is_its_pixel_count():
    d = coco_dict([FakeImage(crowd=[(2, 3, 12, 8)], height=20, width=30)])
    (ann,) = d["annotations"]
    assert ann["iscrowd"] == 1 and ann["area"] == 10 * 5


def _write(tmp_path, data):
    path = tmp_path / "instances_x.json"
    path.write_text(json.dumps(data))
    return path


def test_an_image_of_zero_height_is_named(tmp_path):
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)])])
    data["images"][0]["height"] = 0
    path = _write(tmp_path, data)
    with pytest.raises(DataError, match=r"images\[0\] \(id \d+\) has size \d+x0") as e:
        read_coco_json(path)
    assert str(path) in str(e.value)


def test_a_repeated_image_id_is_named(tmp_path):
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)]), FakeImage()])
    data["images"][1]["id"] = data["images"][0]["id"]
    with pytest.raises(DataError, match=r"image id \d+ appears twice in 'images'"):
        read_coco_json(_write(tmp_path, data))


def test_absurd_sizes_ids_and_repeated_annotations_are_named(tmp_path):
    """From a fuzzing helper: a side of 2**31 crashed pycocotools (segmentation fault), sides
    above 65535 gave it wrong areas, an id of 10**30 an OverflowError when caching, a repeated
    annotation id a mask holding one person twice (coverage 0.29 instead of 0.52), and
    iscrowd "0" (a string) counted as crowd. Each is refused naming the file and the entry."""
    def refused(change, says):
        data = coco_dict([FakeImage(persons=[(0, 0, 10, 10), (12, 0, 20, 10)])])
        change(data)
        path = _write(tmp_path, data)
        with pytest.raises(DataError, match=says) as e:
            read_coco_json(path)
        assert str(path) in str(e.value)

    def side(d):
        d["images"][0]["width"] = 2**31
    refused(side, r"has size 2147483648x\d+ \(each side must be 1 to 65535")

    def big_id(d):
        d["images"][0]["id"] = 10**30
        for a in d["annotations"]:
            a["image_id"] = 10**30
    refused(big_id, "does not fit in 64 bits")

    def twice(d):
        d["annotations"][1]["id"] = d["annotations"][0]["id"]
    refused(twice, r"annotation id \d+ appears twice in 'annotations'")

    def crowd(d):
        d["annotations"][0]["iscrowd"] = "0"
    refused(crowd, r"'iscrowd' must be 0 or 1, got '0'")

    def negative_run(d):      # said "runs add up to 76800 pixels, expected ... = 76800"
        h, w = d["images"][0]["height"], d["images"][0]["width"]
        d["annotations"][0]["segmentation"] = {"counts": [h * w + 5, -5], "size": [h, w]}
    refused(negative_run, r"RLE has a negative run \(-5\)")
    ok = coco_dict([FakeImage(persons=[(0, 0, 10, 10)])])
    ok["images"][0]["width"] = 65535                 # the largest side accepted
    read_coco_json(_write(tmp_path, ok))


def test_an_annotation_without_an_id_is_named(tmp_path):
    data = coco_dict([FakeImage(persons=[(0, 0, 10, 10)])])
    del data["annotations"][0]["id"]
    with pytest.raises(DataError, match=r"annotations\[0\] has no integer 'id'"):
        read_coco_json(_write(tmp_path, data))


def test_json_cut_after_a_decimal_point_is_called_truncated(tmp_path):
    path = tmp_path / "instances_x.json"
    path.write_text('{"images": [], "annotations": [], "categories": [], "area": 1.')
    with pytest.raises(DataError, match="not valid JSON.*the file looks truncated"):
        read_coco_json(path)


def test_json_cut_inside_a_string_is_called_truncated(tmp_path):
    """A file cut inside a string (likely for a half-downloaded file): json reports where the
    string began, far from the end; the message said "starting at at" and no hint."""
    text = json.dumps(coco_dict([FakeImage(persons=[(0, 0, 10, 10)])]))
    path = tmp_path / "instances_x.json"
    path.write_text(text[:text.index("file_name") + 14])
    with pytest.raises(DataError, match=r"\(Unterminated string starting at line 1, column "
                                        r"\d+\); the file looks truncated"):
        read_coco_json(path)


def test_annotation_files_that_list_no_image_are_named(tmp_path):
    """An empty 'images' list said 'the filters leave no image: 0 images ...' without the
    file (own-data audit, 2026-11-28)."""
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_x.json"
    path.write_text(json.dumps({"images": [], "annotations": [],
                                "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(DataError, match=r"instances_x\.json: no image listed \('images' is empty\)"):
        filter_images(load_coco(tmp_path, require_images=False), FilterConfig())
