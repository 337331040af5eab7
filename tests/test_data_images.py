"""tinyseg.data.images: reading every kind of image file, and the letterbox policy."""
import warnings

import numpy as np
import pytest
from PIL import Image

from tinyseg.data.images import (PAD_RGB, BadImage, letterbox, letterbox_box, read_image,
                                 unletterbox)


@pytest.fixture
def picture(rng):
    return rng.integers(0, 256, size=(30, 40, 3), dtype=np.uint8)


def test_rgb_png_reads_exactly(tmp_path, picture):
    Image.fromarray(picture).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)
    np.testing.assert_array_equal(out, picture)


def test_grayscale_becomes_three_equal_channels(tmp_path, picture):
    gray = picture[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (30, 40, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[..., c], gray)


def test_palette_and_alpha_images_convert(tmp_path, picture):
    Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "p.png")
    pal = Image.open(tmp_path / "p.png")
    assert pal.mode == "P"
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"),
                                  np.asarray(pal.convert("RGB")))
    rgba = np.dstack([picture, np.full((30, 40), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), picture)  # alpha dropped
    # palette with a transparent entry: no Pillow warning, still RGB
    im = Image.fromarray(picture).convert("P", palette=Image.Palette.ADAPTIVE)
    im.info["transparency"] = 0
    im.save(tmp_path / "pt.png", transparency=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_image(tmp_path / "pt.png").shape == (30, 40, 3)


def test_cmyk_jpeg_converts(tmp_path, picture):
    Image.fromarray(picture).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    out = read_image(tmp_path / "c.jpg")
    assert out.shape == (30, 40, 3) and out.dtype == np.uint8
    # JPEG is lossy: the colours come back within a few levels on average
    assert np.abs(out.astype(int) - picture.astype(int)).mean() < 25


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    v16 = np.array([[0, 257, 32896], [65535, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(v16).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = read_image(tmp_path / "d.png")
    expect = np.rint(v16 / 257.0).astype(np.uint8)  # 0, 1, 128, 255, 4, 233
    np.testing.assert_array_equal(out[..., 0], expect)
    np.testing.assert_array_equal(out[..., 2], expect)


@pytest.mark.parametrize("values, expect", [
    ([[0, 100], [255, 10]], [[0, 100], [255, 10]]),              # 8-bit values: as they are
    ([[0, 257], [65535, 1000]], [[0, 1], [255, 4]]),             # 16-bit range: / 257
    ([[0, 2**31 - 1], [-5, 2**30]], [[0, 255], [0, 128]]),       # full 32-bit range
])
def test_thirty_two_bit_integer_images_are_read_by_their_range(tmp_path, values, expect):
    """A 32-bit TIFF of 8-bit values was divided by 257 as if 16-bit: all black."""
    Image.fromarray(np.array(values, np.int32)).save(tmp_path / "i.tif")
    assert Image.open(tmp_path / "i.tif").mode == "I"
    np.testing.assert_array_equal(read_image(tmp_path / "i.tif")[..., 1], expect)


def test_float_images_are_refused(tmp_path):
    Image.fromarray(np.ones((4, 4), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(BadImage, match="unsupported pixel mode 'F'"):
        read_image(tmp_path / "f.tif")


def test_truncated_corrupt_and_missing_files(tmp_path, picture):
    Image.fromarray(picture).save(tmp_path / "ok.jpg", quality=90)
    data = (tmp_path / "ok.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImage, match="truncated"):
        read_image(tmp_path / "cut.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"this is not a picture at all")
    with pytest.raises(BadImage, match="not an image"):
        read_image(tmp_path / "junk.jpg")
    with pytest.raises(BadImage, match="not found"):
        read_image(tmp_path / "absent.jpg")


@pytest.mark.parametrize("h, w, size, expect", [
    (30, 40, 20, (2, 0, 15, 20)),      # landscape: width to 20, height 15, padded 2 + 3
    (40, 30, 20, (0, 2, 20, 15)),      # portrait
    (50, 50, 32, (0, 0, 32, 32)),      # square
    (1, 500, 16, (7, 0, 1, 16)),       # a line keeps at least one pixel
])
def test_letterbox_box(h, w, size, expect):
    assert letterbox_box(h, w, size) == expect


def test_letterbox_keeps_aspect_and_pads(picture):
    square, box = letterbox(picture, 20)
    top, left, h, w = box
    assert square.shape == (20, 20, 3) and box == (2, 0, 15, 20)
    assert (square[:top] == PAD_RGB).all() and (square[top + h:] == PAD_RGB).all()
    inner = np.asarray(Image.fromarray(picture).resize((w, h), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(square[top:top + h, left:left + w], inner)


def test_letterbox_mask_is_nearest_and_padded_with_background(rng):
    mask = (rng.random((30, 40)) < 0.5).astype(np.uint8)
    square, box = letterbox(mask, 64, nearest=True)
    assert set(np.unique(square)) <= {0, 1}
    top, left, h, w = box
    assert square[:top].sum() == 0 and square[top + h:].sum() == 0
    # upscaling by 1.6 with nearest neighbour: every output pixel copies an input pixel
    ys = np.minimum(((np.arange(h) + 0.5) * 30 / h).astype(int), 29)
    xs = np.minimum(((np.arange(w) + 0.5) * 40 / w).astype(int), 39)
    np.testing.assert_array_equal(square[top:top + h, left:left + w], mask[ys][:, xs])


def test_unletterbox_inverts_letterbox_for_masks(rng):
    mask = np.zeros((30, 40), np.uint8)
    mask[5:25, 10:30] = 1
    square, box = letterbox(mask, 80, nearest=True)  # exact factor 2 both ways
    back = unletterbox(square, box, 30, 40)
    np.testing.assert_array_equal(back, mask)


def test_unletterbox_refuses_what_it_would_get_wrong():
    """Float probabilities came back all 0 (a cast to uint8), labels 300 as 44, and a box
    outside the square as an empty picture, all without an error (second fuzzing helper)."""
    square = np.zeros((8, 8), np.uint8)
    for bad, says in ((np.full((8, 8), 0.7, np.float32), "expected an integer .*float32"),
                      (np.full((8, 8), 300, np.int32), "labels must be 0-255 .* 300..300"),
                      ([[1]], "expected an integer .*list")):
        with pytest.raises(ValueError, match="unletterbox: " + says):
            unletterbox(bad, (0, 0, 8, 8), 4, 4)
    # what predict_labels gives (int64) and boolean masks are label maps too
    for labels in (np.eye(8, dtype=np.int64), np.eye(8, dtype=bool)):
        back = unletterbox(labels, (0, 0, 8, 8), 8, 8)
        assert back.dtype == np.uint8
        np.testing.assert_array_equal(back, np.eye(8))
    for box in ((0, 0, 0, 0), (-3, 0, 4, 4), (0, 4, 8, 8)):
        with pytest.raises(ValueError, match="is not inside the 8x8 square"):
            unletterbox(square, box, 4, 4)
    with pytest.raises(ValueError, match="output size must be positive integers"):
        unletterbox(square, (0, 0, 8, 8), 0, 4)


def test_letterbox_rejects_wrong_dtype():
    with pytest.raises(ValueError, match="letterbox"):
        letterbox(np.zeros((4, 4, 3), np.float32), 8)


@pytest.mark.parametrize("shape, size, says", [
    ((0, 0, 3), 8, r"H, W >= 1, got uint8 \(0, 0, 3\)"),   # was a ZeroDivisionError
    ((0, 5, 3), 8, r"\(0, 5, 3\)"),                         # was a made-up black row
    ((4, 5, 4), 8, r"\(4, 5, 4\)"),                         # was a broadcasting error
    ((4, 5, 3), 0, "size must be an integer from 1 to 1024, got 0"),
    ((4, 5, 3), 10**6, "size must be an integer from 1 to 1024, got 1000000"),   # OOM-killed
])
def test_letterbox_names_an_empty_or_odd_picture(shape, size, says):
    with pytest.raises(ValueError, match="letterbox: .*" + says):
        letterbox(np.zeros(shape, np.uint8), size)


@pytest.mark.parametrize("shape, size, out", [((30, 40), 80, (60, 80)), ((40, 30), 50, (90, 70)),
                                               ((30, 40), 64, (30, 40)), ((31, 7), 16, (5, 3))])
def test_unletterbox_never_returns_padding(shape, size, out):
    """Padding marked 7: a crop one row or column too wide shows up as a 7 (a random mask
    sent through letterbox and back did not catch it)."""
    mask = (np.random.default_rng(2).random(shape) < 0.5).astype(np.uint8)
    square, box = letterbox(mask, size, nearest=True, fill=7)
    back = unletterbox(square, box, *out)
    assert back.shape == out and not (back == 7).any()


def test_read_image_la_png(tmp_path):
    from PIL import Image
    v = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    a = np.full((3, 4), 7, np.uint8)
    Image.fromarray(np.stack([v, a], axis=2), mode="LA").save(tmp_path / "la.png")
    got = read_image(tmp_path / "la.png")
    assert got.shape == (3, 4, 3) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, np.repeat(v[:, :, None], 3, axis=2))


@pytest.mark.parametrize("h, w, size, expect", [
    (30, 41, 20, (2, 0, 15, 20)),      # 30 * 20/41 = 14.63 -> 15, not 14
    (41, 30, 20, (0, 2, 20, 15)),
])
def test_letterbox_box_rounds_to_nearest(h, w, size, expect):
    assert letterbox_box(h, w, size) == expect


def test_letterbox_box_column_keeps_one_pixel():
    assert letterbox_box(500, 1, 16) == (0, 7, 16, 1)


def test_read_image_names_a_directory(tmp_path):
    (tmp_path / "photo.jpg").mkdir()
    with pytest.raises(BadImage, match="is a directory"):
        read_image(tmp_path / "photo.jpg")


def test_a_file_it_may_not_read_is_not_called_corrupt(tmp_path, monkeypatch):
    """Permission denied says so (cutout reports it by name); it used to read "corrupt or
    truncated ([Errno 13] ...)". Simulated, since root may read any file."""
    import tinyseg.data.images as images

    def refuse(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(images.Image, "open", refuse)
    (tmp_path / "p.png").write_bytes(b"")        # the file is there; opening it is refused
    with pytest.raises(BadImage) as e:
        read_image(tmp_path / "p.png")
    assert "permission denied" in str(e.value) and "corrupt" not in str(e.value)
