"""One place for terminal output: a rich console on stderr and the standard progress bar.

Why stderr: stdout stays clean for machine-readable output (e.g. `--json`), so shell
scripts can pipe it while humans still see progress and summaries.

Why plain progress lines: when stderr is not a terminal (a log file, CI, `nohup`), rich draws no
live bar, and a long stage would print nothing for tens of minutes. `progress()` then returns a
`PlainProgress`, which prints one ordinary line per task every `PLAIN_EVERY_S` seconds and when the
task finishes, e.g. `training: 480/1200 (40 %) epoch 5/12 loss 3.2 ... 2:10 elapsed, ~3:15 left`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from fvtool.errors import EXIT_INTERRUPTED, FvtoolError, Interrupted

console = Console(stderr=True, highlight=False)

#: seconds between plain progress lines when stderr is not a terminal
PLAIN_EVERY_S = 30.0


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class PlainProgress(Progress):
    """A `Progress` without a live display that prints a plain line per task every `every` seconds
    (and once when the task completes): progress a log file can show."""

    def __init__(self, *columns: Any, every: float | None = None, **kw: Any) -> None:
        kw["disable"] = True  # no live display; tasks are still tracked (speed, time remaining)
        super().__init__(*columns, **kw)
        self.every = PLAIN_EVERY_S if every is None else float(every)
        self._last: dict[TaskID, float] = {}
        self._done: set[TaskID] = set()

    def add_task(self, description: str, *args: Any, **kw: Any) -> TaskID:
        task_id = super().add_task(description, *args, **kw)
        self._last[task_id] = time.monotonic()
        return task_id

    def update(self, task_id: TaskID, *args: Any, **kw: Any) -> None:
        super().update(task_id, *args, **kw)
        self._maybe_print(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def line(self, task_id: TaskID) -> str:
        """The plain line of a task: description, count, percent, info field, elapsed and time left."""
        with self._lock:
            task = self._tasks[task_id]
            total = task.total
            done = task.completed
            info = str(task.fields.get("info", "")).strip()
            elapsed, left = task.elapsed, task.time_remaining
        count = f"{done:.0f}/{total:.0f} ({100 * done / total:.0f} %)" if total else f"{done:.0f}"
        finished = total is not None and done >= total
        when = f"{_clock(elapsed)} elapsed" + ("" if finished or left is None else f", ~{_clock(left)} left")
        return f"{task.description}: {count}{' ' + info if info else ''}  {when}"

    def _maybe_print(self, task_id: TaskID) -> None:
        with self._lock:
            task = self._tasks.get(task_id)
            if task is None or task_id in self._done:
                return
            finished = task.total is not None and task.completed >= task.total
        now = time.monotonic()
        if finished or now - self._last.get(task_id, now) >= self.every:
            self._last[task_id] = now
            if finished:
                self._done.add(task_id)
            console.print(escape(self.line(task_id)), markup=True, highlight=False, soft_wrap=True)


@contextlib.contextmanager
def exit_on_error() -> Iterator[None]:
    """Turn an FvtoolError into "error: MESSAGE" and its exit code, Ctrl-C into exit code 130: what
    every fvtool process does at its top (the CLI, and each spawned training rank)."""
    try:
        yield
    except Interrupted as e:  # Ctrl-C in a stage that says how to continue (train, align, embed, demo)
        console.print(f"[yellow]interrupted[/]; {e}")
        sys.exit(EXIT_INTERRUPTED)
    except FvtoolError as e:
        console.print(f"[bold red]error:[/] {e}")
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        sys.exit(EXIT_INTERRUPTED)


def progress(transient: bool = False, disable: bool = False) -> Progress:
    """The progress bar every long stage uses; the `info` field shows items/s or similar.
    On a non-terminal stderr: plain lines every `PLAIN_EVERY_S` seconds instead (`PlainProgress`)."""
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    if not disable and not console.is_terminal:
        return PlainProgress(*columns, console=console, transient=transient)
    return Progress(*columns, console=console, transient=transient, disable=disable)
