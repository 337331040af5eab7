"""Fast numba kernels, one module per family.  Nothing else lives here.

Every function has a twin with the same name and arguments in ``tinyseg.reference``,
written to be read; tests hold the two equal.
"""
