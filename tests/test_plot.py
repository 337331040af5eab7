"""tinyseg.plot: tick values, and that the PNG shows the lines where they belong."""
import math

import numpy as np
import pytest
from PIL import Image

from tinyseg.plot import COLORS, line_plot, nice_ticks


@pytest.mark.parametrize("lo,hi", [(0.13, 0.87), (1, 12), (0, 3000), (-5, 5), (5, 5),
                                   (0.81, 0.846), (1e-4, 3e-4), (2, 1)])
def test_nice_ticks_cover_the_range_with_round_steps(lo, hi):
    t = nice_ticks(lo, hi)
    assert t[0] <= min(lo, hi) and t[-1] >= max(lo, hi)
    assert 3 <= len(t) <= 12
    steps = np.diff(t)
    np.testing.assert_allclose(steps, steps[0], rtol=1e-9)
    mantissa = steps[0] / 10 ** math.floor(math.log10(steps[0]) + 1e-9)
    assert any(abs(mantissa - m) < 1e-6 for m in (1, 2, 5))


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
