"""Progress lines on stderr for long work: what, how far, rate, ETA.

On a terminal one line is rewritten in place; otherwise (a log file, CI) a line is printed
at most every ``interval`` seconds, plus the final one.
"""
from __future__ import annotations

import sys
import time
from typing import Optional, TextIO


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _amount(value: float, unit: str) -> str:
    if unit == "B":
        return f"{value / 1e6:.1f} MB"
    return f"{int(value)}"


class Progress:
    """``with Progress("caching train 224px", total=190, unit="images") as p: p.update()``."""

    def __init__(self, what: str, total: Optional[float], unit: str = "images",
                 enabled: bool = True, stream: Optional[TextIO] = None,
                 interval: float = 5.0) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else interval
        self.done = 0.0
        self.start = time.perf_counter()
        # A terminal shows the first update at once; a log gets its first line after
        # ``interval`` (short jobs then write only the final line).
        self._last = -1e9 if self.tty else self.start
        self._closed = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def line(self) -> str:
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        rate = self.done / elapsed
        unit = self.unit if self.unit != "B" else ""
        if self.unit == "B":
            rate_text = f"{rate / 1e6:.1f} MB/s"
        else:
            rate_text = f"{rate:.1f} {self.unit}/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            text = (f"{self.what}: {_amount(self.done, self.unit)}/{_amount(self.total, self.unit)}"
                    f" {unit} ({100 * frac:.0f} %), {rate_text}")
            if 0 < self.done < self.total and rate > 0:
                text += f", ETA {_clock((self.total - self.done) / rate)}"
            elif self.done >= self.total:
                text += f", {_clock(elapsed)}"
        else:
            text = f"{self.what}: {_amount(self.done, self.unit)} {unit}, {rate_text}"
        return " ".join(text.split())

    def update(self, n: float = 1) -> None:
        self.done += n
        now = time.perf_counter()
        if self.enabled and now - self._last >= self.interval:
            self._last = now
            self._write(final=False)

    def _write(self, final: bool) -> None:
        if self.tty:
            self.stream.write("\r\033[K" + self.line() + ("\n" if final else ""))
        else:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and not self._closed:
            self._write(final=True)
        self._closed = True
