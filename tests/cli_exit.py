"""`fvtool ...` run in-process for tests: the exit code it ends with (0 when `main` returns)."""

from __future__ import annotations

from fvtool.cli import main


def run_cli(*args: object) -> int:
    """Run the CLI with `args` (converted to str) in this process and return its exit code: Typer ends
    every command with SystemExit, and tests assert on the code (0, 2 bad usage, 3 bad input, ...)."""
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return int(e.code or 0)
    return 0
