"""Line plots drawn with Pillow: loss curves, IoU curves, memory against depth.

tinyseg has no plotting dependency beyond Pillow (already needed for images), so this module
draws the few plots the lessons and the training command need: one or more named series of
``(x, y)`` points joined by lines, axes with "nice" tick values (steps of 1, 2 or 5 times a
power of ten), axis labels, a title and a legend.

    >>> from tinyseg.plot import line_plot
    >>> line_plot({"train": [0.9, 0.6, 0.5], "val": [1.0, 0.7, 0.65]},
    ...           "loss.png", xlabel="epoch", ylabel="loss", title="Cross-entropy")

A series is either a list of ``y`` values (plotted at ``x = 1, 2, …, n``, e.g. one value per
epoch) or a pair ``(xs, ys)``.  Non-finite values (``nan``, ``inf``) are left out and break the
line, so a metric that is only measured every few epochs can be given as a list with ``nan``
in between.
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Mapping, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io import atomic_write_bytes

__all__ = ["line_plot", "nice_ticks"]

Series = Union[Sequence[float], Tuple[Sequence[float], Sequence[float]]]

# Tableau-10: distinguishable colours, also in print.
COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def nice_ticks(lo: float, hi: float, target: int = 6) -> list:
    """About ``target`` round tick values covering ``[lo, hi]``: steps of 1, 2, 5 × 10^k."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError(f"nice_ticks: limits must be finite, got ({lo}, {hi})")
    if hi < lo:
        lo, hi = hi, lo
    if hi - lo <= 1e-9 * max(abs(lo), abs(hi)):   # equal once the ticks are rounded
        pad = abs(lo) * 0.5 if lo != 0 else 1.0
        lo, hi = lo - pad, hi + pad
    raw = (hi - lo) / max(target - 1, 1)
    mag = 10.0 ** math.floor(math.log10(raw))
    best = None
    for m in (1, 2, 5, 10):  # the step whose tick count is closest to ``target``
        step = m * mag
        first = math.floor(lo / step + 1e-9) * step
        last = math.ceil(hi / step - 1e-9) * step
        n = int(round((last - first) / step)) + 1
        if best is None or abs(n - target) < abs(best[0] - target):
            best = (n, first, step)
    n, first, step = best
    digits = max(12, 3 - math.floor(math.log10(step)))   # float noise off, ticks distinct
    return [round(first + i * step, digits) for i in range(n)]


def _fmt(v: float, step: float) -> str:
    """A tick label with just enough decimals for ``step`` (e.g. 0.25 -> 2 decimals)."""
    if v == 0:
        return "0"
    if abs(v) >= 1e5 or abs(v) < 1e-3:
        return f"{v:.2g}"
    decimals = max(0, -int(math.floor(math.log10(step) + 1e-9)))
    if decimals and abs(step * 10 ** decimals - round(step * 10 ** decimals)) > 1e-6:
        decimals += 1  # steps like 0.25
    return f"{v:.{decimals}f}"


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _points(s: Series) -> Tuple[np.ndarray, np.ndarray]:
    if isinstance(s, tuple) and len(s) == 2 and np.ndim(s[0]) == 1:
        xs, ys = np.asarray(s[0], dtype=float), np.asarray(s[1], dtype=float)
    else:
        ys = np.asarray(s, dtype=float).reshape(-1)
        xs = np.arange(1, ys.size + 1, dtype=float)
    if xs.shape != ys.shape:
        raise ValueError(f"line_plot: a series has {xs.size} x values and {ys.size} y values")
    return xs, ys


def line_plot(series: Mapping[str, Series], path, xlabel: str = "", ylabel: str = "",
              title: str = "", size: Tuple[int, int] = (720, 440), logy: bool = False,
              markers: bool = True) -> Path:
    """Draw one line per named series and save a PNG to ``path``; returns the path.

    Parameters
    ----------
    series : ``{name: ys}`` or ``{name: (xs, ys)}``; ``ys`` alone is plotted at x = 1 … n.
        Insertion order sets the colours and the legend order.
    path : where to write the image (parent directories are created).
    xlabel, ylabel, title : text around the axes.
    size : ``(width, height)`` in pixels.
    logy : a logarithmic y axis (base 10; all finite y values must be > 0).
    markers : a small dot on every point (useful when there are few points).
    """
    if not series:
        raise ValueError("line_plot: no series given")
    data = {name: _points(s) for name, s in series.items()}
    finite = [(xs[np.isfinite(ys) & np.isfinite(xs)], ys[np.isfinite(ys) & np.isfinite(xs)])
              for xs, ys in data.values()]
    all_x = np.concatenate([f[0] for f in finite])
    all_y = np.concatenate([f[1] for f in finite])
    if all_x.size == 0:
        raise ValueError("line_plot: no finite points to draw")
    if logy:
        if np.any(all_y <= 0):
            raise ValueError("line_plot: logy=True needs every y value > 0")
        all_y = np.log10(all_y)

    def ty(v):  # data y -> plotted y (log10 when logy)
        return np.log10(v) if logy else v

    xt = nice_ticks(float(all_x.min()), float(all_x.max()))
    if logy:
        lo, hi = math.floor(all_y.min()), math.ceil(all_y.max())
        yt = list(range(lo, hi + 1)) if hi > lo else [lo, lo + 1]
    else:
        yt = nice_ticks(float(all_y.min()), float(all_y.max()))
    x0, x1, y0, y1 = xt[0], xt[-1], yt[0], yt[-1]

    W, H = size
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font, small = _font(15), _font(12)
    names = list(data)
    legend_w = max(int(d.textlength(n, font=small)) for n in names) + 36
    # the legend sits right of the axes, so it never hides a line
    left, right, top, bottom = 78, legend_w + 24, 40 if title else 18, 58
    pw, ph = W - left - right, H - top - bottom

    def px(x):
        return left + (x - x0) / (x1 - x0) * pw

    def py(y):
        return top + ph - (y - y0) / (y1 - y0) * ph

    # grid, ticks, tick labels
    xstep = xt[1] - xt[0] if len(xt) > 1 else 1.0
    ystep = yt[1] - yt[0] if len(yt) > 1 else 1.0
    for v in xt:
        X = px(v)
        d.line([(X, top), (X, top + ph)], fill=(232, 232, 232))
        d.line([(X, top + ph), (X, top + ph + 5)], fill="black")
        d.text((X, top + ph + 8), _fmt(v, xstep), fill="black", font=small, anchor="ma")
    for v in yt:
        Y = py(v)
        d.line([(left, Y), (left + pw, Y)], fill=(232, 232, 232))
        d.line([(left - 5, Y), (left, Y)], fill="black")
        label = f"1e{int(v)}" if logy else _fmt(v, ystep)
        d.text((left - 8, Y), label, fill="black", font=small, anchor="rm")
    d.rectangle([left, top, left + pw, top + ph], outline="black")

    # the lines
    for k, (name, (xs, ys)) in enumerate(data.items()):
        color = COLORS[k % len(COLORS)]
        run = []
        for x, y in zip(xs, ys):
            if math.isfinite(x) and math.isfinite(y):
                run.append((px(x), py(ty(y))))
            else:
                if len(run) > 1:
                    d.line(run, fill=color, width=2, joint="curve")
                run = []
        if len(run) > 1:
            d.line(run, fill=color, width=2, joint="curve")
        if markers:
            for x, y in zip(xs, ys):
                if math.isfinite(x) and math.isfinite(y):
                    X, Y = px(x), py(ty(y))
                    d.ellipse([X - 3, Y - 3, X + 3, Y + 3], fill=color)

    # labels, title, legend
    if title:
        d.text((left + pw / 2, 10), title, fill="black", font=font, anchor="ma")
    if xlabel:
        d.text((left + pw / 2, H - 22), xlabel, fill="black", font=font, anchor="ma")
    if ylabel:
        tw = int(d.textlength(ylabel, font=font)) + 4
        lab = Image.new("RGB", (tw, 22), "white")
        ImageDraw.Draw(lab).text((2, 2), ylabel, fill="black", font=font)
        lab = lab.rotate(90, expand=True)
        img.paste(lab, (6, int(top + ph / 2 - lab.height / 2)))
    lw, lh = legend_w, 18 * len(names) + 8
    lx, ly = left + pw + 14, top
    d.rectangle([lx, ly, lx + lw, ly + lh], fill="white", outline=(160, 160, 160))
    for k, n in enumerate(names):
        color = COLORS[k % len(COLORS)]
        yy = ly + 13 + 18 * k
        d.line([(lx + 6, yy), (lx + 24, yy)], fill=color, width=3)
        d.text((lx + 30, yy), n, fill="black", font=small, anchor="lm")

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return atomic_write_bytes(path, buf.getvalue())    # never a half-written curves.png
