"""`resnet21` / `resnet13`: the ResNets of the thesis fvtool follows (our reading of its description).

What the thesis states: PReLU activations, batch normalisation, stride-2 convolutions instead of
pooling, an output block of two fully connected layers with dropout, and "ResNet13 = ResNet21
without four residual blocks".

Our reading (the layer count is the usual ResNet one: convolutions + fully connected layers):
    21 = 1 stem conv + 9 basic residual blocks x 2 convs + 2 FC
    13 = 1 stem conv + 5 basic residual blocks x 2 convs + 2 FC   (four blocks fewer: 21 - 4*2 = 13)
- stem: 3x3 conv, stride 2 -> BN -> PReLU (no max-pool);
- four stages of widths 64-128-256-512 (ResNet18 widths) with blocks (2, 2, 3, 2) for ResNet21 and
  (1, 1, 2, 1) for ResNet13 (one block removed per stage); the first block of stages 2-4 downsamples
  with a stride-2 3x3 conv (shortcut 1x1 stride-2 conv + BN); PReLU with one slope per channel;
- no global pooling: output block = flatten -> FC(512*h*w -> 512) -> BN1d -> PReLU -> dropout(0.5) ->
  FC(512 -> D) -> BN1d.  The classifier of the softmax-type losses lives in the loss, not here.
Total stride 16 (64 -> 4x4, 112 -> 7x7); the network is built for one input size (flattening head).
The block split over stages, the widths and the dropout rate are not given by the thesis; they are
options (`blocks`, `widths`, `dropout`, `fc_hidden`) so a different reading is one config line.

`layout="source"`: the reading that matches the thesis' own counts (section 3.1): "The ResNet21
network has 25 convolutional layers with an effective depth of 21 layers. This difference occurs
due to pointwise convolutions with one by one kernels in skip connections of residual blocks with
spatial dimension reduction. In addition, it has two fully connected layers" and ResNet13 "has 17
convolutional layers with an effective depth of 13 layers". So the 21 (13) counts the 3x3
convolutions of the main path, the two FC layers come on top, and 25 - 21 = 17 - 13 = 4 reduction
blocks, each with a 1x1 projection: every one of the four stages starts with a stride-2 block.
    ResNet21 = stem 3x3 conv (stride 1) + 10 blocks (2, 3, 3, 2) x 2 = 21 convs, + 4 projections = 25
    ResNet13 = stem + 6 blocks (1, 2, 2, 1) x 2 = 13 convs, + 4 projections = 17   (four blocks fewer)
Total stride 16 as in the default layout (64 -> 4x4, 112 -> 7x7). The split of the blocks over the
stages is still not given; (2, 3, 3, 2) keeps one reduction block per stage and removes one ordinary
block from each stage for ResNet13. The default `layout="fvtool"` (22 convolutions) stays the
default because docs/results.md was measured with it; the study 5 faithful recipes use "source".
"""

from __future__ import annotations

import torch.nn as nn

from fvtool import optcheck
from fvtool.models.heads import EmbeddingNet, make_head
from fvtool.models.registry import register_backbone
from fvtool.models.resnet_trunk import resnet_trunk, trunk_feature_side

LAYOUTS = ("fvtool", "source")
#: blocks per stage of the source layout (the `blocks` option's default there)
SOURCE_BLOCKS = {"resnet21": (2, 3, 3, 2), "resnet13": (1, 2, 2, 1)}


def _thesis_resnet(name: str, *, embedding_size: int, input_size: int, widths: object, blocks: object | None,
                   dropout: float, fc_hidden: int, layout: str, default_blocks: tuple[int, ...]) -> nn.Module:
    owner = f"backbone {name}"
    layout = optcheck.choice(owner, "layout", layout, LAYOUTS)
    source = layout == "source"
    if blocks is None:
        blocks = SOURCE_BLOCKS[name] if source else default_blocks
    widths = optcheck.int_tuple(owner, "widths", widths)
    blocks = optcheck.int_tuple(owner, "blocks", blocks, length=len(widths))
    trunk = resnet_trunk(widths, blocks, act="prelu", stem_stride=1 if source else 2, downsample_first=source)
    side = trunk_feature_side(input_size, len(widths), stem_stride=1 if source else 2, downsample_first=source)
    return EmbeddingNet(trunk, make_head("fc2", channels=widths[-1], feature_side=side, input_size=input_size,
                                         embedding_size=embedding_size, dropout=dropout, hidden=fc_hidden,
                                         act="prelu", owner=owner))


@register_backbone("resnet21", min_input_size=16, input_sizes=(64, 112))
def resnet21(*, embedding_size: int, input_size: int, widths: tuple[int, ...] = (64, 128, 256, 512),
             blocks: tuple[int, ...] | None = None, dropout: float = 0.5, fc_hidden: int = 512,
             layout: str = "fvtool") -> nn.Module:
    """Thesis ResNet21: PReLU, BN, stride-2 convs, 9 residual blocks (layout=source: 10, 25 convs), two-FC head."""
    return _thesis_resnet("resnet21", embedding_size=embedding_size, input_size=input_size, widths=widths,
                          blocks=blocks, dropout=dropout, fc_hidden=fc_hidden, layout=layout,
                          default_blocks=(2, 2, 3, 2))


@register_backbone("resnet13", min_input_size=16, input_sizes=(64, 112))
def resnet13(*, embedding_size: int, input_size: int, widths: tuple[int, ...] = (64, 128, 256, 512),
             blocks: tuple[int, ...] | None = None, dropout: float = 0.5, fc_hidden: int = 512,
             layout: str = "fvtool") -> nn.Module:
    """Thesis ResNet13: ResNet21 without four residual blocks (one per stage); layout=source: 17 convs."""
    return _thesis_resnet("resnet13", embedding_size=embedding_size, input_size=input_size, widths=widths,
                          blocks=blocks, dropout=dropout, fc_hidden=fc_hidden, layout=layout,
                          default_blocks=(1, 1, 2, 1))
