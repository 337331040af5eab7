"""Training an ensemble (``python -m tinyseg.train --members K``): K ordinary runs, then one file.

Member ``k`` (``k = 0 … K−1``) is exactly the single run ``--seed S+k`` of the same
settings, written to ``RUN/member<k>/`` (its own config, log, pictures, ``best.npz``,
``last.npz``).  Each member is a separate ``python -m tinyseg.train`` process; ``--jobs J``
of them train at once with ``--threads`` split between them.  On this 2-core machine two
one-thread runs side by side train about 1.4 times as many images per second as one run
with both threads (the Python between the kernels runs on one core), and the ``small``
preset's three members took 7:21-7:23 all at once, one thread each, against 9:26 two at a
time and then the third (alone on one core, because the second was still finishing when
it started).  So by default every member starts at once, up to two per thread, each with
an equal share of the threads (at least one).  With ``--jobs J`` a member that starts
when fewer than ``J`` are left gets the spare threads too.  Members give the same result
whatever their thread count (``tests/test_kernels_conv.py``).  When every member is
done::

    RUN/ensemble.json     the members, their seeds and commands, and (at the end) the
                          members' and the ensemble's validation IoU
    RUN/best.npz          the members' best.npz joined into one ensemble file
                          (tinyseg.ensemble): what evaluate and cutout take
    RUN/test.json         the ensemble's test-split figures (unless --no-test)

Ctrl-C stops every member after its current batch (each writes its ``last.npz``), and so
do ``kill`` (SIGTERM) and a closed terminal (SIGHUP): the members run in sessions of their
own, so without that they would train on, orphaned.  ``--resume RUN`` continues each
unfinished member where it stopped and starts those that never started.  Because members
are plain runs, everything about one run (determinism, resume, the divergence check) holds
for each member.
"""
from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional

from . import __version__
from .cli import UserError, available_threads
from .io import atomic_write_bytes

__all__ = ["member_config", "member_dir", "train_ensemble", "resume_ensemble", "MANIFEST"]

MANIFEST = "ensemble.json"


def member_config(cfg, k: int):
    """The config of member ``k``: the ensemble's, with seed ``seed + k`` and one member."""
    return replace(cfg, seed=cfg.seed + k, members=1)


def member_dir(run_dir: Path, k: int) -> Path:
    return Path(run_dir) / f"member{k}"


def _epochs_done(d: Path) -> int:
    """Completed epochs of the member in ``d`` as its log.jsonl counts them (one line per
    epoch): for the progress line only, since an epoch's line is written before its
    checkpoints (see :func:`_epochs_saved`)."""
    try:
        return (d / "log.jsonl").read_bytes().count(b"\n")
    except OSError:
        return 0


def _epochs_saved(d: Path) -> int:
    """Completed epochs of the member in ``d`` as its ``last.npz`` records them: an epoch
    ends by writing its log line, then ``best.npz`` when it improved, then ``last.npz``, so
    a member stopped in between (a full disk, ``kill -9``) has its log line but perhaps not
    its best network, and must run that epoch again (0: no readable ``last.npz``)."""
    import numpy as np
    from .checkpoint import STATE
    try:
        with np.load(d / "last.npz", allow_pickle=False) as f:
            return int(json.loads(str(f[STATE]))["epoch"])
    except Exception:          # missing, damaged: the member's own resume says what is wrong
        return 0


def _write_manifest(run_dir: Path, manifest: dict) -> None:
    atomic_write_bytes(run_dir / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())


def split_threads(threads: Optional[int], jobs: Optional[int], members: int):
    """``(jobs, total threads)``: by default every member at once, at most two per thread."""
    if jobs is not None and jobs < 1:
        raise UserError(f"--jobs must be at least 1, got {jobs}")
    total = threads or available_threads()
    return jobs or max(1, min(members, 2 * total)), total


def member_threads(total: int, jobs: int, running: int, left: int) -> int:
    """Threads for a member starting now, with ``running`` others and ``left`` still to start:
    the threads are shared by the members that will run side by side from now on."""
    return max(1, total // max(1, min(jobs, running + 1 + left)))


def train_ensemble(cfg, run_dir: Path, *, jobs: Optional[int], threads: Optional[int],
                   cache: Optional[str], no_test: bool, report) -> int:
    """Train ``cfg.members`` members into ``run_dir`` and join them; returns the exit code."""
    from .train import command_line
    run_dir = Path(run_dir).resolve()           # members may be resumed from anywhere
    cache = str(Path(cache).resolve()) if cache else None
    if (run_dir / MANIFEST).exists() or (run_dir / "config.json").exists():
        raise UserError(f"{run_dir} already holds a run: continue it with --resume {run_dir} "
                        "or choose another --out")
    jobs, total = split_threads(threads, jobs, cfg.members)
    commands = []
    for k in range(cfg.members):
        line = command_line(member_config(cfg, k), out=str(member_dir(run_dir, k)), threads=1)
        commands.append(line + " --quiet --no-test" +
                        (f" --cache {shlex.quote(cache)}" if cache else ""))
    manifest = {"tinyseg_version": __version__,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": " ".join(shlex.quote(a) for a in ["python", "-m", "tinyseg.train"]
                                    + sys.argv[1:]),
                "members": cfg.members, "jobs": jobs, "threads": total,
                "train": cfg.to_dict(),
                "member_seeds": [cfg.seed + k for k in range(cfg.members)],
                "member_commands": commands}
    run_dir.mkdir(parents=True, exist_ok=True)
    _write_manifest(run_dir, manifest)
    return _run_members(run_dir, manifest, jobs, cache, no_test, report)


def resume_ensemble(run_dir: Path, *, jobs: Optional[int], threads: Optional[int],
                    cache: Optional[str], no_test: bool, report,
                    data: Optional[str] = None) -> int:
    """Go on with the ensemble run in ``run_dir`` (``--resume``); ``data``: the data
    directory if it has moved since (every member and the final scoring use it)."""
    run_dir = Path(run_dir).resolve()           # the joined file names its members by it
    try:
        manifest = json.loads((run_dir / MANIFEST).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{run_dir / MANIFEST}: cannot read it ({e})") from None
    if not (isinstance(manifest, dict)
            and all(k in manifest for k in ("members", "jobs", "threads", "train",
                                             "member_commands"))
            and isinstance(manifest["train"], dict) and "data" in manifest["train"]
            and isinstance(manifest["member_commands"], list)
            and len(manifest["member_commands"]) == manifest["members"]):
        raise UserError(f"{run_dir / MANIFEST}: damaged (members, jobs, threads, train or "
                        f"member_commands missing or inconsistent); cannot resume from it")
    if jobs is not None or threads is not None:
        # a new --jobs alone keeps the run's thread count (it took all the cores before)
        keep = threads if threads is not None else manifest["threads"]
        jobs, total = split_threads(keep, jobs, manifest["members"])
        manifest.update(jobs=jobs, threads=total)
    if data is not None:
        manifest["train"]["data"] = str(Path(data).resolve())
    return _run_members(run_dir, manifest, manifest["jobs"], cache, no_test, report)


def _member_argv(run_dir: Path, manifest: dict, k: int, cache: Optional[str],
                 threads: int) -> List[str]:
    """The command that trains member ``k``: a fresh start, or ``--resume`` if it began."""
    d = member_dir(run_dir, k)
    per = str(threads)
    if (d / "config.json").exists():
        argv = ["--resume", str(d), "--threads", per, "--quiet", "--no-test",
                "--data", manifest["train"]["data"]]
        if cache:
            argv += ["--cache", cache]
    else:
        argv = shlex.split(manifest["member_commands"][k])[3:]   # after "python -m tinyseg.train"
        argv[argv.index("--threads") + 1] = per
        argv[argv.index("--data") + 1] = manifest["train"]["data"]
    return [sys.executable, "-m", "tinyseg.train"] + argv


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _how_it_ended(rc: int) -> str:
    """``failed with exit status 1``, ``was killed by SIGKILL (signal 9) ...``: a member
    process's return code in words (negative: the signal that ended it)."""
    if rc >= 0:
        return f"failed with exit status {rc}"
    try:
        name = signal.Signals(-rc).name
    except ValueError:
        name = "an unknown signal"
    text = f"was killed by {name} (signal {-rc})"
    if -rc == getattr(signal, "SIGKILL", None):
        text += ", perhaps by the system when memory ran out"
    return text + "; --resume continues from its last.npz"


def _stop_signals_as_ctrl_c():
    """Make SIGTERM and SIGHUP raise KeyboardInterrupt, as Ctrl-C does; returns the old
    handlers (``{}`` outside the main thread, where handlers cannot be set)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    sigs = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    return {sig: signal.signal(sig, _interrupt) for sig in sigs}


def _run_members(run_dir: Path, manifest: dict, jobs: int, cache: Optional[str],
                 no_test: bool, report) -> int:
    from .train import TrainConfig, _clock
    cfg = TrainConfig.from_dict(manifest["train"])
    K, E = int(manifest["members"]), int(cfg.epochs)
    for k in range(K):          # a member resumed on its own with --epochs would join as is
        conf = member_dir(run_dir, k) / "config.json"
        try:
            epochs = int(json.loads(conf.read_text())["train"]["epochs"])
        except (OSError, ValueError, KeyError, TypeError):
            continue                            # not begun, or damaged: its resume says so
        if epochs != E:
            fix = (f"resume it with 'python -m tinyseg.train --resume {conf.parent} --epochs "
                   f"{E}' first" if epochs < E else "start the ensemble again")
            raise UserError(f"{conf.parent}: trains {epochs} epochs, the ensemble's members "
                            f"{E} (it was resumed on its own with --epochs); {fix}")
    pending = [k for k in range(K) if _epochs_saved(member_dir(run_dir, k)) < E
               or not (member_dir(run_dir, k) / "best.npz").is_file()]
    running: Dict[int, subprocess.Popen] = {}
    outputs: Dict[int, object] = {}
    failed: Optional[int] = None
    failed_rc = 0
    stopped = False
    for k in pending:                           # what no member could start from
        d = member_dir(run_dir, k)
        if d.exists() and not d.is_dir():
            raise UserError(f"{d}: a file where member {k}'s run directory should be")
        if (d / "config.json").is_file() and not (d / "last.npz").is_file():
            raise UserError(f"{d}: member {k} has no last.npz to continue from; delete {d} "
                            f"and --resume again to train that member from the start")
    start_epochs = sum(min(_epochs_done(member_dir(run_dir, k)), E) for k in range(K))
    t0 = time.perf_counter()
    report(f"ensemble of {K} members (seeds {cfg.seed}-{cfg.seed + K - 1}), {min(jobs, K)} at a "
           f"time on {manifest['threads']} thread(s); "
           f"{K - len(pending)} already done; writing to {run_dir}", True)

    def stop_all(sig=signal.SIGINT):
        for p in running.values():
            if p.poll() is None:
                p.send_signal(sig)

    previous = _stop_signals_as_ctrl_c()
    try:
        while pending or running:
            while pending and len(running) < jobs and failed is None and not stopped:
                k = pending.pop(0)
                t = member_threads(int(manifest["threads"]), jobs, len(running), len(pending))
                d = member_dir(run_dir, k)
                d.mkdir(parents=True, exist_ok=True)
                out = open(d / "output.txt", "ab")
                outputs[k] = out
                # a session of its own: Ctrl-C reaches the members once, through stop_all
                running[k] = subprocess.Popen(_member_argv(run_dir, manifest, k, cache, t),
                                              stdout=out, stderr=subprocess.STDOUT,
                                              start_new_session=True)
                report(f"member {k} (seed {cfg.seed + k}) started on {t} thread(s)", True)
            for k, p in list(running.items()):
                rc = p.poll()
                if rc is None:
                    continue
                del running[k]
                outputs.pop(k).close()
                d = member_dir(run_dir, k)
                if rc == 0:
                    last = _last_record(d)
                    report(f"member {k} (seed {cfg.seed + k}) done: best validation IoU "
                           f"{last.get('best_iou', float('nan')):.4f} at epoch "
                           f"{last.get('best_epoch')}", True)
                elif rc == 130:
                    stopped = True
                else:
                    if failed is None:
                        failed, failed_rc = k, rc
                    stop_all()
            if not pending and not running:
                break
            if (failed is not None or stopped) and not running:
                break
            done = sum(min(_epochs_done(member_dir(run_dir, k)), E) for k in range(K))
            secs = time.perf_counter() - t0
            rate = (done - start_epochs) / secs if secs > 0 else 0.0
            eta = (K * E - done) / rate if rate > 0 else float("inf")
            report(f"ensemble: {done}/{K * E} member epochs, members running: "
                   f"{', '.join(map(str, sorted(running)))}; {_clock(secs)} elapsed, "
                   f"ETA {_clock(eta)}", False)
            time.sleep(0.5)
    except KeyboardInterrupt:
        stopped = True
        stop_all()
        try:
            for p in running.values():
                p.wait()
        except KeyboardInterrupt:           # a second Ctrl-C: the members stop at once
            stop_all()
            for p in running.values():
                p.wait()
    except BaseException:                   # anything else: no member is left training alone
        stop_all()
        for p in running.values():
            p.wait()
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for out in outputs.values():
            out.close()
    if failed is not None:
        tail = (member_dir(run_dir, failed) / "output.txt").read_text(errors="replace")
        tail = "\n".join(tail.strip().splitlines()[-5:])
        raise UserError(f"member {failed} {_how_it_ended(failed_rc)} (see "
                        f"{member_dir(run_dir, failed)}/output.txt):\n{tail}")
    again = f"python -m tinyseg.train --resume {shlex.quote(str(run_dir))}"
    if stopped:
        print(f"stopped; each member keeps what it saved (its last.npz, if it got that far). "
              f"Continue with: {again}", flush=True)
        return 130
    try:
        return _join(run_dir, manifest, cfg, cache, no_test, time.perf_counter() - t0)
    except KeyboardInterrupt:   # not "before training started": every member is trained
        print(f"\nstopped while joining or scoring the trained members; {again} does it",
              file=sys.stderr, flush=True)
        return 130


def _last_record(d: Path) -> dict:
    try:
        lines = (d / "log.jsonl").read_text().strip().splitlines()
        return json.loads(lines[-1]) if lines else {}
    except (OSError, json.JSONDecodeError):
        return {}


def _join(run_dir: Path, manifest: dict, cfg, cache: Optional[str], no_test: bool,
          seconds: float) -> int:
    """Write RUN/best.npz (the ensemble), its validation IoU and the test figures."""
    from .checkpoint import CheckpointError, load_model
    from .data.cache import load_split
    from .ensemble import save_ensemble
    from .evaluate import evaluate_dataset
    from .train import _clock, write_test_report
    K = int(manifest["members"])
    paths = [member_dir(run_dir, k) / "best.npz" for k in range(K)]
    try:
        best = save_ensemble(run_dir / "best.npz", paths)
    except CheckpointError as e:
        raise UserError(f"cannot join the members ({e}); delete that member's directory and "
                        f"--resume {run_dir} to train it again") from None
    model, info = load_model(best)
    val = load_split(cfg.data, "val", cfg.size, cfg.filters(), cache, progress=False)
    n = len(val) if cfg.val_limit is None else min(cfg.val_limit, len(val))
    ev = evaluate_dataset(model, val.images[:n], val.masks[:n], val.boxes[:n],
                          info["mean"], info["std"])
    members = [_last_record(member_dir(run_dir, k)) for k in range(K)]
    manifest["member_best"] = [{"seed": cfg.seed + k, "best_iou": r.get("best_iou"),
                                "best_epoch": r.get("best_epoch"),
                                "elapsed": r.get("elapsed")} for k, r in enumerate(members)]
    manifest["val"] = {"images": n, **ev.summary()}
    _write_manifest(run_dir, manifest)
    ious = ", ".join(f"{r.get('best_iou', float('nan')):.4f}" for r in members)
    print(f"done: {K} members in {_clock(seconds)} (this session); members' best validation "
          f"IoU {ious}; the ensemble's validation IoU {ev.person_iou:.4f} ({best})", flush=True)
    if not no_test:
        write_test_report(run_dir, best, cfg, cache)
    return 0
