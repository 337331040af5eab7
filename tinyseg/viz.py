"""Pictures for lessons and commands, with NumPy and Pillow only.

* ``overlay(image, mask, color, alpha)``: the mask tinted over the image, with its outline;
* ``grid(images, ncols, labels)``: a contact sheet, a caption under each picture;
* ``save_png(path, image)``: written atomically.

Images are ``uint8 (H, W, 3)`` RGB; masks are ``(H, W)`` with nonzero = person.
"""
from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .io import atomic_write_bytes

PathLike = Union[str, os.PathLike]

PERSON = (255, 40, 90)
KEPT = (40, 170, 70)
REJECTED = (200, 60, 40)


def _rgb(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"viz: expected a uint8 (H, W, 3) or (H, W) image, got {image.dtype} "
                         f"{image.shape}")
    return image


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with a 4-neighbour outside it: the mask's boundary, bool (H, W)."""
    m = np.asarray(mask) != 0
    p = np.pad(m, 1, mode="constant", constant_values=False)
    inner = p[:-2, 1:-1] & p[2:, 1:-1] & p[1:-1, :-2] & p[1:-1, 2:]
    return m & ~inner


def overlay(image: np.ndarray, mask: np.ndarray, color: Tuple[int, int, int] = PERSON,
            alpha: float = 0.45, edge: bool = True) -> np.ndarray:
    """``out = (1 - alpha) image + alpha color`` where the mask is set; outline in ``color``."""
    image = _rgb(image)
    m = np.asarray(mask) != 0
    if m.shape != image.shape[:2]:
        raise ValueError(f"overlay: mask shape {m.shape} differs from the image's "
                         f"{image.shape[:2]}")
    out = image.astype(np.float32)
    col = np.asarray(color, dtype=np.float32)
    out[m] = (1.0 - alpha) * out[m] + alpha * col
    if edge:
        out[outline(m)] = col
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def grid(images: Sequence[np.ndarray], ncols: int, labels: Optional[Sequence[str]] = None,
         pad: int = 4, background: Tuple[int, int, int] = (255, 255, 255),
         font_size: int = 12, label_color: Tuple[int, int, int] = (0, 0, 0)) -> np.ndarray:
    """Tile ``images`` (any sizes; each centred in a cell of the largest size) in rows of
    ``ncols``, with one text line (``labels[i]``, may contain newlines) under each."""
    if not images:
        raise ValueError("grid: no images")
    imgs = [_rgb(i) for i in images]
    ncols = max(1, min(int(ncols), len(imgs)))
    nrows = -(-len(imgs) // ncols)
    ch = max(i.shape[0] for i in imgs)
    cw = max(i.shape[1] for i in imgs)
    font = _font(font_size)
    lines = 0
    if labels is not None:
        if len(labels) != len(imgs):
            raise ValueError(f"grid: {len(labels)} labels for {len(imgs)} images")
        lines = max(str(t).count("\n") + 1 for t in labels)
    th = (font_size + 3) * lines
    H = pad + nrows * (ch + th + pad)
    W = pad + ncols * (cw + pad)
    canvas = Image.new("RGB", (W, H), tuple(background))
    draw = ImageDraw.Draw(canvas)
    for k, img in enumerate(imgs):
        r, c = divmod(k, ncols)
        y0 = pad + r * (ch + th + pad)
        x0 = pad + c * (cw + pad)
        canvas.paste(Image.fromarray(img), (x0 + (cw - img.shape[1]) // 2,
                                            y0 + (ch - img.shape[0]) // 2))
        if labels is not None:
            draw.multiline_text((x0, y0 + ch + 2), str(labels[k]), fill=tuple(label_color),
                                font=font, spacing=3)
    return np.asarray(canvas)


def frame(image: np.ndarray, color: Tuple[int, int, int], width: int = 3) -> np.ndarray:
    """A copy of ``image`` with a coloured border (e.g. kept in green, rejected in red)."""
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 0:
        # out[-0:] would be the whole picture
        raise ValueError(f"frame: width must be an integer >= 0, got {width!r}")
    out = _rgb(image).copy()
    if width == 0:
        return out
    out[:width], out[-width:] = color, color
    out[:, :width], out[:, -width:] = color, color
    return out


def save_png(path: PathLike, image: np.ndarray) -> Path:
    """Write ``image`` as PNG via a temporary file and a rename."""
    buf = io.BytesIO()
    Image.fromarray(_rgb(image)).save(buf, format="PNG", optimize=True)
    return atomic_write_bytes(path, buf.getvalue())
