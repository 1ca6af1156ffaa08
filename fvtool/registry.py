"""One lazily filled name -> spec table, shared by the backbone, loss, miner and method registries.

Why lazy: each table is filled by decorators in modules (`fvtool.losses.arcface`, ...) that import
torch and friends; importing them only on the first lookup keeps `fvtool --help` fast and lets a
registry list modules without import cycles. Every registry keeps its own spec type and builder;
this class only owns the table, the duplicate check, the loading and the "unknown name" error.

Two ways to name the modules:
- a sequence of modules: the first lookup imports all of them (cheap when they share their imports,
  as the losses and miners do: torch only);
- an index `{module: (name, ...)}`: `names()` and the "unknown name" error need no import, and
  `get(name)` imports only the module that defines `name` (the backbones: one module pulls in
  torchvision, +1-2 s and +160 MB, which a `resnet_small` run must not pay). A module that
  registers a name its index entry does not list is an error, so the index cannot drift.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Generic, TypeVar

from fvtool.errors import InputError

S = TypeVar("S")


def summary_of(obj: object) -> str:
    """First line of an object's docstring ("" when it has none): the one-line help in listings."""
    doc = inspect.getdoc(obj) or ""
    return doc.splitlines()[0] if doc else ""


class LazyRegistry(Generic[S]):
    def __init__(self, what: str, modules: Callable[[], Sequence[str] | Mapping[str, Sequence[str]]]) -> None:
        """`what` names the kind in messages ("loss"); `modules()` gives the fully qualified modules
        whose import registers the entries, either as a sequence or as an index `{module: names}`
        (see the module docstring)."""
        self.what = what
        self._modules = modules
        self._table: dict[str, S] = {}
        self._imported: set[str] = set()
        self._loaded = False

    def _index(self) -> dict[str, str] | None:
        """name -> module when the modules come as an index, else None."""
        mods = self._modules()
        if not isinstance(mods, Mapping):
            return None
        return {name: m for m, names in mods.items() for name in names}

    def add(self, name: str, spec: S) -> None:
        if name in self._table:
            raise ValueError(f"{self.what} {name!r} registered twice")
        index = self._index()
        if index is not None and name not in index:
            raise ValueError(f"{self.what} {name!r} is not listed in its registry's module index; add it there")
        self._table[name] = spec

    def _import(self, m: str) -> None:
        if m in self._imported:
            return
        importlib.import_module(m)
        self._imported.add(m)

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        for m in self._modules():
            self._import(m)

    def names(self) -> list[str]:
        """Every registered name, sorted; imports nothing when the modules come as an index."""
        index = self._index()
        return sorted(index) if index is not None else list(self.specs())

    def specs(self) -> dict[str, S]:
        self._load()
        return dict(sorted(self._table.items()))

    def get(self, name: str) -> S:
        index = self._index()
        if index is None:
            self._load()
        elif name in index:
            self._import(index[name])
            if name not in self._table:
                raise ValueError(f"module {index[name]} did not register {self.what} {name!r} as its index says")
        if name not in self._table:
            raise InputError(f"unknown {self.what} {name!r}; available: {', '.join(self.names())}")
        return self._table[name]

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
