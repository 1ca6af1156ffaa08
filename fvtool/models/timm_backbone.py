"""Backbones from timm: `--backbone timm:<name>` (e.g. `timm:seresnet18`, `timm:convnext_atto`).

Why: study 3 compares SE-ResNet and ConvNeXt backbones; timm is a well-kept library that has them
(and ~1,000 others), so fvtool takes its trunk instead of a hand-written copy. The trunk is timm's
`forward_features` (classifier and global pool removed: `num_classes=0, global_pool=""`), followed by
fvtool's embedding head (heads.py; `pool` by default, so any input size the trunk takes works).

No network, ever: the model is built with `pretrained=False` (timm's own initialisation) and the
Hugging Face hub is switched to offline mode before timm is imported, so a misconfigured
`pretrained_cfg` cannot start a download. Pretrained weights are loaded, if at all, from a local
file through fvtool's own weights options, never fetched.

This module is imported only when a `timm:` name is looked up (fvtool/models/registry.py), so runs
with fvtool's own backbones never import timm.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable

# before timm (and huggingface_hub) are imported: no download can start from here
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import timm
import torch
import torch.nn as nn

from fvtool.errors import InputError
from fvtool.models.heads import EmbeddingNet, make_head


class _TimmTrunk(nn.Module):
    """timm model without classifier: image -> last feature map [B, C, h, w]."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _feature_side(trunk: nn.Module, input_size: int) -> int:
    """Side of the last feature map for `input_size` inputs (one eval-mode forward of a zero image:
    timm's stems differ (stride-4 patchify, 7x7 conv + pool), so measuring beats a formula)."""
    was_training = trunk.training
    trunk.eval()
    with torch.no_grad():
        side = int(trunk(torch.zeros(1, 3, input_size, input_size)).shape[-1])
    trunk.train(was_training)
    return side


def _build(model_name: str, owner: str, *, embedding_size: int, input_size: int, head: str, dropout: float,
           drop_path_rate: float) -> nn.Module:
    kwargs: dict[str, object] = {"pretrained": False, "num_classes": 0, "global_pool": ""}
    if drop_path_rate:
        kwargs["drop_path_rate"] = float(drop_path_rate)
    try:
        model = timm.create_model(model_name, **kwargs)
    except TypeError as e:  # a model family without drop_path_rate
        raise InputError(f"{owner}: {e}") from None
    trunk = _TimmTrunk(model)
    try:
        side = _feature_side(trunk, input_size)
    except RuntimeError as e:
        raise InputError(f"{owner} cannot take {input_size}x{input_size} inputs: {str(e)[:200]}") from None
    if side < 1:
        raise InputError(f"{owner} cannot take {input_size}x{input_size} inputs (empty feature map)")
    return EmbeddingNet(trunk, make_head(head, channels=int(model.num_features), feature_side=side,
                                         input_size=input_size, embedding_size=embedding_size, dropout=dropout,
                                         owner=owner))


def _factory_for(model_name: str, owner: str) -> Callable[..., nn.Module]:
    def factory(*, embedding_size: int, input_size: int, head: str = "pool", dropout: float = 0.0,
                drop_path_rate: float = 0.0) -> nn.Module:
        return _build(model_name, owner, embedding_size=embedding_size, input_size=input_size, head=head,
                      dropout=dropout, drop_path_rate=drop_path_rate)

    factory.__doc__ = (f"timm {model_name} (pretrained=False) trunk with fvtool's embedding head "
                       "(head=pool|flatten|fc2|avgpool, dropout, drop_path_rate).")
    factory.__name__ = f"timm_{model_name}"
    return factory


def timm_factory(model_name: str, backbone_name: str) -> Callable[..., nn.Module]:
    """The backbone factory for timm model `model_name` (registered as `backbone_name`, used in messages);
    an unknown name is an InputError with close matches."""
    if not model_name or not timm.is_model(model_name):
        close = difflib.get_close_matches(model_name, timm.list_models(), n=6) if model_name else []
        hint = f"; close timm names: {', '.join(close)}" if close else "; list them with timm.list_models()"
        raise InputError(f"unknown backbone {backbone_name!r}: {model_name!r} is not a timm model{hint}")
    return _factory_for(model_name, f"backbone {backbone_name}")
