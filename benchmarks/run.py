"""tinyseg's benchmark harness: are the kernels right, and how fast are they?

Run from the repository root::

    python -m benchmarks                    # everything, 1 and 2 threads (long: see --help)
    python -m benchmarks --quick            # tiny shapes, one thread: a smoke test
    python -m benchmarks --threads 2 --parts kernels --kernel-presets fcdensenet56

What it does, per thread count (each in fresh processes, so that the thread settings are in
place before NumPy, numba and PyTorch start their thread pools):

1. **Shapes.**  One real training step of each of ``--kernel-presets`` (default ``small``
   and ``fcdensenet56``, from ``tinyseg.train.PRESETS``: network, image size, batch size)
   is run with every kernel call recorded
   (``benchmarks.cases.record_step``); the distinct calls of each kind are the benchmark
   cases, at batch 4 and 8 (``--batches``).
2. **Kernels.**  For every case: the numba kernel's output is compared with the NumPy
   reference's on the same input; a kernel whose relative error
   ``max|fast − ref| / max|ref|`` exceeds the tolerance (:data:`TOLERANCE`) is *refused*:
   its row says so and reports no time.  Otherwise it is timed: the first call (which
   includes loading or compiling the kernel) separately, then the median and the
   interquartile spread of ``--reps`` repetitions.  The reference is timed too (speed-up),
   and PyTorch's operation for the same job on the same shapes, same thread count, in its
   own process (interleaved case by case with tinyseg's, so that both see the same machine
   load).  Rows sum the cases of one op over a whole training step (each case times the
   number of calls the step makes).
3. **Whole model.**  One training step (forward, loss, backward, RMSprop) of each training
   preset at its size and batch: median step time, images per second, peak memory; and the
   same for ``benchmarks/torch_tiramisu.py``.  Each side runs in a fresh process; peak
   memory is the growth of the process's resident set (``VmHWM − VmRSS`` before the first
   step, after resetting the high-water mark through ``/proc/self/clear_refs``), which
   counts every allocator (NumPy, numba, OpenBLAS, PyTorch's) the same way.
4. **Compilation.**  The first training step of ``tiramisu_tiny`` at 32×32, batch 2, in a
   process with an empty numba cache (``NUMBA_CACHE_DIR`` set to a new directory): the
   time each kernel's first call takes beyond its second is its compilation time.  Then
   the same in a second process, which loads the cache instead.

Results go to ``<out>/<name>.json`` (everything, including every case), ``<out>/<name>.md``
(the tables) and ``<out>/<name>-summary.md`` (the short version).  PyTorch is optional:
without it the PyTorch columns say n/a.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib.util
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parents[1]

# Relative error max|fast − ref| / max|ref| allowed between a kernel and its NumPy twin.
# float32: the reference and the kernel sum in different orders (BLAS blocks, float64
# accumulators), and a 3×3 convolution's weight gradient sums up to N·H·W = 131,072
# products per entry at batch 8 on 128×128; observed errors are 1e-7 … 2e-6 (at most 1.2e-6
# in the full runs of 2026-11-27).  It was 1e-4 until 2026-11-28, which let a gradient wrong
# by a factor of 1.00005 through.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMBA_NUM_THREADS")

TARGET_RATIO = 1.5          # tinyseg time / PyTorch time, conv 3×3 and the training step
TARGET_COMPILE_S = 60.0     # first-run compilation of all kernels
# the whole-model targets of the issue: the --small preset and fc_densenet56 at 128x128
# (the other presets' rows are in the tables, with their ratios, but are not targets)
TARGET_PRESETS = ("small", "fcdensenet56")


# ==========================================================================================
# Measuring: the correctness gate and the timer
# ==========================================================================================

def _as_arrays(outputs: Sequence[Any]):
    import numpy as np
    return [None if o is None else np.asarray(o) for o in outputs]


def compare(fast: Sequence[Any], ref: Sequence[Any], tol: float,
            missing_ok: bool = False) -> dict:
    """The correctness gate: ``{"ok", "error", "tol", "worst"}``.

    ``error`` is the largest, over the outputs, of ``max|f − r| / max|r|`` (float outputs;
    ``max|r|`` replaced by 1 when it is below 1e-30) or of the fraction of differing
    entries (integer outputs, which must match exactly).  Outputs that are ``None`` on both
    sides are skipped; on one side only they fail, unless ``missing_ok`` (PyTorch gives no
    arg-max for max-pooling, say).  Shapes must match; NaN anywhere fails.
    """
    import numpy as np
    fast, ref = _as_arrays(fast), _as_arrays(ref)
    if len(fast) != len(ref):
        return {"ok": False, "error": math.inf, "tol": tol,
                "worst": f"{len(fast)} outputs, reference has {len(ref)}"}
    worst, where = 0.0, ""
    for i, (f, r) in enumerate(zip(fast, ref)):
        if f is None or r is None:
            if (f is None) != (r is None) and not missing_ok:
                return {"ok": False, "error": math.inf, "tol": tol,
                        "worst": f"output {i}: None on one side only"}
            continue
        if f.shape != r.shape:
            return {"ok": False, "error": math.inf, "tol": tol,
                    "worst": f"output {i}: shape {f.shape}, reference {r.shape}"}
        if f.size == 0:
            continue
        if r.dtype.kind in "iub" and f.dtype.kind in "iub":
            e = float(np.mean(f != r))
            bad = e > 0
        else:
            f64, r64 = f.astype(np.float64), r.astype(np.float64)
            if not (np.all(np.isfinite(f64)) and np.all(np.isfinite(r64))):
                return {"ok": False, "error": math.inf, "tol": tol,
                        "worst": f"output {i}: non-finite values"}
            scale = float(np.max(np.abs(r64)))
            e = float(np.max(np.abs(f64 - r64))) / (scale if scale > 1e-30 else 1.0)
            bad = e > tol
        if e > worst or (bad and not where):
            worst, where = e, f"output {i}"
        if bad:
            return {"ok": False, "error": e, "tol": tol, "worst": f"output {i}"}
    return {"ok": True, "error": worst, "tol": tol, "worst": where}


def measure(fn: Callable[[], Any], reps: int, min_rep_seconds: float = 0.01,
            max_seconds: float = 20.0) -> dict:
    """Time ``fn()`` (already warmed up by the caller): one calibration call, then ``reps``
    repetitions of ``number`` calls each (``number`` chosen so that a repetition lasts at
    least ``min_rep_seconds``; fewer repetitions, at least 3, if they would take more than
    ``max_seconds``).  With ``min_rep_seconds <= 0`` there is no calibration call: ``reps``
    single calls (whole training steps).  Returns seconds per call: ``median``, ``p25``,
    ``p75``, ``min``, ``max``, and ``reps``, ``number``."""
    reps = max(1, int(reps))
    number = 1
    if min_rep_seconds > 0:
        t0 = time.perf_counter()
        fn()
        t1 = max(time.perf_counter() - t0, 1e-7)
        number = max(1, int(math.ceil(min_rep_seconds / t1)))
        if t1 * number * reps > max_seconds:
            reps = max(min(3, reps), int(max_seconds / (t1 * number)))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(number):
            fn()
        times.append((time.perf_counter() - t0) / number)
    times.sort()
    q = statistics.quantiles(times, n=4, method="inclusive") if len(times) > 1 else \
        [times[0]] * 3
    return {"median": statistics.median(times), "p25": q[0], "p75": q[2], "min": times[0],
            "max": times[-1], "reps": reps, "number": number}


def bench_kernel(call: dict, reps: int, seed: int = 0, fast: Optional[Callable] = None,
                 ref: Optional[Callable] = None, time_ref: bool = True,
                 min_rep_seconds: float = 0.01, max_seconds: float = 20.0) -> dict:
    """Check, then time, one kernel call (a dict from ``benchmarks.cases``).

    ``fast`` / ``ref`` replace the kernel and the reference (the tests pass a deliberately
    wrong kernel here).  Returns ``{"status": "ok" | "refused", "check": {...}, "first":
    seconds of the first call, "fast": timing, "ref": timing, "flops", "bytes"}``; a
    refused kernel has no ``"fast"`` timing.
    """
    from benchmarks import cases
    kw, _ = cases.make_inputs(call, seed)
    fast_impl, ref_impl = cases.implementations(call)
    fast = fast or fast_impl
    ref = ref or ref_impl
    dtype = _call_dtype(call)
    tol = TOLERANCE[dtype]

    fast_kw = cases.copy_inputs(kw)
    t0 = time.perf_counter()
    fast_out = cases.run_impl(call, fast, fast_kw)
    first = time.perf_counter() - t0
    ref_kw = cases.copy_inputs(kw)
    t0 = time.perf_counter()
    ref_out = cases.run_impl(call, ref, ref_kw)
    ref_first = time.perf_counter() - t0
    check = compare(fast_out, ref_out, tol)
    del fast_out, ref_out
    flops, nbytes = cases.work(call)
    result = {"status": "ok" if check["ok"] else "refused", "check": check, "first": first,
              "flops": flops, "bytes": nbytes}
    if not check["ok"]:
        return result
    result["fast"] = measure(lambda: cases.run_impl(call, fast, fast_kw), reps,
                             min_rep_seconds, max_seconds)
    if time_ref:
        if ref_first > 1.0:  # slow: its one (checking) call is the measurement
            result["ref"] = {"median": ref_first, "p25": ref_first, "p75": ref_first,
                             "min": ref_first, "max": ref_first, "reps": 1, "number": 1}
        else:
            result["ref"] = measure(lambda: cases.run_impl(call, ref, ref_kw),
                                    max(3, reps // 2), min_rep_seconds, max_seconds / 2)
    return result


def bench_torch(torch, call: dict, reps: int, seed: int = 0, check: bool = False,
                min_rep_seconds: float = 0.01, max_seconds: float = 20.0) -> dict:
    """Time PyTorch's operation for ``call`` (same shapes, same values); with ``check``,
    first hold its output against tinyseg's NumPy reference (a mismatch means the two
    sides do not compute the same thing, and the row reports no PyTorch time)."""
    from benchmarks import cases
    kw, aux = cases.make_inputs(call, seed)
    fn, outputs = cases.torch_callable(torch, call, kw, aux)
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    result: Dict[str, Any] = {"first": first}
    if check:
        _, ref = cases.implementations(call)
        ref_out = cases.run_impl(call, ref, cases.copy_inputs(kw))
        result["check"] = compare(outputs(out), ref_out, TOLERANCE[_call_dtype(call)],
                                  missing_ok=True)
        if not result["check"]["ok"]:
            result["status"] = "mismatch"
            return result
    del out
    result["status"] = "ok"
    result["torch"] = measure(fn, reps, min_rep_seconds, max_seconds)
    return result


def _call_dtype(call: dict) -> str:
    for desc in call["args"].values():
        for d in desc.get("list", [desc]):
            if "dtype" in d and d["dtype"].startswith("float"):
                return d["dtype"]
    return "float32"


# ==========================================================================================
# Threads, machine, memory
# ==========================================================================================

def thread_env(threads: int, side: str = "tinyseg",
               blas_threads: Optional[int] = None) -> Dict[str, str]:
    """The environment of a worker process with ``threads`` threads, set before NumPy,
    numba and PyTorch start their pools (``OPENBLAS_CORETYPE`` and everything else is
    inherited untouched).

    tinyseg's own policy (``tinyseg.cli.set_threads``, which the workers also call) keeps
    OpenBLAS at ``TINYSEG_BLAS_THREADS`` threads, 1 unless set, and gives ``threads`` to
    numba; ``blas_threads`` overrides that, as an experiment.  PyTorch gets ``threads``
    everywhere (it does not use OpenBLAS), and its own OpenMP default: the sleeping workers
    (``OMP_WAIT_POLICY=PASSIVE``) that importing tinyseg sets in this process are tinyseg's
    policy, not PyTorch's (until 2026-11-28 the PyTorch workers inherited them).
    """
    import tinyseg
    env = dict(os.environ)
    if side == "torch" and tinyseg.OMP_WAIT_POLICY_GIVEN is None:
        env.pop("OMP_WAIT_POLICY", None)
    for var in THREAD_VARS:
        env[var] = str(threads)
    if side == "tinyseg":
        blas = str(blas_threads) if blas_threads is not None else \
            os.environ.get("TINYSEG_BLAS_THREADS", "1")  # tinyseg.cli's default
        env["TINYSEG_BLAS_THREADS"] = blas
        env["OPENBLAS_NUM_THREADS"] = blas
    env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in
                                                       env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _openblas_threads() -> Optional[int]:
    """Threads the loaded OpenBLAS uses now (``None`` if none is found): tinyseg's own query."""
    from tinyseg.cli import blas_threads
    return blas_threads()


def matmul_peak(side: str, threads: int, n: int = 2048, reps: int = 5) -> dict:
    """This machine's float32 matrix-multiply speed, ``n × n × n`` (GFLOP/s), with NumPy's
    BLAS (``side="tinyseg"``) or PyTorch's."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    if side == "torch":
        import torch
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        fn = lambda: torch.mm(ta, tb)  # noqa: E731
    else:
        fn = lambda: np.matmul(a, b)  # noqa: E731
    fn()
    t = measure(fn, reps, 0.0, 60.0)
    return {"n": n, "seconds": t["median"], "gflops": 2.0 * n ** 3 / t["median"] / 1e9,
            "timing": t}


def machine_info() -> dict:
    cpu = platform.processor() or "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_bytes": mem,
            "system": f"{platform.system()} {platform.release()}",
            "python": platform.python_version()}


def _status_kb(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_snapshot(pids: Sequence[int]) -> Optional[Tuple[float, float, float]]:
    """``(busy, own, when)``: CPU seconds the whole machine has been busy, CPU seconds of
    the processes ``pids``, and the wall clock; ``None`` where /proc is missing."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        busy = sum(v) - v[3] - (v[4] if len(v) > 4 else 0)  # all but idle and iowait
        own = 0
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])  # utime, stime
        return busy / _HZ, own / _HZ, time.perf_counter()
    except (OSError, ValueError, IndexError):
        return None


def other_cores(start, end) -> Optional[float]:
    """How many cores, on average, processes *other* than the measured ones kept busy
    between two :func:`cpu_snapshot` calls (0 on an idle machine; the tables flag rows
    above :data:`BUSY_CORES`)."""
    if start is None or end is None or end[2] <= start[2]:
        return None
    return max(0.0, ((end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]))


BUSY_CORES = 0.25


def reset_peak_rss() -> bool:
    """Reset this process's resident-set high-water mark (Linux ≥ 4.0); False if not
    possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class PeakRSS:
    """Peak growth of the resident set during a block: ``with PeakRSS() as m: ...;
    m.peak`` (bytes above the resident set at the start of the block)."""

    def __enter__(self) -> "PeakRSS":
        gc.collect()
        self.reset = reset_peak_rss()
        self.start = (_status_kb("VmRSS") or 0) * 1024
        self.hwm_start = (_status_kb("VmHWM") or 0) * 1024
        return self

    def __exit__(self, *exc) -> None:
        hwm = (_status_kb("VmHWM") or 0) * 1024
        if not self.reset and hwm <= self.hwm_start:
            self.peak = None  # the high-water mark predates the block: unknown
        else:
            self.peak = max(0, hwm - self.start)
        import resource
        self.ru_maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ==========================================================================================
# Worker processes
# ==========================================================================================

# the thread variables this process started with (tinyseg.cli.set_threads rewrites them for
# child processes)
_START_ENV = {v: os.environ.get(v) for v in THREAD_VARS + ("OPENBLAS_CORETYPE",
                                                           "TINYSEG_BLAS_THREADS",
                                                           "OMP_WAIT_POLICY")}


def _thread_report(side: str) -> dict:
    rep = {"env": dict(_START_ENV)}
    if side == "torch":
        import torch
        rep["torch"] = torch.get_num_threads()
    else:
        import numba
        rep["numba"] = numba.get_num_threads()
    rep["openblas"] = _openblas_threads()
    return rep


def _setup_side(side: str, threads: int):
    import numpy as np  # noqa: F401  (loads OpenBLAS with the thread variables in place)
    if side == "torch":
        import torch
        torch.set_num_threads(threads)
        return torch
    from tinyseg.cli import set_threads
    set_threads(threads)  # tinyseg's policy: numba gets the threads, OpenBLAS its own count
    return None


def _versions(side: str) -> dict:
    import numpy as np
    v = {"numpy": np.__version__}
    try:
        cfg = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        v["blas"] = f"{cfg.get('name')} {cfg.get('version')}"
    except Exception:  # noqa: BLE001 - older NumPy
        pass
    if side == "torch":
        import torch
        v["torch"] = torch.__version__
    else:
        import numba
        v["numba"] = numba.__version__
    return v


def _handle(task: dict, side: str, threads: int, torch) -> dict:
    kind = task["task"]
    if kind == "info":
        out = {"threads": _thread_report(side), "versions": _versions(side),
               "loadavg": os.getloadavg()}
        if task.get("matmul", True):
            out["matmul"] = matmul_peak(side, threads, task.get("n", 2048),
                                        task.get("reps", 5))
        return out
    if kind == "record":
        from benchmarks import cases
        return cases.record_step(task["model"], task["size"],
                                 memory_efficient=task.get("memory_efficient", True))
    if kind == "kernel":
        if side == "torch":
            return bench_torch(torch, task["call"], task["reps"], task.get("seed", 0),
                               task.get("check", False), task.get("min_rep", 0.01),
                               task.get("max_seconds", 20.0))
        return bench_kernel(task["call"], task["reps"], task.get("seed", 0),
                            time_ref=task.get("time_ref", True),
                            min_rep_seconds=task.get("min_rep", 0.01),
                            max_seconds=task.get("max_seconds", 20.0))
    if kind == "loadavg":
        return {"loadavg": os.getloadavg()}
    raise ValueError(f"unknown task {kind!r}")


def worker_main(side: str, threads: int) -> int:
    """A worker: one JSON task per line on stdin, one JSON result per line on stdout."""
    out = os.fdopen(os.dup(1), "w")
    sys.stdout = sys.stderr  # anything else printed must not corrupt the protocol
    torch = _setup_side(side, threads)
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        task = json.loads(line)
        if task.get("task") == "quit":
            break
        try:
            result = _handle(task, side, threads, torch)
        except Exception as e:  # noqa: BLE001 - reported to the parent, which goes on
            result = {"status": "error", "error": f"{type(e).__name__}: {e}",
                      "traceback": traceback.format_exc()}
        out.write(json.dumps(result, default=_json_default) + "\n")
        out.flush()
    return 0


def _json_default(o):
    import numpy as np
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON-able: {type(o).__name__}")


class Worker:
    """A worker process (``side`` "tinyseg" or "torch") with ``threads`` threads."""

    def __init__(self, side: str, threads: int, log=None,
                 blas_threads: Optional[int] = None) -> None:
        self.side = side
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.run", "--worker", side, "--threads",
             str(threads)],
            cwd=str(REPO), env=thread_env(threads, side, blas_threads), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log if log is not None else None, text=True,
            bufsize=1)

    def __call__(self, task: dict) -> dict:
        self.proc.stdin.write(json.dumps(task) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.side} worker died (exit code {self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"task": "quit"}) + "\n")
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()


# -- one training step in a fresh process ---------------------------------------------------

def model_step_main(spec: dict) -> dict:
    """Time one training step of a whole network (``spec["side"]`` "tinyseg" or "torch") and
    measure its peak memory; runs in its own process (see :func:`run_model`)."""
    threads = spec["threads"]
    torch = _setup_side(spec["side"], threads)
    from benchmarks import cases
    import numpy as np
    x, t = cases.make_batch(spec["batch"], spec["size"], seed=1)
    ts_model = cases.make_model(spec["model"], seed=0)
    result: Dict[str, Any] = {"num_parameters": ts_model.num_parameters()}
    if spec["side"] == "torch":
        from benchmarks import torch_tiramisu
        net = torch_tiramisu.from_tinyseg(ts_model)  # same weights, strict name check
        result["weights_copied"] = len(ts_model.state_dict())
        del ts_model
        net.train()
        opt = torch.optim.RMSprop(net.parameters(), lr=cases.LR, alpha=0.99, eps=1e-8,
                                  weight_decay=cases.WEIGHT_DECAY)
        tx, tt = torch.from_numpy(x), torch.from_numpy(t)
        F = torch.nn.functional

        def step():
            opt.zero_grad()
            loss = F.cross_entropy(net(tx), tt)
            loss.backward()
            opt.step()
            return loss.detach().item()
    else:
        model = ts_model
        model.train()
        step_fn, _ = cases.training_step(model)

        def step():
            return step_fn(x, t)
    budget = spec.get("budget", 600.0)
    cpu0 = cpu_snapshot([os.getpid()])
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        loss0 = step()
        first = time.perf_counter() - t0
        # fewer timed steps (at least one) when they would not fit in the time budget
        reps = max(1, min(spec["reps"], int(budget / max(first, 1e-9))))
        timing = measure(step, reps, 0.0)
    result["other_cores"] = other_cores(cpu0, cpu_snapshot([os.getpid()]))
    result.update({"first": first, "step": timing, "loss": loss0, "peak_rss": mem.peak,
                   "rss_before": mem.start, "rss_reset": mem.reset,
                   "ru_maxrss": mem.ru_maxrss, "images_per_second":
                   spec["batch"] / timing["median"], "loadavg": os.getloadavg(),
                   "threads": _thread_report(spec["side"])})
    if spec.get("profile") and first * (reps + 2) < budget:
        result["profile"] = (profile_torch_step(torch, step) if spec["side"] == "torch"
                             else profile_tinyseg_step(step))
    return result


def profile_tinyseg_step(step: Callable[[], Any]) -> dict:
    """Where one tinyseg training step spends its time: seconds per op (every kernel call
    timed), and inside the convolutions each private numba kernel of
    ``tinyseg.kernels.conv`` (found by looking, e.g. ``_im2col_rows``) and the BLAS matrix
    products (``np.matmul`` as that module sees it); ``glue`` is everything outside the
    kernels (NumPy code in the layers: dropout, buffer copies, zeroing, padding)."""
    import numpy as np
    from benchmarks import cases
    import tinyseg.kernels.conv as kc

    private = {name: fn for name, fn in vars(kc).items()
               if name.startswith("_") and hasattr(fn, "py_func")}  # numba dispatchers
    inner = {name: 0.0 for name in private}
    inner["matmul"] = 0.0

    def timed(name, fn):
        def wrapper(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                inner[name] += time.perf_counter() - t0
        return wrapper

    class _NumPy:  # ``np`` as the conv module sees it, with a timed ``matmul``
        def __getattr__(self, name):
            return getattr(np, name)
        matmul = staticmethod(timed("matmul", np.matmul))

    calls: List[dict] = []
    module_np = kc.np
    for name, fn in private.items():
        setattr(kc, name, timed(name, fn))
    kc.np = _NumPy()
    try:
        with cases.recording(calls, timer=True):
            t0 = time.perf_counter()
            step()
            total = time.perf_counter() - t0
    finally:
        for name, fn in private.items():
            setattr(kc, name, fn)
        kc.np = module_np
    by_op: Dict[str, dict] = {}
    for c in calls:
        d = by_op.setdefault(cases.op_name(c), {"seconds": 0.0, "calls": 0})
        d["seconds"] += c["seconds"]
        d["calls"] += 1
    kernels = sum(d["seconds"] for d in by_op.values())
    return {"total": total, "ops": by_op, "glue": total - kernels, "conv_inner": inner}


def profile_torch_step(torch, step: Callable[[], Any], limit: int = 12) -> dict:
    """PyTorch's own profile of one step: the operators with the most self CPU time."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        step()
        total = time.perf_counter() - t0
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:limit]
    return {"total": total, "top": [{"name": e.key, "self_seconds": e.self_cpu_time_total / 1e6,
                                     "calls": e.count} for e in rows]}


def run_subprocess_json(args: List[str], threads: int, env_extra: Optional[dict] = None,
                        log=None, timeout: Optional[float] = None, side: str = "tinyseg",
                        blas_threads: Optional[int] = None) -> dict:
    """Run ``python -m benchmarks.run ARGS`` with ``threads`` threads; its last stdout line
    is a JSON result."""
    env = thread_env(threads, side, blas_threads)
    env.update(env_extra or {})
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=str(REPO),
                          env=env, stdout=subprocess.PIPE, stderr=log, text=True,
                          timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip()]
    if proc.returncode != 0 or not lines:
        return {"status": "error", "error": f"exit code {proc.returncode}",
                "stdout": proc.stdout[-2000:]}
    return json.loads(lines[-1])


# -- compilation ---------------------------------------------------------------------------

def compile_main(spec: dict) -> dict:
    """First and second training step of a small model, every kernel call timed; run with a
    fresh or a warm ``NUMBA_CACHE_DIR`` (see :func:`run_compile`)."""
    t0 = time.perf_counter()
    import numba  # noqa: F401
    from benchmarks import cases
    import tinyseg.tiramisu  # noqa: F401  (imports every kernel module)
    imports = time.perf_counter() - t0
    out = {"imports": imports, "runs": []}
    for dtype in spec["dtypes"]:
        for efficient in (True, False):
            import numpy as np
            model = cases.make_model(spec["model"], seed=0, memory_efficient=efficient,
                                     dtype=np.dtype(dtype))
            step, _ = cases.training_step(model)
            x, t = cases.make_batch(2, spec["size"], seed=1)
            x = x.astype(dtype)
            steps = []
            for _ in range(2):
                calls: List[dict] = []
                t1 = time.perf_counter()
                with cases.recording(calls, timer=True):
                    step(x, t)
                steps.append((time.perf_counter() - t1, calls))
            (w1, c1), (w2, c2) = steps
            per_kernel: Dict[str, float] = {}
            per_kernel_cpu: Dict[str, float] = {}
            for a, b in zip(c1, c2):
                k = a["kernel"]
                per_kernel[k] = per_kernel.get(k, 0.0) + max(0.0, a["seconds"] - b["seconds"])
                per_kernel_cpu[k] = per_kernel_cpu.get(k, 0.0) + max(0.0, a["cpu"] - b["cpu"])
            out["runs"].append({"dtype": dtype, "memory_efficient": efficient,
                                "first_step": w1, "second_step": w2,
                                "per_kernel": per_kernel, "per_kernel_cpu": per_kernel_cpu,
                                "kernels_total": sum(per_kernel.values()),
                                "kernels_total_cpu": sum(per_kernel_cpu.values())})
    return out


def run_compile(threads: int, log=None, model: str = "tiramisu_tiny", size: int = 32,
                dtypes: Sequence[str] = ("float32", "float64")) -> dict:
    """Compilation of every kernel from an empty numba cache, then loading from the cache."""
    cache = tempfile.mkdtemp(prefix="tinyseg-numba-cache-")
    spec = json.dumps({"model": model, "size": size, "dtypes": list(dtypes)})
    try:
        t0 = time.perf_counter()
        cold = run_subprocess_json(["--compile-worker", spec], threads,
                                   {"NUMBA_CACHE_DIR": cache}, log)
        cold["wall"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = run_subprocess_json(["--compile-worker", spec], threads,
                                   {"NUMBA_CACHE_DIR": cache}, log)
        warm["wall"] = time.perf_counter() - t0
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"model": model, "size": size, "threads": threads, "cold": cold, "warm": warm}


# ==========================================================================================
# The parent: plan, run, collect
# ==========================================================================================

def source_state() -> dict:
    """Which code was measured: the git commit, whether kernel files differ from it, and a
    hash of every kernel and layer source file (the tree changes while people work)."""
    import hashlib
    h = hashlib.sha256()
    files = sorted((REPO / "tinyseg").glob("kernels/*.py")) + \
        sorted((REPO / "tinyseg").glob("layers/*.py")) + [REPO / "tinyseg" / "tiramisu.py"]
    for f in files:
        if f.exists():
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    out = {"kernels_sha256": h.hexdigest()[:16]}
    try:
        out["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                       capture_output=True, text=True).stdout.strip()
        # --no-optional-locks: never touch the index (someone else may be committing)
        status = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain", "--",
                                 "tinyseg"], cwd=REPO,
                                capture_output=True, text=True).stdout
        out["uncommitted_tinyseg_files"] = len([ln for ln in status.splitlines() if ln.strip()])
    except OSError:
        pass
    return out


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


def _say(msg: str, quiet: bool = False) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def select_calls(group: List[Tuple[dict, int]], max_shapes: Optional[int]
                 ) -> List[Tuple[dict, int]]:
    """All distinct calls of an op, or the ``max_shapes`` with the most work per step
    (flops, else bytes, times the number of calls)."""
    from benchmarks import cases
    if not max_shapes or len(group) <= max_shapes:
        return list(group)

    def weight(item):
        f, b = cases.work(item[0])
        return (f if f is not None else b) * item[1]
    keep = sorted(group, key=weight, reverse=True)[:max_shapes]
    return [g for g in group if any(g is k for k in keep)]


def run_kernels(records: Dict[str, dict], threads: int, opts, torch_ok: bool, log=None
                ) -> dict:
    """Every kernel case of the selected presets at the selected batches, for one thread
    count; tinyseg and PyTorch in two long-lived workers, called alternately."""
    from benchmarks import cases
    ts = Worker("tinyseg", threads, log, opts.blas_threads)
    tw = Worker("torch", threads, log) if torch_ok else None
    out: Dict[str, Any] = {"threads": threads, "blas_threads": opts.blas_threads,
                           "groups": []}
    try:
        n = 1024 if opts.quick else 2048
        out["info"] = {"tinyseg": ts({"task": "info", "n": n, "reps": 3 if opts.quick else 5})}
        if tw:
            out["info"]["torch"] = tw({"task": "info", "n": n, "reps": 3 if opts.quick else 5})
        for preset in opts.kernel_presets:
            rec = records[preset]
            for batch in opts.batches:
                groups = cases.group_calls(rec["efficient"]["calls"], batch)
                naive = cases.group_calls(rec["naive"]["calls"], batch)
                for op, g in naive.items():
                    if op not in groups:
                        groups[op] = g
                for op, group in groups.items():
                    if opts.ops and not any(s in op for s in opts.ops):
                        continue
                    chosen = select_calls(group, opts.max_shapes)
                    res = {"op": op, "preset": preset, "model": rec["model"],
                           "size": rec["size"], "batch": batch,
                           "naive_only": op not in cases.group_calls(
                               rec["efficient"]["calls"], batch),
                           "calls_per_step": sum(c for _, c in group),
                           "distinct": len(group), "cases": []}
                    smallest = min(range(len(chosen)),
                                   key=lambda i: cases.work(chosen[i][0])[1])
                    pids = [os.getpid(), ts.proc.pid] + ([tw.proc.pid] if tw else [])
                    cpu0 = cpu_snapshot(pids)
                    for i, (call, count) in enumerate(chosen):
                        task = {"task": "kernel", "call": call, "reps": opts.reps,
                                "min_rep": opts.min_rep, "max_seconds": opts.max_seconds}
                        r = {"call": call, "count": count, "label": cases.shape_label(call),
                             "tinyseg": ts(task)}
                        if tw:
                            r["torch"] = tw({**task, "check": i == smallest})
                        res["cases"].append(r)
                    res["other_cores"] = other_cores(cpu0, cpu_snapshot(pids))
                    summarize_group(res)
                    out["groups"].append(res)
                    _say(f"  [{threads} thr] {preset:>12} b{batch} {op:<15} "
                         f"{_fmt_ms(res.get('tinyseg_s'))} ms  ref {_fmt_ms(res.get('ref_s'))}"
                         f"  torch {_fmt_ms(res.get('torch_s'))}  {res['status']}"
                         f"  (others: {_fmt_cores(res.get('other_cores'))} cores)",
                         opts.quiet)
        out["loadavg_end"] = ts({"task": "loadavg"})["loadavg"]
    finally:
        ts.close()
        if tw:
            tw.close()
    return out


def summarize_group(res: dict) -> dict:
    """Totals of one op over a training step: ``tinyseg_s`` (Σ count × median),
    ``ref_s``, ``torch_s``, ``spread`` (same sum over half the interquartile ranges,
    relative), ``flops``, ``bytes``, worst check error, and ``status``: ``ok``,
    ``refused`` (a case failed the gate: no tinyseg time), ``error``."""
    st, rf, th, spread, fl, by = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    status, worst, tol = "ok", 0.0, None
    torch_ok = True
    for c in res["cases"]:
        r, n = c["tinyseg"], c["count"]
        if r.get("status") == "error":
            status = "error"
            res["error"] = r.get("error")
            continue
        worst = max(worst, r["check"]["error"])
        tol = r["check"]["tol"]
        if r["status"] != "ok":
            status = "refused"
            continue
        st += n * r["fast"]["median"]
        spread += n * (r["fast"]["p75"] - r["fast"]["p25"]) / 2
        rf += n * r["ref"]["median"] if "ref" in r else math.nan
        fl = None if r["flops"] is None or fl is None else fl + n * r["flops"]
        by += n * r["bytes"]
        t = c.get("torch")
        if t is None or t.get("status") != "ok":
            torch_ok = False
            if t is not None and t.get("status") in ("mismatch", "error"):
                res["torch_status"] = t.get("status")
                res["torch_error"] = t.get("check", {}).get("worst") or t.get("error")
        else:
            th += n * t["torch"]["median"]
    res["status"] = status
    res["check_error"], res["tol"] = worst, tol
    if status == "ok":
        res.update({"tinyseg_s": st, "spread": spread / st if st else 0.0, "ref_s": rf,
                    "flops": fl, "bytes": by, "torch_s": th if torch_ok else None})
    return res


def run_models(threads: int, opts, torch_ok: bool, log=None) -> List[dict]:
    """The whole-model rows for one thread count: each (preset, side) in a fresh process."""
    from benchmarks import cases
    presets = cases.training_presets()
    rows = []
    for name in opts.model_presets:
        p = presets[name]
        batches = opts.model_batches or [p["batch_size"]]
        for batch in batches:
            row = {"preset": name, "model": p["model"], "size": p["size"], "batch": batch,
                   "threads": threads, "blas_threads": opts.blas_threads}
            for side in (["tinyseg", "torch"] if torch_ok else ["tinyseg"]):
                spec = {"side": side, "model": p["model"], "size": p["size"], "batch": batch,
                        "threads": threads, "reps": opts.model_reps,
                        "profile": opts.profile, "budget": opts.model_budget}
                row[side] = run_subprocess_json(
                    ["--model-worker", json.dumps(spec)], threads, log=log, side=side,
                    blas_threads=opts.blas_threads)
            rows.append(row)
            ts, th = row["tinyseg"], row.get("torch")
            _say(f"  [{threads} thr] model {name} ({p['model']} {p['size']}² b{batch}): "
                 f"tinyseg {_fmt_ms(_get(ts, 'step', 'median'))} ms, torch "
                 f"{_fmt_ms(_get(th, 'step', 'median'))} ms", opts.quiet)
    return rows


def _get(d: Optional[dict], *keys):
    for k in keys:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def record_presets(names: Sequence[str], threads: int, log=None, quiet=False) -> Dict[str, dict]:
    """The kernel calls of one training step of each training preset (batch 1), recorded in a
    worker process, with both dense-block implementations."""
    from benchmarks import cases
    presets = cases.training_presets()
    ts = Worker("tinyseg", threads, log)
    out = {}
    try:
        for name in names:
            p = presets[name]
            _say(f"recording the kernel calls of preset {name} ({p['model']}, "
                 f"{p['size']}×{p['size']})", quiet)
            rec = {"model": p["model"], "size": p["size"], "batch_size": p["batch_size"]}
            for key, eff in (("efficient", True), ("naive", False)):
                r = ts({"task": "record", "model": p["model"], "size": p["size"],
                        "memory_efficient": eff})
                if r.get("status") == "error":
                    raise RuntimeError(f"recording {name} failed: {r['error']}\n"
                                       f"{r.get('traceback', '')}")
                rec[key] = r
            out[name] = rec
    finally:
        ts.close()
    return out


# ==========================================================================================
# Tables
# ==========================================================================================

def _fmt_ms(seconds: Optional[float]) -> str:
    """Milliseconds with 3 significant digits (``n/a`` for None / NaN)."""
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "n/a"
    ms = seconds * 1e3
    if ms >= 100:
        return f"{ms:,.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _fmt_ratio(a: Optional[float], b: Optional[float], digits: int = 2) -> str:
    if a is None or b is None or b == 0 or any(isinstance(v, float) and math.isnan(v)
                                               for v in (a, b)):
        return "n/a"
    return f"{a / b:.{digits}f}×"


def _fmt_bytes(n: Optional[float]) -> str:
    if n is None:
        return "n/a"
    return f"{n / 2 ** 20:,.0f} MiB"


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Optional[str] = None) -> str:
    """A GitHub Markdown table; ``align`` one letter per column (``l``/``r``), default: first
    column left, others right."""
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---" if a == "l" else "--:" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"row has {len(r)} cells, header {len(header)}: {r}")
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(lines)


KERNEL_HEADER = ["op", "preset (model, size)", "batch", "calls/step", "check (tol)",
                 "tinyseg ms", "GFLOP/s", "% peak", "GB/s", "NumPy ref ms", "speed-up",
                 "PyTorch ms", "tinyseg/PyTorch", "others' cores"]


def _fmt_cores(v: Optional[float]) -> str:
    """Cores other processes used during a measurement; flagged above BUSY_CORES."""
    if v is None:
        return "n/a"
    return f"{v:.1f}" + (" ⚠" if v > BUSY_CORES else "")


def kernel_rows(groups: Sequence[dict], peak_gflops: Optional[float]) -> List[List[str]]:
    """One table row per (op, preset, batch) group (see :func:`summarize_group`)."""
    rows = []
    for g in groups:
        name = g["op"] + (" (naive blocks)" if g.get("naive_only") else "")
        where = f"{g['preset']} ({g['model']}, {g['size']}²)"
        n_calls = f"{g['calls_per_step']}"
        measured = len(g["cases"])
        if measured < g["distinct"]:
            n_calls += f" ({measured}/{g['distinct']} shapes)"
        busy = _fmt_cores(g.get("other_cores"))
        if g["status"] == "refused":
            check = f"**REFUSED** {g['check_error']:.1e} > {g['tol']:.0e}"
            rows.append([name, where, str(g["batch"]), n_calls, check] +
                        ["—"] * (len(KERNEL_HEADER) - 6) + [busy])
            continue
        if g["status"] == "error":
            rows.append([name, where, str(g["batch"]), n_calls, "error: " +
                         str(g.get("error"))[:60]] + ["—"] * (len(KERNEL_HEADER) - 6) + [busy])
            continue
        t = g["tinyseg_s"]
        gf = g["flops"] / t / 1e9 if g.get("flops") else None
        torch_cell = _fmt_ms(g.get("torch_s"))
        if g.get("torch_status") == "mismatch":
            torch_cell = "mismatch"
        rows.append([
            name, where, str(g["batch"]), n_calls,
            f"{g['check_error']:.1e} ({g['tol']:.0e})",
            f"{_fmt_ms(t)} ±{100 * g['spread']:.0f}%",
            f"{gf:.1f}" if gf is not None else "—",
            f"{100 * gf / peak_gflops:.0f}%" if gf is not None and peak_gflops else "—",
            f"{g['bytes'] / t / 1e9:.1f}" if gf is None else "—",
            _fmt_ms(g.get("ref_s")), _fmt_ratio(g.get("ref_s"), t, 1),
            torch_cell, _fmt_ratio(t, g.get("torch_s")), busy])
    return rows


CASE_HEADER = ["op", "preset", "batch", "shape (N×C×H×W → O)", "calls", "tinyseg ms",
               "GFLOP/s", "PyTorch ms", "GFLOP/s ", "tinyseg/PyTorch"]


def case_rows(groups: Sequence[dict], ops: Sequence[str]) -> List[List[str]]:
    """One row per distinct call of the given ops (the shapes behind a summed row)."""
    rows = []
    for g in groups:
        if g["op"] not in ops:
            continue
        for c in g["cases"]:
            r, t = c["tinyseg"], c.get("torch") or {}
            ts = _get(r, "fast", "median")
            th = _get(t, "torch", "median")
            fl = r.get("flops")
            rows.append([g["op"], g["preset"], str(g["batch"]), c["label"], str(c["count"]),
                         "refused" if r.get("status") == "refused" else _fmt_ms(ts),
                         f"{fl / ts / 1e9:.1f}" if fl and ts else "—", _fmt_ms(th),
                         f"{fl / th / 1e9:.1f}" if fl and th else "—", _fmt_ratio(ts, th)])
    return rows


MODEL_HEADER = ["preset (model, size)", "batch", "tinyseg step ms", "img/s", "peak RSS",
                "PyTorch step ms", "img/s ", "peak RSS ", "time tinyseg/PyTorch",
                "memory tinyseg/PyTorch", "others' cores"]


def model_rows(rows: Sequence[dict]) -> List[List[str]]:
    out = []
    for r in rows:
        ts, th = r.get("tinyseg") or {}, r.get("torch") or {}

        def cells(d):
            if not d:
                return ["n/a"] * 3
            if d.get("status") == "error":
                return ["error", "—", "—"]
            s = d["step"]
            spread = (s["p75"] - s["p25"]) / 2 / s["median"]
            return [f"{_fmt_ms(s['median'])} ±{100 * spread:.0f}%",
                    f"{d['images_per_second']:.2f}", _fmt_bytes(d.get("peak_rss"))]
        a, b = cells(ts), cells(th)
        busy = [v for v in (ts.get("other_cores"), th.get("other_cores")) if v is not None]
        out.append([f"{r['preset']} ({r['model']}, {r['size']}²)", str(r["batch"])] + a + b +
                    [_fmt_ratio(_get(ts, "step", "median"), _get(th, "step", "median")),
                     _fmt_ratio(ts.get("peak_rss"), th.get("peak_rss")),
                     _fmt_cores(max(busy)) if busy else "n/a"])
    return out


def targets(results: dict) -> List[dict]:
    """The issue's speed targets, evaluated on ``results``: one dict per check with
    ``what``, ``value``, ``limit``, ``ok`` (None when PyTorch's figure is missing)."""
    out = []
    for per in results.get("kernels", []):
        thr = per["threads"]
        by = {}
        for g in per["groups"]:
            if g["op"] in ("conv3x3 fwd", "conv3x3 bwd"):
                by.setdefault((g["preset"], g["batch"]), []).append(g)
        for (preset, batch), gs in by.items():
            if len(gs) != 2 or any(g["status"] != "ok" for g in gs):
                continue
            ts = sum(g["tinyseg_s"] for g in gs)
            th = None if any(g.get("torch_s") is None for g in gs) else \
                sum(g["torch_s"] for g in gs)
            part = "" if all(len(g["cases"]) == g["distinct"] for g in gs) else \
                " (some shapes only)"
            out.append({"what": f"conv 3×3 fwd+bwd, {preset}, batch {batch}, {thr} thread(s)"
                                f"{part}",
                        "value": None if th is None else ts / th, "limit": TARGET_RATIO,
                        "ok": None if th is None else ts / th <= TARGET_RATIO,
                        "tinyseg_s": ts, "torch_s": th})
    for r in results.get("models", []):
        if r["preset"] not in TARGET_PRESETS:
            continue
        ts, th = _get(r, "tinyseg", "step", "median"), _get(r, "torch", "step", "median")
        what = f"training step, {r['preset']} ({r['model']} {r['size']}², batch {r['batch']})" \
               f", {r['threads']} thread(s)"
        out.append({"what": what + ": time", "value": None if not (ts and th) else ts / th,
                    "limit": TARGET_RATIO,
                    "ok": None if not (ts and th) else ts / th <= TARGET_RATIO})
        ms, mt = _get(r, "tinyseg", "peak_rss"), _get(r, "torch", "peak_rss")
        out.append({"what": what + ": peak memory", "value": None if not (ms and mt) else ms / mt,
                    "limit": 1.0, "ok": None if not (ms and mt) else ms <= mt})
    comp = results.get("compile")
    if comp and _get(comp, "cold", "runs"):
        f32 = [r for r in comp["cold"]["runs"] if r["dtype"] == "float32"]
        total = sum(r["kernels_total"] for r in comp["cold"]["runs"])
        out.append({"what": "first-run compilation of all kernels (float32 + float64), s",
                    "value": total, "limit": TARGET_COMPILE_S, "ok": total < TARGET_COMPILE_S})
        if all("kernels_total_cpu" in r for r in comp["cold"]["runs"]):
            cpu = sum(r["kernels_total_cpu"] for r in comp["cold"]["runs"])
            out.append({"what": "the same, CPU time of the compiling thread, s", "value": cpu,
                        "limit": TARGET_COMPILE_S, "ok": cpu < TARGET_COMPILE_S})
        if f32:
            t32 = sum(r["kernels_total"] for r in f32)
            out.append({"what": "first-run compilation, float32 kernels only (training), s",
                        "value": t32, "limit": TARGET_COMPILE_S, "ok": t32 < TARGET_COMPILE_S})
    return out


def _target_cells(t: dict) -> List[str]:
    v = t["value"]
    is_time = t["what"].endswith(", s")
    value = "n/a" if v is None else (f"{v:.1f} s" if is_time else f"{v:.2f}×")
    limit = f"< {t['limit']:.0f} s" if is_time else f"≤ {t['limit']:.1f}×"
    if t["ok"] is None:
        verdict = "n/a"
    elif t["ok"]:
        verdict = "met"
    else:
        verdict = (f"**missed** by {v - t['limit']:.1f} s" if is_time
                   else f"**missed** ({v / t['limit']:.2f}× the limit)")
    return [t["what"], value, limit, verdict]


def compile_rows(comp: dict) -> List[List[str]]:
    rows = []
    cold, warm = comp.get("cold") or {}, comp.get("warm") or {}
    for rc, rw in zip(cold.get("runs", []), warm.get("runs", [])):
        mode = "shared buffer" if rc["memory_efficient"] else "naive"
        worst = sorted(rc["per_kernel"].items(), key=lambda kv: -kv[1])[:3]
        rows.append([f"{rc['dtype']}, {mode} blocks", f"{rc['first_step']:.1f}",
                     f"{rc['kernels_total']:.1f}", f"{rc.get('kernels_total_cpu', 0):.1f}",
                     f"{rw['first_step']:.2f}", f"{rc['second_step']:.2f}",
                     ", ".join(f"{k.split('.', 1)[1]} {v:.1f}" for k, v in worst)])
    return rows


def to_markdown(results: dict) -> str:
    """The Markdown report of a run (what the README shows)."""
    m = results["machine"]
    lines = [f"# tinyseg benchmarks, {results['date']}", ""]
    mem = m.get("memory_bytes")
    lines.append(f"Machine: {m['cpu']}, {m['cores']} cores"
                 + (f", {mem / 2 ** 30:.0f} GiB" if mem else "") + f", {m['system']}, "
                 f"Python {m['python']}.  Versions: "
                 + ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items()) + ".")
    lines.append("")
    src = results.get("source") or {}
    if src:
        lines.append(f"Code: commit {src.get('commit', '?')}"
                     + (f" + {src['uncommitted_tinyseg_files']} uncommitted tinyseg files"
                        if src.get("uncommitted_tinyseg_files") else "")
                     + f", kernels/layers hash {src.get('kernels_sha256')}.")
        lines.append("")
    lines.append(f"Command: `{results['command']}`" +
                 (" (**provisional**: the machine was shared while this ran, see the *others' "
                  "cores* columns)" if results.get("provisional") else
                  " (no other process used more than "
                  f"{BUSY_CORES} of a core while any row was measured)"))
    lines.append("")
    tg = targets(results)
    if tg:
        lines += ["## Targets", "", markdown_table(["target", "value", "limit", "verdict"],
                                                   [_target_cells(t) for t in tg], "lrrl"), ""]
    for per in results.get("kernels", []):
        info = per.get("info", {})
        peak = _peak(per)
        thr = per["threads"]
        desc = []
        for side in ("tinyseg", "torch"):
            mm = _get(info, side, "matmul")
            if mm:
                if side == "tinyseg":
                    name = (f"NumPy ({_get(info, 'tinyseg', 'versions', 'blas')}, "
                            f"{_get(info, 'tinyseg', 'threads', 'openblas')} thread(s))")
                else:
                    name = f"PyTorch ({_get(info, 'torch', 'threads', 'torch')} thread(s))"
                desc.append(f"{name} {mm['gflops']:.0f} GFLOP/s")
        blas = _get(info, "tinyseg", "threads", "openblas")
        lines += [f"## Kernels, {thr} thread(s)"
                  + (f" (tinyseg: numba {thr}, OpenBLAS {blas})" if blas else ""), "",
                  f"float32 matrix-multiply peak ({_get(info, 'tinyseg', 'matmul', 'n')}³): "
                  + ", ".join(desc) + f"; \"% peak\" is of {peak:.0f} GFLOP/s (the larger)."
                  if peak else "", "",
                  f"Load average (1, 5, 15 min) at the start: "
                  f"{_fmt_load(_get(info, 'tinyseg', 'loadavg'))}, at the end: "
                  f"{_fmt_load(per.get('loadavg_end'))}.", "",
                  markdown_table(KERNEL_HEADER, kernel_rows(per["groups"], peak)), ""]
        detail = case_rows(per["groups"], ("conv3x3 fwd", "conv3x3 bwd"))
        if detail:
            lines += [f"<details><summary>Every 3×3 convolution shape, {thr} thread(s)"
                      f"</summary>", "", markdown_table(CASE_HEADER, detail, "lllllrrrrr"), "",
                      "</details>", ""]
    if results.get("models"):
        by_thr: Dict[int, list] = {}
        for r in results["models"]:
            by_thr.setdefault(r["threads"], []).append(r)
        for thr, rows in by_thr.items():
            blas = _get(rows[0], "tinyseg", "threads", "openblas")
            lines += [f"## One training step, {thr} thread(s)"
                      + (f" (tinyseg: numba {thr}, OpenBLAS {blas})" if blas else ""), "",
                      markdown_table(MODEL_HEADER, model_rows(rows)), ""]
        prof = [r for r in results["models"] if _get(r, "tinyseg", "profile")]
        if prof:
            lines += ["## Where the time goes (tinyseg, one training step)", ""]
            lines += [profile_table(prof), ""]
    comp = results.get("compile")
    if comp:
        lines += ["## Compilation", "",
                  f"A training step of `{comp['model']}` ({comp['size']}², batch 2) in a "
                  f"process with an empty numba cache, then in a second process with the "
                  f"cache.  Imports: {_get(comp, 'cold', 'imports') or 0:.1f} s cold, "
                  f"{_get(comp, 'warm', 'imports') or 0:.1f} s warm.", "",
                  markdown_table(["run", "first step s (empty cache)",
                                  "compilation s (wall)", "compilation s (CPU)",
                                  "first step s (cached)", "second step s",
                                  "slowest to compile (wall s)"],
                                 compile_rows(comp), "lrrrrrl"), "",
                  "Compilation is the first call of each kernel minus its second call, summed "
                  "over the kernels; the CPU column counts only the calling thread's CPU time "
                  "(numba compiles there), which the machine's load does not inflate.", ""]
    lines += ["## How to read this", "",
              "Each kernel row sums one op over a whole training step: every distinct "
              "call the step makes (recorded from the model) timed on its own (median of "
              "the repetitions, ± half the interquartile range), times the number of "
              "times the step makes it.  *check* is the largest relative error "
              "max|kernel − reference| / max|reference| over those calls; a kernel above "
              "the tolerance is refused and gets no time.  GFLOP/s counts 2 flops per "
              "multiply-add (the backward pass computes the input and the weight gradient); "
              "GB/s is the least memory traffic (inputs read once, outputs written once) "
              "per second, for the memory-bound kernels.  PyTorch runs the operator that "
              "does the same job (`aten.convolution_backward`, `native_batch_norm_backward`, "
              "…) on the same shapes with the same number of threads.  Peak RSS is the growth "
              "of the process's resident memory during the training steps.  *Others' cores*: "
              "how many cores other processes on the machine kept busy, on average, while a "
              f"row was measured (from /proc/stat); rows above {BUSY_CORES} (⚠) were measured "
              "on a shared machine and their times, especially with 2 threads, are not to be "
              "trusted: a parallel loop waits for its slowest thread, and a thread that has "
              "to share its core with another process arrives late.", ""]
    return "\n".join(lines)


def summary_markdown(results: dict, full_report: str) -> str:
    """The short version for the README: date, machine, command, targets, training steps."""
    m = results["machine"]
    lines = [f"Benchmarks of {results['date']} on {m['cpu']} ({m['cores']} cores), "
             f"`{results['command']}`" + (" (provisional: shared machine)"
                                          if results.get("provisional") else "") + ".", ""]
    tg = targets(results)
    if tg:
        lines += [markdown_table(["target", "value", "limit", "verdict"],
                                 [_target_cells(t) for t in tg], "lrrl"), ""]
    by_thr: Dict[int, list] = {}
    for r in results.get("models", []):
        by_thr.setdefault(r["threads"], []).append(r)
    for thr, rows in by_thr.items():
        lines += [f"One training step, {thr} thread(s):", "",
                  markdown_table(MODEL_HEADER, model_rows(rows)), ""]
    lines.append(f"Every kernel, shape by shape: [{full_report}]({full_report}).")
    return "\n".join(lines)


def _fmt_load(v) -> str:
    return "n/a" if not v else ", ".join(f"{x:.1f}" for x in v)


def _peak(per: dict) -> Optional[float]:
    vals = [_get(per, "info", s, "matmul", "gflops") for s in ("tinyseg", "torch")]
    vals = [v for v in vals if v]
    return max(vals) if vals else None


def profile_table(rows: Sequence[dict]) -> str:
    """Seconds per op in one tinyseg training step, per preset (percent of the step)."""
    from benchmarks.cases import OP_ORDER
    ops: List[str] = []
    for r in rows:
        for op in r["tinyseg"]["profile"]["ops"]:
            if op not in ops:
                ops.append(op)
    ops.sort(key=lambda o: OP_ORDER.index(o) if o in OP_ORDER else 99)
    header = ["op"] + [f"{r['preset']} b{r['batch']}, {r['threads']} thr" for r in rows]
    body = []
    inner: List[str] = []
    for r in rows:
        for name in r["tinyseg"]["profile"]["conv_inner"]:
            if name not in inner:
                inner.append(name)
    # inside the convolutions each thread's time is counted: with 2 threads these rows are
    # thread-milliseconds, which can add up to more than the step (no percentage then)
    inner_rows = [f"inside conv: {'BLAS matmul' if n == 'matmul' else n}" for n in inner]
    for op in ops + ["(glue: NumPy outside kernels)"] + inner_rows + ["total"]:
        cells = [op]
        for r in rows:
            p = r["tinyseg"]["profile"]
            tot = p["total"]
            if op in p["ops"]:
                s = p["ops"][op]["seconds"]
            elif op.startswith("(glue"):
                s = p["glue"]
            elif op.startswith("inside conv: "):
                name = inner[inner_rows.index(op)]
                s = p["conv_inner"].get(name)
                if s is None:
                    cells.append("—")
                    continue
            elif op == "total":
                s = tot
            else:
                cells.append("—")
                continue
            if op.startswith("inside conv: ") and r["threads"] > 1:
                cells.append(f"{_fmt_ms(s)} thread-ms")
                continue
            cells.append(f"{_fmt_ms(s)} ms ({100 * s / tot:.0f}%)")
        body.append(cells)
    return markdown_table(header, body)


# ==========================================================================================
# Command line
# ==========================================================================================

def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Check and time tinyseg's kernels and training step against the NumPy "
                    "references and PyTorch, on the shapes the Tiramisu presets run.",
        epilog="Exit codes: 0 done, 1 error (message on stderr), 2 bad flags.")
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to run, each in fresh processes (default: 1 2; "
                        "--quick: 1)")
    p.add_argument("--quick", action="store_true",
                   help="a smoke test: the 'tiny' preset, batch 2, the heaviest shape of each "
                        "op, 2 repetitions, no compilation run; writes <out>/quick.*")
    p.add_argument("--parts", nargs="+", choices=["kernels", "models", "compile"],
                   default=None, help="what to run (default: all three; --quick: kernels "
                                      "models)")
    p.add_argument("--kernel-presets", nargs="+", default=None,
                   help="training presets whose shapes the kernel rows use (default: small "
                        "fcdensenet56; --quick: tiny)")
    p.add_argument("--model-presets", nargs="+", default=None,
                   help="training presets for the whole-model rows (default: all; --quick: "
                        "tiny)")
    p.add_argument("--batches", type=int, nargs="+", default=None,
                   help="batch sizes of the kernel rows (default: 4 8; --quick: 2)")
    p.add_argument("--model-batches", type=int, nargs="+", default=None,
                   help="batch sizes of the whole-model rows (default: each preset's own)")
    p.add_argument("--reps", type=int, default=None,
                   help="timed repetitions per kernel case (default 5; --quick 2)")
    p.add_argument("--model-reps", type=int, default=None,
                   help="timed training steps after the first (default 3; --quick 2)")
    p.add_argument("--max-shapes", type=int, default=None,
                   help="time only the N heaviest distinct shapes of each op (default: all; "
                        "--quick: 1)")
    p.add_argument("--ops", nargs="+", default=None,
                   help="only ops whose name contains one of these strings (e.g. conv3x3)")
    p.add_argument("--blas-threads", type=int, default=None, metavar="N",
                   help="OpenBLAS threads of the tinyseg processes (default: tinyseg's own "
                        "choice, $TINYSEG_BLAS_THREADS or 1, see tinyseg/cli.py): an "
                        "experiment on how BLAS and numba threads share the cores")
    p.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    p.add_argument("--no-profile", action="store_true",
                   help="skip the per-op profile of the training steps")
    p.add_argument("--max-seconds", type=float, default=20.0,
                   help="time budget of one kernel case's repetitions (default 20)")
    p.add_argument("--model-budget", type=float, default=600.0,
                   help="seconds one side of a whole-model row may spend on timed steps "
                        "(default 600): fewer repetitions, and no profile, beyond it")
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results"),
                   help="output directory (default benchmarks/results)")
    p.add_argument("--name", default=None,
                   help="file stem of the results (default 'latest'; --quick: 'quick')")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    # internal: worker processes
    p.add_argument("--worker", choices=["tinyseg", "torch"], help=argparse.SUPPRESS)
    p.add_argument("--model-worker", metavar="JSON", help=argparse.SUPPRESS)
    p.add_argument("--compile-worker", metavar="JSON", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    for flag in ("batches", "model_batches", "reps", "model_reps", "max_shapes"):
        given = getattr(a, flag)
        values = given if isinstance(given, list) else [given]
        if any(v is not None and v < 1 for v in values):
            _refuse(f"--{flag.replace('_', '-')} must be at least 1, got {given}")
    if not a.model_budget > 0:
        _refuse(f"--model-budget must be a number of seconds > 0, got {a.model_budget}")
    if Path(a.out).exists() and not Path(a.out).is_dir():
        _refuse(f"--out {a.out}: exists and is not a directory")
    blocked = next((q for q in Path(a.out).parents if q.exists() and not q.is_dir()), None)
    if blocked is not None:
        _refuse(f"--out {a.out}: {blocked} is a file, not a directory")
    if not a.max_seconds > 0:
        _refuse(f"--max-seconds must be a number of seconds > 0, got {a.max_seconds}")
    q = a.quick
    a.threads = a.threads or ([1] if q else [1, 2])
    a.parts = a.parts or (["kernels", "models"] if q else ["kernels", "models", "compile"])
    a.kernel_presets = a.kernel_presets or (["tiny"] if q else ["small", "fcdensenet56"])
    a.model_presets = a.model_presets or (["tiny"] if q else None)
    a.batches = a.batches or ([2] if q else [4, 8])
    a.reps = a.reps or (2 if q else 5)
    a.model_reps = a.model_reps or (2 if q else 3)
    a.max_shapes = a.max_shapes if a.max_shapes is not None else (1 if q else None)
    a.min_rep = 0.002 if q else 0.01
    a.profile = not a.no_profile
    a.name = a.name or ("quick" if q else "latest")
    if any(t < 1 for t in a.threads) or (a.blas_threads is not None and a.blas_threads < 1):
        _refuse("--threads and --blas-threads must be at least 1")
    return a


def _refuse(message: str) -> None:
    """A flag value that parses but cannot work: one line and exit 1 (``run_main``), as in
    tinyseg's commands; argparse's own errors stay exit 2."""
    from tinyseg.cli import UserError
    raise UserError(message)


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    opts = parse_args(argv)
    if opts.worker:
        return worker_main(opts.worker, opts.threads[0])
    if opts.model_worker:
        print(json.dumps(model_step_main(json.loads(opts.model_worker)),
                         default=_json_default))
        return 0
    if opts.compile_worker:
        print(json.dumps(compile_main(json.loads(opts.compile_worker)), default=_json_default))
        return 0
    return run(opts, argv)


def run(opts: argparse.Namespace, argv: Sequence[str]) -> int:
    sys.path.insert(0, str(REPO))
    from benchmarks import cases
    presets = cases.training_presets()
    opts.model_presets = opts.model_presets or list(presets)
    for name in set(opts.kernel_presets) | set(opts.model_presets):
        if name not in presets:
            print(f"python -m benchmarks: error: unknown preset {name!r} (training presets: "
                  f"{', '.join(presets)})", file=sys.stderr)
            return 2
    torch_ok = torch_available() and not opts.no_torch
    if not torch_ok:
        _say("PyTorch is not available: the PyTorch columns will say n/a", opts.quiet)
    out_dir = Path(opts.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: Dict[str, Any] = {
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "command": "python -m benchmarks " + " ".join(argv),
        "machine": machine_info(), "torch": torch_ok, "provisional": None,
        "options": {k: v for k, v in vars(opts).items() if not k.startswith("worker")},
        "presets": {n: presets[n] for n in set(opts.kernel_presets) | set(opts.model_presets)},
        "kernels": [], "models": [], "source": source_state()}
    log = None if not opts.quiet else subprocess.DEVNULL
    t_start = time.perf_counter()
    if "kernels" in opts.parts:
        results["recorded"] = record_presets(opts.kernel_presets, max(opts.threads), log,
                                             opts.quiet)
        if opts.ops:          # a misspelt --ops wrote an empty report and exited 0
            from benchmarks import cases
            names = sorted({op for rec in results["recorded"].values()
                            for kind in ("efficient", "naive") for b in opts.batches
                            for op in cases.group_calls(rec[kind]["calls"], b)})
            if not any(s in op for s in opts.ops for op in names):
                print(f"python -m benchmarks: error: no op name contains any of {opts.ops} "
                      f"(ops: {', '.join(names)})", file=sys.stderr)
                return 1
    for threads in opts.threads:
        if "kernels" in opts.parts:
            _say(f"kernels, {threads} thread(s)", opts.quiet)
            per = run_kernels(results["recorded"], threads, opts, torch_ok, log)
            results["kernels"].append(per)
            v = _get(per, "info", "tinyseg", "versions") or {}
            results.setdefault("versions", {}).update(v)
            results["versions"].update(_get(per, "info", "torch", "versions") or {})
        if "models" in opts.parts:
            _say(f"training steps, {threads} thread(s)", opts.quiet)
            results["models"] += run_models(threads, opts, torch_ok, log)
        _write(results, out_dir, opts.name)  # partial results survive an interruption
    if "compile" in opts.parts:
        _say("compilation (empty numba cache)", opts.quiet)
        # one thread: compilation is single-threaded, and on a busy machine the parallel
        # kernels' waits would blur the "first call minus second call" difference
        results["compile"] = run_compile(1, log)
    results["seconds"] = time.perf_counter() - t_start
    paths = _write(results, out_dir, opts.name)
    _say(f"wrote {paths[0]} and {paths[1]} ({results['seconds']:.0f} s)", opts.quiet)
    refused = [g for per in results["kernels"] for g in per["groups"]
               if g["status"] != "ok"]
    return 1 if refused else 0


def compact(results: dict, digits: int = 4) -> dict:
    """What goes into the JSON file: every float rounded to ``digits`` significant digits
    (timings are not more precise than that), timings as median, quartiles and repetitions,
    and of the recorded training steps only their size (``benchmarks.cases.record_step``
    gives the calls again)."""
    def walk(o):
        if isinstance(o, float):
            return float(f"{o:.{digits}g}") if math.isfinite(o) else o
        if isinstance(o, dict):
            if "median" in o and "p25" in o:  # a timing: the table needs these four
                o = {k: o[k] for k in ("median", "p25", "p75", "reps") if k in o}
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [walk(v) for v in o]
        return o
    out = dict(results)
    if "recorded" in out:
        out["recorded"] = {name: {k: (v if not isinstance(v, dict) else
                                      {kk: (len(vv) if kk == "calls" and isinstance(vv, list) else vv)
                                       for kk, vv in v.items()})
                                  for k, v in rec.items()}
                           for name, rec in out["recorded"].items()}
    return walk(out)


def busiest_row(results: dict) -> Optional[float]:
    """The most cores other processes kept busy while any one row was measured (None when
    no row has the figure)."""
    seen = [g.get("other_cores") for per in results.get("kernels", []) for g in per["groups"]]
    for r in results.get("models", []):
        seen += [_get(r, side, "other_cores") for side in ("tinyseg", "torch")]
    seen = [v for v in seen if v is not None]
    return max(seen) if seen else None


def _write(results: dict, out_dir: Path, name: str) -> Tuple[Path, Path]:
    """``<name>.json``, ``<name>.md`` (the full report) and ``<name>-summary.md`` (for the
    README), each written to a temporary file and renamed.  The results are *provisional*
    when other processes kept more than ``BUSY_CORES`` busy during any row (or when no row
    could tell)."""
    from tinyseg.io import atomic_write_bytes
    busiest = busiest_row(results)
    results["provisional"] = busiest is None or busiest > BUSY_CORES
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    summary = out_dir / f"{name}-summary.md"
    for path, text in ((js, json.dumps(compact(results), separators=(",", ":"),
                                       default=_json_default)),
                       (md, to_markdown(results) + "\n"),
                       (summary, summary_markdown(results, md.name) + "\n")):
        atomic_write_bytes(path, text.encode("utf-8"))
    return js, md


if __name__ == "__main__":
    sys.exit(main())
