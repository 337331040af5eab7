"""Pixels: reading any image file as RGB, and the resizing policy.

Reading
-------
``read_image(path)`` returns ``uint8 (H, W, 3)`` RGB for whatever a photo collection holds:

* RGB: as is.  Grayscale (``L``, ``1``), palette (``P``), ``CMYK``, ``YCbCr``, ``LAB`` and
  images with alpha (``RGBA``, ``LA``, ``PA``): converted to RGB (the alpha is dropped;
  ``read_picture`` also returns it, and the ICC colour profile, for ``cutout``).
* 16-bit grayscale (``I;16``): scaled to 8 bits, ``v8 = round(v16 / 257)`` (Pillow's own
  conversion would clip everything above 255 to white).  32-bit integer grayscale (``I``,
  which Pillow also uses for some 16-bit files) is read by its range: values up to 255 as
  they are, up to 65535 as 16-bit, larger ones scaled from 2³¹ − 1; negatives are 0.
* Missing, corrupt or truncated files, and modes that have no sensible RGB reading (float
  ``F``): ``BadImage`` with the reason.  Callers skip such images, count them and list
  them in a warning.

EXIF orientation is *not* applied: COCO polygons are in the stored pixel grid.

Resizing policy ("letterbox")
-----------------------------
Training images are squares of side ``S``.  A person photo is kept whole and undistorted:
the longer side is resized to ``S`` (aspect ratio kept: bilinear with Pillow's
antialiasing for the image, nearest neighbour for the mask), and the shorter side is padded
symmetrically up to ``S``.  Padded image pixels take the constant ``PAD_RGB`` (close to the
mean colour of photos, so they normalise to about 0); padded mask pixels are background
(0).  The box ``(top, left, height, width)`` of the real picture inside the square is kept,
so a prediction can be cropped and resized back to the photo (``unletterbox``).  Cropping
was rejected: it cuts off heads and feet at the borders, and at inference it would leave
parts of the photo without a prediction.
"""
from __future__ import annotations

import os
import stat
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

PathLike = Union[str, os.PathLike]

#: Fill colour of the padding, RGB (the ImageNet mean colour, rounded).
PAD_RGB = (124, 116, 104)
#: The largest square side S the commands and checkpoints accept.  The presets train at
#: 32-128; memory grows with S² (one photo at S = 1024 took 2.4 GB with ``tiramisu_tiny``), so
#: a larger side is a damaged checkpoint or a typo, refused before it exhausts the memory.
MAX_SIZE = 1024
#: A one-line statement of the policy, stored with every cache.
RESIZE_POLICY = ("letterbox: longer side resized to S (image bilinear+antialias, mask nearest), "
                 f"shorter side padded symmetrically (image RGB {PAD_RGB}, mask 0 = background)")

Box = Tuple[int, int, int, int]


class BadImage(Exception):
    """An image file that cannot be used; ``str(e)`` is the reason."""


_CONVERTIBLE = {"RGB", "L", "1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBA", "RGBa",
                "RGBX", "LA", "La"}


def image_to_rgb(im: Image.Image) -> np.ndarray:
    """A loaded Pillow image as ``uint8 (H, W, 3)`` RGB (see the module docstring)."""
    mode = im.mode
    if mode == "RGB":
        return np.asarray(im, dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode == "I":
        v = np.asarray(im).astype(np.float64)
        top = v.max(initial=0.0)
        if mode.startswith("I;16") or 255 < top <= 65535:
            scale = 257.0
        else:
            scale = 1.0 if top <= 255 else (2**31 - 1) / 255.0
        v8 = np.clip(np.rint(v / scale), 0, 255).astype(np.uint8)
        return np.repeat(v8[:, :, None], 3, axis=2)
    if mode in _CONVERTIBLE:
        if mode == "P" and "transparency" in im.info:
            im = im.convert("RGBA")  # avoids Pillow's warning about palette transparency
        return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    raise BadImage(f"unsupported pixel mode {mode!r}")


def image_alpha(im: Image.Image) -> Optional[np.ndarray]:
    """The image's own transparency as ``uint8 (H, W)`` (255 opaque), or ``None`` when it has
    none or every pixel is opaque: an alpha band (``RGBA``, ``LA``, ``PA``) or a palette or
    grey image with a transparent colour."""
    if "transparency" in im.info and im.mode in ("P", "L", "RGB"):
        im = im.convert("RGBA")
    if "A" not in im.getbands():
        return None
    alpha = np.asarray(im.getchannel("A"), dtype=np.uint8)
    return None if alpha.min(initial=255) == 255 else alpha.copy()


def read_image(path: PathLike, upright: bool = False) -> np.ndarray:
    """The file at ``path`` as ``uint8 (H, W, 3)`` RGB, or ``BadImage`` with the reason.

    ``upright=True`` applies the EXIF orientation (a phone photo as it is meant to be seen);
    COCO's annotations are drawn on the stored pixels, so the data path leaves it off.
    """
    return read_picture(path, upright)[0]


def read_picture(path: PathLike, upright: bool = False
                 ) -> Tuple[np.ndarray, Optional[np.ndarray], Optional[bytes]]:
    """``(rgb, alpha, icc_profile)``: :func:`read_image`'s RGB, the file's own transparency
    (:func:`image_alpha`, ``None`` if it has none) and its ICC colour profile (``None`` if
    none), for a cut-out that keeps what the photo had."""
    if isinstance(path, (str, os.PathLike)):
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            raise BadImage("file not found") from None
        except OSError as e:            # a symbolic-link loop, a name too long, ...
            raise BadImage(f"cannot open ({e.strerror or e})") from None
        if stat.S_ISDIR(mode):
            raise BadImage("is a directory")
        if not stat.S_ISREG(mode):      # reading a named pipe would wait for a writer forever
            raise BadImage("not a regular file (a pipe, socket or device)")
    try:
        with Image.open(path) as im:
            im.load()  # decodes now: truncated or corrupt data fails here, not later
            turned = ImageOps.exif_transpose(im) if upright else None
            shown = turned if turned is not None else im
            return image_to_rgb(shown), image_alpha(shown), im.info.get("icc_profile")
    except BadImage:
        raise
    except FileNotFoundError:
        raise BadImage("file not found") from None
    except IsADirectoryError:
        raise BadImage("is a directory") from None
    except PermissionError:
        raise BadImage("permission denied (cannot read the file)") from None
    except UnidentifiedImageError:
        raise BadImage("not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large ({e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        raise BadImage(f"corrupt or truncated ({e})") from None


def letterbox_box(height: int, width: int, size: int) -> Box:
    """Where a ``height x width`` picture lands in the ``size x size`` square.

    scale = size / max(height, width);  h' = max(1, round(height * scale)), same for w';
    top = (size - h') // 2, left = (size - w') // 2.  Returns ``(top, left, h', w')``.
    """
    scale = size / max(height, width)
    h = min(size, max(1, int(round(height * scale))))
    w = min(size, max(1, int(round(width * scale))))
    return (size - h) // 2, (size - w) // 2, h, w


def letterbox(array: np.ndarray, size: int, *, nearest: bool = False,
              fill=None) -> Tuple[np.ndarray, Box]:
    """Resize ``array`` (``uint8 (H, W, 3)`` image or ``(H, W)`` mask) into a ``size`` square.

    ``nearest=True`` for masks (labels are never blended).  ``fill`` defaults to
    ``PAD_RGB`` for images and 0 for masks.  Returns ``(square, box)``.
    """
    if (array.dtype != np.uint8 or array.ndim not in (2, 3) or min(array.shape[:2]) < 1
            or (array.ndim == 3 and array.shape[2] != 3)):
        raise ValueError(f"letterbox: expected uint8 (H, W) or (H, W, 3) with H, W >= 1, got "
                         f"{array.dtype} {array.shape}")
    if int(size) != size or not 1 <= size <= MAX_SIZE:
        raise ValueError(f"letterbox: size must be an integer from 1 to {MAX_SIZE}, got "
                         f"{size!r}")
    if fill is None:
        fill = PAD_RGB if array.ndim == 3 else 0
    top, left, h, w = box = letterbox_box(array.shape[0], array.shape[1], size)
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    resized = np.asarray(Image.fromarray(array).resize((w, h), resample))
    out = np.empty((size, size) + array.shape[2:], dtype=np.uint8)
    out[...] = np.asarray(fill, dtype=np.uint8)
    out[top:top + h, left:left + w] = resized
    return out, box


def unletterbox(array: np.ndarray, box: Box, height: int, width: int, *,
                nearest: bool = True) -> np.ndarray:
    """Undo ``letterbox``: crop ``box`` out of a square and resize it to ``height x width``.

    For label maps (``nearest=True``; bool or integer, values 0-255, returned as uint8) and
    uint8 images; probabilities are resized with ``tinyseg.infer.resize_bilinear`` (a cast
    to uint8 here would make them 0).
    """
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biu" \
            or array.ndim not in (2, 3):
        raise ValueError(f"unletterbox: expected an integer (S, S) label map or a uint8 "
                         f"(S, S, 3) image, got {getattr(array, 'dtype', type(array).__name__)} "
                         f"{getattr(array, 'shape', '')} (float probabilities: "
                         f"tinyseg.infer.resize_bilinear)")
    if array.dtype != np.uint8:
        if array.size and (array.min() < 0 or array.max() > 255):
            raise ValueError(f"unletterbox: labels must be 0-255 to fit in 8 bits, got "
                             f"{array.min()}..{array.max()}")
        array = array.astype(np.uint8)
    top, left, h, w = (int(v) for v in box)
    if not (top >= 0 and left >= 0 and h >= 1 and w >= 1 and top + h <= array.shape[0]
            and left + w <= array.shape[1]):
        raise ValueError(f"unletterbox: box {tuple(box)} (top, left, height, width) is not "
                         f"inside the {array.shape[0]}x{array.shape[1]} square")
    if int(height) != height or int(width) != width or height < 1 or width < 1:
        raise ValueError(f"unletterbox: output size must be positive integers, got "
                         f"{height}x{width}")
    crop = np.ascontiguousarray(array[top:top + h, left:left + w])
    resample = Image.Resampling.NEAREST if nearest else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(crop).resize((int(width), int(height)), resample))
