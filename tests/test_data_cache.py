"""tinyseg.data.cache: load_split builds, keys, reuses and reports the training-size cache."""
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import tinyseg.data.cache as cache_mod
from tinyseg.data.cache import (Dataset, channel_stats, default_cache_dir, load_split)
from tinyseg.data.coco import FilterConfig, filter_images, load_coco, split_of, union_mask
from tinyseg.data.errors import BadImageWarning, DataError
from tinyseg.data.fixture import FakeImage, make_coco_dir, random_images
from tinyseg.data.images import letterbox

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

# Every image keeps 1 person covering 25 % .. 55 %, so every one passes the default filters.
KEEP = [FakeImage(persons=[(0, 0, 32, 24 + k % 4 * 6)]) for k in range(30)]


def _listing(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "data"
    make_coco_dir(r, KEEP, seed=1)
    return r


def test_splits_shapes_and_dtypes(root, tmp_path):
    cache = tmp_path / "cache"
    seen = []
    for split in ("train", "val", "test"):
        ds = load_split(root, split, 32, cache_dir=cache, progress=False)
        assert isinstance(ds, Dataset) and ds.split == split and ds.size == 32
        assert ds.images.dtype == np.uint8 and ds.images.shape == (len(ds), 32, 32, 3)
        assert ds.masks.dtype == np.uint8 and ds.masks.shape == (len(ds), 32, 32)
        assert set(np.unique(ds.masks)) <= {0, 1}
        assert ds.ids.dtype == np.int64 and list(ds.ids) == sorted(ds.ids)
        assert all(split_of(i) == split for i in ds.ids)
        assert ds.mean.dtype == np.float32 and ds.mean.shape == (3,)
        assert ds.std.dtype == np.float32 and ds.std.shape == (3,)
        assert ds.filters == FilterConfig() and len(ds.cache_key) == 64
        assert ds.cache_path.is_file() and ds.cache_path.parent.parent == cache
        assert "letterbox" in ds.resize_policy
        assert [n for _, n in ds.steps] == [30, 30, 30, 30, 30]
        seen.append(ds)
    assert sum(len(d) for d in seen) == 30
    # validation and test carry the *train* statistics
    for d in seen[1:]:
        np.testing.assert_array_equal(d.mean, seen[0].mean)
        np.testing.assert_array_equal(d.std, seen[0].std)


def test_mean_and_std_are_those_of_the_train_pictures(root, tmp_path):
    ds = load_split(root, "train", 32, cache_dir=tmp_path / "c", progress=False)
    pixels = np.concatenate([img[t:t + h, l:l + w].reshape(-1, 3)
                             for img, (t, l, h, w) in zip(ds.images, ds.boxes)]) / 255.0
    # float32 storage of float64 statistics: 1e-6 relative
    np.testing.assert_allclose(ds.mean, pixels.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(ds.std, pixels.std(axis=0), rtol=1e-5)
    m, s = channel_stats(ds.images, ds.boxes)
    np.testing.assert_array_equal(m, ds.mean)


def test_cached_masks_are_letterboxed_union_masks(root, tmp_path):
    ds = load_split(root, "train", 40, cache_dir=tmp_path / "c", progress=False)
    data = load_coco(root)
    for k in range(3):
        rec = data.records[int(ds.ids[k])]
        expect, box = letterbox(union_mask(rec.anns, rec.height, rec.width), 40, nearest=True)
        np.testing.assert_array_equal(ds.masks[k], expect)
        assert tuple(ds.boxes[k]) == box


def test_second_load_reads_the_cache(root, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    first = load_split(root, "val", 24, cache_dir=cache, progress=False)

    def no_build(*a, **k):
        raise AssertionError("the cache was rebuilt")

    monkeypatch.setattr(cache_mod, "build_cache", no_build)
    monkeypatch.setattr(cache_mod, "load_coco", no_build)  # the index spares the JSON too
    again = load_split(root, "val", 24, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.cache_key == first.cache_key


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_cache_file_is_rebuilt(root, tmp_path, damage):
    """A truncated copy still starts with 'PK' and raised zipfile.BadZipFile (a traceback
    in train and evaluate) instead of being rebuilt."""
    cache = tmp_path / "c"
    first = load_split(root, "val", 24, cache_dir=cache, progress=False)
    (path,) = (cache / "data").glob("*-val.npz")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"not a cache" * 50,
                      "empty": b""}[damage])
    again = load_split(root, "val", 24, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    assert path.read_bytes() == data                            # written anew, whole


def _edited(arrays, meta, edit):
    """A copy of a cache's arrays and metadata with one hand edit (the file keeps its key)."""
    a = {k: v.copy() for k, v in arrays.items()}
    m = dict(meta)
    if edit == "no boxes":
        del a["boxes"]
    elif edit == "meta a list":
        m = [m]
    elif edit == "meta without skipped":
        del m["skipped"]
    elif edit == "ids too short":
        a["ids"] = a["ids"][:-1]
    elif edit == "images the wrong size":
        a["images"] = a["images"][:, :20]
    elif edit == "mask label 7":
        a["masks"][0, 0, 0] = 7
    elif edit == "box outside":
        a["boxes"][0] = (-100, 0, 10, 10)
    elif edit == "std 0":
        a["std"][1] = 0.0
    a["meta"] = np.array(__import__("json").dumps(m))
    return a


@pytest.mark.parametrize("edit", ["no boxes", "meta a list", "meta without skipped",
                                  "ids too short", "images the wrong size", "mask label 7",
                                  "box outside", "std 0"])
def test_a_cache_file_edited_inside_is_rebuilt(root, tmp_path, edit):
    """A readable file with the right key whose content is not what build_cache writes gave
    KeyError, AttributeError or ValueError tracebacks, or 'person IoU nan' (fuzzing helper);
    it is rebuilt like an unreadable one."""
    import json
    cache = tmp_path / "c"
    first = load_split(root, "val", 24, cache_dir=cache, progress=False)
    assert len(first) >= 2
    (path,) = (cache / "data").glob("*-val.npz")
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    np.savez(path, **_edited(arrays, meta, edit))
    again = load_split(root, "val", 24, cache_dir=cache, progress=False)
    for name in ("images", "masks", "ids", "boxes", "mean", "std"):
        np.testing.assert_array_equal(getattr(again, name), getattr(first, name))


def test_an_index_naming_images_not_in_the_annotations_is_redone(root, tmp_path):
    """The index remembers the kept ids so a built cache loads without reading the JSON; one
    that names ids the annotations do not hold gave a KeyError traceback while caching."""
    import json
    cache = tmp_path / "c"
    first = load_split(root, "val", 24, cache_dir=cache, progress=False)
    for f in (cache / "data").glob("*.npz"):
        f.unlink()                                              # the caches must be built
    (index,) = (cache / "data").glob("*-index-*.json")
    saved = json.loads(index.read_text())
    saved["ids"]["train"][0] = 987654321                        # count unchanged
    index.write_text(json.dumps(saved))
    again = load_split(root, "val", 24, cache_dir=cache, progress=False)
    np.testing.assert_array_equal(again.images, first.images)
    assert again.cache_key == first.cache_key
    # a validation image moved into the training ids: it trained on validation images
    train = load_split(root, "train", 24, cache_dir=cache, progress=False)
    for f in (cache / "data").glob("*.npz"):
        f.unlink()
    saved = json.loads(index.read_text())
    moved = saved["ids"]["val"].pop(0)
    saved["ids"]["train"].append(moved)
    index.write_text(json.dumps(saved))
    leaked = load_split(root, "train", 24, cache_dir=cache, progress=False)
    assert moved not in set(leaked.ids.tolist())
    np.testing.assert_array_equal(leaked.ids, train.ids)


def test_changes_of_size_filters_or_annotations_rebuild(root, tmp_path):
    cache = tmp_path / "c"
    a = load_split(root, "train", 24, cache_dir=cache, progress=False)
    b = load_split(root, "train", 28, cache_dir=cache, progress=False)
    c = load_split(root, "train", 24, FilterConfig(max_coverage=0.9), cache_dir=cache,
                   progress=False)
    assert len({a.cache_key, b.cache_key, c.cache_key}) == 3
    assert len({a.cache_path, b.cache_path, c.cache_path}) == 3
    ann = root / "annotations" / "instances_train2017.json"
    st = ann.stat()
    os.utime(ann, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    d = load_split(root, "train", 24, cache_dir=cache, progress=False)
    assert d.cache_key != a.cache_key


def test_other_split_bounds_are_not_served_from_an_old_index(root, tmp_path, monkeypatch):
    """The index and the cache were keyed without the split rule: with other bounds the
    old splits came back, without a word."""
    from tinyseg.data.coco import SPLIT_BOUNDS, split_of
    cache = tmp_path / "c"
    before = load_split(root, "train", 24, cache_dir=cache, progress=False)
    monkeypatch.setitem(SPLIT_BOUNDS, "train", 40)
    after = load_split(root, "train", 24, cache_dir=cache, progress=False)
    assert all(split_of(i) == "train" for i in after.ids)        # the new rule
    assert len(after) < len(before) and after.cache_key != before.cache_key


def test_images_arriving_later_rebuild_the_cache(root, tmp_path):
    cache = tmp_path / "c"
    path = sorted((root / "train2017").iterdir())[0]
    image_id = int(path.stem)
    aside = tmp_path / path.name
    path.rename(aside)  # not downloaded yet
    with pytest.warns(BadImageWarning, match="file not found"):
        parts = [load_split(root, s, 16, cache_dir=cache, progress=False)
                 for s in ("train", "val", "test")]
    assert all(image_id not in p.ids for p in parts)
    aside.rename(path)  # it arrives
    parts = [load_split(root, s, 16, cache_dir=cache, progress=False)
             for s in ("train", "val", "test")]
    assert any(image_id in p.ids for p in parts) and not any(p.skipped for p in parts)


def test_a_skipped_image_put_right_in_place_or_in_a_sub_folder_rebuilds_the_cache(tmp_path):
    """The key stamps the image folders' mtimes only: an image restored into a sub-folder
    (``file_name`` with folders) or re-saved in place at the right size left the cache as
    it was, and training went on without it (own-data audit, 2026-11-28). A cache now
    notes each skipped file's size and time and is built again when one changes."""
    root = tmp_path / "coco"
    specs = [FakeImage(persons=[(8, 6, 40, 40)]) for _ in range(30)]
    data = make_coco_dir(root, specs)
    sub = root / "train2017" / "cam1"
    sub.mkdir()
    first = root / "train2017" / data["images"][0]["file_name"]
    moved = sub / first.name
    first.rename(moved)
    data["images"][0]["file_name"] = f"cam1/{first.name}"
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))

    def everything(cache):
        return set().union(*(set(load_split(root, s, 24, cache_dir=cache,
                                            progress=False).ids.tolist())
                             for s in ("train", "val", "test")))
    image_id = data["images"][0]["id"]
    aside = tmp_path / first.name
    moved.rename(aside)                                # missing when the cache is built
    with pytest.warns(BadImageWarning, match="file not found"):
        assert image_id not in everything(tmp_path / "c")
    aside.rename(moved)                                # back, its old mtime kept by rename
    assert image_id in everything(tmp_path / "c")
    # the wrong size, then re-saved right where it is
    good = np.asarray(Image.open(moved))
    Image.fromarray(good[:20]).save(moved, format="JPEG")
    with pytest.warns(BadImageWarning, match="differs from the annotation"):
        assert image_id not in everything(tmp_path / "c2")
    Image.fromarray(good).save(moved, format="JPEG")
    assert image_id in everything(tmp_path / "c2")


def test_an_image_arriving_during_the_build_is_taken_in_by_the_next_load(root, tmp_path,
                                                                         monkeypatch):
    """The read-back right after a build compared the skipped images' stamps too: an image
    that arrived meanwhile (a download still running) made it 'the cache just written
    cannot be read back' (review, 2026-11-28)."""
    path = sorted((root / "train2017").iterdir())[0]
    image_id, aside = int(path.stem), tmp_path / path.name
    path.rename(aside)
    real = cache_mod.build_cache

    def build_then_arrive(*a, **k):
        out = real(*a, **k)
        if aside.exists():
            aside.rename(path)
        return out
    monkeypatch.setattr(cache_mod, "build_cache", build_then_arrive)
    cache = tmp_path / "c"
    with pytest.warns(BadImageWarning, match="file not found"):
        first = [load_split(root, s, 16, cache_dir=cache, progress=False).ids.tolist()
                 for s in ("train", "val", "test")]
    assert not any(image_id in ids for ids in first) and path.exists()
    again = [load_split(root, s, 16, cache_dir=cache, progress=False).ids.tolist()
             for s in ("train", "val", "test")]
    assert any(image_id in ids for ids in again)


def test_data_may_name_one_coco_json_file_with_its_images_beside_it(tmp_path, capsys):
    """Labelling tools export one JSON file with the images beside it (Roboflow's
    train/_annotations.coco.json): '--data FILE' said 'is a file, not a data directory'.
    Now the file is the annotations and its folder the root, for the data, train and
    evaluate commands alike (own-data audit, 2026-11-28)."""
    from tinyseg.cli import run_main
    from tinyseg.data.fixture import coco_dict, paint
    from tinyseg.train import main as train
    folder = tmp_path / "export" / "train"
    folder.mkdir(parents=True)
    specs = [FakeImage(persons=[(8, 6, 40, 40)]) for _ in range(40)]
    data = coco_dict(specs, 0)
    rng = np.random.default_rng(0)
    for spec, im in zip(specs, data["images"]):
        Image.fromarray(paint(spec, rng)).save(folder / im["file_name"], quality=95)
    path = folder / "_annotations.coco.json"
    path.write_text(json.dumps(data))
    ds = load_split(path, "train", 24, cache_dir=tmp_path / "c", progress=False)
    assert len(ds) > 20 and ds.root == folder.resolve()
    run = tmp_path / "run"
    assert run_main(train, "tinyseg.train", [
        "--preset", "tiny", "--data", str(path), "--cache", str(tmp_path / "c"), "--out",
        str(run), "--epochs", "1", "--epoch-images", "8", "--quiet", "--no-test"]) == 0
    assert json.loads((run / "config.json").read_text())["train"]["data"] == str(path)
    with pytest.raises(DataError, match="--data names an annotation file already"):
        load_split(path, "train", 24, cache_dir=tmp_path / "c", progress=False,
                   annotation_files=[path])
    with pytest.raises(DataError, match=r"annotation file not found \(--data names a \.json"):
        load_split(folder / "typo.json", "train", 24, cache_dir=tmp_path / "c")
    # evaluate, and info --check-images once the index is cached (it looked for annotations/)
    from tinyseg.data.__main__ import main as data_cli
    from tinyseg.evaluate import main as evaluate
    assert run_main(evaluate, "tinyseg.evaluate", [
        "--checkpoint", str(run / "best.npz"), "--data", str(path), "--cache",
        str(tmp_path / "c"), "--worst", "0", "--out", str(tmp_path / "ev")]) == 0
    for _ in range(2):
        assert data_cli(["info", "--data", str(path), "--cache-dir", str(tmp_path / "c"),
                         "--check-images"]) == 0
        assert "unreadable: 0" in capsys.readouterr().out


def test_nothing_is_written_in_the_data_root(root, tmp_path):
    before = _listing(root)
    load_split(root, "train", 24, cache_dir=tmp_path / "c", progress=False)
    assert _listing(root) == before


def test_cache_dir_from_environment(root, tmp_path, monkeypatch):
    monkeypatch.setenv("TINYSEG_CACHE", str(tmp_path / "envcache"))
    assert default_cache_dir() == tmp_path / "envcache"
    ds = load_split(root, "test", 16, progress=False)
    assert str(ds.cache_path).startswith(str(tmp_path / "envcache"))
    monkeypatch.delenv("TINYSEG_CACHE")
    assert default_cache_dir() == Path.home() / ".cache" / "tinyseg"


def test_interrupted_build_leaves_no_cache(root, tmp_path, monkeypatch):
    cache = tmp_path / "c"
    real = cache_mod.prepare_sample
    calls = [0]

    def flaky(*a, **k):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(cache_mod, "prepare_sample", flaky)
    with pytest.raises(KeyboardInterrupt):
        load_split(root, "train", 24, cache_dir=cache, progress=False)
    assert not list(cache.rglob("*.npz")) and not list(cache.rglob("*.tmp"))
    monkeypatch.setattr(cache_mod, "prepare_sample", real)
    ds = load_split(root, "train", 24, cache_dir=cache, progress=False)
    assert len(ds) > 0 and not list(cache.rglob("*.tmp"))


def test_bad_images_are_converted_or_skipped_counted_and_listed(root, tmp_path):
    data = load_coco(root)
    ids = data.ids()
    path = {i: data.records[i].path for i in ids}
    rgb = np.asarray(Image.open(path[ids[0]]).convert("RGB"))
    # convertible: grayscale, CMYK, palette, 16-bit (saved under the .jpg name; Pillow
    # reads by content)
    Image.fromarray(rgb).convert("L").save(path[ids[0]], format="JPEG")
    Image.fromarray(rgb).convert("CMYK").save(path[ids[1]], format="JPEG")
    Image.fromarray(rgb).convert("P").save(path[ids[2]], format="PNG")
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(path[ids[3]], format="PNG")
    # unusable: truncated, junk, missing, wrong size
    raw = path[ids[4]].read_bytes()
    path[ids[4]].write_bytes(raw[: len(raw) // 3])
    path[ids[5]].write_bytes(b"junk")
    path[ids[6]].unlink()
    Image.fromarray(rgb[:20]).save(path[ids[7]], format="JPEG")
    bad = set(ids[4:8])
    cache = tmp_path / "c"
    with pytest.warns(BadImageWarning) as record:
        parts = [load_split(root, s, 24, cache_dir=cache, progress=False)
                 for s in ("train", "val", "test")]
    msg = " ".join(str(w.message) for w in record)
    counts = [int(m) for m in re.findall(r"skipped (\d+) unreadable image\(s\) of the", msg)]
    assert sum(counts) == 4
    for i in bad:     # each named once: by the split it belongs to, not again by the others
        assert msg.count(path[i].name) == 1
    assert "truncated" in msg and "not an image" in msg and "file not found" in msg
    assert "differs from the annotation" in msg
    kept = set().union(*(set(p.ids.tolist()) for p in parts))
    assert kept == set(ids) - bad  # the converted ones are all there
    skipped = [s["id"] for p in parts for s in p.skipped]
    assert sorted(skipped) == sorted(bad)
    # a later load from the cache reports them again
    with pytest.warns(BadImageWarning, match="unreadable"):
        load_split(root, "train", 24, cache_dir=cache, progress=False)


def test_filter_leaving_nothing_is_a_data_error_with_counts(root, tmp_path):
    with pytest.raises(DataError, match=r"leave no image: 30 images .* -> 0 person mask"):
        load_split(root, "train", 24, FilterConfig(min_coverage=0.9, max_coverage=1.0),
                   cache_dir=tmp_path / "c", progress=False)


def test_an_annotation_file_listing_no_image_says_so(tmp_path):
    """It said 'image folder not found ... (e.g. ?)' (second fuzzing helper), then 'the
    filters leave no image: 0 images ...' without the file (own-data audit)."""
    import json
    root = tmp_path / "empty"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "instances_x.json").write_text(json.dumps(
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]}))
    with pytest.raises(DataError, match=r"instances_x\.json: no image listed \('images' is "
                                         r"empty\)"):
        load_split(root, "train", 24, cache_dir=tmp_path / "c", progress=False)


def test_unwritable_cache_dir_is_a_data_error(root, tmp_path, monkeypatch):
    """Said before any image is decoded (the whole train split was decoded first)."""
    import tinyseg.data.cache as C
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setattr(C, "prepare_sample", lambda *a, **k: pytest.fail("decoded an image"))
    with pytest.raises(DataError, match="cannot write the cache .*file is a file, not a folder"):
        load_split(root, "train", 16, cache_dir=blocker, progress=False)


def test_bad_arguments(root, tmp_path):
    with pytest.raises(ValueError, match="split must be one of"):
        load_split(root, "training", 24, cache_dir=tmp_path)
    for size in (0, 1025):
        with pytest.raises(ValueError, match="size must be an integer from 1 to 1024"):
            load_split(root, "train", size, cache_dir=tmp_path)


def test_progress_goes_to_stderr(root, tmp_path, capsys):
    load_split(root, "train", 24, cache_dir=tmp_path / "c", progress=True)
    out, err = capsys.readouterr()
    assert out == ""
    assert "caching train at 24px" in err and "images/s" in err


def test_varied_fixture_matches_filter_result(tmp_path):
    root = tmp_path / "v"
    make_coco_dir(root, random_images(40, np.random.default_rng(5)), seed=5)
    kept = filter_images(load_coco(root), FilterConfig()).kept
    got = [load_split(root, s, 16, cache_dir=tmp_path / "c", progress=False).ids
           for s in ("train", "val", "test")]
    assert sorted(np.concatenate(got).tolist()) == kept


@pytest.mark.data
def test_real_data_splits(coco_root, tmp_path):
    parts = {s: load_split(coco_root, s, 32, cache_dir=tmp_path, progress=False)
             for s in ("train", "val", "test")}
    assert {s: len(p) for s, p in parts.items()} == {"train": 170, "val": 63, "test": 38}
    tr = parts["train"]
    assert not tr.skipped
    # photos: channel means of natural images, roughly 0.35-0.5, std 0.2-0.35
    assert np.all((tr.mean > 0.3) & (tr.mean < 0.55)) and np.all((tr.std > 0.2) & (tr.std < 0.35))
    # persons cover 20-70 % of each picture; after letterboxing, of the box
    for m, (t, l, h, w) in zip(tr.masks[:50], tr.boxes[:50]):
        assert 0.17 < m[t:t + h, l:l + w].mean() < 0.73  # nearest resizing at 32 px: +-3 %


def test_progress_eta_and_percent(monkeypatch):
    import io
    from tinyseg.data import progress as pm
    clock = [100.0]
    monkeypatch.setattr(pm.time, "perf_counter", lambda: clock[0])
    p = pm.Progress("caching", total=100, unit="images", stream=io.StringIO())
    clock[0] += 10.0
    p.done = 25
    assert p.line() == "caching: 25/100 images (25 %), 2.5 images/s, ETA 0:30"
    p.done = 150
    assert p.line() == "caching: 150/100 images (100 %), 15.0 images/s, 0:10"
