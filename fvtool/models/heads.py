"""Embedding heads: last feature map [B, C, h, w] -> embedding [B, D], shared by the ResNet families.

Why a separate module: the studies fvtool follows differ mostly in how the feature map becomes an
embedding, not in the residual trunk. Four heads cover them:

- ``pool``    global average pool -> dropout -> FC(C -> D, no bias) -> BN1d.  Size-agnostic (any
              input size the trunk takes); the torchvision and small-ResNet default.
- ``flatten`` BN2d -> dropout -> flatten -> FC(C*h*w -> D) -> BN1d.  The insightface IResNet output
              block: the FC sees *where* a feature fires, which matters for aligned faces.
- ``fc2``     flatten -> FC(C*h*w -> hidden) -> BN1d -> activation -> dropout -> FC(hidden -> D) -> BN1d.
              "The average pool replaced by two fully connected layers (with dropout)": the thesis
              ResNet21/13 and the ResNet18-FC2 variant.
- ``avgpool`` global average pool -> flatten, nothing after: the embedding *is* the C pooled channels
              (embedding_size must equal C, e.g. 512 for ResNet18). A classifier trained on top of a
              torchvision ResNet and then removed leaves exactly this ("Apply global average pooling
              (avgpool) ... Flatten ... Return the flattened tensor", study 2's embedding extractor).

The learned heads end with BN1d (no ReLU), as in insightface/facenet: a zero-centred, unit-scale
vector is a good input for both softmax and cosine-based losses. Flattening heads are built for
one feature-map size; a batch of another size raises an `InputError` naming the expected input.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fvtool import optcheck
from fvtool.errors import InputError

HEADS = ("pool", "flatten", "fc2", "avgpool")


def halve(side: int, times: int) -> int:
    """Side after `times` stride-2 layers with 'same' padding (3x3 pad 1, 7x7 pad 3, 3x3 max-pool pad 1)."""
    for _ in range(times):
        side = (side + 1) // 2
    return side


def activation(kind: str, channels: int) -> nn.Module:
    """ReLU or PReLU with one slope per channel (SphereFace/insightface use per-channel PReLU)."""
    return nn.PReLU(channels) if kind == "prelu" else nn.ReLU(inplace=True)


class _FixedSize(nn.Module):
    """Refuses feature maps of the wrong size with a message about the input size, not a matmul shape."""

    def __init__(self, feature_side: int, input_size: int) -> None:
        super().__init__()
        self.feature_side = feature_side
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.feature_side or x.shape[-2] != self.feature_side:
            raise InputError(
                f"this backbone was built for {self.input_size}x{self.input_size} inputs (feature map "
                f"{self.feature_side}x{self.feature_side}) but got a feature map {tuple(x.shape[-2:])}; "
                "embed with the input size the model was trained at"
            )
        return x.flatten(1)

    def extra_repr(self) -> str:
        return f"feature_side={self.feature_side}, input_size={self.input_size}"


def make_head(kind: str, *, channels: int, feature_side: int, input_size: int, embedding_size: int,
              dropout: float = 0.0, hidden: int = 512, act: str = "relu", owner: str = "backbone") -> nn.Sequential:
    """Build head `kind` for a [B, channels, feature_side, feature_side] map."""
    optcheck.choice(owner, "head", kind, HEADS)
    p = optcheck.number(owner, "dropout", dropout, low=0.0, high=1.0, high_open=True)
    if kind == "avgpool":
        if embedding_size != channels:
            raise InputError(f"{owner}: head=avgpool has no layer after the pool, so the embedding has the trunk's "
                             f"{channels} channels; set --embedding-size {channels} (got {embedding_size})")
        if p:
            raise InputError(f"{owner}: head=avgpool has no layer for dropout to act on; drop dropout={dropout}")
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    if kind == "pool":
        return nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Dropout(p),
            nn.Linear(channels, embedding_size, bias=False), nn.BatchNorm1d(embedding_size),
        )
    flat = channels * feature_side * feature_side
    if kind == "flatten":
        return nn.Sequential(
            nn.BatchNorm2d(channels), nn.Dropout(p), _FixedSize(feature_side, input_size),
            nn.Linear(flat, embedding_size), nn.BatchNorm1d(embedding_size),
        )
    hidden = optcheck.integer(owner, "fc_hidden", hidden, low=1)
    return nn.Sequential(
        _FixedSize(feature_side, input_size),
        nn.Linear(flat, hidden, bias=False), nn.BatchNorm1d(hidden), activation(act, hidden), nn.Dropout(p),
        nn.Linear(hidden, embedding_size, bias=False), nn.BatchNorm1d(embedding_size),
    )


class EmbeddingNet(nn.Module):
    """trunk (image -> feature map) followed by a head (feature map -> embedding)."""

    def __init__(self, trunk: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.trunk = trunk
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.trunk(x))
