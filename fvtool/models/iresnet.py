"""`iresnet18/34/50/100`: the ArcFace (insightface `arcface_torch`) IResNet, re-implemented.

Faithful to insightface's `backbones/iresnet.py`:
- stem: 3x3 conv stride 1 (64) -> BN -> PReLU;
- four stages (64, 128, 256, 512), each starting with stride 2; layers per stage
  18: (2,2,2,2), 34: (3,4,6,3), 50: (3,4,14,3), 100: (3,13,30,3);
- improved basic block: BN -> 3x3 conv -> BN -> PReLU -> 3x3 conv (stride) -> BN, + shortcut
  (1x1 conv stride 2 -> BN where the shape changes); no activation after the addition;
- output block: BN2d -> dropout -> flatten -> FC(512*h*w -> D) -> BN1d whose scale is fixed at 1
  (insightface's `features` layer: `weight.requires_grad = False`, only its bias learns);
- initialisation: convolutions N(0, 0.1), BN weight 1 / bias 0, PReLU 0.25, FC torch default.
Total stride 16 with the default stem (112 -> 7x7 as in insightface, 64 -> 4x4). `stem_stride=2`
is a CPU-friendly deviation (total stride 32: 112 -> 4x4) that cuts the cost ~4x.
The network is built for one input size (flattening head).

`weights=FILE` loads an insightface `arcface_torch` IResNet state dict (their released `backbone.pth`
files are plain state dicts; read with weights_only=True): the layers are the same, only the module
names differ (`insightface_key`). fvtool's own key names are accepted as well.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.models.heads import EmbeddingNet, halve, make_head
from fvtool.models.registry import register_backbone
from fvtool.models.weights import load_weights

_LAYERS = {"iresnet18": (2, 2, 2, 2), "iresnet34": (3, 4, 6, 3), "iresnet50": (3, 4, 14, 3),
           "iresnet100": (3, 13, 30, 3)}
_WIDTHS = (64, 128, 256, 512)


_INSIGHTFACE_PREFIX = {"conv1.": "trunk.0.", "bn1.": "trunk.1.", "prelu.": "trunk.2.", "layer1.": "trunk.3.",
                       "layer2.": "trunk.4.", "layer3.": "trunk.5.", "layer4.": "trunk.6.", "bn2.": "head.0.",
                       "fc.": "head.3.", "features.": "head.4."}


def insightface_key(key: str) -> str:
    """insightface IResNet state-dict key -> fvtool's (blocks keep their names: bn1, conv1, ..., downsample.0)."""
    for old, new in _INSIGHTFACE_PREFIX.items():
        if key.startswith(old):
            return new + key[len(old):]
    return key


class IBasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-05)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-05)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride=stride, padding=1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-05)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(cout, eps=1e-05))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + self.downsample(x)


def _iresnet(name: str, *, embedding_size: int, input_size: int, dropout: float, stem_stride: int,
             weights: str | None) -> nn.Module:
    owner = f"backbone {name}"
    stem_stride = optcheck.integer(owner, "stem_stride", stem_stride, low=1)
    if stem_stride not in (1, 2):
        raise InputError(f"{owner}: option stem_stride must be 1 or 2, got {stem_stride}")
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 3, stride=stem_stride, padding=1, bias=False),
                               nn.BatchNorm2d(64, eps=1e-05), nn.PReLU(64)]
    cin = 64
    for w, n in zip(_WIDTHS, _LAYERS[name], strict=True):
        layers.append(nn.Sequential(*[IBasicBlock(cin if j == 0 else w, w, 2 if j == 0 else 1) for j in range(n)]))
        cin = w
    trunk = nn.Sequential(*layers)
    side = halve(input_size, 4 + (stem_stride == 2))
    head = make_head("flatten", channels=512, feature_side=side, input_size=input_size,
                     embedding_size=embedding_size, dropout=dropout, owner=owner)
    net = EmbeddingNet(trunk, head)
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.1)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            nn.init.constant_(m.weight, 1)
            nn.init.constant_(m.bias, 0)
    head[-1].weight.requires_grad_(False)  # insightface: the embedding BN has a fixed unit scale
    if weights is not None:
        load_weights(net, weights, owner, rename=insightface_key)
    return net


@register_backbone("iresnet18", min_input_size=16, input_sizes=(64, 112))
def iresnet18(*, embedding_size: int, input_size: int, dropout: float = 0.0, stem_stride: int = 1,
              weights: str | None = None) -> nn.Module:
    """ArcFace IResNet-18 (insightface layout, BN-Dropout-FC-BN output)."""
    return _iresnet("iresnet18", embedding_size=embedding_size, input_size=input_size, dropout=dropout,
                    stem_stride=stem_stride, weights=weights)


@register_backbone("iresnet34", min_input_size=16, input_sizes=(64, 112))
def iresnet34(*, embedding_size: int, input_size: int, dropout: float = 0.0, stem_stride: int = 1,
              weights: str | None = None) -> nn.Module:
    """ArcFace IResNet-34 (insightface layout, BN-Dropout-FC-BN output)."""
    return _iresnet("iresnet34", embedding_size=embedding_size, input_size=input_size, dropout=dropout,
                    stem_stride=stem_stride, weights=weights)


@register_backbone("iresnet50", min_input_size=16, input_sizes=(64, 112))
def iresnet50(*, embedding_size: int, input_size: int, dropout: float = 0.0, stem_stride: int = 1,
              weights: str | None = None) -> nn.Module:
    """ArcFace IResNet-50 (insightface layout, BN-Dropout-FC-BN output)."""
    return _iresnet("iresnet50", embedding_size=embedding_size, input_size=input_size, dropout=dropout,
                    stem_stride=stem_stride, weights=weights)


@register_backbone("iresnet100", min_input_size=16, input_sizes=(112,))
def iresnet100(*, embedding_size: int, input_size: int, dropout: float = 0.0, stem_stride: int = 1,
              weights: str | None = None) -> nn.Module:
    """ArcFace IResNet-100 (insightface layout; GPU-sized)."""
    return _iresnet("iresnet100", embedding_size=embedding_size, input_size=input_size, dropout=dropout,
                    stem_stride=stem_stride, weights=weights)
