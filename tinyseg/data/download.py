"""Fetching COCO 2017: the annotation archive, then only the images that pass the filters.

``download(root)``:

1. fetches the official annotation archive (``annotations_trainval2017.zip``, 241 MB) to
   ``ROOT/annotations_trainval2017.zip`` and tests it (``zipfile.testzip``);
2. extracts ``annotations/instances_{train,val}2017.json`` from it to ``ROOT/annotations/``;
3. applies the filters (``tinyseg.data.coco.filter_images``) and fetches each kept image
   from its ``coco_url`` to ``ROOT/<set>/<file_name>``, the layout ``load_coco`` expects.

Every downloaded file is written as ``<name>.part`` and renamed to its final name only once
complete and verified (length equal to the server's ``Content-Length``; images decode with
Pillow; the archive passes the zip test); the extracted annotation files go through a
temporary file and a rename.  So a final name never holds half a file.  A second run
resumes: finished files are kept, ``.part`` files continue with an HTTP ``Range`` request
(and start over if the server ignores it).  Base URLs can be replaced (``--annotations-url``,
``--images-url`` or the environment variables below), which is how the tests serve a small
fixture from 127.0.0.1.
"""
from __future__ import annotations

import http.client
import os
import re
import shutil
import threading
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union
from urllib.parse import urlsplit

from PIL import Image

from ..io import temporary_beside, writable_path
from .coco import FilterConfig, filter_images, load_coco
from .errors import DataError, list_some
from .progress import Progress

PathLike = Union[str, os.PathLike]

ANNOTATIONS_URL = "http://images.cocodataset.org/annotations/annotations_trainval2017.zip"
IMAGES_URL = "http://images.cocodataset.org"
ENV_ANNOTATIONS_URL = "TINYSEG_COCO_ANNOTATIONS_URL"
ENV_IMAGES_URL = "TINYSEG_COCO_IMAGES_URL"
DEFAULT_SETS = ("train2017", "val2017")
CHUNK = 1 << 16
#: Seconds to wait before retry k is ``BACKOFF * k``.
BACKOFF = 1.0
USER_AGENT = "tinyseg-download/0.1 (+urllib)"


class DownloadError(DataError):
    """A file could not be fetched or verified."""


class _Retry(Exception):
    """Transient trouble: try again (resuming)."""


def _content_range_total(header: Optional[str], start: int) -> Optional[int]:
    m = re.match(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", header or "")
    if not m:
        return None
    if int(m.group(1)) != start:
        raise _Retry(f"server resumed at byte {m.group(1)}, expected {start}")
    return None if m.group(3) == "*" else int(m.group(3))


def fetch(url: str, dest: PathLike, verify: Optional[Callable[[Path], None]] = None,
          retries: int = 3, timeout: float = 60.0,
          on_bytes: Optional[Callable[[int], None]] = None,
          backoff: Optional[float] = None) -> Path:
    """Download ``url`` to ``dest`` via ``dest.part``, resuming, verifying, renaming.

    ``verify(part_path)`` raises ``ValueError`` if the bytes are not what they should be;
    the part file is then deleted and the download starts over (counted as an attempt).
    ``on_bytes(n)`` is told of every chunk written, and of ``-size`` when bytes already in
    the part file are thrown away (a failed verification, a server that ignores ``Range``),
    so its running sum is always the part file's size less what was there before.
    An existing ``dest`` is taken as done.  Raises ``DownloadError`` after ``retries``
    failed attempts, or at once on an HTTP 4xx answer.
    """
    dest = Path(dest)
    if dest.is_file():
        return dest
    if dest.exists():                           # a folder at the file's name: no retry helps
        raise DownloadError(f"{dest}: exists and is not a file; move it away and run the "
                            f"command again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    last = "no attempt"
    backoff = BACKOFF if backoff is None else backoff
    for attempt in range(max(1, retries)):
        if attempt:
            time.sleep(backoff * attempt)
        try:
            _fetch_once(url, part, timeout, on_bytes)
            if verify is not None:
                try:
                    verify(part)
                except ValueError as e:
                    if on_bytes is not None and part.is_file():
                        on_bytes(-part.stat().st_size)
                    part.unlink(missing_ok=True)
                    raise _Retry(f"downloaded file failed verification: {e}") from None
            with open(part, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(part, dest)
            return dest
        except _Retry as e:
            last = str(e)
        except urllib.error.HTTPError as e:
            if 400 <= e.code < 500 and e.code not in (408, 429):
                raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
            last = f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
            last = str(getattr(e, "reason", e)) or type(e).__name__
    tries = max(1, retries)
    raise DownloadError(f"{url}: failed after {tries} attempt{'s' if tries != 1 else ''} "
                        f"({last}); run the command again to resume")


def _fetch_once(url: str, part: Path, timeout: float,
                on_bytes: Optional[Callable[[int], None]]) -> None:
    """One request: append to ``part`` from where it ends; raise ``_Retry`` if incomplete."""
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # Range not satisfiable: the part file is already whole (or too long); the
            # verification decides, and a failure starts over.
            e.close()
            return
        raise
    with response:
        if response.status == 206:
            total = _content_range_total(response.headers.get("Content-Range"), have)
            mode = "ab"
        else:  # 200: the whole file (a server without Range support starts over)
            if have and on_bytes is not None:
                on_bytes(-have)                 # so a progress bar does not pass 100 %
            have = 0
            length = response.headers.get("Content-Length")
            total = int(length) if length is not None else None
            mode = "wb"
        with open(part, mode) as f:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, ValueError, http.client.HTTPException) as e:
                    raise _Retry(f"connection lost after {have} bytes "
                                 f"({type(e).__name__})") from None
                if not chunk:
                    break
                f.write(chunk)
                have += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))
    if total is not None and have != total:
        raise _Retry(f"got {have} of {total} bytes")


# -- verification -----------------------------------------------------------------------
def verify_image(path: Path) -> None:
    """``ValueError`` unless Pillow decodes the whole file."""
    try:
        with Image.open(path) as im:
            im.load()
    except Exception as e:  # Pillow raises many kinds for broken data
        raise ValueError(f"not a decodable image ({e})") from None


def verify_zip(path: Path) -> None:
    """``ValueError`` unless the zip's directory and every member's CRC are sound."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"not a valid zip archive ({e})") from None
    if bad is not None:
        raise ValueError(f"member {bad} is corrupt")


def extract_member(archive: Path, member: str, dest: Path) -> Path:
    """Extract one member to ``dest`` atomically; an existing file of the right size stays."""
    with zipfile.ZipFile(archive) as z:
        info = z.getinfo(member)
        if dest.is_file() and dest.stat().st_size == info.file_size:
            return dest
        writable_path(dest)       # its folder made; a read-only file there is not replaced
        fd, tmp = temporary_beside(dest)
        try:
            with os.fdopen(fd, "wb") as out, z.open(info) as src:
                shutil.copyfileobj(src, out, CHUNK)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, dest)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
    return dest


# -- the whole procedure ----------------------------------------------------------------
def image_url(coco_url: Optional[str], set_name: str, file_name: str,
              images_url: Optional[str]) -> str:
    """The image's ``coco_url`` with its scheme and host replaced by ``images_url``."""
    base = (images_url or IMAGES_URL).rstrip("/")
    if coco_url:
        if images_url is None:
            return coco_url
        return base + urlsplit(coco_url).path
    return f"{base}/{set_name}/{file_name}"


@dataclass
class DownloadReport:
    root: Path
    steps: list
    wanted: int
    fetched: int
    present: int
    failed: List[str] = field(default_factory=list)


def download(root: PathLike, filters: FilterConfig = FilterConfig(),
             sets: Sequence[str] = DEFAULT_SETS, annotations_url: Optional[str] = None,
             images_url: Optional[str] = None, workers: int = 4, retries: int = 3,
             timeout: float = 60.0, progress: bool = True,
             log: Callable[[str], None] = lambda s: None) -> DownloadReport:
    """Fetch COCO annotations and the filtered images into ``root`` (see module docstring).

    Raises ``DownloadError`` if the archive cannot be had, or when some images failed (after
    fetching all the others; a second run fetches only what is missing).
    """
    root = Path(root).expanduser()
    if root.exists() and not root.is_dir():
        raise DataError(f"{root}: is a file, not a folder to download into")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{root}: cannot create the download folder ({e.strerror})") from None
    annotations_url = annotations_url or os.environ.get(ENV_ANNOTATIONS_URL) or ANNOTATIONS_URL
    images_url = images_url or os.environ.get(ENV_IMAGES_URL) or None

    archive = root / Path(urlsplit(annotations_url).path).name
    if not archive.name.endswith(".zip"):
        archive = root / "annotations_trainval2017.zip"
    wanted_json = [root / "annotations" / f"instances_{s}.json" for s in sets]
    if all(p.is_file() for p in wanted_json):
        log(f"annotations: {', '.join(p.name for p in wanted_json)} already present")
    else:
        log(f"annotations: {annotations_url} -> {archive}")
        with Progress("downloading annotations", _head_length(annotations_url, timeout),
                      "B", enabled=progress) as bar:
            part = archive.with_name(archive.name + ".part")
            if part.is_file():  # resuming: count what is already there
                bar.done = float(part.stat().st_size)
            fetch(annotations_url, archive, verify=verify_zip, retries=retries,
                  timeout=timeout, on_bytes=bar.update)
        with zipfile.ZipFile(archive) as z:
            names = set(z.namelist())
        for p in wanted_json:
            member = f"annotations/{p.name}"
            if member not in names:
                raise DataError(f"{archive}: no {member} in the archive (sets asked for: "
                                f"{', '.join(sets)})")
            extract_member(archive, member, p)
            log(f"extracted {p}")

    data = load_coco(root, filters.category, wanted_json, require_images=False)
    result = filter_images(data, filters)
    jobs = []
    for image_id in result.kept:
        rec = data.records[image_id]
        set_name = rec.source.stem[len("instances_"):]
        dest = root / set_name / rec.file_name
        jobs.append((image_url(rec.url, set_name, rec.file_name, images_url), dest))
    todo = [(u, d) for u, d in jobs if not d.is_file()]
    present = len(jobs) - len(todo)
    log(f"images: {len(jobs)} pass the filters, {present} already here, {len(todo)} to fetch")
    failed: List[str] = []
    byte_lock = threading.Lock()
    nbytes = [0]

    def count(n: int) -> None:
        with byte_lock:
            nbytes[0] += n

    with Progress("downloading images", len(todo), "files", enabled=progress) as bar, \
            ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(fetch, u, d, verify_image, retries, timeout, count): u
                   for u, d in todo}
        for fut in as_completed(futures):
            try:
                fut.result()
            except DataError as e:      # each message without the advice given once below
                failed.append(str(e).replace("; run the command again to resume", ""))
            bar.update()
    report = DownloadReport(root, result.steps, len(jobs), len(todo) - len(failed), present,
                            failed)
    if failed:
        raise DownloadError(f"{len(failed)} of {len(todo)} images failed ("
                            f"{list_some(failed, 3)}); run the command again to resume")
    return report


def _head_length(url: str, timeout: float) -> Optional[int]:
    """The size the server announces for ``url`` (for the progress line), or None."""
    try:
        req = urllib.request.Request(url, method="HEAD", headers={"User-Agent": USER_AGENT})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            length = r.headers.get("Content-Length")
            return int(length) if length else None
    except (urllib.error.URLError, OSError, ValueError):
        return None
