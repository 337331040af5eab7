"""tinyseg.plot: tick values, and that the PNG shows the lines where they belong."""
import math

import numpy as np
import pytest
from PIL import Image

from tinyseg.plot import COLORS, line_plot, nice_ticks


@pytest.mark.parametrize("lo,hi", [(0.13, 0.87), (1, 12), (0, 3000), (-5, 5), (5, 5),
                                   (0.81, 0.846), (1e-4, 3e-4), (2, 1),
                                   # equal after rounding: 7 ticks of 0.5, then a
                                   # ZeroDivisionError in line_plot; and a tiny range
                                   (0.5, 0.5000000000000001), (0, 1e-12)])
def test_nice_ticks_cover_the_range_with_round_steps(lo, hi):
    t = nice_ticks(lo, hi)
    assert t[0] <= min(lo, hi) and t[-1] >= max(lo, hi)
    assert 3 <= len(t) <= 12
    steps = np.diff(t)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]) + 1e-9)
    assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5))


def test_line_plot_of_a_series_flat_but_for_float_noise(tmp_path):
    path = line_plot({"a": [0.5, 0.5000000000000001]}, tmp_path / "flat.png")
    assert Image.open(path).size == (720, 440)


def test_nice_ticks_rejects_non_finite():
    with pytest.raises(ValueError, match="limits must be finite"):
        nice_ticks(0, float("nan"))


def test_line_plot_draws_each_series_in_its_colour(tmp_path):
    path = line_plot({"rising": [1, 2, 3, 4], "flat": ([1, 4], [2.5, 2.5]),
                      "gappy": [np.nan, 1.5, np.nan, 3.5]},
                     tmp_path / "a" / "p.png", "epoch", "loss", "Title", size=(500, 300))
    img = np.asarray(Image.open(path).convert("RGB"))
    assert img.shape == (300, 500, 3)
    for k in range(3):  # every series' colour appears (lines, markers, legend)
        assert np.any(np.all(img == COLORS[k], axis=-1)), k


def test_line_plot_log_axis_and_errors(tmp_path):
    line_plot({"loss": [2.0, 0.5, 0.05]}, tmp_path / "log.png", logy=True)
    with pytest.raises(ValueError, match="logy"):
        line_plot({"bad": [1.0, 0.0]}, tmp_path / "x.png", logy=True)
    with pytest.raises(ValueError, match="no series"):
        line_plot({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no finite"):
        line_plot({"nan": [np.nan]}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="x values"):
        line_plot({"bad": ([1, 2], [1, 2, 3])}, tmp_path / "x.png")


def _plot(tmp_path, series, **kw):
    from PIL import Image
    from tinyseg.plot import line_plot
    p = line_plot(series, tmp_path / "p.png", **kw)
    return np.asarray(Image.open(p).convert("RGB"))


def test_larger_y_is_drawn_higher(tmp_path):
    from tinyseg.plot import COLORS
    # two separate markers (a nan breaks the line): y=0 at x=1, y=1 at x=3
    img = _plot(tmp_path, {"a": [0.0, float("nan"), 1.0]}, size=(400, 300))
    rows, cols = np.nonzero(np.all(img == COLORS[0], axis=2))
    plot_area = cols < 345                      # leave out the legend's swatch (col 353 on)
    rows, cols = rows[plot_area], cols[plot_area]
    left = rows[cols < np.median(cols)].mean()
    right = rows[cols > np.median(cols)].mean()
    # x=1,y=0 is at the bottom-left corner of the axes, x=3,y=1 at the top-right one
    assert left > right + 100


def test_legend_swatches_use_the_series_colours(tmp_path):
    from tinyseg.plot import COLORS
    img = _plot(tmp_path, {"only": [1.0, 2.0, 3.0]})
    assert np.all(img == COLORS[1], axis=2).sum() == 0
    assert np.all(img == COLORS[0], axis=2)[:, 720 - 100:].sum() > 0   # swatch in the legend


def test_log_axis_reaches_the_largest_decade(tmp_path):
    from tinyseg.plot import COLORS
    img = _plot(tmp_path, {"a": [1.0, 10.0, 100.0]}, logy=True)
    hit = np.all(img == COLORS[0], axis=2)
    # top of the axes is row 18 (no title): y = 100 is drawn there, nothing above it
    assert hit[:14].sum() == 0
    assert hit[14:23].sum() > 0


@pytest.mark.parametrize("lo, hi, expect", [
    (0, 14, [0, 2, 4, 6, 8, 10, 12, 14]),          # step 2 (8 ticks) ties step 5 (4 ticks)
    (0, 1.4, [0, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]),
])
def test_nice_ticks_tie_keeps_the_finer_step(lo, hi, expect):
    np.testing.assert_allclose(nice_ticks(lo, hi), expect, atol=1e-12)
