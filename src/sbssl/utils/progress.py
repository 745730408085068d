"""Progress: a rich bar on a terminal; elsewhere (`make demo | tee log`, CI, a batch job) a plain line every
~30 s and one at the end, so a long step is never silent."""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, **fields)


class _Lines:
    """Plain progress lines on stderr, at most one per `every` seconds, plus the last."""

    def __init__(self, desc: str, total: int, unit: str, every: float):
        self.desc, self.total, self.unit, self.every = desc, total, unit, every
        self.done, self.status, self.t0 = 0, "", time.monotonic()
        self.last = self.t0

    def advance(self, n: int = 1, **fields) -> None:
        self.done += n
        self.status = str(fields.get("status", self.status))
        now = time.monotonic()
        if now - self.last >= self.every or self.done >= self.total:
            self.last = now
            self.line(now)

    def line(self, now: float) -> None:
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done) if self.done else float("nan")
        tail = f" {self.status}" if self.status else ""
        print(f"{self.desc}: {self.done}/{self.total} {self.unit}{tail} ({elapsed:.0f} s, ~{eta:.0f} s left)",
              file=sys.stderr, flush=True)


@contextmanager
def progress(desc: str, total: int, unit: str = "it", enabled: bool | None = None, every: float = 30.0):
    """Yields an object with .advance(n, status=...). enabled=False silences it (ranks other than 0)."""
    if enabled is False:
        yield _Bar(None, None)
        return
    if not sys.stderr.isatty():
        yield _Lines(desc, total, unit, every)
        return
    cols = [TextColumn(f"[bold]{desc}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn()]
    with Progress(*cols, transient=False) as p:
        yield _Bar(p, p.add_task(desc, total=total, status=""))
