"""tinyseg.viz: overlays, grids and PNG files for lessons and commands."""
import numpy as np
import pytest
from PIL import Image

from tinyseg.viz import frame, grid, outline, overlay, save_png


def test_overlay_blends_inside_the_mask_only():
    img = np.full((6, 6, 3), 100, np.uint8)
    mask = np.zeros((6, 6), np.uint8)
    mask[1:5, 1:5] = 1
    out = overlay(img, mask, color=(200, 0, 0), alpha=0.5, edge=False)
    np.testing.assert_array_equal(out[0, 0], [100, 100, 100])
    np.testing.assert_array_equal(out[2, 2], [150, 50, 50])  # 0.5 * 100 + 0.5 * colour
    edged = overlay(img, mask, color=(200, 0, 0), alpha=0.5)
    np.testing.assert_array_equal(edged[1, 1], [200, 0, 0])  # the outline
    np.testing.assert_array_equal(edged[2, 2], [150, 50, 50])  # the inside
    with pytest.raises(ValueError, match="mask shape"):
        overlay(img, mask[:5])


def test_outline_is_the_boundary():
    m = np.zeros((7, 7), bool)
    m[1:6, 1:6] = True
    o = outline(m)
    assert o.sum() == 16 and not o[3, 3] and o[1, 3]


def test_grid_places_tiles_and_labels():
    a = np.zeros((10, 20, 3), np.uint8)
    b = np.full((20, 10, 3), 255, np.uint8)
    g = grid([a, b, a], ncols=2, pad=2)
    # cells are 20 x 20, three tiles in two rows: 2 + 2 * (20 + 2) each way
    assert g.shape == (46, 46, 3)
    assert (g[2 + 5:2 + 15, 2:22] == 0).all()  # a, centred vertically in its cell
    assert (g[2:22, 24 + 5:24 + 15] == 255).all()  # b, centred horizontally
    labelled = grid([a, b, a], ncols=2, pad=2, labels=["one", "two", "three\nlines"])
    assert labelled.shape[0] > g.shape[0]
    text = labelled[22:2 + 20 + 34, 2:22]
    assert (text < 128).any()  # dark text drawn under the first tile
    with pytest.raises(ValueError, match="labels"):
        grid([a, b], ncols=2, labels=["x"])


def test_frame_and_save_png(tmp_path):
    img = np.full((8, 8, 3), 9, np.uint8)
    f = frame(img, (0, 255, 0), width=2)
    assert (f[0] == [0, 255, 0]).all() and (f[4, 4] == 9).all()
    np.testing.assert_array_equal(frame(img, (0, 255, 0), width=0), img)  # was all green
    for bad in (-1, 2.0):              # 2.0 passed the check, then failed slicing
        with pytest.raises(ValueError, match=f"width must be an integer >= 0, got {bad}"):
            frame(img, (0, 255, 0), width=bad)
    p = save_png(tmp_path / "sub" / "x.png", f)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), f)
    assert not list((tmp_path / "sub").glob("*.tmp"))


def test_overlay_blends_alpha_of_the_colour():
    from tinyseg.viz import overlay
    img = np.zeros((3, 3, 3), np.uint8)
    img[...] = (100, 200, 0)
    mask = np.zeros((3, 3), np.uint8)
    mask[1, 1] = 1
    out = overlay(img, mask, color=(200, 0, 100), alpha=0.25, edge=False)
    want = img.copy()
    want[1, 1] = (125, 150, 25)          # 0.75 * image + 0.25 * colour
    np.testing.assert_array_equal(out, want)


def test_outline_includes_the_image_border():
    from tinyseg.viz import outline
    ring = np.ones((3, 3), bool)
    ring[1, 1] = False
    np.testing.assert_array_equal(outline(np.ones((3, 3), np.uint8)), ring)


def test_grid_centres_each_image_in_its_cell():
    from tinyseg.viz import grid
    a = np.full((4, 10, 3), 10, np.uint8)      # wide: cell is 8 high, 10 wide
    b = np.full((8, 2, 3), 20, np.uint8)       # tall
    out = grid([a, b], ncols=2, pad=0, background=(255, 255, 255))
    want = np.full((8, 20, 3), 255, np.uint8)
    want[2:6, 0:10] = 10                       # (8 - 4) // 2 = 2 rows down
    want[0:8, 10 + 4:10 + 6] = 20              # (10 - 2) // 2 = 4 columns right
    np.testing.assert_array_equal(out, want)
