"""Errors that the CLI turns into a clear message and a meaningful exit code.

Why one hierarchy: stage code raises a typed error that says what is wrong and where; the
CLI is the only place that prints it and picks the exit code, so every command behaves alike.

Exit codes (documented in docs/cli.md):
  0  success
  1  unexpected internal error (a bug: please report it with the traceback)
  2  bad command-line usage (Typer/Click)
  3  bad input: missing/malformed files, wrong shapes, NaNs, mismatched metadata
  4  finished, but some items failed (e.g. unreadable images); the summary says how many
  5  a check failed (e.g. the leakage guard found overlapping identities)
  130 interrupted (Ctrl-C); resumable stages continue where they stopped when rerun
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_BAD_INPUT = 3
EXIT_PARTIAL = 4
EXIT_CHECK_FAILED = 5
EXIT_INTERRUPTED = 130


class FvtoolError(Exception):
    """Base class: a problem the user can fix, with a message that says how."""

    exit_code = EXIT_BAD_INPUT


class InputError(FvtoolError):
    """An input file or value is missing, malformed or inconsistent."""

    exit_code = EXIT_BAD_INPUT


class CheckFailed(FvtoolError):
    """A requested check (leakage guard, metadata compatibility) did not pass."""

    exit_code = EXIT_CHECK_FAILED


class Interrupted(FvtoolError):
    """Ctrl-C in a stage that knows how to continue; the message says how (e.g. rerun the same command)."""

    exit_code = EXIT_INTERRUPTED


@contextlib.contextmanager
def on_interrupt(hint: str) -> Iterator[None]:
    """Ctrl-C inside the block becomes `Interrupted(hint)`: the CLI prints "interrupted; <hint>" and exits 130.
    Stages without such a block print plain "interrupted" (no resume promise they cannot keep)."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(hint) from None


#: the hint of stages that continue where they stopped when the same command runs again
RERUN_TO_RESUME = "rerun the same command to resume"


class PartialFailure(FvtoolError):
    """The stage finished and wrote its outputs, but some items failed."""

    exit_code = EXIT_PARTIAL
