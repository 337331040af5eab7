"""tinyseg.cli.run_main: the commands' exit codes and one-line errors."""
import contextlib
import os
import subprocess
import sys
import errno

import numpy as np
import pytest

from tinyseg.cli import UserError, run_main


def raiser(exc):
    def main(argv):
        raise exc
    return main


def test_user_errors_and_the_machines_errors_are_one_line(capsys):
    assert run_main(lambda argv: 0, "tinyseg.x") == 0
    assert run_main(raiser(UserError("bad flag value")), "tinyseg.x") == 1
    assert capsys.readouterr().err == "tinyseg.x: error: bad flag value\n"
    # a path the file system refuses: named, no traceback (was a traceback)
    assert run_main(raiser(PermissionError(errno.EACCES, "Permission denied", "ro/run")),
                    "tinyseg.x") == 1
    assert capsys.readouterr().err == "tinyseg.x: error: ro/run: Permission denied\n"
    assert run_main(raiser(FileExistsError(errno.EEXIST, "File exists", "a", None, "b")),
                    "tinyseg.x") == 1
    assert capsys.readouterr().err == "tinyseg.x: error: a -> b: File exists\n"
    assert run_main(raiser(MemoryError()), "tinyseg.x") == 1
    assert "not enough memory" in capsys.readouterr().err


def test_the_traceback_is_there_when_asked_for(monkeypatch):
    monkeypatch.setenv("TINYSEG_TRACEBACK", "1")
    with pytest.raises(PermissionError):
        run_main(raiser(PermissionError(errno.EACCES, "Permission denied", "x")), "tinyseg.x")


def test_a_file_where_the_run_directory_should_be(tmp_path, capsys):
    """train --out FILE, evaluate --out FILE, ensemble into a folder: one line each."""
    import numpy as np
    from tinyseg.checkpoint import make_meta, save_model
    from tinyseg.ensemble import main as ensemble_main
    from tinyseg.tiramisu import tiramisu_tiny
    ckpt = save_model(tmp_path / "m.npz", tiramisu_tiny(rng=np.random.default_rng(0)),
                      make_meta(32, [0.5] * 3, [0.25] * 3))
    folder = tmp_path / "folder.npz"
    folder.mkdir()
    assert run_main(ensemble_main, "tinyseg.ensemble", [str(folder), str(ckpt), str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("tinyseg.ensemble: error: ") and len(err.splitlines()) == 1, err


def test_skipped_images_are_a_plain_warning_line(capsys):
    """Train and evaluate printed Python's 'cache.py:367: BadImageWarning ...' with the
    source line; now as the data command does."""
    import warnings
    from tinyseg.data.errors import BadImageWarning

    def main(argv):
        warnings.warn("2 unreadable images skipped: a.jpg, b.jpg", BadImageWarning)
        return 0
    assert run_main(main, "tinyseg.train") == 0
    assert capsys.readouterr().err == \
        "tinyseg.train: warning: 2 unreadable images skipped: a.jpg, b.jpg\n"


def test_atomic_writes_name_a_folder_in_the_way(tmp_path):
    """The rename at the end failed naming the temporary file ('x.7tgd.tmp -> x')."""
    import numpy as np
    from tinyseg.io import atomic_save_npz, atomic_write_bytes
    (tmp_path / "x.npz").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic_save_npz(tmp_path / "x.npz", {"a": np.zeros(1)})
    assert e.value.filename == str(tmp_path / "x.npz")
    with pytest.raises(IsADirectoryError):
        atomic_write_bytes(tmp_path / "x.npz", b"")
    assert [p.name for p in tmp_path.iterdir()] == ["x.npz"]       # no temporary file left


@pytest.fixture
def restore_threads(monkeypatch):
    import numba
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "TINYSEG_BLAS_THREADS"):
        monkeypatch.delenv(var, raising=False)
    before = numba.get_num_threads()
    yield
    numba.set_num_threads(before)


def test_threads_zero_is_a_user_error(restore_threads):
    from tinyseg.cli import UserError, set_threads
    with pytest.raises(UserError, match="--threads must be at least 1, got 0"):
        set_threads(0)


def test_all_available_threads_are_accepted(restore_threads):
    import numba
    from tinyseg.cli import UserError, available_threads, set_threads
    limit = available_threads()
    assert set_threads(limit) == limit
    assert numba.get_num_threads() == limit
    with pytest.raises(UserError, match=f"--threads {limit + 1} is more than"):
        set_threads(limit + 1)


def test_blas_env_stays_one_thread_whatever_numba_gets(restore_threads):
    from tinyseg.cli import available_threads, set_threads
    n = available_threads()
    if n < 2:
        pytest.skip("needs 2 numba threads")
    set_threads(2)
    assert [os.environ[v] for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                    "MKL_NUM_THREADS")] == ["1", "1", "1"]


def test_help_formatter_shows_defaults_only_where_useful():
    import argparse
    from tinyseg.cli import HelpFormatter
    p = argparse.ArgumentParser(prog="x", formatter_class=HelpFormatter)
    p.add_argument("--flip", action="store_true", help="average with the mirror image")
    p.add_argument("--size", type=int, default=64, help="input size")
    p.add_argument("--out", default=None, help="where to write")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    text = " ".join(p.format_help().split())
    assert "(default: 64)" in text
    assert "(default: False)" not in text
    assert "(default: None)" not in text
    assert "(default: 0.001)" not in text


def test_plain_warnings_restores_the_warning_printer():
    import warnings
    from tinyseg.cli import plain_warnings
    before = warnings.showwarning
    with plain_warnings("tinyseg.x"):
        assert warnings.showwarning is not before
    assert warnings.showwarning is before
    assert run_main(lambda argv: 0, "tinyseg.x") == 0
    assert warnings.showwarning is before


def test_an_empty_data_flag_is_refused_by_every_command(capsys, monkeypatch):
    """'--data ""' quietly fell back to $TINYSEG_DATA (resolve_data_root takes '' for 'not
    given'), so a script with an unset variable trained on other data than it named."""
    from tinyseg.evaluate import main as evaluate_main
    from tinyseg.train import main as train_main
    monkeypatch.setenv("TINYSEG_DATA", "/somewhere/else")
    for main in (train_main, evaluate_main):
        with pytest.raises(SystemExit) as e:
            main(["--data", ""])
        assert e.value.code == 2
        assert "argument --data: is empty" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["abc", "0", "-2", ""])
def test_a_bad_blas_threads_variable_is_a_warning_not_a_traceback(value):
    """``TINYSEG_BLAS_THREADS=abc`` raised a ValueError at import, before any command could
    catch it; now a warning naming the value, and one BLAS thread."""
    import subprocess
    import sys
    code = "import tinyseg; from tinyseg.cli import blas_threads; print(blas_threads())"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "TINYSEG_BLAS_THREADS": value}, timeout=120)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert f"TINYSEG_BLAS_THREADS={value!r} is not a positive integer; using 1" in proc.stderr
    assert proc.stdout.strip() in ("1", "None")      # None: no OpenBLAS found to ask


def test_a_file_system_that_refuses_the_temporary_file_is_named_by_the_target(tmp_path,
                                                                               monkeypatch):
    """On a read-only file system the error named the random temporary file
    (``w.npz.kjc6_hpe.tmp``), not the file the user asked for."""
    import tempfile
    from tinyseg.io import atomic_save_npz, atomic_write_bytes

    def refuse(prefix, suffix, dir):
        raise OSError(errno.EROFS, "Read-only file system", os.path.join(dir, prefix + "x1y2" +
                                                                          suffix))
    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    for write in (lambda p: atomic_save_npz(p, {"a": np.zeros(1)}),
                  lambda p: atomic_write_bytes(p, b"x")):
        with pytest.raises(OSError) as e:
            write(tmp_path / "w.npz")
        assert e.value.errno == errno.EROFS and e.value.filename == str(tmp_path / "w.npz")


def test_a_folder_where_a_file_goes_and_a_file_where_a_folder_goes_are_named(tmp_path,
                                                                              capsys):
    """Each said "file not found" / "data directory not found" / "File exists" before."""
    from tinyseg.checkpoint import CheckpointError, read
    from tinyseg.data.__main__ import main as data_main
    from tinyseg.ensemble import main as ensemble_main
    from tinyseg.evaluate import main as evaluate_main
    from tinyseg.tiramisu import Tiramisu
    folder, afile = tmp_path / "runs", tmp_path / "a.jpg"
    folder.mkdir()
    afile.write_bytes(b"")
    with pytest.raises(IsADirectoryError, match="runs is a directory, not a weight file"):
        Tiramisu.read_file(folder)
    with pytest.raises(CheckpointError, match="runs: is a directory, not a checkpoint file"):
        read(folder)
    for main, prog, argv, says in (
            (ensemble_main, "tinyseg.ensemble", [str(tmp_path / "o.npz"), str(folder)],
             "runs: is a directory, not a checkpoint file"),
            (evaluate_main, "tinyseg.evaluate", ["--data", str(afile)],
             "a.jpg: is a file, not a data directory"),
            (data_main, "tinyseg.data", ["download", "--root", str(afile)],
             "a.jpg: is a file, not a folder to download into")):
        assert run_main(main, prog, argv) == 1
        assert says in capsys.readouterr().err


def test_the_run_lock_appears_with_its_owner_in_it(tmp_path, monkeypatch):
    """The lock was created empty and written after: another process reading it in between
    found no owner, took it for stale, and both trained the run. Now a finished file holding
    the pid is linked into place, so the lock never exists without its owner."""
    from tinyseg.io import LOCK_NAME, folder_lock
    seen = []
    real_link = os.link

    def link(src, dst):
        seen.append((open(src).read(), os.path.basename(dst)))
        return real_link(src, dst)
    monkeypatch.setattr(os, "link", link)
    with folder_lock(tmp_path / "run") as path:
        assert path.read_text() == f"{os.getpid()}\n"
    assert seen == [(f"{os.getpid()}\n", LOCK_NAME)]
    assert not (tmp_path / "run").exists()      # made for the lock, empty again: removed


@contextlib.contextmanager
def _a_live_process():
    """The pid of a process that exists for the length of the block: a lock's live owner."""
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield p.pid
    finally:
        p.kill()
        p.wait()


def _refused_for(run, pid):
    from tinyseg.io import FolderBusy, folder_lock
    with pytest.raises(FolderBusy, match=f"process {pid} is training this run"):
        with folder_lock(run):
            pass


def test_the_run_lock_works_where_hard_links_are_refused(tmp_path, monkeypatch):
    """On a file system without hard links (FAT, exFAT, some network shares) os.link raises
    PermissionError or OSError(ENOTSUP): no run could be trained there. The lock is then
    created exclusively, still with its owner in it, and still refuses a live owner."""
    from tinyseg.io import LOCK_NAME, folder_lock

    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted", dst)
    monkeypatch.setattr(os, "link", no_links)
    run = tmp_path / "run"
    with folder_lock(run) as path:
        assert path.name == LOCK_NAME and path.read_text() == f"{os.getpid()}\n"
        assert sorted(p.name for p in run.iterdir()) == [LOCK_NAME]     # no temporary left
    assert not run.exists()
    with _a_live_process() as pid:
        run.mkdir()
        (run / LOCK_NAME).write_text(f"{pid}\n")
        _refused_for(run, pid)
    with folder_lock(run) as path:           # its owner gone: a stale lock, taken over
        assert path.read_text() == f"{os.getpid()}\n"


def test_python_m_tinyseg_lists_every_command(capsys):
    """``python -m tinyseg`` was 'No module named tinyseg.__main__'. It lists the commands:
    every module of the package with a ``main`` (and the data package's), none missing."""
    import importlib
    import pkgutil
    import tinyseg
    from tinyseg.__main__ import COMMANDS, main
    have = {"tinyseg.data"} | {
        f"tinyseg.{m.name}" for m in pkgutil.iter_modules(tinyseg.__path__)
        if not m.ispkg and m.name != "__main__"
        and callable(getattr(importlib.import_module(f"tinyseg.{m.name}"), "main", None))}
    assert {name for name, _ in COMMANDS} == have
    assert main() == 0
    out = capsys.readouterr().out
    assert all(f"  {name}  " in out or f"  {name} " in out for name in have)


def test_a_lock_being_written_is_not_taken_for_stale(tmp_path):
    """Where hard links are refused the lock exists empty for a moment; a second process
    reading it then took it for stale, deleted it and trained the same run (review,
    2026-11-28). An empty lock is read again before it counts as ownerless."""
    import threading
    from tinyseg.io import LOCK_NAME, folder_lock
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_NAME
    with _a_live_process() as pid:
        lock.write_text("")                               # created, not yet written
        writer = threading.Timer(0.3, lambda: lock.write_text(f"{pid}\n"))
        writer.start()
        try:
            _refused_for(run, pid)
        finally:
            writer.join()
        assert lock.read_text() == f"{pid}\n"            # the other's lock left in place


def test_a_stale_lock_taken_over_meanwhile_is_not_removed(tmp_path, monkeypatch):
    """Two processes that both found a dead owner's lock: the second removed the lock the
    first had just put in its place, and both trained (review, 2026-11-28). The lock is
    removed only if it still names the dead owner."""
    import tinyseg.io as io_mod
    from tinyseg.io import LOCK_NAME
    run = tmp_path / "run"
    run.mkdir()
    lock = run / LOCK_NAME
    with _a_live_process() as pid:
        lock.write_text(f"{pid}\n")                       # the newcomer's, already in place
        calls = []

        def saw_the_dead_owner(path, *a, **k):     # the first read: a moment before, dead
            calls.append(path)
            return 2 ** 22 + 12345 if len(calls) == 1 else io_mod._lock_owner(path)
        monkeypatch.setattr(io_mod, "_settled_owner", saw_the_dead_owner)
        _refused_for(run, pid)
        assert lock.read_text() == f"{pid}\n"
