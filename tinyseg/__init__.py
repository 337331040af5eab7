"""tinyseg: from-scratch deep-learning segmentation in NumPy and numba.

The public names are filled in as the modules land (see README, "Design").
"""
__version__ = "0.1.0"
