"""``python -m tinyseg.cutout photo.jpg``: keep the person, make the background transparent.

For every photo:

1. read it and turn it upright as the camera meant (``PIL.ImageOps.exif_transpose``: phone
   photos are often stored sideways with an EXIF "orientation" tag);
2. person probability ``p`` at every pixel of the full-resolution photo
   (``tinyseg.infer.photo_probability``: letterbox to the model's size, run the network,
   crop the padding, resize the probabilities *bilinearly* to the photo);
3. the alpha (opacity) of each pixel: ``α = 1`` where ``p ≥ threshold`` else 0, or with
   ``--soft`` ``α = p`` itself (soft edges, partly transparent where the model is unsure);
4. write a PNG: RGBA with that alpha (default; a fully transparent pixel keeps no colour, so
   the background is gone from the file, not only hidden); or the photo composited on a
   solid colour, ``out = α · photo + (1 − α) · colour`` (``--background``); or the mask
   alone, ``255 α`` (``--mask``).  The photo's ICC colour profile goes into the PNG.

A photo with its own transparency (a PNG with alpha) is seen by the network laid on the
padding colour, and what it made transparent stays transparent: ``α`` is multiplied by it.

Outputs are ``<name>-cutout.png`` (or ``<name>-mask.png``) in ``-o DIR`` (default: the current
directory).  A folder given as input stands for the photos in it (``expand_folders``).  A
file that cannot be read is reported by name; the others are still done, and the exit code
is then 1.
"""
from __future__ import annotations

import argparse
import io
import os
import re
import sys
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np
import PIL
from PIL import Image, ImageColor

from .cli import HelpFormatter, UserError, run_main, set_threads
from .data.images import PAD_RGB, BadImage, read_image, read_picture
from .io import atomic_write_bytes

PROG = "tinyseg.cutout"

__all__ = ["read_photo", "alpha_from_probability", "compose", "cutout_file", "parse_color"]


def read_photo(path) -> np.ndarray:
    """The photo as upright ``uint8 (H, W, 3)`` RGB (EXIF orientation applied).

    Raises ``BadImage`` with the reason for missing, unreadable or unsupported files.
    """
    return read_image(path, upright=True)


def onto_padding(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """What the network sees of a photo with its own transparency: the photo laid on the
    letterbox padding colour, which it learned as background (``PAD_RGB``)."""
    a = alpha.astype(np.float32)[:, :, None] / 255.0
    pad = np.asarray(PAD_RGB, dtype=np.float32)
    return np.clip(np.rint(a * rgb + (1.0 - a) * pad), 0, 255).astype(np.uint8)


def alpha_from_probability(p: np.ndarray, threshold: float = 0.5,
                           soft: bool = False) -> np.ndarray:
    """The alpha channel ``255·α`` as ``uint8 (H, W)``: ``α = [p ≥ threshold]``, or ``α = p``
    when ``soft`` (stored as ``round(255·p)``)."""
    if soft:
        return np.clip(np.rint(p * 255.0), 0, 255).astype(np.uint8)
    return np.where(p >= threshold, 255, 0).astype(np.uint8)


def compose(rgb: np.ndarray, alpha: np.ndarray, mode: str = "rgba",
            background=None) -> Image.Image:
    """The output picture: ``mode`` ``'rgba'`` (transparent background), ``'mask'`` (L), or
    with ``background`` an RGB picture on it: ``α·photo + (1 − α)·background``, where
    ``background`` is a colour ``(r, g, b)`` or a picture ``(H, W, 3)`` of the photo's size
    (lesson 12 puts a cut-out on a checkerboard that way)."""
    if mode == "mask":
        return Image.fromarray(alpha, mode="L")
    if background is not None:
        bg = np.asarray(background, dtype=np.float32)
        if bg.ndim == 1:
            bg = bg.reshape(1, 1, 3)
        elif bg.shape != rgb.shape:
            raise ValueError(f"compose: a background picture must have the photo's shape "
                             f"{rgb.shape}, got {bg.shape}")
        out = np.empty(rgb.shape, dtype=np.uint8)
        for r in range(0, rgb.shape[0], _ROWS):    # row blocks: little memory beyond out
            rows = slice(r, r + _ROWS)
            a = alpha[rows].astype(np.float32)[:, :, None] / 255.0
            b = bg if bg.shape[0] == 1 else bg[rows]
            out[rows] = np.clip(np.rint(a * rgb[rows].astype(np.float32) + (1.0 - a) * b),
                                0, 255)
        return Image.fromarray(out, mode="RGB")
    # a fully transparent pixel keeps no colour: the background is gone from the file, not
    # only hidden (dropping the alpha channel would show it again), and the PNG is smaller
    kept = np.where(alpha[:, :, None] == 0, np.uint8(0), rgb)
    return Image.fromarray(np.dstack([kept, alpha]), mode="RGBA")


_ROWS = 256   # rows composed at a time


def parse_color(text: str) -> Tuple[int, int, int]:
    """``'white'``, ``'#00ff00'``, ``'0,255,0'`` or ``'rgb(0,255,0)'`` -> (r, g, b)."""
    t = text.strip()
    if t.count(",") == 2 and not t.lower().startswith(("rgb", "hsl", "hsv")):
        t = f"rgb({t})"
    try:
        c = ImageColor.getrgb(t)
    except ValueError:
        raise UserError(f"--background: cannot read colour {text!r} (use a name like 'white', "
                        "'#00ff00' or '0,255,0')") from None
    if not all(0 <= v <= 255 for v in c):
        raise UserError(f"--background: each of r, g, b must be 0-255, got {text!r}")
    if len(c) == 4 and c[3] != 255:
        raise UserError(f"--background: {text!r} has transparency; the background is solid "
                        "(leave the flag out for a transparent one)")
    return tuple(int(v) for v in c[:3])


def cutout_file(predictor, path, out_path, mode: str = "rgba", threshold: float = 0.5,
                soft: bool = False, background=None, flip: bool = False) -> Tuple[int, int]:
    """Cut out one photo and write the PNG; returns the photo's (width, height)."""
    from .infer import photo_probability

    rgb, own_alpha, icc = read_picture(path, upright=True)
    seen = rgb if own_alpha is None else onto_padding(rgb, own_alpha)
    p = photo_probability(predictor, seen, flip=flip)
    alpha = alpha_from_probability(p, threshold, soft)
    if own_alpha is not None:      # what the photo itself made transparent stays so
        alpha = ((alpha.astype(np.uint16) * own_alpha + 127) // 255).astype(np.uint8)
    img = compose(rgb, alpha, mode, background)
    buf = io.BytesIO()
    # the photo's colour profile goes with its colours (a P3 photo read as sRGB looks dull)
    img.save(buf, format="PNG", **({"icc_profile": icc} if icc and mode != "mask" else {}))
    atomic_write_bytes(out_path, buf.getvalue())
    return rgb.shape[1], rgb.shape[0]


def real_path(path) -> Path:
    """``Path(path).resolve()``, or the absolute path when it cannot be resolved (a symbolic
    link loop): reading that photo then fails and is reported like any unreadable one."""
    try:
        return Path(path).resolve()
    except (OSError, RuntimeError):
        return Path(os.path.abspath(path))


#: Files a folder argument stands for (compared in lower case).
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif")
#: What this command writes: ``<stem>-cutout.png``, ``<stem>-mask-2.png``, ...
OWN_OUTPUT = re.compile(r"^(?P<stem>.+)-(cutout|mask)(-\d+)?\.png$", re.IGNORECASE)


def expand_folders(inputs: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Each folder among ``inputs`` replaced by its photos (not its sub-folders), by name;
    returns ``(photos, notes)``.  A folder's photos are its files with a ``PHOTO_SUFFIXES``
    suffix, less hidden files (``._x.jpg``, which macOS leaves on FAT drives) and less this
    command's earlier outputs: ``X-cutout.png`` or ``X-mask.png`` beside a photo ``X.*`` (so
    that ``photos/ -o photos/`` run twice does not cut out its own outputs, and a photo of
    one's own called ``face-mask.png`` is still a photo).  A folder with no photo stays in
    the list, to be reported as a failure like any unreadable input."""
    photos: List[str] = []
    notes: List[str] = []
    for inp in inputs:
        folder = Path(inp)
        if not folder.is_dir():
            photos.append(inp)
            continue
        try:
            files = sorted(f for f in folder.iterdir() if not f.name.startswith(".")
                           and f.suffix.lower() in PHOTO_SUFFIXES and f.is_file())
        except OSError as e:
            photos.append(inp)
            notes.append(f"{inp}: cannot list the folder ({e.strerror or e})")
            continue
        stems = {f.stem for f in files}

        def earlier_output(f: Path) -> bool:       # X-cutout.png beside a file X.*
            m = OWN_OUTPUT.match(f.name)
            return m is not None and m.group("stem") in stems
        own = [f for f in files if earlier_output(f)]
        files = [f for f in files if not earlier_output(f)]
        if own:
            notes.append(f"{inp}: left out {len(own)} earlier output(s) of this command "
                         f"(X-cutout.png, X-mask.png beside a photo X)")
        if files:
            photos.extend(str(f) for f in files)
        else:
            photos.append(inp)          # reported as a failure by the caller
    return photos, notes


def output_names(inputs: Sequence[str], out_dir: Path, suffix: str) -> List[Path]:
    """``<stem><suffix>.png`` in ``out_dir`` for each input; repeated stems get -2, -3, …, and
    so does a name that is one of the inputs (``x.png x-cutout.png -o .`` must not write the
    first one's cut-out over the second photo)."""
    inputs_at = {real_path(inp) for inp in inputs}
    used, names = set(), []
    for inp in inputs:
        stem = Path(inp).stem or "photo"
        name, k = f"{stem}{suffix}.png", 2
        while name in used or real_path(out_dir / name) in inputs_at:
            name, k = f"{stem}{suffix}-{k}.png", k + 1
        used.add(name)
        names.append(out_dir / name)
    return names


def show_warnings(photo: str, caught: Sequence[warnings.WarningMessage]) -> None:
    """Pillow's warnings about a photo (a damaged EXIF tag, a very large image) as one line
    naming the photo, each once; any other warning as Python shows it."""
    pil_dir = str(Path(PIL.__file__).parent)
    said = set()
    for w in caught:
        if not w.filename.startswith(pil_dir):
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        elif str(w.message) not in said:
            said.add(str(w.message))
            print(f"{PROG}: {photo}: warning: {w.message}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m tinyseg.cutout",
        description="Remove the background of photos of people: writes one PNG per photo, at "
                    "the photo's full resolution, with the person kept and the background "
                    "transparent (or a solid colour, or just the mask).",
        epilog="Exit codes: 0 all photos done, 1 some photo could not be read (the others are "
               "still written), no model, or flag values that cannot work together, 2 flags "
               "that do not parse.",
        formatter_class=HelpFormatter)
    a = p.add_argument
    a("photos", nargs="+", metavar="PHOTO",
      help="image files (JPEG, PNG, ...), or folders: each stands for the photos in it "
           "(not in its sub-folders), less hidden files and this command's earlier "
           "outputs (X-cutout.png, X-mask.png beside a photo X)")
    a("-o", "--out", metavar="DIR", default=".",
      help="output directory; files are named <photo name>-cutout.png (or -mask.png)")
    a("--checkpoint", metavar="FILE", default=None,
      help="model to use (default: the bundled model, tinyseg/weights/person.npz)")
    a("--mask", action="store_true",
      help="write only the mask (grayscale PNG: 255 person, 0 background; with --soft "
           "255 times the probability)")
    a("--background", metavar="COLOR", default=None,
      help="put the person on this solid colour instead of transparency (a name like "
           "'white', '#00ff00' or '0,255,0'); writes RGB")
    a("--threshold", type=float, metavar="T", default=None,
      help="person where the probability is at least this (default: 0.5; not with --soft)")
    a("--soft", action="store_true",
      help="use the probability itself as the alpha instead of thresholding: soft edges, "
           "but where the model is unsure the background shows faintly and the person is "
           "partly see-through")
    a("--flip", action="store_true",
      help="average with the prediction of the mirrored photo (twice the time; it raised "
           "the bundled model's validation IoU, not its test IoU: README)")
    a("--threads", type=int, metavar="N", default=None,
      help="threads for the numba kernels; BLAS keeps one thread, see tinyseg/cli.py (default: all cores)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .checkpoint import CheckpointError
    from .evaluate import resolve_checkpoint
    from .infer import NonFiniteOutput, Predictor

    args = build_parser().parse_args(argv)
    if args.soft and args.threshold is not None:
        raise UserError("--soft uses the probability itself as the alpha: --threshold does "
                        "not apply")
    threshold = 0.5 if args.threshold is None else args.threshold
    if not 0.0 < threshold < 1.0:
        raise UserError(f"--threshold must be between 0 and 1, got {threshold}")
    if args.mask and args.background is not None:
        raise UserError("--mask and --background exclude each other")
    background = parse_color(args.background) if args.background is not None else None
    set_threads(args.threads)
    ckpt = resolve_checkpoint(args.checkpoint)
    try:
        predictor = Predictor.from_file(ckpt)
    except CheckpointError as e:
        raise UserError(str(e)) from None
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"-o {out_dir}: is a file; -o names the folder the PNGs go in")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{out_dir}: cannot create the output directory ({e.strerror})") from None
    mode = "mask" if args.mask else "rgba"
    photos, notes = expand_folders(args.photos)
    for note in notes:
        print(f"{PROG}: {note}", file=sys.stderr)
    names = output_names(photos, out_dir, "-mask" if args.mask else "-cutout")
    failed = 0
    for photo, target in zip(photos, names):
        try:
            if Path(photo).is_dir():
                raise BadImage("a folder with no photo in it (.jpg, .png, .webp, ...)")
            if real_path(photo) == real_path(target):
                raise BadImage("the output would overwrite the input; choose another -o")
            with warnings.catch_warnings(record=True) as caught:
                warnings.filterwarnings("always", module=r"PIL\.")
                w, h = cutout_file(predictor, photo, target, mode, threshold, args.soft,
                                   background, args.flip)
            show_warnings(photo, caught)
        except NonFiniteOutput as e:       # the model, not this photo: stop
            raise UserError(f"{ckpt}: {e}") from None
        except BadImage as e:
            failed += 1
            print(f"{PROG}: {photo}: skipped: {e}", file=sys.stderr)
            continue
        except OSError as e:
            failed += 1
            print(f"{PROG}: {photo}: cannot write {target} ({e.strerror or e})",
                  file=sys.stderr)
            continue
        print(f"{photo} ({w}x{h}) -> {target}")
    if failed:
        print(f"{PROG}: {len(photos) - failed} of {len(photos)} photos written, "
              f"{failed} failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, PROG))
