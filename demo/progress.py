"""Progress for the long first-run work: live bars on a terminal, one log line per step always.

`make serve` on a fresh machine trains the demo model before anything can answer (about a
minute on two cores); a minute of silence reads as a hang. rich (already a BentoML dependency)
draws the bars on stderr when stderr is a terminal. Anywhere else (CI, containers, log files,
pytest) the bars step aside and only the log lines remain, one when each step ends, so logs
stay greppable and free of control characters.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)

log = logging.getLogger(__name__)


def interactive(console: Console | None = None) -> bool:
    """True when a person is watching: stderr is a terminal that can redraw in place."""
    console = console or Console(stderr=True)
    return console.is_terminal and not console.is_dumb_terminal


class Steps:
    """Named steps of one long job, each with a bar (known total) or a spinner (unknown)."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress

    @contextmanager
    def step(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """Yields `advance(n)`; on exit the step is complete and one INFO line says how long
        it took (the line a log file keeps in place of the bar)."""
        started = time.perf_counter()
        task = self.progress.add_task(description, total=total) if self.progress else None
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            if self.progress is not None and task is not None:
                self.progress.advance(task, n)

        yield advance
        if self.progress is not None and task is not None:
            self.progress.update(task, total=total or 1, completed=total or 1)
        counted = f" ({done} of {total})" if total else ""
        log.info("%s%s: %.1f s", description, counted, time.perf_counter() - started)


@contextmanager
def steps(console: Console | None = None) -> Iterator[Steps]:
    """Bars on a terminal (`console`, default stderr), plain log lines elsewhere."""
    console = console or Console(stderr=True)
    if not interactive(console):
        yield Steps(None)
        return
    columns = (
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as progress:
        yield Steps(progress)
