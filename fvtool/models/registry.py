"""Backbone registry: name -> constructor, so `--backbone iresnet50` and configs name networks uniformly.

Contract (docs/architecture.md): `build_backbone(name, embedding_size=..., input_size=..., **opts)`
returns an `nn.Module` mapping a float batch `[B, 3, H, W]` (H = W = input_size) to `[B, D]`
embeddings, *not* L2-normalised: softmax and center loss need the raw vector, the angular losses
and the `embed` stage normalise themselves. Every backbone runs in `channels_last`.

Why `input_size` is a constructor argument: several heads flatten the last feature map into a
fully connected layer (IResNet, the thesis ResNets, ResNet18-FC2), so the network is built for one
input size; asking for a size a backbone cannot take is an `InputError` at build time, not a
shape error deep inside the first forward.

Backbone modules register factories with `@register_backbone("name", min_input_size=...)`;
`BACKBONE_MODULES` maps each module to the names it registers (add yours there): a lookup imports
only the module that defines the name, so `resnet_small` does not pay for torchvision, and listing
the names or rejecting an unknown one imports nothing (fvtool/registry.py).
`timm:<model>` names any timm model with fvtool's embedding head (fvtool/models/timm_backbone.py,
imported only for such a name).
Factories take keyword arguments only: `embedding_size`, `input_size` and their own options;
unknown options are an error naming the accepted ones.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fvtool.errors import InputError
from fvtool.registry import LazyRegistry, summary_of

if TYPE_CHECKING:
    import torch.nn as nn

#: module (under fvtool.models) -> the backbone names it registers
BACKBONE_MODULES: dict[str, tuple[str, ...]] = {
    "resnet_small": ("resnet_small",),
    "torchvision_resnet": ("resnet18", "resnet34", "resnet50", "resnet18_fc2"),
    "thesis_resnet": ("resnet21", "resnet13"),
    "iresnet": ("iresnet18", "iresnet34", "iresnet50", "iresnet100"),
    "inception": ("inception_resnet_v1",),
    "autoencoder": ("conv-encoder",),
    "siamese_cnn": ("siamese_cnn",),
}

_CONTEXT = ("embedding_size", "input_size")

#: `timm:<model>` names any timm model (fvtool/models/timm_backbone.py); not in the index because
#: the set is timm's, and looked up only when asked for, so other runs never import timm
TIMM_PREFIX = "timm:"
_TIMM_SPECS: dict[str, BackboneSpec] = {}


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    factory: Callable[..., nn.Module]
    summary: str  # first docstring line of the factory
    min_input_size: int  # smallest square side the network can take
    input_sizes: tuple[int, ...]  # sizes the docs, tests and benchmarks cover

    def options(self) -> dict[str, object]:
        """The backbone's own options and their defaults (context arguments excluded)."""
        params = inspect.signature(self.factory).parameters
        return {k: p.default for k, p in params.items() if k not in _CONTEXT and p.kind is p.KEYWORD_ONLY}


BACKBONES: LazyRegistry[BackboneSpec] = LazyRegistry(
    "backbone", lambda: {f"fvtool.models.{m}": names for m, names in BACKBONE_MODULES.items()}
)


def register_backbone(
    name: str, *, min_input_size: int = 16, input_sizes: tuple[int, ...] = (64, 112)
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        params = inspect.signature(factory).parameters
        missing = [k for k in _CONTEXT if k not in params]
        if missing:
            raise ValueError(f"backbone factory {name!r} must accept {', '.join(missing)}")
        BACKBONES.add(name, BackboneSpec(name, factory, summary_of(factory), min_input_size, tuple(input_sizes)))
        return factory

    return deco


def backbone_specs() -> dict[str, BackboneSpec]:
    return BACKBONES.specs()


def backbone_names() -> list[str]:
    """Every backbone name, without importing any backbone module."""
    return BACKBONES.names()


def get_backbone_spec(name: str) -> BackboneSpec:
    if name.startswith(TIMM_PREFIX):
        return _timm_spec(name)
    return BACKBONES.get(name)


def _timm_spec(name: str) -> BackboneSpec:
    if name not in _TIMM_SPECS:
        from fvtool.models.timm_backbone import timm_factory  # imports timm: only for a timm: name

        factory = timm_factory(name[len(TIMM_PREFIX):], name)
        _TIMM_SPECS[name] = BackboneSpec(name, factory, summary_of(factory), min_input_size=32,
                                         input_sizes=(64, 112))
    return _TIMM_SPECS[name]



def _positive_int(what: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InputError(f"{what} must be a positive integer, got {value!r}")
    return value


def build_backbone(name: str, *, embedding_size: int = 512, input_size: int = 112, **opts: object) -> nn.Module:
    """Build backbone `name` for square `input_size` crops producing `embedding_size`-d embeddings."""
    spec = get_backbone_spec(name)
    _positive_int("embedding_size", embedding_size)
    _positive_int("input_size", input_size)
    if input_size < spec.min_input_size:
        raise InputError(
            f"backbone {name!r} cannot take {input_size}x{input_size} inputs: it needs at least "
            f"{spec.min_input_size}x{spec.min_input_size} (documented sizes: "
            f"{', '.join(map(str, spec.input_sizes))})"
        )
    accepted = spec.options()
    unknown = sorted(set(opts) - set(accepted))
    if unknown:
        takes = ", ".join(f"{k}={v!r}" for k, v in accepted.items()) or "no options"
        raise InputError(f"backbone {name!r} does not take option(s) {', '.join(unknown)}; it takes {takes}")
    return spec.factory(embedding_size=embedding_size, input_size=input_size, **opts)
