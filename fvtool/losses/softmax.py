"""`softmax`: softmax cross-entropy over a linear classifier (optional label smoothing).

    logits_j = w_j . x + b_j
    L = -(1/B) sum_i [ (1 - eps) log p_{i, y_i} + (eps / C) sum_j log p_{i, j} ],   p = softmax(logits)

eps = `label_smoothing` (0: plain cross-entropy; Szegedy et al. 2016 spread eps uniformly over all C
classes, torch's convention). The embedding x is the backbone output as is (not normalised).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.losses.base import LossOutput
from fvtool.losses.classification import ClassificationLoss
from fvtool.losses.registry import register_loss


@register_loss("softmax", family="classification")
class SoftmaxLoss(ClassificationLoss):
    """Softmax cross-entropy on a linear classifier (W x + b), optional label smoothing."""

    def __init__(self, *, embedding_size: int, num_classes: int, label_smoothing: float = 0.0,
                 bias: bool = True) -> None:
        super().__init__("loss softmax", embedding_size, num_classes)
        self.label_smoothing = optcheck.number(self.owner, "label_smoothing", label_smoothing, low=0.0, high=1.0,
                                               high_open=True)
        self.classifier = nn.Linear(self.embedding_size, self.num_classes, bias=bool(bias))

    def class_tables(self) -> dict[str, torch.Tensor]:
        tables = {"weight": self.classifier.weight}
        if self.classifier.bias is not None:
            tables["bias"] = self.classifier.bias
        return tables

    def scores(self, x: torch.Tensor, tables: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), tables["weight"], tables.get("bias"))

    def margin_logits(self, scores: torch.Tensor, target_col: torch.Tensor, score_y: torch.Tensor,
                      norms: torch.Tensor) -> torch.Tensor:
        return scores  # no margin

    def batch_stats(self, score_y: torch.Tensor) -> dict[str, float]:
        return {}

    def cross_entropy(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        """The loss for an already checked batch (center loss reuses it)."""
        with torch.autocast(embeddings.device.type, enabled=False):
            logits = self.scores(embeddings, self.class_tables())
            loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return LossOutput(loss=loss, components={"ce": float(loss.detach())}, logits=logits.detach())
