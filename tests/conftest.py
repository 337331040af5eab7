"""Shared test fixtures: the COCO person data (skipped when absent) and PyTorch (optional)."""
import os
from pathlib import Path

# One BLAS thread before NumPy loads OpenBLAS: numba's and OpenBLAS's spinning thread pools
# fight over the two cores otherwise (see tinyseg/cli.py, "Threads"); the commands do the same.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def data_root():
    """The COCO person subset: $TINYSEG_DATA, else ../shared/data/coco_person next to the repo;
    ``None`` (the data tests skip) when neither exists.  A $TINYSEG_DATA that is set but holds
    no ``annotations/`` fails the test instead: whoever set it (CI does) asked for the data
    tests, and a skip would pass unnoticed."""
    env = os.environ.get("TINYSEG_DATA")
    if env:
        if not (Path(env) / "annotations").is_dir():
            pytest.fail(f"TINYSEG_DATA={env} has no annotations/ folder: point it at a "
                        f"COCO-format directory, or unset it to skip the data tests")
        return Path(env)
    default = REPO.parent / "shared" / "data" / "coco_person"
    return default if (default / "annotations").is_dir() else None


@pytest.fixture
def coco_root():
    root = data_root()
    if root is None:
        pytest.skip("COCO person data not found: set TINYSEG_DATA to a COCO-format directory "
                    "(see README, 'Data')")
    return root


@pytest.fixture
def torch():
    """PyTorch, or a skip when it is not installed; with TINYSEG_REQUIRE_TORCH=1 (set by
    .ci/run once it has installed torch) a torch that fails to import fails the test."""
    if os.environ.get("TINYSEG_REQUIRE_TORCH") == "1":
        import torch
        return torch
    return pytest.importorskip("torch", reason="PyTorch not installed (optional: pip install torch==2.13.0)")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def one_thread_module():
    """One numba thread for a module's tests, restored afterwards.

    Whole training or inference loops on a busy shared 2-core machine ran 10-20x slower with
    two threads per process (the thread pools spinning against each other); one thread keeps
    such tests quick wherever they run.  (BLAS is already at one thread, see above.)
    """
    import numba
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def pytest_collection_modifyitems(items):
    """Every test that uses the ``torch`` or ``coco_root`` fixture carries the ``torch`` or
    ``data`` marker (declared in pyproject.toml), so ``-m "not torch"`` and ``-m "not data"``
    select by what a test needs, whether or not its author wrote the marker."""
    for item in items:
        names = getattr(item, "fixturenames", ())
        if "torch" in names:
            item.add_marker(pytest.mark.torch)
        if "coco_root" in names:
            item.add_marker(pytest.mark.data)


def overflowing_checkpoint(ckpt, path):
    """A copy of ``ckpt`` whose first convolution is multiplied by 1e38: every number finite,
    so it loads, but the network's output overflows to inf and NaN."""
    arrays = dict(np.load(ckpt))
    name = next(k for k in arrays if k.endswith("weight") and arrays[k].ndim == 4)
    arrays[name] = (arrays[name] * np.float32(1e38)).astype(np.float32)
    assert np.all(np.isfinite(arrays[name]))
    np.savez(path, **arrays)
    return path
