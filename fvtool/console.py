"""One place for terminal output: a rich console on stderr and the standard progress bar.

Why stderr: stdout stays clean for machine-readable output (e.g. `--json`), so shell
scripts can pipe it while humans still see progress and summaries.
"""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

console = Console(stderr=True, highlight=False)


def progress(transient: bool = False, disable: bool = False) -> Progress:
    """The progress bar every long stage uses; the `rate` field shows items/s or similar."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=disable,
    )
