"""tinyseg's benchmark harness (reference code, not part of the library).

``python -m benchmarks --help`` from the repository root.  Modules:

* ``benchmarks.cases``: which kernel calls a Tiramisu training step makes (recorded from the
  model), their inputs, and the three implementations of each (numba kernel, NumPy
  reference, PyTorch);
* ``benchmarks.run``: the correctness gate, the timer, the worker processes (one per thread
  count and side), the whole-model training steps, the compilation run, the tables;
* ``benchmarks.torch_tiramisu``: the Tiramisu in plain PyTorch, parameter names as tinyseg's;
* ``benchmarks/results/``: the latest results, ``latest.json``, ``latest.md`` and
  ``latest-summary.md``.
"""
