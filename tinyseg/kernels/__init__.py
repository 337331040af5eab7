"""Fast numba kernels, one module per family, and ``_args``: the cheap checks every public
kernel makes of its arguments before numba sees them.  Nothing else lives here.

Every function has a twin with the same name and arguments in ``tinyseg.reference``,
written to be read; tests hold the two equal.
"""
