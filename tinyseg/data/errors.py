"""The two ways the data package complains.

* ``DataError`` (a ``ValueError``): the data cannot be used as asked -- a missing folder, a
  file that is not COCO, filters that leave nothing.  The message names the path and what
  was expected there; the command line prints it as one line and exits with status 1.
* ``BadImageWarning``: some images could not be read and were skipped.  Work goes on with
  the others; the warning lists them.
"""
from __future__ import annotations


class DataError(ValueError):
    """The data cannot be used: the message says which file and what was expected."""


class BadImageWarning(UserWarning):
    """Some images were unreadable (corrupt, truncated, wrong size) and were skipped."""


def list_some(items, limit: int = 10) -> str:
    """``a, b, c and 7 more``: a short listing for messages."""
    items = [str(i) for i in items]
    if len(items) <= limit:
        return ", ".join(items)
    return ", ".join(items[:limit]) + f" and {len(items) - limit} more"
