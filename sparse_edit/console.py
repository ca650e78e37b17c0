"""Messages and progress on stderr: a rich bar on a terminal, plain lines in CI logs."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

PLAIN_LINE_SECONDS = 10.0


@dataclass
class Reporter:
    """Where a command tells the user what it is doing. ``quiet`` keeps only warnings."""

    quiet: bool = False

    def __post_init__(self) -> None:
        self._console = Console(stderr=True, highlight=False)

    @property
    def interactive(self) -> bool:
        return self._console.is_terminal and not self.quiet

    def info(self, message: str) -> None:
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def warn(self, message: str) -> None:
        print(f"warning: {message}", file=sys.stderr, flush=True)

    @contextmanager
    def progress(self, description: str, total: int, unit: str = "prompts") -> Iterator[ProgressTask]:
        task = ProgressTask(self, description, total, unit)
        if self.interactive:
            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
            )
            with Progress(*columns, console=self._console, transient=False) as bar:
                task.bind(bar, bar.add_task(description, total=total, rate=""))
                yield task
        else:
            yield task
        task.finish()


class ProgressTask:
    """Advance with ``task.advance(n)``; prints a plain line about every 10 % when not on a terminal."""

    def __init__(self, reporter: Reporter, description: str, total: int, unit: str) -> None:
        self.reporter, self.description, self.total, self.unit = reporter, description, total, unit
        self.done = 0
        self.start = time.perf_counter()
        self._bar: Progress | None = None
        self._task_id: object = None
        self._last_line = self.start

    def bind(self, bar: Progress, task_id: object) -> None:
        self._bar, self._task_id = bar, task_id

    def rate(self) -> float:
        elapsed = time.perf_counter() - self.start
        return self.done / elapsed if elapsed > 0 else 0.0

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._bar is not None:
            self._bar.update(self._task_id, advance=n, rate=f"{self.rate():.1f} {self.unit}/s")  # type: ignore[arg-type]
        elif self.done < self.total and time.perf_counter() - self._last_line >= PLAIN_LINE_SECONDS:
            # Plain logs (CI): a line every few seconds, so long runs show life without flooding.
            self.reporter.info(f"{self.description}: {self.done}/{self.total} ({self.rate():.1f} {self.unit}/s)")
            self._last_line = time.perf_counter()

    def finish(self) -> None:
        elapsed = time.perf_counter() - self.start
        self.reporter.info(
            f"{self.description}: {self.done}/{self.total} {self.unit} in {elapsed:.1f} s ({self.rate():.1f}/s)"
        )
