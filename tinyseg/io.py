"""Files that are never left half-written.

Everything tinyseg saves (model weights, training checkpoints, data caches) goes through
``atomic_save_npz``: the arrays are written to a temporary file in the same directory,
flushed to disk, and only then renamed over the final name.  A rename within one file
system is atomic, so an interrupted save leaves either the old file or the new one, never
a broken one.
"""
from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]


def _umask_mode() -> int:
    """The mode an ordinary ``open()`` would give a new file (mkstemp's default is 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def writable_path(path: PathLike) -> Path:
    """``path`` as a Path, its folder made; an existing folder of that name is refused here,
    by name (else the rename at the end fails naming the temporary file), and so is an
    existing file with no write permission for anyone: the rename would replace it although
    its owner protected it (``chmod a-w``), for any user who may write to the folder.  A file
    whose mode is the one tinyseg itself gives new files (a umask such as 0277 leaves no
    write bit) is not taken for a protected one."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", str(path))
    if path.is_file():
        mode = stat.S_IMODE(path.stat().st_mode)
        if not mode & 0o222 and mode != _umask_mode():   # not just what a strict umask gives
            raise PermissionError(errno.EACCES, "read-only; not replaced", str(path))
    blocked = next((q for q in path.parents if q.exists() and not q.is_dir()), None)
    if blocked is not None:        # mkdir would say only "File exists"
        raise NotADirectoryError(errno.ENOTDIR, "is a file, not a folder", str(blocked))
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def temporary_beside(path: Path) -> Tuple[int, str]:
    """``(fd, name)`` of a new temporary file in ``path``'s folder; an error names ``path``
    (a read-only file system named the random temporary name instead)."""
    try:
        return tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise type(e)(e.errno, e.strerror, str(path)) from None


def atomic_save_npz(path: PathLike, arrays: Dict[str, np.ndarray], compressed: bool = True) -> Path:
    """Write ``arrays`` to ``path`` (an ``.npz``) via a temporary file and a rename."""
    path = writable_path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


#: How files that are not ``.npz`` archives begin, for a clearer error than NumPy's.
_NOT_NPZ = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image"}


def read_npz(path: PathLike) -> Dict[str, np.ndarray]:
    """Every array of an ``.npz`` file (as ``atomic_save_npz`` writes them), never unpickling.

    Raises ``ValueError`` with a plain reason for a file that is no ``.npz``: given anything
    that is neither a zip archive nor an ``.npy``, NumPy tries to unpickle it and complains
    about pickled data.
    """
    with open(path, "rb") as f:
        head = f.read(4)
    if not head.startswith(b"PK"):
        kind = next((v for k, v in _NOT_NPZ.items() if head.startswith(k)), None)
        raise ValueError("not an .npz file (" + ("the file is empty" if not head else
                         f"it is {kind}" if kind else "it is not a zip archive") + ")")
    with np.load(path, allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def atomic_write_bytes(path: PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temporary file and a rename."""
    path = writable_path(path)
    fd, tmp = temporary_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


# -- one process per run folder ------------------------------------------------------------
LOCK_NAME = ".tinyseg-lock"


class FolderBusy(Exception):
    """Another live process holds the folder's lock (it is training that run)."""


def _lock_owner(path: Path) -> Optional[int]:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)              # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:          # it exists, under another user
        return True
    return True


def _link_or_create(tmp: str, path: Path) -> None:
    """Make ``path`` appear holding ``tmp``'s content, or raise ``FileExistsError``.

    A hard link does it in one step.  File systems without hard links (FAT and exFAT
    drives, some network shares) refuse it with another ``OSError``; there the lock is
    created exclusively and written at once, which leaves a moment in which it is empty:
    ``_settled_owner`` waits that moment out before calling a lock stale.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise
    except OSError:
        content = Path(tmp).read_bytes()          # read first: the empty moment stays short
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(content)


def _settled_owner(path: Path, wait: float = 0.2, tries: int = 10) -> Optional[int]:
    """The lock's owner; an empty or unreadable lock is read again for up to ``wait`` x
    ``tries`` seconds (its owner may be writing it, where hard links are refused) before
    it counts as ownerless."""
    for _ in range(tries):
        owner = _lock_owner(path)
        if owner is not None or not path.exists():
            return owner
        time.sleep(wait)
    return None


@contextmanager
def folder_lock(folder: PathLike) -> Iterator[Path]:
    """Hold ``folder/.tinyseg-lock`` (this process's id) while the block runs.

    Two processes training one run folder interleave their epochs in its log and overwrite
    each other's checkpoints; the second one gets :class:`FolderBusy` instead.  A lock left
    by a process that no longer exists (killed with ``kill -9``) is taken over.  The folder
    is made if missing, and removed again if it is still empty at the end.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    # the lock appears with its owner written in it (a hard link to a finished file): an
    # empty lock file, read between its creation and its write, looked stale and was taken
    fd, tmp = tempfile.mkstemp(prefix=LOCK_NAME + ".", dir=folder)
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.getpid()}\n")
    try:
        for _ in range(3):
            try:
                _link_or_create(tmp, path)
            except FileExistsError:
                owner = _settled_owner(path)
                if owner is not None and owner != os.getpid() and _alive(owner):
                    raise FolderBusy(f"{folder}: process {owner} is training this run; wait "
                                     f"for it or stop it (if no such process is running, "
                                     f"delete {path})") from None
                if _lock_owner(path) == owner:    # still the stale one, not a newcomer's
                    path.unlink(missing_ok=True)  # its process is gone: a stale lock
                continue
            break
        else:
            raise FolderBusy(f"{folder}: cannot take its lock {path}")
    finally:
        os.unlink(tmp)
    try:
        yield path
    finally:
        if _lock_owner(path) == os.getpid():
            path.unlink(missing_ok=True)
        if created and not any(folder.iterdir()):   # made for a run that never started
            folder.rmdir()
