"""lessons/experiments: the after-training probes the README reports (clean-up, guided filter,
threshold, input sizes, the bootstrap of a test figure). Their pieces against hand-worked values and brute force; each script
run on a made-up data root, its plain row equal to what ``tinyseg.evaluate`` scores."""
import sys

import numpy as np
import pytest

from conftest import REPO
from tinyseg.checkpoint import make_meta, save_model
from tinyseg.data.cache import load_split
from tinyseg.evaluate import evaluate_dataset
from tinyseg.tiramisu import tiramisu_tiny

from test_train import make_data

sys.path.insert(0, str(REPO / "lessons" / "experiments"))
import bootstrap  # noqa: E402
import cleanup  # noqa: E402
import full_resolution  # noqa: E402
import sizes  # noqa: E402
import threshold  # noqa: E402


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """These tests run whole inference loops: one numba thread (see conftest)."""


# -- the pieces ----------------------------------------------------------------------------
def test_regions_are_four_connected():
    m = np.array([[1, 1, 0, 0, 1],
                  [1, 0, 0, 1, 0],    # (1, 3) touches (0, 4) only diagonally: two regions
                  [0, 0, 0, 1, 1],
                  [1, 0, 0, 0, 0]], dtype=bool)
    labels, sizes_ = cleanup.regions(m)
    assert sizes_ == [3, 1, 3, 1]
    assert labels[0, 0] == labels[0, 1] == labels[1, 0] == 1
    assert labels[0, 4] == 2 and labels[1, 3] == labels[2, 3] == labels[2, 4] == 3
    assert labels[3, 0] == 4 and np.all(labels[~m] == 0)


def test_keep_large_and_fill_holes():
    m = np.zeros((7, 9), dtype=bool)
    m[1:6, 1:6] = True          # a 5x5 square, 25 pixels ...
    m[3, 3] = False             # ... with a one-pixel hole: 24
    m[0:2, 7:9] = True          # 4 pixels
    m[6, 8] = True              # 1 pixel
    assert cleanup.keep_large(m, 1.0).sum() == 24
    assert cleanup.keep_large(m, 0.15).sum() == 28      # 4 >= 0.15 * 24, 1 < 3.6
    assert cleanup.keep_large(m, 0.0).sum() == 29
    filled = cleanup.fill_holes(m)
    assert filled[3, 3] and filled.sum() == 30           # the hole, nothing else
    notch = m.copy()
    notch[3, 0:4] = False                                 # the hole opened to the border
    assert cleanup.fill_holes(notch).sum() == notch.sum()
    assert not cleanup.keep_large(np.zeros((3, 3), bool), 1.0).any()


def test_apply_leaves_the_padding_alone():
    pred = np.zeros((1, 6, 6), dtype=bool)
    pred[0, 0, :] = True                    # in the padding (box starts at row 1)
    pred[0, 2:4, 1:5] = True
    pred[0, 5, 5] = True                    # a stray pixel inside the box
    out = cleanup.apply(lambda m: cleanup.keep_large(m, 1.0), pred, np.array([[1, 0, 5, 6]]))
    assert out[0, 0].all() and out[0, 2:4, 1:5].all() and not out[0, 5, 5]


@pytest.mark.parametrize("r", [0, 1, 3, 20])
def test_box_mean_against_brute_force(r):
    a = np.random.default_rng(r).random((7, 11))
    want = np.array([[a[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1].mean()
                      for x in range(11)] for y in range(7)])
    np.testing.assert_allclose(full_resolution.box_mean(a, r), want, rtol=1e-12, atol=1e-12)


def test_guided_filter_known_cases():
    rng = np.random.default_rng(0)
    guide = rng.random((12, 10))
    # filtering the guide itself with eps -> 0: a = 1, b = 0 in every window, q = guide
    np.testing.assert_allclose(full_resolution.guided_filter(guide, guide, 2, 1e-12), guide,
                               atol=1e-6)
    # a flat guide: a = 0, b = mean(p), q = the box mean of the box mean of p
    p = rng.random((12, 10))
    flat = np.full((12, 10), 0.3)
    box = full_resolution.box_mean
    np.testing.assert_allclose(full_resolution.guided_filter(flat, p, 2, 1e-3),
                               box(box(p, 2), 2), atol=1e-12)


def test_grey_weights():
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    np.testing.assert_allclose(full_resolution.grey(rgb), [[0.299, 0.587, 0.114, 1.0]])


def test_thresholds_include_the_plain_one():
    assert 0.5 in list(threshold.THRESHOLDS) and threshold.THRESHOLDS[0] == 0.3


# -- the scripts, on made-up data ------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = make_data(tmp_path_factory.mktemp("coco"), n=40, seed=3)
    cache = tmp_path_factory.mktemp("cache")
    train = load_split(root, "train", 32, cache_dir=cache, progress=False)
    ckpt = save_model(tmp_path_factory.mktemp("m") / "model.npz",
                      tiramisu_tiny(rng=np.random.default_rng(0)),
                      make_meta(32, train.mean, train.std))
    return root, cache, ckpt


def plain_ious(text: str, row: str):
    line = next(ln for ln in text.splitlines() if ln.startswith(row))
    return [float(v) for v in line.split()[-2:]]


def evaluate_iou(setup, split: str) -> float:
    from tinyseg.checkpoint import load_model
    root, cache, ckpt = setup
    model, info = load_model(ckpt)
    ds = load_split(root, split, 32, cache_dir=cache, progress=False)
    return evaluate_dataset(model, ds.images, ds.masks, ds.boxes, info["mean"],
                            info["std"]).person_iou


def test_per_image_counts_pool_to_the_person_iou():
    """Summed over images, the counts give the pooled IoU of ``common.person_iou``; the
    padding (outside each box) is not counted."""
    r = np.random.default_rng(4)
    pred = r.integers(0, 2, (5, 8, 8))
    masks = r.integers(0, 2, (5, 8, 8)).astype(np.uint8)
    boxes = np.array([[0, 0, 8, 8], [1, 0, 6, 8], [0, 2, 8, 4], [0, 0, 8, 8], [2, 2, 4, 4]])
    inter, union = bootstrap.per_image_counts(pred, masks, boxes)
    assert inter.sum() / union.sum() == pytest.approx(
        cleanup.person_iou(pred, masks, boxes), abs=1e-12)
    t, p = masks[4, 2:6, 2:6] == 1, pred[4, 2:6, 2:6] == 1   # the box of image 4 by hand
    assert (inter[4], union[4]) == (np.sum(p & t), np.sum(p | t))


def test_bootstrap_script_scores_two_models_on_the_same_draws(setup, capsys):
    root, cache, ckpt = setup
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache)]
    bootstrap.main(args + ["--against", str(ckpt), "--draws", "200"])
    text = capsys.readouterr().out
    point = float(next(ln for ln in text.splitlines() if ln.startswith("model A")).split()[2])
    assert point == pytest.approx(evaluate_iou(setup, "test"), abs=5e-5)
    diff = next(ln for ln in text.splitlines() if ln.startswith("A - B"))
    assert "0.0000" in diff and "[0.0000, 0.0000]" in diff   # a model against itself


@pytest.mark.parametrize("script, row", [(cleanup, "plain (threshold 0.5)"),
                                         (threshold, "threshold 0.50"),
                                         (sizes, "32px, brought to 32px")])
def test_plain_row_is_what_evaluate_scores(setup, capsys, script, row):
    root, cache, ckpt = setup
    script.main(["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache)])
    val, test = plain_ious(capsys.readouterr().out, row)
    assert val == pytest.approx(evaluate_iou(setup, "val"), abs=5e-5)
    assert test == pytest.approx(evaluate_iou(setup, "test"), abs=5e-5)


def test_full_resolution_script(setup, capsys):
    """The plain row scores cutout's own probabilities at each photo's size: recomputed
    here image by image with ``Predictor.photo_probability``."""
    from tinyseg.infer import Predictor
    root, cache, ckpt = setup
    full_resolution.main(["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache)])
    text = capsys.readouterr().out
    val, _ = plain_ious(text, "plain (bilinear")
    predictor = Predictor.from_file(ckpt)
    pairs = [(predictor.photo_probability(rgb) >= 0.5, truth)
             for rgb, truth in full_resolution.photos("val", "default", root, cache)]
    assert len(pairs) > 0 and pairs[0][0].shape == (48, 64)
    assert val == pytest.approx(full_resolution.pooled_iou(pairs), abs=5e-5)
    assert "guided filter r=8, eps=0.01" in text and "best on validation" in text


def test_scripts_name_what_they_cannot_use(setup, tmp_path, capsys, monkeypatch):
    """A second fuzzing helper: a missing checkpoint or data folder ended every script in a
    traceback; '--sizes 0' printed the model's own size as a '0px' row (``size or ...``);
    '--sizes 96 96' crashed while unpacking. Now one line each (exit 1, or 2 for a flag)."""
    import common
    root, cache, ckpt = setup
    monkeypatch.setattr(sys, "argv", ["sizes.py"])
    for script in (cleanup, threshold, sizes, full_resolution):
        with pytest.raises(SystemExit) as e:
            common.run(lambda: script.main(["--checkpoint", str(tmp_path / "no.npz")]))
        assert e.value.code == f"sizes.py: error: {tmp_path / 'no.npz'}: file not found"
    with pytest.raises(SystemExit) as e:
        common.run(lambda: threshold.main(["--checkpoint", str(ckpt), "--data",
                                           str(tmp_path)]))
    assert "no 'annotations' folder" in str(e.value.code)
    for bad in (["0"], ["32", "32"], ["-8"], ["2000"]):
        with pytest.raises(SystemExit) as e:
            sizes.main(["--checkpoint", str(ckpt), "--sizes", *bad])
        assert e.value.code == 2
        assert "--sizes must be different sizes from 1 to 1024" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:              # as evaluate refuses it
        sizes.main(["--checkpoint", str(ckpt), "--sizes", "4", "32"])
    assert e.value.code == 2
    assert "4 is smaller than 2^pools = 8" in capsys.readouterr().err


def test_full_resolution_skips_an_unreadable_photo_by_name(setup, tmp_path, capsys):
    """It stopped at a missing image with a bare 'BadImage: file not found'."""
    import shutil
    root, cache, ckpt = setup
    copy = tmp_path / "coco"
    shutil.copytree(root, copy)
    from tinyseg.data.cache import select
    from tinyseg.data.coco import load_coco
    sel = select(copy, cache_dir=tmp_path / "c")
    victim = load_coco(copy).records[sel.ids["val"][0]].path
    victim.unlink()
    got = list(full_resolution.photos("val", "default", copy, tmp_path / "c"))
    assert len(got) == len(sel.ids["val"]) - 1
    assert f"skipped {victim}: file not found" in capsys.readouterr().err
