"""Checks for user-supplied option values (backbone and loss options from the CLI or a TOML config).

Why one place: options arrive from `--backbone-opt k=v` strings and TOML tables, so a width list
may come as a list, a margin as an int; every constructor validates the same way and names the
option and its owner in the message (an `InputError`, exit code 3) instead of failing later with a
shape error or a NaN loss.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from fvtool.errors import InputError


def number(owner: str, key: str, value: object, *, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite real number within [low, high] (open ends where asked)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InputError(f"{owner}: option {key} must be a finite number, got {value!r}")
    v = float(value)
    if low is not None and (v < low or (low_open and v == low)):
        raise InputError(f"{owner}: option {key} must be {'>' if low_open else '>='} {low}, got {v}")
    if high is not None and (v > high or (high_open and v == high)):
        raise InputError(f"{owner}: option {key} must be {'<' if high_open else '<='} {high}, got {v}")
    return v


def integer(owner: str, key: str, value: object, *, low: int | None = None) -> int:
    """An integer; an integral float (4.0, e.g. from `--margin 4`) counts as one."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{owner}: option {key} must be an integer, got {value!r}")
    if low is not None and value < low:
        raise InputError(f"{owner}: option {key} must be >= {low}, got {value}")
    return value


def choice(owner: str, key: str, value: object, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise InputError(f"{owner}: option {key} must be one of {', '.join(allowed)}; got {value!r}")
    return str(value)


def int_tuple(owner: str, key: str, value: object, *, length: int | None = None, low: int = 1) -> tuple[int, ...]:
    """A list/tuple of integers >= low (TOML gives lists), optionally of a fixed length."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise InputError(f"{owner}: option {key} must be a non-empty list of integers, got {value!r}")
    out = tuple(integer(owner, key, v, low=low) for v in value)
    if length is not None and len(out) != length:
        raise InputError(f"{owner}: option {key} needs {length} values, got {len(out)}")
    return out
