"""One lazily filled name -> spec table, shared by the backbone, loss, miner and method registries.

Why lazy: each table is filled by decorators in modules (`fvtool.losses.arcface`, ...) that import
torch and friends; importing them only on the first lookup keeps `fvtool --help` fast and lets a
registry list modules without import cycles. Every registry keeps its own spec type and builder;
this class only owns the table, the duplicate check, the loading and the "unknown name" error.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar

from fvtool.errors import InputError

S = TypeVar("S")


def summary_of(obj: object) -> str:
    """First line of an object's docstring ("" when it has none): the one-line help in listings."""
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


class LazyRegistry(Generic[S]):
    def __init__(self, what: str, modules: Callable[[], Sequence[str]], optional: bool = False) -> None:
        """`what` names the kind in messages ("loss"); `modules()` gives the fully qualified modules
        whose import registers the entries; `optional` tolerates a listed module that does not exist."""
        self.what = what
        self._modules = modules
        self._optional = optional
        self._table: dict[str, S] = {}
        self._loaded = False

    def add(self, name: str, spec: S) -> None:
        if name in self._table:
            raise ValueError(f"{self.what} {name!r} registered twice")
        self._table[name] = spec

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for m in self._modules():
            try:
                importlib.import_module(m)
            except ModuleNotFoundError as e:
                if not (self._optional and e.name == m):
                    raise

    def specs(self) -> dict[str, S]:
        self._load()
        return dict(sorted(self._table.items()))

    def get(self, name: str) -> S:
        specs = self.specs()
        if name not in specs:
            raise InputError(f"unknown {self.what} {name!r}; available: {', '.join(specs)}")
        return specs[name]

    def __contains__(self, name: object) -> bool:
        return name in self.specs()

    def __iter__(self) -> Iterator[str]:
        return iter(self.specs())
