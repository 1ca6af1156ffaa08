"""A plain basic-block ResNet trunk with stride-2 convolutions instead of pooling.

Shared by the small fast ResNet (`resnet_small.py`) and the thesis ResNet21/13 (`thesis_resnet.py`),
which differ only in widths, depth per stage, activation and head.

Layout: stem = 3x3 conv (stride `stem_stride`) -> BN -> act; then one stage per width, each a stack of
basic blocks [3x3 conv -> BN -> act -> 3x3 conv -> BN, + shortcut, -> act]. The first block of every
stage after the first downsamples with a stride-2 3x3 convolution (its shortcut: 1x1 conv stride 2 ->
BN, computed as subsample + 1x1 conv, see `Subsample2`); there is no max-pool anywhere.
Total stride = stem_stride * 2**(stages - 1): 16 for the defaults, so 64 -> 4x4 and 112 -> 7x7 final maps.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fvtool.models.heads import activation, halve


def conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class Subsample2(nn.Module):
    """Every second row and column: with a 1x1 conv after it, the same as a 1x1 stride-2 conv.

    Why not `Conv2d(1, stride=2)`: oneDNN's CPU kernel for a channels_last 1x1 stride-2 convolution with
    fewer input channels than its block (16 with AVX-512) writes out of bounds in the weight gradient
    (uxlfoundation/oneDNN#6035; here: segfaults with 8 input channels and batch 3). Narrow `widths`
    options would hit it; subsampling first avoids that kernel at no measurable cost.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, :, ::2, ::2]


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, act: str) -> None:
        super().__init__()
        self.conv1 = conv3x3(cin, cout, stride)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act1 = activation(act, cout)
        self.conv2 = conv3x3(cout, cout)
        self.bn2 = nn.BatchNorm2d(cout)
        self.act2 = activation(act, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(Subsample2() if stride == 2 else nn.Identity(),
                                          nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.act2(y + self.shortcut(x))


def resnet_trunk(widths: tuple[int, ...], blocks: tuple[int, ...], *, act: str, stem_stride: int = 2,
                 downsample_first: bool = False) -> nn.Sequential:
    """Stem + stages; kaiming-normal convolutions (fan_out), BN weight 1 / bias 0, PReLU slopes 0.25.
    `downsample_first`: the first stage's first block also downsamples (with its 1x1 projection), so
    every stage starts with a reduction block (the thesis' ResNet21/13 as the source counts them)."""
    w0 = widths[0]
    layers: list[nn.Module] = [conv3x3(3, w0, stem_stride), nn.BatchNorm2d(w0), activation(act, w0)]
    cin = widths[0]
    for i, (w, n) in enumerate(zip(widths, blocks, strict=True)):
        stage = [BasicBlock(cin if j == 0 else w, w, 2 if ((i > 0 or downsample_first) and j == 0) else 1, act)
                 for j in range(n)]
        layers.append(nn.Sequential(*stage))
        cin = w
    trunk = nn.Sequential(*layers)
    for m in trunk.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return trunk


def trunk_feature_side(input_size: int, n_stages: int, stem_stride: int = 2, downsample_first: bool = False) -> int:
    return halve(input_size, (1 if stem_stride == 2 else 0) + n_stages - (0 if downsample_first else 1))
