"""Layer classes: parameters, a cache, forward, backward.  They call kernels."""
from .base import Layer, check_input  # noqa: F401
