"""Loss registry: name -> constructor, and `build_loss`, the one way to build a loss.

Loss modules register themselves with `@register_loss("name", family=...)`;
`LOSS_MODULES` lists the modules imported on first use (add a module there when you add a loss file).
Constructors take keyword arguments only. What reaches them through `build_loss`:
- *context* (`CONTEXT_KEYS`: `embedding_size`, `num_classes`), which the engine passes to every loss
  without knowing its family: a constructor that does not declare one simply does not get it;
- a *miner* object for the pair/triplet losses (those whose constructor takes `miner`): `miner` may
  be a name or alias (`hard`, `semihard`, ...) that is built here with `seed` and `miner_options`,
  a Miner object, or None for the loss's `default_miner` (None there: every pair of the batch);
- the user's *options* (`--loss-opt margin=0.5`, a TOML table): an option the constructor does not
  take is an error naming the accepted ones, never silently ignored.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch.nn as nn

from fvtool.errors import InputError
from fvtool.mining.registry import build_miner
from fvtool.registry import LazyRegistry, summary_of

if TYPE_CHECKING:
    from fvtool.mining.base import Miner

LOSS_MODULES: tuple[str, ...] = (
    # classification family
    "softmax", "normface", "sphereface", "cosface", "arcface", "combined_margin", "center_loss",
    # modern margin heads
    "adaface", "magface", "curricularface",
    # reconstruction
    "vae",
    # metric family (and the siamese pair verifier)
    "contrastive", "triplet", "margin", "hard_margin", "npair", "circle", "supcon", "siamese_bce",
)


@dataclass(frozen=True)
class LossSpec:
    name: str
    family: str  # "classification" | "metric" | "pair" | "reconstruction"
    factory: Callable[..., nn.Module]
    summary: str
    default_miner: str | None = None  # pair/triplet losses: the paper's sampling (None: every pair)


LOSSES: LazyRegistry[LossSpec] = LazyRegistry("loss", lambda: [f"fvtool.losses.{m}" for m in LOSS_MODULES])


def register_loss(name: str, family: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator for a loss constructor; a pair/triplet loss class declares its `default_miner`."""
    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        default_miner = getattr(factory, "default_miner", None)  # a class attribute; plain functions have none
        LOSSES.add(name, LossSpec(name, family, factory, summary_of(factory), default_miner))
        return factory

    return deco


def loss_specs() -> dict[str, LossSpec]:
    return LOSSES.specs()


def get_loss_spec(name: str) -> LossSpec:
    return LOSSES.get(name)


CONTEXT_KEYS: tuple[str, ...] = ("embedding_size", "num_classes")


def _user_options(params: Mapping[str, inspect.Parameter]) -> list[str]:
    return [k for k, p in params.items() if k not in CONTEXT_KEYS and k != "miner"
            and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]


def build_loss(name: str, *, embedding_size: int | None = None, num_classes: int | None = None, seed: int = 0,
               miner: str | Miner | None = None, miner_options: Mapping[str, Any] | None = None,
               **options: Any) -> nn.Module:
    """Build loss `name` (see the module docstring): context where the constructor takes it, the miner
    of a pair/triplet loss, and the user's `options`."""
    spec = get_loss_spec(name)
    params = inspect.signature(spec.factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    if not takes_any:
        unknown = sorted(set(options) - set(params))
        if unknown:
            takes = ", ".join(_user_options(params)) or "no options"
            raise InputError(f"loss {name!r} does not take option(s) {', '.join(unknown)}; it takes {takes}")
    arguments = dict(options)
    context = {"embedding_size": embedding_size, "num_classes": num_classes}
    arguments.update({k: v for k, v in context.items() if v is not None and (takes_any or k in params)})
    if "miner" in params:
        chosen = miner if miner is not None else spec.default_miner
        if isinstance(chosen, str):
            chosen = build_miner(chosen, **{"seed": seed, **(miner_options or {})})
        arguments["miner"] = chosen
    elif miner is not None or miner_options:
        raise InputError(f"--mining applies to pair/triplet losses that take a miner; loss {name!r} "
                         f"({spec.family}) does not")
    missing = [k for k, p in params.items() if p.default is inspect.Parameter.empty and k not in arguments
               and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    if missing:
        raise InputError(f"loss {name!r} needs {', '.join(missing)} (the engine passes embedding_size and "
                         "num_classes for classification losses)")
    return spec.factory(**arguments)
