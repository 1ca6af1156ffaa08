"""Loss registry: name -> constructor, so `--loss arcface` and configs name losses uniformly.

Loss modules register themselves with `@register_loss("name", family=...)`; `LOSS_MODULES`
lists the modules imported on first use (add a module there when you add a loss file).
Constructors take keyword arguments only: `embedding_size`, `num_classes` (classification
family) and the loss's own options; unknown options are an error, not silently ignored.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch.nn as nn

from fvtool.errors import InputError

LOSS_MODULES: tuple[str, ...] = ("vae",
                                 "contrastive", "triplet", "margin", "hard_margin", "npair", "circle", "supcon")


@dataclass(frozen=True)
class LossSpec:
    name: str
    family: str  # "classification" | "metric" | "pair" | "reconstruction"
    factory: Callable[..., nn.Module]
    summary: str


_REGISTRY: dict[str, LossSpec] = {}
_loaded = False


def register_loss(name: str, family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"loss {name!r} registered twice")
        doc = inspect.getdoc(factory) or ""
        _REGISTRY[name] = LossSpec(name, family, factory, doc.splitlines()[0] if doc else "")
        return factory

    return deco


def _load() -> None:
    global _loaded
    if not _loaded:
        for m in LOSS_MODULES:
            importlib.import_module(f"fvtool.losses.{m}")
        _loaded = True


def loss_specs() -> dict[str, LossSpec]:
    _load()
    return dict(sorted(_REGISTRY.items()))


def get_loss_spec(name: str) -> LossSpec:
    specs = loss_specs()
    if name not in specs:
        raise InputError(f"unknown loss {name!r}; available: {', '.join(specs)}")
    return specs[name]


def build_loss(name: str, **options: object) -> nn.Module:
    """Build a loss; options the constructor does not accept raise a clear error."""
    spec = get_loss_spec(name)
    params = inspect.signature(spec.factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(options) - set(params))
        if unknown:
            raise InputError(f"loss {name!r} does not take option(s) {', '.join(unknown)}; it takes {', '.join(params)}")
    return spec.factory(**options)
