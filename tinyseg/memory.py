"""Measuring the peak memory of a computation, and printing byte counts.

NumPy reports every array it allocates to Python's ``tracemalloc`` (and so do the arrays
numba kernels create, which go through the same allocator), so the largest total of traced
allocations during a call is the peak memory the arrays of that call needed:

    >>> from tinyseg.memory import peak_memory
    >>> result, peak = peak_memory(lambda: np.ones((1000, 1000)).sum())
    >>> peak >= 8_000_000
    True

``peak`` counts only what was allocated *during* the call and still alive at its worst
moment; arrays that existed before (the model's parameters, the input batch) are not
included.  It is exact for arrays (not an RSS estimate), independent of what else runs on
the machine, and repeatable, so tests can compare two implementations with it.  Tracing
makes Python's small allocations a little slower, not NumPy's large ones.

:func:`training_step_peak` measures one training step of a model: forward, a gradient of
the logits, backward.
"""
from __future__ import annotations

import copy
import sys
import tracemalloc
from typing import Any, Callable, Optional, Tuple

import numpy as np

__all__ = ["peak_memory", "training_step_peak", "fresh_copy", "compare_dense_blocks",
           "format_bytes"]


def peak_memory(fn: Callable[[], Any]) -> Tuple[Any, int]:
    """Run ``fn()``; return ``(result, peak)``, ``peak`` the most bytes traced at once during
    the call above what was traced when it started.

    Works whether or not ``tracemalloc`` is already running (if it was not, it is started
    and stopped again here).  Not thread-safe: one measurement at a time.
    """
    started_here = not tracemalloc.is_tracing()
    if started_here:
        tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        if started_here:
            tracemalloc.stop()
    return result, max(0, peak - base)


def training_step_peak(model, x: np.ndarray, dlogits: Optional[np.ndarray] = None,
                       warmup: bool = True) -> int:
    """Peak bytes of one training step: ``model.forward(x)``, then ``model.backward(g)``.

    ``g`` is ``dlogits`` if given (allocated before the measurement), else an array of ones
    of the logits' shape allocated inside it (as a loss gradient would be).  The model is
    put in training mode; its parameters and ``x`` are not counted (they exist before).

    ``warmup=True`` first runs one untraced step on a copy of the model, so that numba's
    first-call compilation (whose Python objects tracemalloc would count) happens outside
    the measurement.

    The measured step is a real one: it moves the BatchNorm running averages, draws dropout
    masks and leaves the gradients in ``grads`` (zeroed before the step).  Layers keep
    their last forward pass's arrays until the next forward, so measure a model that has
    not run a forward pass yet for the clean number (``fresh_copy`` makes one).
    """
    def step(m):
        logits = m.forward(x)
        g = np.ones_like(logits) if dlogits is None else dlogits
        del logits
        m.backward(g)

    if warmup:
        warm = copy.deepcopy(model)
        warm.train()
        step(warm)
        del warm
    model.train()
    model.zero_grad()
    _, peak = peak_memory(lambda: step(model))
    return peak


def fresh_copy(model, **config_changes):
    """A new model of the same class with ``model.config`` (updated by ``config_changes``),
    dtype and weights, that has not run a forward pass (so it holds no activations)."""
    config = {**model.config, **config_changes}
    new = type(model)(**config, dtype=model.dtype)
    new.load_state_dict(model.state_dict())
    return new


def format_bytes(n: float) -> str:
    """``1536 -> '1.5 KiB'``, ``3.2e9 -> '2.98 GiB'`` (powers of 1024, 3 significant digits)."""
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.3g} {unit}"
        n /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def compare_dense_blocks(model, x: np.ndarray) -> dict:
    """Peak of one training step on ``x`` with each dense-block implementation.

    Returns ``{"shared buffer": bytes, "naive": bytes}``, each measured on a fresh copy of
    ``model`` (same config and weights, :func:`fresh_copy`); ``model`` itself is not run.
    """
    out = {}
    for name, efficient in (("shared buffer", True), ("naive", False)):
        m = fresh_copy(model, memory_efficient=efficient)
        out[name] = training_step_peak(m, x)
        del m
    return out


def main(argv=None) -> int:
    """``python -m tinyseg.memory``: peak memory of one training step, both dense blocks."""
    import argparse

    from .cli import UserError
    from .data.images import MAX_SIZE
    from .tiramisu import PRESETS

    p = argparse.ArgumentParser(
        prog="python -m tinyseg.memory",
        description="Measure the peak memory (tracemalloc: every NumPy/numba array) of one "
                    "Tiramisu training step (forward + backward) with the naive and the "
                    "shared-buffer dense blocks.",
        epilog="Exit codes: 0 done, 1 error (message on stderr), 2 bad flags.")
    p.add_argument("--model", choices=list(PRESETS), default="fc_densenet56",
                   help="model preset (default: %(default)s)")
    p.add_argument("--size", type=int, default=224, help="image height = width (default: 224)")
    p.add_argument("--batch", type=int, default=4, help="batch size (default: 4)")
    p.add_argument("--classes", type=int, default=2, help="number of classes (default: 2)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and input (default: 0)")
    args = p.parse_args(argv)
    for flag in ("size", "batch", "classes"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag} must be at least 1, got {getattr(args, flag)}")
    if args.seed < 0:
        raise UserError(f"--seed must be >= 0, got {args.seed}")
    if args.size > MAX_SIZE:
        raise UserError(f"--size must be at most {MAX_SIZE}, got {args.size}")
    rng = np.random.default_rng(args.seed)
    model = PRESETS[args.model](num_classes=args.classes, rng=rng)
    x = rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32)
    print(model.summary(args.size, args.size, args.batch))
    print()
    print("measuring one training step with each kind of dense block (numba compiles the "
          "kernels on a first run) ...", flush=True)
    try:
        peaks = compare_dense_blocks(model, x)
    except ValueError as e:       # e.g. too small an input for batch statistics
        raise UserError(str(e)) from None
    for name, peak in peaks.items():
        print(f"peak of one training step, {name + ' dense blocks:':<28}{format_bytes(peak):>10}"
              f"  ({peak:,} bytes)")
    print(f"ratio shared buffer / naive: {peaks['shared buffer'] / peaks['naive']:.3f}")
    return 0


if __name__ == "__main__":
    from .cli import run_main
    raise SystemExit(run_main(main, "tinyseg.memory"))
