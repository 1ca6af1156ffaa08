"""What the classification-family losses share: a class-weight matrix, batch checks, cosine logits.

Why a base class: softmax, SphereFace, the additive-margin family and center loss all score an
embedding against one weight vector per training identity; only how the target logit is formed
differs, so each loss module writes just that formula (its docstring) and nothing else.

Conventions (all classification losses):
- the class weights are `weight` with the `nn.Linear` layout [num_classes, embedding_size]
  (pytorch-metric-learning stores the transpose, [embedding_size, num_classes]);
- the angular terms are computed in float32 with autocast off, whatever the engine's autocast:
  acos/cos of bf16 cosines near +-1 are too coarse for a 0.5-radian margin;
- `forward(embeddings, labels)` returns a `LossOutput` whose `logits` are the margin-free class scores
  (for train accuracy) and whose components are the parts of the loss, as floats.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.errors import InputError

#: cosines are clamped this far inside [-1, 1] before acos, so d acos / d cos stays finite
ACOS_EPS = 1e-7


class ClassificationLoss(nn.Module):
    """Base: checks sizes once at build time and every batch's shapes and label range."""

    def __init__(self, owner: str, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.owner = owner
        self.embedding_size = optcheck.integer(owner, "embedding_size", embedding_size, low=1)
        self.num_classes = optcheck.integer(owner, "num_classes", num_classes, low=2)

    def check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise InputError(f"{self.owner}: expected [B, {self.embedding_size}] embeddings, "
                             f"got shape {tuple(embeddings.shape)}")
        labels = labels.reshape(-1)
        if labels.numel() != embeddings.shape[0]:
            raise InputError(f"{self.owner}: {labels.numel()} labels for {embeddings.shape[0]} embeddings")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise InputError(f"{self.owner}: labels must be integer class indices, got {labels.dtype}")
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise InputError(f"{self.owner}: labels must lie in [0, {self.num_classes}) "
                                 f"(num_classes={self.num_classes}), got values in [{lo}, {hi}]")
        return labels.to(device=embeddings.device, dtype=torch.long)


def init_class_weights(num_classes: int, embedding_size: int) -> nn.Parameter:
    """N(0, 0.01) class weights, insightface's initialisation for its margin heads."""
    return nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[B, C] cos(theta_j) between each embedding and each class weight, float32, autocast off."""
    with torch.autocast(embeddings.device.type, enabled=False):
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(weight.float(), dim=1))


def target_angles(cos_target: torch.Tensor) -> torch.Tensor:
    """theta_y = acos(cos_y), with cos clamped ACOS_EPS inside [-1, 1]."""
    return torch.acos(cos_target.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS))


def angle_stats(cos_target: torch.Tensor) -> dict[str, float]:
    """Mean angle (degrees) between embeddings and their own class weight: falls as the classes separate."""
    with torch.no_grad():
        return {"target_angle_deg": float(torch.rad2deg(target_angles(cos_target.detach())).mean())}
