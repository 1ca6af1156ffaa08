"""Miner registry: `--mining NAME` -> a miner object, with the spellings users expect.

`hard` is batch-hard (Hermans et al.), `all` is batch-all, `semihard` FaceNet's semi-hard,
`hard-negative` the hardest negative for every positive pair, `distance-weighted` Wu et al.'s
sampling, `random` a uniformly random negative. Miner modules register themselves with
`@register_miner`; `MINER_MODULES` lists the modules loaded on first use.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from fvtool.errors import InputError
from fvtool.registry import LazyRegistry, summary_of

MINER_MODULES: tuple[str, ...] = (
    "random_negative", "semihard", "batch_hard", "batch_all", "hard_negative", "distance_weighted",
)


@dataclass(frozen=True)
class MinerSpec:
    name: str
    factory: Callable[..., object]
    aliases: tuple[str, ...]
    summary: str


MINERS: LazyRegistry[MinerSpec] = LazyRegistry("miner", lambda: [f"fvtool.mining.{m}" for m in MINER_MODULES])
_ALIASES: dict[str, str] = {}


def register_miner(name: str, aliases: tuple[str, ...] = ()) -> Callable[[type], type]:
    def deco(cls: type) -> type:
        for n in (name, *aliases):
            if n in _ALIASES:
                raise ValueError(f"miner name {n!r} registered twice")
            _ALIASES[n] = name
        MINERS.add(name, MinerSpec(name, cls, tuple(aliases), summary_of(cls)))
        return cls

    return deco


def miner_specs() -> dict[str, MinerSpec]:
    return MINERS.specs()


def resolve_miner_name(name: str) -> str:
    """The canonical name for `name` or an alias (case-insensitive, `_` and `-` alike)."""
    MINERS.specs()  # import the miner modules, which fill _ALIASES
    key = name.strip().lower()
    for candidate in (key, key.replace("_", "-")):
        if candidate in _ALIASES:
            return _ALIASES[candidate]
    known = ", ".join(f"{s.name} ({', '.join(s.aliases)})" if s.aliases else s.name for s in miner_specs().values())
    raise InputError(f"unknown miner {name!r}; available: {known}")


def build_miner(name: str, **options: object):  # -> Miner (import cycle: base imports nothing from here)
    """Build a miner by name or alias; options it does not take raise a clear error."""
    spec = MINERS.get(resolve_miner_name(name))
    params = inspect.signature(spec.factory).parameters
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise InputError(f"miner {spec.name!r} does not take option(s) {', '.join(unknown)}; "
                         f"it takes {', '.join(params) or 'none'}")
    return spec.factory(**options)
