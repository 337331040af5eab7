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
    """The COCO person subset: $TINYSEG_DATA, else ../shared/data/coco_person next to the repo."""
    env = os.environ.get("TINYSEG_DATA")
    candidates = [Path(env)] if env else []
    candidates.append(REPO.parent / "shared" / "data" / "coco_person")
    for c in candidates:
        if (c / "annotations").is_dir():
            return c
    return None


@pytest.fixture
def coco_root():
    root = data_root()
    if root is None:
        pytest.skip("COCO person data not found: set TINYSEG_DATA to a COCO-format directory "
                    "(see README, 'Data')")
    return root


@pytest.fixture
def torch():
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
