"""A small progress-bar wrapper over rich (quiet when not on a terminal)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class _Bar:
    def __init__(self, progress: Progress | None, task):
        self._p, self._t = progress, task

    def advance(self, n: int = 1, **fields) -> None:
        if self._p is not None:
            self._p.update(self._t, advance=n, **fields)


@contextmanager
def progress(desc: str, total: int, unit: str = "it", enabled: bool | None = None):
    """Yields an object with .advance(n, status=...); a no-op when output is not a TTY."""
    enabled = sys.stderr.isatty() if enabled is None else enabled
    if not enabled:
        yield _Bar(None, None)
        return
    cols = [TextColumn(f"[bold]{desc}"), BarColumn(), MofNCompleteColumn(), TextColumn(unit),
            TextColumn("{task.fields[status]}"), TimeRemainingColumn()]
    with Progress(*cols, transient=False) as p:
        yield _Bar(p, p.add_task(desc, total=total, status=""))
