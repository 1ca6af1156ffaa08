"""torchvision ResNet18/34/50 adapted to face crops, and ResNet18-FC2 (pool replaced by two FC layers).

No pretrained weights exist offline, so these are torchvision's architectures trained from scratch.
Adaptations for 64-160 px face crops (why: the ImageNet stem divides the side by 4 before the first
residual stage, leaving a 2x2 map at 64 px):

- ``stem="small"`` (default): the 7x7 stride-2 conv + 3x3 max-pool are replaced by one 3x3 stride-2
  conv (no pooling); total stride 16, so 64 -> 4x4 and 112 -> 7x7 final maps.
  ``stem="imagenet"`` keeps torchvision's stem (total stride 32: 2x2 at 64, 4x4 at 112), ~4x cheaper.
- the classifier ``fc`` is replaced by an embedding head (heads.py): ``pool`` (default for resnet18/34/50:
  global average pool -> dropout -> FC -> BN1d), ``flatten`` or ``fc2``.
- ``resnet18_fc2`` is ResNet18 with the average pool replaced by two fully connected layers
  (flatten -> FC(512*h*w -> fc_hidden) -> BN -> ReLU -> dropout -> FC -> BN), the variant of the
  study we follow; it is built for one input size.

Weights are torchvision's initialisation (kaiming-normal convolutions).
"""

from __future__ import annotations

import torch.nn as nn
import torchvision.models as tvm

from fvtool import optcheck
from fvtool.models.heads import EmbeddingNet, halve, make_head
from fvtool.models.registry import register_backbone

_ARCHS = {"resnet18": tvm.resnet18, "resnet34": tvm.resnet34, "resnet50": tvm.resnet50}


def _tv_resnet(arch: str, name: str, *, embedding_size: int, input_size: int, stem: str, head: str, dropout: float,
               fc_hidden: int = 512) -> nn.Module:
    owner = f"backbone {name}"
    stem = optcheck.choice(owner, "stem", stem, ("small", "imagenet"))
    net = _ARCHS[arch](weights=None)
    if stem == "small":
        net.conv1 = nn.Conv2d(3, 64, 3, stride=2, padding=1, bias=False)
        nn.init.kaiming_normal_(net.conv1.weight, mode="fan_out", nonlinearity="relu")
        net.maxpool = nn.Identity()
    trunk = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
    side = halve(input_size, 4 if stem == "small" else 5)
    channels = net.fc.in_features
    return EmbeddingNet(trunk, make_head(head, channels=channels, feature_side=side, input_size=input_size,
                                         embedding_size=embedding_size, dropout=dropout, hidden=fc_hidden,
                                         owner=owner))


@register_backbone("resnet18", min_input_size=32, input_sizes=(64, 112))
def resnet18(*, embedding_size: int, input_size: int, stem: str = "small", head: str = "pool",
             dropout: float = 0.0) -> nn.Module:
    """torchvision ResNet18 (11M), face-crop stem, embedding head with BN."""
    return _tv_resnet("resnet18", "resnet18", embedding_size=embedding_size, input_size=input_size, stem=stem,
                      head=head, dropout=dropout)


@register_backbone("resnet34", min_input_size=32, input_sizes=(64, 112))
def resnet34(*, embedding_size: int, input_size: int, stem: str = "small", head: str = "pool",
             dropout: float = 0.0) -> nn.Module:
    """torchvision ResNet34 (21M), face-crop stem, embedding head with BN."""
    return _tv_resnet("resnet34", "resnet34", embedding_size=embedding_size, input_size=input_size, stem=stem,
                      head=head, dropout=dropout)


@register_backbone("resnet50", min_input_size=32, input_sizes=(64, 112))
def resnet50(*, embedding_size: int, input_size: int, stem: str = "small", head: str = "pool",
             dropout: float = 0.0) -> nn.Module:
    """torchvision ResNet50 (24M, bottleneck), face-crop stem, embedding head with BN."""
    return _tv_resnet("resnet50", "resnet50", embedding_size=embedding_size, input_size=input_size, stem=stem,
                      head=head, dropout=dropout)


@register_backbone("resnet18_fc2", min_input_size=32, input_sizes=(64, 112))
def resnet18_fc2(*, embedding_size: int, input_size: int, stem: str = "small", dropout: float = 0.5,
                 fc_hidden: int = 512) -> nn.Module:
    """ResNet18 with the average pool replaced by two fully connected layers (with dropout)."""
    return _tv_resnet("resnet18", "resnet18_fc2", embedding_size=embedding_size, input_size=input_size, stem=stem,
                      head="fc2", dropout=dropout, fc_hidden=fc_hidden)
