"""Evaluation: pooled and per-image IoU (padding not counted), flip averaging, the command."""
import json
import math

import numpy as np
import pytest

from tinyseg.checkpoint import make_meta, save_model
from tinyseg.cli import run_main
from tinyseg.data.fixture import FakeImage, make_coco_dir
from tinyseg.evaluate import IGNORE, eval_targets, evaluate_dataset, main
from tinyseg.metrics import confusion_matrix, iou_per_class
from tinyseg.tiramisu import tiramisu_tiny

from conftest import overflowing_checkpoint


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """These tests run whole training/inference loops: one numba thread (see conftest)."""


class Oracle:
    """A stand-in network whose "prediction" is a fixed label map per image: logits +-5."""

    def __init__(self, labels):
        self.labels = labels  # (N, S, S) ints, looked up by the first pixel of channel 0
        self.training = False
        self.calls = 0

    def eval(self):
        self.training = False

    def train(self, mode=True):
        self.training = mode

    def forward(self, x):
        self.calls += 1
        idx = np.rint(x[:, 0, 0, 0]).astype(int)  # the test writes the image index there
        lab = self.labels[idx]
        z = np.where(lab == 1, 5.0, -5.0).astype(np.float32)
        return np.stack([-z, z], axis=1)


def images_with_index(n, s):
    """uint8 images whose pixel (0, 0) red value normalises to the image index."""
    img = np.zeros((n, s, s, 3), np.uint8)
    img[:, 0, 0, 0] = np.arange(n)
    return img


MEAN0, STD1 = np.zeros(3, np.float32), np.full(3, 1 / 255, np.float32)  # x = pixel value


def test_eval_targets_ignore_the_padding():
    masks = np.ones((2, 4, 4), np.uint8)
    boxes = np.array([[1, 0, 2, 4], [0, 0, 4, 4]])
    t = eval_targets(masks, boxes)
    assert (t[0, [0, 3]] == IGNORE).all() and (t[0, 1:3] == 1).all()
    assert (t[1] == 1).all()


def test_pooled_and_per_image_iou_by_hand():
    s = 4
    masks = np.zeros((2, s, s), np.uint8)
    masks[0, :2, :] = 1            # 8 person pixels
    masks[1, :, :2] = 1            # 8 person pixels
    pred = np.zeros((2, s, s), int)
    pred[0, :1, :] = 1             # 4 predicted, all right: IoU 4/8
    pred[1, :, 1:3] = 1            # 8 predicted, 4 right: IoU 4/12
    pred[1, 3, 3] = 1              # in the padding: must not count
    boxes = np.array([[0, 0, 4, 4], [0, 0, 3, 4]])  # image 1: last row is padding
    masks[1, 3] = 0
    ev = evaluate_dataset(Oracle(pred), images_with_index(2, s), masks, boxes, MEAN0, STD1,
                          batch_size=1, keep_predictions=True)
    # image 1 inside its box: truth 6 px (rows 0-2, cols 0-1), prediction 6 px (cols 1-2), 3 shared
    assert ev.per_image[0] == pytest.approx(4 / 8)
    assert ev.per_image[1] == pytest.approx(3 / 9)
    assert ev.person_iou == pytest.approx((4 + 3) / (8 + 9))
    t = eval_targets(masks, boxes)
    cm = confusion_matrix(pred, t, 2, ignore_index=IGNORE)
    np.testing.assert_array_equal(ev.cm, cm)
    assert ev.mean_iou == pytest.approx(np.mean(iou_per_class(cm)))
    assert ev.pixel_accuracy == pytest.approx(np.trace(cm) / cm.sum())
    assert ev.missed[0] == pytest.approx(0.5) and ev.extra[1] == pytest.approx(0.5)
    assert ev.predictions[1, 3, 3] == 0
    d = ev.distribution()
    assert d["images"] == 2 and sum(d["histogram"]) == 2
    assert d["median"] == pytest.approx((0.5 + 1 / 3) / 2)


def test_flip_averages_the_mirrored_prediction():
    """A network that is not mirror-symmetric: always p = 0.9 in column 0, 0.2 elsewhere."""
    s = 4

    class LeftColumn(Oracle):
        def forward(self, x):
            z = np.full((x.shape[0], s, s), np.log(0.2 / 0.8), np.float32)
            z[:, :, 0] = np.log(0.9 / 0.1)
            return np.stack([np.zeros_like(z), z], axis=1)

    masks = np.zeros((1, s, s), np.uint8)
    masks[0, :, 0] = 1
    boxes = np.array([[0, 0, s, s]])
    args = (images_with_index(1, s), masks, boxes, MEAN0, STD1)
    assert evaluate_dataset(LeftColumn(None), *args).person_iou == pytest.approx(1.0)
    # averaged with the mirror image: columns 0 and 3 at (0.9 + 0.2) / 2 = 0.55 -> person
    ev = evaluate_dataset(LeftColumn(None), *args, flip=True, keep_predictions=True)
    np.testing.assert_array_equal(ev.predictions[0].any(axis=0), [True, False, False, True])
    assert ev.person_iou == pytest.approx(4 / 8)


def test_worst_is_lowest_first_ties_in_order_nan_last():
    from tinyseg.evaluate import Evaluation
    z = np.zeros(5)
    ev = Evaluation(cm=np.eye(2, dtype=np.int64), loss=0.0,
                    per_image=np.array([0.5, np.nan, 0.2, 0.5, 0.1]),
                    pred_coverage=z, coverage=z, missed=z, extra=z)
    assert ev.worst(5).tolist() == [4, 2, 0, 3, 1]
    assert ev.worst(2).tolist() == [4, 2]


def test_the_model_is_left_in_its_mode():
    o = Oracle(np.zeros((1, 4, 4), int))
    o.training = True
    evaluate_dataset(o, images_with_index(1, 4), np.zeros((1, 4, 4), np.uint8),
                     np.array([[0, 0, 4, 4]]), MEAN0, STD1)
    assert o.training


# -- the command -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco")
    rng = np.random.default_rng(1)
    specs = []
    for _ in range(40):
        w, h = int(rng.integers(26, 40)), int(rng.integers(30, 44))
        x0, y0 = int(rng.integers(0, 64 - w)), int(rng.integers(0, 48 - h))
        specs.append(FakeImage(persons=[(x0, y0, x0 + w, y0 + h)]))
    make_coco_dir(root, specs, seed=1)
    ckpt = save_model(tmp_path_factory.mktemp("m") / "model.npz",
                      tiramisu_tiny(rng=np.random.default_rng(0)),
                      make_meta(32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
    return root, tmp_path_factory.mktemp("cache"), ckpt


def test_command_outputs(setup, tmp_path, capsys):
    root, cache, ckpt = setup
    out = tmp_path / "ev"
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache), "--split",
            "val", "--out", str(out), "--worst", "4", "--json"]
    assert run_main(main, "tinyseg.evaluate", args) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["filters"]) == {"default", "wide"}
    r = res["filters"]["default"]
    for key in ["images", "person_iou", "mean_iou", "pixel_accuracy", "per_image_iou",
                "per_image", "worst_picture"]:
        assert key in r, key
    assert {"mean", "median", "p10", "histogram"} <= set(r["per_image_iou"])
    assert len(r["per_image"]) == r["images"]
    ious = [p["iou"] for p in r["per_image"]]
    assert ious == sorted(ious)  # worst first
    assert (out / "worst-default.png").is_file() and (out / "results.json").is_file()
    # text output, flip, one filter
    assert run_main(main, "tinyseg.evaluate", args[:-1] + ["--filter", "default", "--flip"]) == 0
    text = capsys.readouterr().out
    assert "person IoU" in text and "per-image IoU" in text and "flip" in text


def test_results_hold_the_counts_that_make_the_iou_and_its_bootstrap_range(setup, tmp_path,
                                                                          capsys):
    """Each image's intersection and union pool to the person IoU, and the bootstrap range
    in results.json is ``bootstrap_range`` of those counts in order of image id (as in
    train's test.json): a reader can recompute both from the file alone."""
    from tinyseg.metrics import bootstrap_range
    root, cache, ckpt = setup
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache), "--split",
            "val", "--out", str(tmp_path / "ev"), "--filter", "default", "--worst", "0"]
    assert run_main(main, "tinyseg.evaluate", args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)["filters"]["default"]
    by_id = sorted(r["per_image"], key=lambda p: p["id"])
    inter = np.array([p["intersection"] for p in by_id])
    union = np.array([p["union"] for p in by_id])
    assert inter.sum() / union.sum() == pytest.approx(r["person_iou"], abs=1e-12)
    b = r["person_iou_bootstrap"]
    assert b == bootstrap_range(inter, union)                 # redone from the file alone
    assert b["level"] == 0.95 and b["draws"] == 10000 and b["low"] <= r["person_iou"] <= b["high"]
    assert run_main(main, "tinyseg.evaluate", args) == 0
    assert f"95 % within {b['low']:.3f}-{b['high']:.3f}" in capsys.readouterr().out


@pytest.mark.parametrize("marker", ["config.json", "ensemble.json", None])
def test_results_go_beside_a_checkpoint_in_a_run_directory(setup, tmp_path, monkeypatch,
                                                           capsys, marker):
    """Without --out: RUN/eval-<split> for a single run (config.json) or an ensemble run
    (ensemble.json), ./eval-<split> for a checkpoint anywhere else; one filter, --limit,
    --flip, --size and another checkpoint name each get their own folder."""
    import shutil
    root, cache, ckpt = setup
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(ckpt, run / "best.npz")
    if marker:
        (run / marker).write_text("{}")
    here = tmp_path / "cwd"
    here.mkdir()
    monkeypatch.chdir(here)

    def score(checkpoint, *flags, code=0):
        """``evaluate`` on the validation split, without --out unless ``flags`` give it."""
        assert run_main(main, "tinyseg.evaluate", [
            "--checkpoint", str(checkpoint), "--data", str(root), "--cache", str(cache),
            "--split", "val", "--worst", "0", *flags]) == code
        return capsys.readouterr()

    where = run if marker else here
    score(run / "best.npz", "--filter", "default", "--json")
    expected = where / "eval-val-default" / "results.json"
    assert expected.is_file()
    # the same checkpoint named from another folder is the same checkpoint: not refused
    monkeypatch.chdir(run)
    score("best.npz", "--filter", "default", "--json", "--out", str(expected.parent))
    monkeypatch.chdir(here)
    score(run / "best.npz", "--filter", "default", "--json")
    assert not ((here if marker else run) / "eval-val-default").exists()
    # last.npz beside it gets its own folder: best.npz's results stay (were overwritten)
    before = expected.read_bytes()
    shutil.copy(ckpt, run / "last.npz")
    score(run / "last.npz", "--filter", "wide", "--json")
    assert (where / "eval-val-last-wide" / "results.json").is_file()
    assert expected.read_bytes() == before
    # so do --flip and another --size (they overwrote the plain scoring's results too)
    score(run / "best.npz", "--filter", "wide", "--json", "--flip", "--size", "24")
    assert (where / "eval-val-24px-flip-wide" / "results.json").is_file()
    assert expected.read_bytes() == before
    # and --limit (it replaced the whole split's scores with those of its first images)
    score(run / "best.npz", "--filter", "default", "--json", "--limit", "2")
    limited = where / "eval-val-default-first2" / "results.json"
    assert json.loads(limited.read_text())["filters"]["default"]["images"] == 2
    assert expected.read_bytes() == before
    if marker is None:  # another best.npz outside a run: its scores would go to the same folder
        other = tmp_path / "other"
        other.mkdir()
        shutil.copy(ckpt, other / "best.npz")
        err = score(other / "best.npz", "--filter", "default", code=1).err
        assert f"eval-val-default holds the scores of {(run / 'best.npz').resolve()}" in err
        assert "give --out DIR" in err and expected.read_bytes() == before


def test_command_errors(setup, tmp_path, capsys, monkeypatch):
    root, cache, ckpt = setup
    assert run_main(main, "tinyseg.evaluate", ["--checkpoint", str(tmp_path / "no.npz")]) == 1
    assert "checkpoint not found" in capsys.readouterr().err
    import tinyseg.checkpoint as ck
    monkeypatch.setattr(ck, "default_weights", lambda: tmp_path / "none.npz")
    assert run_main(main, "tinyseg.evaluate", ["--data", str(root)]) == 1
    err = capsys.readouterr().err
    assert "no bundled model" in err and len(err.strip().splitlines()) == 1
    monkeypatch.delenv("TINYSEG_DATA", raising=False)
    assert run_main(main, "tinyseg.evaluate", ["--checkpoint", str(ckpt)]) == 1
    assert "TINYSEG_DATA" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--split", "nope"])
    assert e.value.code == 2
    # each flag named on its own; --size 0 meant "the checkpoint's size", '' the bundled model
    for flag, value, says in (("--worst", "-1", "--worst must be >= 0, got -1"),
                              ("--limit", "0", "--limit must be at least 1, got 0"),
                              ("--batch-size", "0", "--batch-size must be at least 1, got 0"),
                              ("--size", "0", "--size must be at least 1, got 0"),
                              ("--size", "99999", "--size must be at most 1024, got 99999"),
                              ("--checkpoint", "", "--checkpoint is empty")):
        assert run_main(main, "tinyseg.evaluate", [flag, value]) == 1
        assert says in capsys.readouterr().err
    # a side below the network's 2^pools scored a picture of padding (all 0, exit 0)
    assert run_main(main, "tinyseg.evaluate", ["--checkpoint", str(ckpt), "--size", "2"]) == 1
    assert "--size 2 is smaller than 2^pools = 8" in capsys.readouterr().err


def test_a_model_whose_output_overflows_is_an_error_naming_it(setup, tmp_path, capsys,
                                                              recwarn):
    """Weights that are finite but overflow gave 'person IoU 0.0000 ... loss nan', exit 0."""
    root, cache, ckpt = setup
    bad = overflowing_checkpoint(ckpt, tmp_path / "huge.npz")
    assert run_main(main, "tinyseg.evaluate", ["--checkpoint", str(bad), "--data", str(root),
                                               "--cache", str(cache), "--split", "val",
                                               "--out", str(tmp_path / "ev")]) == 1
    err = capsys.readouterr().err
    # numpy's overflow warnings (source lines of conv.py) would add nothing to the message
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]
    last = err.strip().splitlines()[-1]     # after the caching progress line
    assert last.startswith("tinyseg.evaluate: error: ") and str(bad) in last, err
    assert "NaN or infinite" in err and not (tmp_path / "ev" / "results.json").exists()


def test_scoring_shows_progress(setup, tmp_path, capsys):
    root, cache, ckpt = setup
    assert run_main(main, "tinyseg.evaluate", [
        "--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache), "--split", "val",
        "--out", str(tmp_path / "ev"), "--worst", "0", "--filter", "default"]) == 0
    err = capsys.readouterr().err
    assert "scoring the val split, 'default' filter:" in err and "images (100 %)" in err


def test_loss_is_the_mean_over_every_counted_pixel_whatever_the_batches():
    """Batches of one image with 16, 8 and 4 counted pixels: the loss is the pixel mean over
    the split (one call of the loss on everything), not the mean of the batches' means."""
    from tinyseg.losses import softmax_cross_entropy
    n, s = 3, 4
    rng = np.random.default_rng(1)
    logits = rng.standard_normal((n, 2, s, s)).astype(np.float32)

    class Fixed(Oracle):
        def forward(self, x):
            return logits[np.rint(x[:, 0, 0, 0]).astype(int)]

    masks = (rng.random((n, s, s)) < 0.5).astype(np.uint8)
    boxes = np.array([[0, 0, 4, 4], [1, 0, 2, 4], [0, 0, 4, 1]])
    want, _ = softmax_cross_entropy(logits, eval_targets(masks, boxes), ignore_index=IGNORE)
    for batch_size in (1, 2, 3):
        ev = evaluate_dataset(Fixed(None), images_with_index(n, s), masks, boxes, MEAN0, STD1,
                              batch_size=batch_size)
        assert ev.loss == pytest.approx(want, rel=1e-6), batch_size


def test_brightness_is_luma_of_the_picture_inside_its_box():
    from tinyseg.evaluate import brightness
    imgs = np.zeros((2, 4, 4, 3), np.uint8)
    imgs[0, :, :] = (255, 0, 0)                 # pure red
    imgs[1, 1:3, :] = (0, 0, 255)               # blue picture between padding rows
    imgs[1, 0] = imgs[1, 3] = 255               # white padding: not counted
    boxes = np.array([[0, 0, 4, 4], [1, 0, 2, 4]])
    np.testing.assert_allclose(brightness(imgs, boxes), [0.299, 0.114], rtol=1e-12)


def test_evaluate_command_scores_flipped_and_pictures_worst_n(setup, tmp_path, monkeypatch, capsys):
    import tinyseg.evaluate as E
    root, cache, ckpt = setup
    base = ["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache), "--split",
            "val", "--filter", "wide", "--json"]
    assert run_main(E.main, "tinyseg.evaluate", base + ["--worst", "0", "--out",
                                                        str(tmp_path / "a")]) == 0
    plain = json.loads(capsys.readouterr().out)["filters"]["wide"]
    assert run_main(E.main, "tinyseg.evaluate", base + ["--worst", "0", "--flip", "--out",
                                                        str(tmp_path / "b")]) == 0
    flipped = json.loads(capsys.readouterr().out)["filters"]["wide"]
    # the flip-averaged scores are those of evaluate_dataset(flip=True), not of the plain image
    from tinyseg.checkpoint import load_model
    model, info = load_model(ckpt)
    from tinyseg.data.cache import load_split
    from tinyseg.data.coco import FILTER_PRESETS
    ds = load_split(str(root), "val", 32, FILTER_PRESETS["wide"], str(cache), progress=False)
    ev = E.evaluate_dataset(model, ds.images, ds.masks, ds.boxes, info["mean"], info["std"],
                            flip=True)
    assert flipped["person_iou"] == pytest.approx(ev.summary()["person_iou"], abs=1e-12)
    assert flipped["person_iou"] != plain["person_iou"]
    # --worst 3: the picture shows 3 images (pairs_per_row 2 -> 2 rows of 3-tile pairs)
    seen = []
    real = E.worst_picture
    monkeypatch.setattr(E, "worst_picture", lambda *a, **k: (seen.append(a[4]), real(*a, **k))[1])
    assert run_main(E.main, "tinyseg.evaluate", base + ["--worst", "3", "--out",
                                                        str(tmp_path / "c")]) == 0
    assert seen == [3]


def test_evaluate_default_split_is_test():
    from tinyseg.evaluate import build_parser
    assert build_parser().parse_args([]).split == "test"


def test_evaluate_worst_one(setup, tmp_path):
    import tinyseg.evaluate as E
    root, cache, ckpt = setup
    out = tmp_path / "w1"
    assert run_main(E.main, "tinyseg.evaluate", [
        "--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache), "--split", "val",
        "--filter", "wide", "--json", "--worst", "1", "--out", str(out)]) == 0
    assert (out / "worst-wide.png").is_file()


def test_histogram_text_bars_are_rounded():
    from tinyseg.evaluate import histogram_text
    text = histogram_text({"images": 5, "histogram": [2, 3] + [0] * 8}, width=10)
    lines = text.splitlines()
    assert lines[0] == "  0.0-0.1     2 " + "#" * 7      # 10 * 2 / 3 = 6.67 -> 7
    assert lines[1] == "  0.1-0.2     3 " + "#" * 10
    assert lines[2] == "  0.2-0.3     0 " and len(lines) == 10


def test_worst_picture_layout_and_labels(monkeypatch):
    import tinyseg.viz as viz
    from tinyseg.evaluate import evaluate_dataset, worst_picture
    s = 4
    masks = np.zeros((2, s, s), np.uint8)
    masks[0, :2, :] = 1             # 8 px; predicted 4 of them: missed 50 %, extra 0 %
    masks[1, :, :2] = 1             # 8 px; predicted 4 of them + 4 others: missed 50 %, extra 50 %
    pred = np.zeros((2, s, s), int)
    pred[0, :1, :] = 1
    pred[1, :, 1:3] = 1
    boxes = np.array([[0, 0, s, s], [0, 0, s, s]])
    images = images_with_index(2, s)
    ev = evaluate_dataset(Oracle(pred), images, masks, boxes, MEAN0, STD1, batch_size=2,
                          keep_predictions=True)
    seen = {}
    monkeypatch.setattr(viz, "grid", lambda tiles, ncols, labels: seen.update(
        n=len(tiles), ncols=ncols, labels=labels) or np.zeros((1, 1, 3), np.uint8))
    worst_picture(images, masks, np.array([10, 11]), ev, 2, zoom=1, pairs_per_row=2)
    assert seen["n"] == 6 and seen["ncols"] == 6
    assert seen["labels"] == ["id 11", "truth", "IoU 0.33\nmissed 50%\nextra 50%",
                              "id 10", "truth", "IoU 0.50\nmissed 50%\nextra 0%"]


def test_a_blank_checkpoint_flag_is_called_empty(capsys):
    from tinyseg.evaluate import main as evaluate_main
    assert run_main(evaluate_main, "tinyseg.evaluate", ["--checkpoint", "  "]) == 1
    assert "--checkpoint is empty" in capsys.readouterr().err


def test_a_run_directory_as_checkpoint_points_at_its_best(tmp_path, capsys):
    """``--checkpoint runs/x`` (a folder) said "checkpoint not found"; it says it is a
    folder and, when the folder holds one, names its best.npz."""
    from tinyseg.evaluate import main as evaluate_main
    run = tmp_path / "run"
    run.mkdir()
    assert run_main(evaluate_main, "tinyseg.evaluate", ["--checkpoint", str(run)]) == 1
    err = capsys.readouterr().err
    assert "is a directory, not a checkpoint file" in err and "did you mean" not in err
    (run / "best.npz").write_bytes(b"x")
    assert run_main(evaluate_main, "tinyseg.evaluate", ["--checkpoint", str(run)]) == 1
    assert f"did you mean {run / 'best.npz'}?" in capsys.readouterr().err
    # a device is not a checkpoint that is missing
    assert run_main(evaluate_main, "tinyseg.evaluate", ["--checkpoint", "/dev/null"]) == 1
    assert "/dev/null: not a regular file" in capsys.readouterr().err


def test_out_that_is_a_file_is_refused_before_scoring(setup, tmp_path, capsys):
    root, cache, ckpt = setup
    out = tmp_path / "results.json"
    out.write_text("mine")
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(cache),
            "--out", str(out)]
    assert run_main(main, "tinyseg.evaluate", args) == 1
    captured = capsys.readouterr()
    assert "exists and is not a folder" in captured.err and "scoring" not in captured.err
    assert out.read_text() == "mine"


class _Constant:
    """A stand-in model whose logits are the same at every pixel: person probability
    ``p = e^l / (1 + e^l)`` with ``l = log(p / (1 − p))``; p = 0.5 is exact (equal logits)."""

    def __init__(self, p):
        self.l = 0.0 if p == 0.5 else float(np.log(p / (1 - p)))
        self.training = False

    def eval(self):
        self.training = False
        return self

    def train(self, mode=True):
        self.training = mode
        return self

    def forward(self, x):
        out = np.zeros((x.shape[0], 2) + x.shape[2:], dtype=x.dtype)
        out[:, 1] = self.l
        return out


def test_a_probability_of_exactly_one_half_is_a_person_everywhere():
    """The rule is p ≥ threshold (0.5), in evaluate, in the labels of the training pictures
    and in cutout alike; a tie went untested outside cutout (mutation audit, 2026-11-28)."""
    from tinyseg.infer import predict_labels
    images = np.full((2, 8, 8, 3), 100, np.uint8)
    masks = np.zeros((2, 8, 8), np.uint8)
    masks[:, 2:6, 2:6] = 1
    boxes = np.array([[0, 0, 8, 8]] * 2)
    ev = evaluate_dataset(_Constant(0.5), images, masks, boxes, [0.4] * 3, [0.2] * 3)
    assert np.all(ev.pred_coverage == 1.0)
    assert ev.person_iou == pytest.approx(16 / 64)
    x = np.zeros((2, 3, 8, 8), np.float32)
    assert np.all(predict_labels(_Constant(0.5), x) == 1)


def test_predict_labels_uses_its_threshold():
    from tinyseg.infer import predict_labels
    x = np.zeros((1, 3, 4, 4), np.float32)
    assert np.all(predict_labels(_Constant(0.6), x) == 1)
    assert np.all(predict_labels(_Constant(0.6), x, threshold=0.7) == 0)


def test_a_split_with_no_person_anywhere_is_reported_not_a_traceback(tmp_path, capsys):
    """With no person in any image's labels or prediction the per-image distribution is
    empty and the text report read d['mean']: KeyError (own-data audit, 2026-11-28)."""
    root = tmp_path / "coco"
    data = make_coco_dir(root, [FakeImage(persons=[(10, 8, 40, 40)]) for _ in range(40)])
    for a in data["annotations"]:
        a["segmentation"] = [[100, 100, 110, 100, 110, 110]]   # outside: no person pixel
    (root / "annotations" / "instances_train2017.json").write_text(json.dumps(data))
    model = tiramisu_tiny(rng=np.random.default_rng(0))
    state = model.state_dict()
    state["finalconv.weight"][...] = 0.0
    state["finalconv.bias"][...] = [5.0, -5.0]         # background everywhere
    model.load_state_dict(state)
    ckpt = save_model(tmp_path / "m.npz", model, make_meta(32, [0.5] * 3, [0.25] * 3))
    args = ["--checkpoint", str(ckpt), "--data", str(root), "--cache", str(tmp_path / "c"),
            "--filter", "all", "--split", "val", "--out", str(tmp_path / "ev"), "--worst", "0"]
    assert run_main(main, "tinyseg.evaluate", args) == 0
    assert "per-image IoU: none (no image has a person" in capsys.readouterr().out
    r = json.loads((tmp_path / "ev" / "results.json").read_text())["filters"]["all"]
    assert r["per_image_iou"] == {"images": 0} and math.isnan(r["person_iou"])
