"""tinyseg: from-scratch deep-learning segmentation in NumPy and numba.

The public names: the layers (PyTorch names, layouts and argument defaults; He-uniform
weights and zero biases, see ``tinyseg.init``), the loss, the optimiser and its schedule,
initialisation, metrics and the gradient checker.  The Tiramisu lives in
``tinyseg.tiramisu``, the data path in ``tinyseg.data``, the commands in ``tinyseg.train``,
``tinyseg.evaluate`` and ``tinyseg.cutout``.
"""
__version__ = "0.1.0"

import os as _os

# numba's parallel loops run on OpenMP (libgomp) threads, which by default spin for a while
# after each loop, waiting for the next one.  The convolutions run their images in other
# threads (tinyseg.kernels.conv), which then share a core with a spinning thread: one
# training step of tiramisu_tiny, 64x64, batch 8, 2 threads measured 211 ms with spinning
# workers and 159 ms with sleeping ones.  libgomp reads this when it starts (at the first
# parallel kernel), so it is set here, unless you set it yourself.
#: what the user had set (None: tinyseg's choice), so that child processes that are not
#: tinyseg's (the PyTorch side of the benchmarks) can run with their own library's default
OMP_WAIT_POLICY_GIVEN = _os.environ.get("OMP_WAIT_POLICY")
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .layers.base import Layer
from .layers.conv import Conv2d, ConvTranspose2d
from .layers.batchnorm import BatchNorm2d
from .layers.activation import ReLU, Dropout
from .layers.pool import MaxPool2d
from .layers.concat import Concat, concat, split_grad
from .init import he_uniform
from .losses import softmax_cross_entropy
from .optim import RMSprop, ExponentialLR
from .metrics import (confusion_matrix, iou_per_class, mean_iou, pixel_accuracy,
                      person_iou, per_image_iou, IoUMeter)
from .gradcheck import gradcheck, numerical_gradient, relative_error
from .cli import set_threads, _set_blas_threads

# One BLAS thread unless TINYSEG_BLAS_THREADS says otherwise: numba's and OpenBLAS's
# spin-waiting thread pools fight over the cores, and tinyseg's many medium-sized matrix
# products gain little from BLAS threads (measurements in tinyseg/cli.py, "Threads").
# This changes the process's OpenBLAS setting; set TINYSEG_BLAS_THREADS to keep yours.
_blas = _os.environ.get("TINYSEG_BLAS_THREADS", "1").strip()
if not (_blas.isdigit() and int(_blas) >= 1):   # a traceback at import before
    import warnings as _warnings
    _warnings.warn(f"TINYSEG_BLAS_THREADS={_blas!r} is not a positive integer; using 1",
                   stacklevel=2)
    _blas = "1"
_set_blas_threads(int(_blas))

__all__ = [
    "Layer", "Conv2d", "ConvTranspose2d", "BatchNorm2d", "ReLU", "Dropout", "MaxPool2d",
    "Concat", "concat", "split_grad", "he_uniform", "softmax_cross_entropy", "RMSprop",
    "ExponentialLR", "confusion_matrix", "iou_per_class", "mean_iou", "pixel_accuracy",
    "person_iou", "per_image_iou", "IoUMeter", "gradcheck", "numerical_gradient",
    "relative_error", "set_threads",
]
