"""What a long job tells its user: progress, warnings about the input, and summary lines, once per torchrun job.

`show_progress` gives a tqdm bar on a terminal; when its stream (stderr) is not a terminal (a batch job, a cluster
log, ``2> log``) it prints a plain line at most every `LINE_INTERVAL_S` seconds and one at the end, so a log holds
a few dozen lines instead of thousands of carriage-return redraws. `say` prints a summary line on rank 0 only, and
`warn_input` issues an `InputWarning` (the CLI shows it as ``selflabel: warning: <file>: <problem>``).
"""

from __future__ import annotations

import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO, TypeVar

from tqdm import tqdm

T = TypeVar("T")

#: Seconds between two plain progress lines when the output is not a terminal.
LINE_INTERVAL_S = 30.0


class InputWarning(UserWarning):
    """Input that selflabel reads anyway (converted or partly skipped); the message starts with the file's path."""


def is_main_process() -> bool:
    """True outside torchrun and on its rank 0 (read from torchrun's RANK at call time)."""
    return int(os.environ.get("RANK", "0")) == 0


def say(message: str, err: bool = False) -> None:
    """Print a summary line on rank 0 only (every rank computes it; one prints it), flushed at once."""
    if is_main_process():
        print(message, file=sys.stderr if err else sys.stdout, flush=True)


def warn_input(path: str | Path, problem: str, every_rank: bool = False) -> None:
    """Warn about one input file or folder: ``<path>: <problem>``, one line.

    Warnings about what every rank sees alike (a folder listing, dataset.json) come from rank 0 only; those about
    a case only this rank reads (its shard) need ``every_rank=True``.
    """
    if every_rank or is_main_process():
        warnings.warn(f"{path}: {problem}", InputWarning, stacklevel=2)


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """The interface of a progress display: iterate, `update`, `set_postfix`, `write` a line, `close`.

    This base class shows nothing (progress disabled) but still prints what `write` is given.
    """

    def __init__(self, iterable: Iterable[Any] | None = None):
        self.iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """`n` more items done."""

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counts (e.g. ``loss="0.41"``)."""

    def write(self, message: str) -> None:
        """Print a line of its own (an error, a validation score) without breaking the display."""
        tqdm.write(message)

    def close(self) -> None:
        """End the display."""


class _Bar(Progress):
    """A tqdm bar (on a terminal)."""

    def __init__(self, iterable: Iterable[Any] | None, **options: Any):
        super().__init__(iterable)
        self.bar = tqdm(iterable, **options)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.bar)

    def update(self, n: int = 1) -> None:
        self.bar.update(n)

    def set_postfix(self, **values: Any) -> None:
        self.bar.set_postfix(**values)

    def write(self, message: str) -> None:
        self.bar.write(message)

    def close(self) -> None:
        self.bar.close()


class LineProgress(Progress):
    """Plain lines for logs: ``<desc>: 40/100 case (40 %), 2.1 s/case, 1:24 elapsed, ~2:06 left; last=1.9s``.

    A line is printed by the `update` that comes at least `interval` seconds after the previous line (or the
    start), and one at `close`; nothing in between, never a carriage return.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        initial: int = 0,
        interval: float | None = None,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        super().__init__(iterable)
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.total, self.desc, self.unit = total, desc, unit
        self.initial = self.n = initial
        self.interval = LINE_INTERVAL_S if interval is None else interval
        self.stream = stream
        self.clock = clock
        self.start = self.last = clock()
        self.postfix: dict[str, Any] = {}
        self.closed = False

    def line(self) -> str:
        """The current state as one line."""
        elapsed = self.clock() - self.start
        done = self.n - self.initial
        counts = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        parts = [f"{counts} {self.unit}"]
        if self.total:
            parts[0] += f" ({100 * self.n / self.total:.0f} %)"
        if done > 0 and elapsed > 0:
            per = elapsed / done
            parts.append(f"{per:.2f} s/{self.unit}" if per >= 1 else f"{1 / per:.2f} {self.unit}/s")
        parts.append(f"{_clock(elapsed)} elapsed")
        if self.total and done > 0 and self.n < self.total:
            parts.append(f"~{_clock(elapsed / done * (self.total - self.n))} left")
        postfix = "; " + " ".join(f"{k}={v}" for k, v in self.postfix.items()) if self.postfix else ""
        return f"{self.desc}: {', '.join(parts)}{postfix}"

    def _print(self, message: str) -> None:
        print(message, file=self.stream or sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        now = self.clock()
        if now - self.last >= self.interval:
            self.last = now
            self._print(self.line())

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def write(self, message: str) -> None:
        print(message, flush=True)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._print(self.line())


def show_progress(
    iterable: Iterable[T] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    initial: int = 0,
    enabled: bool = True,
) -> Progress:
    """A progress display over `iterable` (or `total` items updated by hand).

    A tqdm bar when stderr is a terminal, `LineProgress` when it is not, nothing (but `write`) when not `enabled`.
    """
    if not enabled:
        return Progress(iterable)
    stream = sys.stderr
    if stream is not None and stream.isatty():
        return _Bar(iterable, total=total, desc=desc, unit=unit, initial=initial)
    return LineProgress(iterable, total=total, desc=desc, unit=unit, initial=initial)
