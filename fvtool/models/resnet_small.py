"""`resnet_small`: a ~1M-parameter ResNet for fast CPU experiments.

Why: on a 2-core CPU early downsampling matters more than parameter count (docs/environment
measurements): a stride-2 stem and narrow stages (32-64-128-192, one basic block each) train at
several hundred images/s at 64x64, so a whole loss comparison fits in minutes. ReLU, batch norm,
stride-2 convolutions (no pooling until the head); see `resnet_trunk.py` for the layout and
`heads.py` for the heads (default: global average pool -> FC -> BN1d, any input size >= 16).
"""

from __future__ import annotations

import torch.nn as nn

from fvtool import optcheck
from fvtool.models.heads import EmbeddingNet, make_head
from fvtool.models.registry import register_backbone
from fvtool.models.resnet_trunk import resnet_trunk, trunk_feature_side


@register_backbone("resnet_small", min_input_size=16, input_sizes=(64, 96, 112))
def resnet_small(*, embedding_size: int, input_size: int, widths: tuple[int, ...] = (32, 64, 128, 192),
                 blocks: tuple[int, ...] = (1, 1, 1, 1), head: str = "pool", dropout: float = 0.0,
                 act: str = "relu") -> nn.Module:
    """Small fast ResNet (~1M params, stride-2 stem, 32-64-128-192 x 1 block), for CPU experiments."""
    owner = "backbone resnet_small"
    widths = optcheck.int_tuple(owner, "widths", widths)
    blocks = optcheck.int_tuple(owner, "blocks", blocks, length=len(widths))
    act = optcheck.choice(owner, "act", act, ("relu", "prelu"))
    trunk = resnet_trunk(widths, blocks, act=act, stem_stride=2)
    side = trunk_feature_side(input_size, len(widths))
    return EmbeddingNet(trunk, make_head(head, channels=widths[-1], feature_side=side, input_size=input_size,
                                         embedding_size=embedding_size, dropout=dropout, act=act, owner=owner))
