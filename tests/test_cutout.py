"""Cutout: EXIF orientation, full-size RGBA / mask / colour outputs, smooth up-sampling,
unreadable files reported while the others are written."""
import numpy as np
import pytest
from PIL import Image

from tinyseg.checkpoint import make_meta, save_model
from tinyseg.cli import UserError, run_main
from tinyseg.cutout import (alpha_from_probability, compose, main, output_names, parse_color,
                            read_photo)
from tinyseg.infer import Predictor, photo_probability, resize_bilinear
from tinyseg.tiramisu import tiramisu_tiny

from conftest import overflowing_checkpoint

# float32 bilinear weights: results agree with PyTorch to a few float32 ulps of values in [0, 1]
TOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_thread_module):
    """These tests run whole training/inference loops: one numba thread (see conftest)."""


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    model = tiramisu_tiny(rng=np.random.default_rng(0))
    return save_model(tmp_path_factory.mktemp("m") / "model.npz", model,
                      make_meta(32, [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))


def write_jpeg(path, width, height, orientation=None, seed=0):
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    img = Image.fromarray(arr)
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    img.save(path, format="JPEG", exif=exif.tobytes())
    return arr


# -- bilinear up-sampling -------------------------------------------------------------------------
def test_resize_bilinear_known_values():
    a = np.array([[0.0, 1.0]], np.float32)
    np.testing.assert_allclose(resize_bilinear(a, 1, 4), [[0.0, 0.25, 0.75, 1.0]], atol=TOL)
    c = np.full((3, 5), 0.7, np.float32)
    np.testing.assert_allclose(resize_bilinear(c, 31, 17), 0.7, atol=TOL)
    x = np.random.default_rng(0).random((6, 9)).astype(np.float32)
    np.testing.assert_allclose(resize_bilinear(x, 6, 9), x, atol=TOL)  # same size: identity
    big = resize_bilinear(x, 61, 90, rows_per_chunk=7)  # chunking changes nothing
    np.testing.assert_allclose(big, resize_bilinear(x, 61, 90), atol=0)
    assert big.min() >= x.min() - TOL and big.max() <= x.max() + TOL  # no overshoot
    with pytest.raises(ValueError, match="2-D"):
        resize_bilinear(np.zeros((2, 2, 2)), 4, 4)


def test_resize_bilinear_matches_pytorch(torch):
    rng = np.random.default_rng(1)
    for h, w, H, W in [(5, 7, 13, 29), (32, 32, 480, 640), (8, 6, 5, 4), (1, 4, 3, 9)]:
        a = rng.random((h, w)).astype(np.float32)
        ref = torch.nn.functional.interpolate(torch.from_numpy(a)[None, None], size=(H, W),
                                              mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(resize_bilinear(a, H, W), ref.numpy(), atol=TOL)


# -- reading photos ----------------------------------------------------------------------------------
def test_exif_orientation_is_applied(tmp_path):
    arr = write_jpeg(tmp_path / "rot.jpg", 40, 20, orientation=6)  # stored 40 wide, 20 high
    photo = read_photo(tmp_path / "rot.jpg")
    assert photo.shape == (40, 20, 3)          # shown upright: 20 wide, 40 high
    # orientation 6 = rotate 90° clockwise to display: the stored top-left goes top-right
    np.testing.assert_allclose(photo[:3, -3:].mean(), arr[:3, :3].mean(), atol=25)
    plain = write_jpeg(tmp_path / "plain.jpg", 40, 20)
    assert read_photo(tmp_path / "plain.jpg").shape == plain.shape


class _StandIn:
    """What the prediction code needs of a network: ``eval``, ``train``, ``forward``."""

    training = False

    def eval(self):
        pass

    def train(self, mode=True):
        pass


def test_photo_probability_lines_up_with_the_photo(ckpt):
    """A stand-in network that calls the left half of its input "person": the probability
    map, cropped from the letterbox and resized, must have its edge in the photo's middle."""
    pred = Predictor.from_file(ckpt)

    class LeftHalf(_StandIn):
        def forward(self, x):
            # person where the red channel is bright: the test paints the photo's left half
            z = (x[:, 0] > 0).astype(np.float32) * 20 - 10
            return np.stack([np.zeros_like(z), z], axis=1)

    pred.model = LeftHalf()
    for w, h in [(300, 120), (90, 200), (64, 64)]:
        photo = np.zeros((h, w, 3), np.uint8)
        photo[:, : w // 2, 0] = 255
        p = photo_probability(pred, photo)
        assert p.shape == (h, w)
        assert p[:, : w // 2 - w // 8].min() > 0.9 and p[:, w // 2 + w // 8:].max() < 0.1
        # smooth: intermediate values only near the edge, a few source pixels wide
        mid = (p > 0.05) & (p < 0.95)
        cols = np.nonzero(mid.any(axis=0))[0]
        assert cols.size and abs(cols.mean() - w / 2) < w / 8


# -- outputs -------------------------------------------------------------------------------------------
def test_alpha_and_compose():
    p = np.array([[0.1, 0.5, 0.9]], np.float32)
    np.testing.assert_array_equal(alpha_from_probability(p), [[0, 255, 255]])
    np.testing.assert_array_equal(alpha_from_probability(p, 0.6), [[0, 0, 255]])
    np.testing.assert_array_equal(alpha_from_probability(p, soft=True), [[26, 128, 230]])
    rgb = np.full((1, 3, 3), 100, np.uint8)
    a = np.array([[0, 128, 255]], np.uint8)
    assert compose(rgb, a).mode == "RGBA"
    out = np.asarray(compose(rgb, a, background=(0, 200, 0)))
    np.testing.assert_array_equal(out[0, 0], [0, 200, 0])
    np.testing.assert_array_equal(out[0, 2], [100, 100, 100])
    assert compose(rgb, a, mode="mask").mode == "L"


def test_parse_color_and_names(tmp_path):
    assert parse_color("white") == (255, 255, 255)
    assert parse_color("#00ff00") == (0, 255, 0)
    assert parse_color("0, 128, 255") == (0, 128, 255)
    with pytest.raises(UserError, match="colour"):
        parse_color("not-a-colour")
    for text in ("300,0,0", "rgb(300,0,0)"):                  # were clamped to 255
        with pytest.raises(UserError, match="must be 0-255"):
            parse_color(text)
    with pytest.raises(UserError, match="has transparency"):  # its alpha was dropped
        parse_color("#00ff0080")
    assert parse_color("#00ff00ff") == (0, 255, 0)
    names = output_names(["a/x.jpg", "b/x.jpg", "y.png"], tmp_path, "-cutout")
    assert [n.name for n in names] == ["x-cutout.png", "x-cutout-2.png", "y-cutout.png"]


def test_compose_on_a_background_picture():
    """A colour and a picture of that colour give the same output; other shapes refused."""
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (6, 5), dtype=np.uint8)
    flat = np.asarray(compose(rgb, alpha, background=(40, 110, 220)))
    picture = np.asarray(compose(rgb, alpha, background=np.full((6, 5, 3), (40, 110, 220))))
    np.testing.assert_array_equal(flat, picture)
    with pytest.raises(ValueError, match="the photo's shape"):
        compose(rgb, alpha, background=np.zeros((5, 5, 3)))


def test_an_input_photo_is_never_an_output(ckpt, tmp_path, capsys):
    """``x.png x-cutout.png -o DIR``: the first photo's cut-out went over the second photo,
    which was then read back as its own cut-out; the user's file was lost."""
    write_jpeg(tmp_path / "a.jpg", 40, 30, seed=1)
    first = tmp_path / "x.png"
    second = tmp_path / "x-cutout.png"
    Image.open(tmp_path / "a.jpg").save(first)
    write_jpeg(tmp_path / "b.jpg", 40, 30, seed=2)
    Image.open(tmp_path / "b.jpg").save(second)
    before = second.read_bytes()
    names = output_names([str(first), str(second)], tmp_path, "-cutout")
    assert [n.name for n in names] == ["x-cutout-2.png", "x-cutout-cutout.png"]
    assert run_main(main, "tinyseg.cutout", [str(first), str(second), "-o", str(tmp_path),
                                             "--checkpoint", str(ckpt)]) == 0
    assert second.read_bytes() == before
    assert (tmp_path / "x-cutout-2.png").is_file() and (tmp_path / "x-cutout-cutout.png").is_file()


def test_command_writes_full_size_rgba(ckpt, tmp_path, capsys):
    write_jpeg(tmp_path / "rot.jpg", 120, 50, orientation=6)
    write_jpeg(tmp_path / "wide.jpg", 333, 101, seed=2)
    out = tmp_path / "out"
    assert run_main(main, "tinyseg.cutout", [str(tmp_path / "rot.jpg"), str(tmp_path / "wide.jpg"),
                                             "-o", str(out), "--checkpoint", str(ckpt)]) == 0
    with Image.open(out / "rot-cutout.png") as im:
        assert im.mode == "RGBA" and im.size == (50, 120)   # upright: EXIF applied
    with Image.open(out / "wide-cutout.png") as im:
        assert im.mode == "RGBA" and im.size == (333, 101)
        rgba = np.asarray(im)
    kept = rgba[..., 3] == 255   # the photo's colours where kept; none where transparent
    np.testing.assert_array_equal(rgba[..., :3][kept], read_photo(tmp_path / "wide.jpg")[kept])
    assert not rgba[..., :3][~kept].any() and kept.any() and not kept.all()
    assert set(np.unique(rgba[..., 3])) <= {0, 255}
    assert "wide.jpg (333x101)" in capsys.readouterr().out


def test_a_photos_own_transparency_and_colour_profile_are_kept(ckpt, tmp_path):
    """A PNG's transparent pixels came back opaque (its alpha was dropped on reading), and
    the ICC profile was dropped (a P3 photo's numbers then read as sRGB: duller colours)."""
    from tinyseg.cutout import onto_padding
    from tinyseg.data.images import PAD_RGB
    rng = np.random.default_rng(5)
    rgb = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    own = np.full((40, 60), 255, np.uint8)
    own[:, :30] = 0                    # the left half made transparent by the user
    own[:, 30:35] = 128
    Image.fromarray(np.dstack([rgb, own]), "RGBA").save(tmp_path / "a.png",
                                                       icc_profile=b"not a real profile")
    Image.fromarray(rgb).save(tmp_path / "plain.png")
    args = ["-o", str(tmp_path / "out"), "--checkpoint", str(ckpt), "--soft"]
    assert run_main(main, "tinyseg.cutout", [str(tmp_path / "a.png"), str(tmp_path / "plain.png")]
                    + args) == 0
    with Image.open(tmp_path / "out" / "a-cutout.png") as im:
        out, icc = np.asarray(im), im.info.get("icc_profile")
    with Image.open(tmp_path / "out" / "plain-cutout.png") as im:
        assert im.info.get("icc_profile") is None
    assert icc == b"not a real profile"
    assert not out[:, :30, 3].any()                  # transparent stays transparent
    predictor = Predictor.from_file(ckpt)             # the network saw the photo on the padding
    p = photo_probability(predictor, onto_padding(rgb, own))
    want = (alpha_from_probability(p, soft=True).astype(np.uint16) * own + 127) // 255
    np.testing.assert_array_equal(out[..., 3], want)
    seen = onto_padding(rgb, own)
    assert (seen[:, :30] == PAD_RGB).all() and (seen[:, 35:] == rgb[:, 35:]).all()


def test_compose_on_a_colour_in_row_blocks_is_the_formula(monkeypatch):
    """The composition runs in blocks of rows (a 48-megapixel photo took 2.45 GB at once);
    every block gives round(α·photo + (1 − α)·colour), whatever the block size."""
    import tinyseg.cutout as C
    rng = np.random.default_rng(6)
    rgb = rng.integers(0, 256, (37, 11, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (37, 11), dtype=np.uint8)
    a = alpha.astype(np.float64)[..., None] / 255
    want = np.rint(a * rgb + (1 - a) * np.array([10, 200, 30])).astype(np.uint8)
    for rows in (1, 5, 256):
        monkeypatch.setattr(C, "_ROWS", rows)
        np.testing.assert_array_equal(np.asarray(compose(rgb, alpha, background=(10, 200, 30))),
                                      want)


def test_command_mask_soft_and_background(ckpt, tmp_path):
    write_jpeg(tmp_path / "p.jpg", 70, 90)
    args = [str(tmp_path / "p.jpg"), "-o", str(tmp_path), "--checkpoint", str(ckpt)]
    assert run_main(main, "tinyseg.cutout", args + ["--mask"]) == 0
    with Image.open(tmp_path / "p-mask.png") as im:
        assert im.mode == "L" and im.size == (70, 90)
        hard = np.asarray(im)
    assert set(np.unique(hard)) <= {0, 255}
    assert run_main(main, "tinyseg.cutout", args + ["--mask", "--soft"]) == 0
    with Image.open(tmp_path / "p-mask.png") as im:
        soft = np.asarray(im)
    assert len(np.unique(soft)) > 2  # a probability map, not a 0/255 mask
    np.testing.assert_array_equal(soft >= 128, hard == 255)
    assert run_main(main, "tinyseg.cutout", args + ["--background", "#0000ff"]) == 0
    with Image.open(tmp_path / "p-cutout.png") as im:
        assert im.mode == "RGB" and im.size == (70, 90)
        rgb = np.asarray(im)
    photo = read_photo(tmp_path / "p.jpg")
    bg = hard == 0
    assert (rgb[bg] == [0, 0, 255]).all() and (rgb[~bg] == photo[~bg]).all()


def test_a_folder_stands_for_its_photos_but_not_for_this_commands_outputs(ckpt, tmp_path,
                                                                            capsys):
    """A folder argument was 'skipped: is a directory'. Now it stands for its photos (by
    name, any case of suffix, not its sub-folders), and run again with -o the same folder
    it does not cut out its own outputs; a folder without photos is a failure."""
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "empty").mkdir()
    write_jpeg(photos / "b.jpg", 30, 20)
    write_jpeg(photos / "A.JPG", 20, 30, seed=1)
    write_jpeg(photos / "sub" / "c.jpg", 20, 20)
    write_jpeg(photos / "face-mask.png", 20, 20, seed=2)   # a photo of one's own, no face.*
    (photos / "._b.jpg").write_bytes(b"macOS resource fork")  # hidden: not a photo
    (photos / "notes.txt").write_text("not a photo")
    run = ["--checkpoint", str(ckpt), "-o", str(photos)]
    for _ in range(2):
        assert run_main(main, "tinyseg.cutout", [str(photos)] + run) == 0
        said = capsys.readouterr()
        names = [ln.split(" (")[0] for ln in said.out.splitlines()]
        assert names == [str(photos / "A.JPG"), str(photos / "b.jpg"),
                         str(photos / "face-mask.png")]
    assert "left out 3 earlier output(s) of this command" in said.err
    assert sorted(p.name for p in photos.glob("*.png")) == [
        "A-cutout.png", "b-cutout.png", "face-mask-cutout.png", "face-mask.png"]
    assert not (photos / "sub" / "c-cutout.png").exists()
    assert run_main(main, "tinyseg.cutout", [str(photos / "empty")] + run) == 1
    assert "empty: skipped: a folder with no photo in it" in capsys.readouterr().err


def test_unreadable_inputs_are_reported_and_others_done(ckpt, tmp_path, capsys):
    write_jpeg(tmp_path / "good.jpg", 40, 30)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (tmp_path / "notes.txt").write_text("hello")
    args = [str(tmp_path / n) for n in ["broken.jpg", "good.jpg", "missing.jpg", "notes.txt"]]
    code = run_main(main, "tinyseg.cutout", args + ["-o", str(tmp_path / "o"), "--checkpoint",
                                                    str(ckpt)])
    assert code == 1
    err = capsys.readouterr().err
    for name in ["broken.jpg", "missing.jpg", "notes.txt"]:
        assert name in err
    assert "1 of 4 photos written" in err
    assert (tmp_path / "o" / "good-cutout.png").is_file()
    assert not (tmp_path / "o" / "broken-cutout.png").exists()


def test_a_link_loop_and_a_pipe_are_reported_and_others_done(ckpt, tmp_path, capsys):
    """A symbolic-link loop stopped the whole batch with a traceback (resolving the names for
    the outputs); a named pipe waited forever for a writer. Both are now skipped by name."""
    import os
    write_jpeg(tmp_path / "good.jpg", 40, 30)
    os.symlink(tmp_path / "loop2.jpg", tmp_path / "loop1.jpg")
    os.symlink(tmp_path / "loop1.jpg", tmp_path / "loop2.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    args = [str(tmp_path / n) for n in ["loop1.jpg", "pipe.jpg", "good.jpg"]]
    code = run_main(main, "tinyseg.cutout", args + ["-o", str(tmp_path / "o"), "--checkpoint",
                                                    str(ckpt)])
    assert code == 1
    err = capsys.readouterr().err
    assert "loop1.jpg: skipped: cannot open (" in err, err
    assert "pipe.jpg: skipped: not a regular file" in err, err
    assert "1 of 3 photos written" in err
    assert sorted(q.name for q in (tmp_path / "o").iterdir()) == ["good-cutout.png"]


def test_no_model_is_a_clear_error(tmp_path, capsys, monkeypatch):
    import tinyseg.checkpoint as ck
    monkeypatch.setattr(ck, "default_weights", lambda: tmp_path / "none.npz")
    write_jpeg(tmp_path / "p.jpg", 20, 20)
    assert run_main(main, "tinyseg.cutout", [str(tmp_path / "p.jpg")]) == 1
    err = capsys.readouterr().err
    assert "no bundled model" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2


def test_probabilities_of_images_that_are_not_squares():
    """The docstrings said (N, S, S); any H, W works (the network pads and crops): each
    image's map has its own size and equals the map of the same image predicted alone."""
    from tinyseg.infer import predict_probabilities
    model = tiramisu_tiny(num_classes=2, rng=np.random.default_rng(0))
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 13)).astype(np.float32)
    p = predict_probabilities(model, x, batch_size=2)
    assert p.shape == (2, 20, 13) and np.all((p >= 0) & (p <= 1))
    alone = predict_probabilities(model, x[1:], batch_size=1)
    np.testing.assert_allclose(p[1:], alone, rtol=0, atol=1e-6)


def test_prediction_helpers_name_bad_arguments():
    """Each of these returned garbage or failed deep inside with a bare error."""
    from tinyseg.infer import predict_probabilities, softmax_person
    model = tiramisu_tiny(num_classes=2, rng=np.random.default_rng(0))
    x = np.zeros((2, 3, 16, 16), np.float32)
    for bad in (0, -1, 1.5):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            predict_probabilities(model, x, batch_size=bad)
    with pytest.raises(ValueError, match=r"expected an \(N, 3, H, W\) array, got list"):
        predict_probabilities(model, x.tolist())           # an AttributeError before
    x[1, 0, 3, 3] = np.nan     # blamed the weights ("its weights are damaged") before
    with pytest.raises(ValueError, match="the input holds NaN or infinite values "
                                         r"\(image 1 of 2\)"):
        predict_probabilities(model, x)
    for logits in (np.zeros((2, 4, 4)), np.zeros((1, 1, 4, 4))):
        with pytest.raises(ValueError, match="softmax_person: expected .* K >= 2"):
            softmax_person(logits)
    # complex values lost their imaginary part with only a ComplexWarning
    with pytest.raises(ValueError, match="softmax_person: expected real logits"):
        softmax_person(np.zeros((1, 2, 4, 4), np.complex64))
    with pytest.raises(ValueError, match="resize_bilinear: expected real numbers"):
        resize_bilinear(np.zeros((3, 3), np.complex128), 6, 6)
    with pytest.raises(ValueError, match="rows_per_chunk must be positive"):
        resize_bilinear(np.zeros((3, 3)), 6, 6, rows_per_chunk=-1)
    for h, w in ((2.5, 3), (3, "4"), (True, 3)):      # a float size was a bare TypeError
        with pytest.raises(ValueError, match="must be integers, got"):
            resize_bilinear(np.zeros((3, 3)), h, w)
    predictor = Predictor(model=model, size=16, mean=np.zeros(3, np.float32),
                          std=np.ones(3, np.float32))
    for rgb in ([[1]], np.zeros((0, 5, 3), np.uint8)):
        with pytest.raises(ValueError, match="photo_probability: expected a uint8"):
            photo_probability(predictor, rgb)


class _LeftColumn(_StandIn):
    """A stand-in network, blind to its input: person probability 0.9 in column 0, 0.2 in
    every other column (not mirror-symmetric, so a mirrored map not flipped back shows)."""

    def forward(self, x):
        z = np.full((x.shape[0], x.shape[2], x.shape[3]), np.log(0.2 / 0.8), np.float32)
        z[:, :, 0] = np.log(0.9 / 0.1)
        return np.stack([np.zeros_like(z), z], axis=1)


def test_flip_averages_with_the_mirror_image_flipped_back():
    """``predict_probabilities(flip=True)`` (used by cutout and the Predictor) had no test of
    its own; evaluate's copy of the flip had one."""
    from tinyseg.infer import predict_probabilities
    x = np.zeros((2, 3, 4, 5), np.float32)
    want = np.full((4, 5), 0.2, np.float32)
    want[:, 0] = 0.9
    np.testing.assert_allclose(predict_probabilities(_LeftColumn(), x)[1], want, rtol=1e-6)
    want[:, 0] = want[:, -1] = (0.9 + 0.2) / 2
    np.testing.assert_allclose(predict_probabilities(_LeftColumn(), x, flip=True)[1], want,
                               rtol=1e-6)


def test_softmax_person_of_large_logits():
    """p = 1 / (1 + exp(z0 − z1)) even where exp(z) overflows float32."""
    from tinyseg.infer import softmax_person
    z = np.zeros((1, 2, 1, 4), np.float32)
    z[0, 0, 0] = [1000.0, 0.0, -1000.0, 3000.0]
    z[0, 1, 0] = [1001.0, 2000.0, -999.0, 0.0]
    with np.errstate(over="raise", invalid="raise"):
        p = softmax_person(z)
    np.testing.assert_allclose(p[0, 0], [1 / (1 + np.exp(-1.0)), 1.0, 1 / (1 + np.exp(-1.0)),
                                         0.0], rtol=1e-6)


def _eval_net(seed):
    m = tiramisu_tiny(num_classes=2, rng=np.random.default_rng(seed))
    m.eval()
    return m


def test_predictor_from_file_mean_and_std(tmp_path):
    p = save_model(tmp_path / "m.npz", _eval_net(0),
                   make_meta(32, (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)))
    pred = Predictor.from_file(p)
    np.testing.assert_allclose(pred.mean, [0.4, 0.5, 0.6], rtol=1e-6)
    np.testing.assert_allclose(pred.std, [0.2, 0.25, 0.3], rtol=1e-6)
    img = np.full((1, 32, 32, 3), 153, np.uint8)                    # 0.6 of 255
    x = pred.normalize(img)
    np.testing.assert_allclose(x[0, :, 0, 0], (0.6 - np.array([0.4, 0.5, 0.6])) /
                               np.array([0.2, 0.25, 0.3]), atol=1e-6)


def test_out_directory_is_created_with_its_parents(ckpt, tmp_path, capsys):
    from tinyseg.cutout import main as cutout_main
    write_jpeg(tmp_path / "p.jpg", 40, 30)
    out = tmp_path / "a" / "b" / "c"
    assert run_main(cutout_main, "tinyseg.cutout", [str(tmp_path / "p.jpg"), "-o", str(out),
                                                    "--checkpoint", str(ckpt)]) == 0
    with Image.open(out / "p-cutout.png") as im:
        assert im.size == (40, 30) and im.mode == "RGBA"


def test_an_out_file_and_a_read_only_output_are_refused(ckpt, tmp_path, capsys):
    """'-o afile' said 'cannot create the output directory (File exists)'; a read-only
    output was replaced through the rename that writes every output (as any user who may
    write to the folder). Both are refused by name; the read-only file keeps its bytes."""
    import os
    write_jpeg(tmp_path / "p.jpg", 40, 30)
    write_jpeg(tmp_path / "q.jpg", 30, 40)
    (tmp_path / "afile").write_text("x")
    assert run_main(main, "tinyseg.cutout", [str(tmp_path / "p.jpg"), "-o",
                                             str(tmp_path / "afile"), "--checkpoint",
                                             str(ckpt)]) == 1
    assert "afile: is a file" in capsys.readouterr().err
    out = tmp_path / "o"
    out.mkdir()
    (out / "p-cutout.png").write_bytes(b"kept")
    os.chmod(out / "p-cutout.png", 0o444)
    assert run_main(main, "tinyseg.cutout", [str(tmp_path / "p.jpg"), str(tmp_path / "q.jpg"),
                                             "-o", str(out), "--checkpoint", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert f"p.jpg: cannot write {out / 'p-cutout.png'} (read-only; not replaced)" in err, err
    assert (out / "p-cutout.png").read_bytes() == b"kept" and (out / "q-cutout.png").is_file()


def test_pillow_warnings_name_the_photo(ckpt, tmp_path, capsys, monkeypatch):
    """A Pillow warning about a photo (here: larger than Pillow's pixel limit, which warns
    below twice the limit) is one line naming the photo, not Python's file:line format."""
    photo = tmp_path / "big.png"
    Image.new("RGB", (20, 20)).save(photo)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 300)
    assert run_main(main, "tinyseg.cutout", [str(photo), "--checkpoint", str(ckpt),
                                             "-o", str(tmp_path / "o")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"tinyseg.cutout: {photo}: warning: "), err
    assert "DecompressionBombWarning" not in err[0] and "PIL/" not in err[0]
    assert (tmp_path / "o" / "big-cutout.png").is_file()


def test_damaged_checkpoint_is_a_one_line_error(ckpt, tmp_path, capsys):
    """A checkpoint whose metadata holds a version that is not a number: exit 1, one line
    naming the file (it was a ValueError traceback)."""
    import json
    arrays = dict(np.load(ckpt))
    meta = json.loads(str(arrays["__meta__"]))
    arrays["__meta__"] = np.array(json.dumps({**meta, "checkpoint_version": "abc"}))
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    Image.new("RGB", (8, 8)).save(tmp_path / "p.png")
    assert run_main(main, "tinyseg.cutout", [str(tmp_path / "p.png"), "--checkpoint", str(bad),
                                             "-o", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyseg.cutout: error: ") and str(bad) in err
    assert len(err.strip().splitlines()) == 1


def test_a_model_whose_output_overflows_is_an_error_naming_it(ckpt, tmp_path, capsys):
    """It gave an all-transparent cut-out for every photo, exit 0; now one line naming the
    checkpoint, exit 1, and nothing written."""
    bad = overflowing_checkpoint(ckpt, tmp_path / "huge.npz")
    Image.new("RGB", (12, 8), (200, 100, 50)).save(tmp_path / "p.png")
    Image.new("RGB", (8, 12), (20, 100, 50)).save(tmp_path / "q.png")
    out = tmp_path / "o"
    assert run_main(main, "tinyseg.cutout", [str(tmp_path / "p.png"), str(tmp_path / "q.png"),
                                             "--checkpoint", str(bad), "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyseg.cutout: error: ") and str(bad) in err, err
    assert "NaN or infinite" in err and len(err.strip().splitlines()) == 1
    assert list(out.iterdir()) == []


def test_soft_and_threshold_exclude_each_other(ckpt, tmp_path, capsys):
    """``--soft`` makes the probability the alpha, so a ``--threshold`` given with it would be
    silently ignored: refused instead. Alone, each works."""
    photo = tmp_path / "p.jpg"
    write_jpeg(photo, 20, 16)
    base = [str(photo), "--checkpoint", str(ckpt), "-o", str(tmp_path / "o")]
    assert run_main(main, "tinyseg.cutout", base + ["--soft", "--threshold", "0.3"]) == 1
    assert "--threshold does not apply" in capsys.readouterr().err
    assert run_main(main, "tinyseg.cutout", base + ["--soft"]) == 0
    soft = np.asarray(Image.open(tmp_path / "o" / "p-cutout.png"))[..., 3]
    assert run_main(main, "tinyseg.cutout", base + ["--threshold", "0.3"]) == 0
    hard = np.asarray(Image.open(tmp_path / "o" / "p-cutout.png"))[..., 3]
    assert set(np.unique(hard)) <= {0, 255} and not np.array_equal(soft, hard)
