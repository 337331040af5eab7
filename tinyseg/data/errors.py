"""The two ways the data package complains.

* ``DataError`` (a ``ValueError``): the data cannot be used as asked -- a missing folder, a
  file that is not COCO, filters that leave nothing.  The message names the path and what
  was expected there; the command line prints it as one line and exits with status 1.
* ``BadImageWarning``: some images could not be read and were skipped.  Work goes on with
  the others; the warning lists them.
* ``BadAnnotationWarning``: some annotations give no mask pixel (no polygon of 3 or more
  points: bounding-box-only exports) or have an odd count of numbers; said when the
  annotations are read (a command that finds the selection cached does not read them).
  Both are ``DataWarning``s, which the commands print as one line.
"""
from __future__ import annotations


class DataError(ValueError):
    """The data cannot be used: the message says which file and what was expected."""


class DataWarning(UserWarning):
    """Something in the data was left out or bent to fit; the command goes on and says so."""


class BadImageWarning(DataWarning):
    """Some images were unreadable (corrupt, truncated, wrong size) and were skipped."""


class BadAnnotationWarning(DataWarning):
    """Some annotations add no pixel to a mask, or lose a point (degenerate polygons)."""


def list_some(items, limit: int = 10) -> str:
    """``a, b, c and 7 more``: a short listing for messages."""
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"
