"""Plain NumPy versions of every kernel in ``tinyseg.kernels``, written to be read, not to be fast.

Same function names, same arguments, same return values as the kernels.
"""
