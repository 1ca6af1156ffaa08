"""Loss registry: name -> constructor, so `--loss arcface` and configs name losses uniformly.

Loss modules register themselves with `@register_loss("name", family=...)`; `LOSS_MODULES`
lists the modules imported on first use (add a module there when you add a loss file).
Constructors take keyword arguments only. Two kinds of arguments reach them through `build_loss`:
- *context* (`CONTEXT_KEYS`: `embedding_size`, `num_classes`), which the engine passes to every loss
  without knowing its family: a constructor that does not declare one simply does not get it;
- the user's *options* (`--loss-opt margin=0.5`, a TOML table): an option the constructor does not
  take is an error naming the accepted ones, never silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch.nn as nn

from fvtool.errors import InputError
from fvtool.registry import LazyRegistry, summary_of

LOSS_MODULES: tuple[str, ...] = (
    # classification family (issue 5)
    "softmax", "normface", "sphereface", "cosface", "arcface", "combined_margin", "center_loss",
    # modern margin heads (issue 23)
    "adaface", "magface", "curricularface",
    # reconstruction (issue 7)
    "vae",
    # metric family (issue 6)
    "contrastive", "triplet", "margin", "hard_margin", "npair", "circle", "supcon", "siamese_bce",
)


@dataclass(frozen=True)
class LossSpec:
    name: str
    family: str  # "classification" | "metric" | "pair" | "reconstruction"
    factory: Callable[..., nn.Module]
    summary: str


LOSSES: LazyRegistry[LossSpec] = LazyRegistry("loss", lambda: [f"fvtool.losses.{m}" for m in LOSS_MODULES])


def register_loss(name: str, family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        LOSSES.add(name, LossSpec(name, family, factory, summary_of(factory)))
        return factory

    return deco


def loss_specs() -> dict[str, LossSpec]:
    return LOSSES.specs()


def get_loss_spec(name: str) -> LossSpec:
    return LOSSES.get(name)


CONTEXT_KEYS: tuple[str, ...] = ("embedding_size", "num_classes")


def _user_options(params: Mapping[str, inspect.Parameter]) -> list[str]:
    return [k for k, p in params.items() if k not in CONTEXT_KEYS
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def build_loss(name: str, **kwargs: object) -> nn.Module:
    """Build loss `name` from context kwargs (dropped where not taken; None = absent) and user options."""
    spec = get_loss_spec(name)
    params = inspect.signature(spec.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    context = {k: kwargs.pop(k) for k in CONTEXT_KEYS if k in kwargs}
    context = {k: v for k, v in context.items() if v is not None and (takes_any or k in params)}
    if not takes_any:
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            takes = ", ".join(_user_options(params)) or "no options"
            raise InputError(f"loss {name!r} does not take option(s) {', '.join(unknown)}; it takes {takes}")
    arguments = {**kwargs, **context}
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in arguments
               and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise InputError(f"loss {name!r} needs {', '.join(missing)} (the engine passes embedding_size and "
                         "num_classes for classification losses)")
    return spec.factory(**arguments)
