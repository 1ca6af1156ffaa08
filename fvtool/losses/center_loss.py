"""`center`: softmax cross-entropy plus center loss (Wen et al. 2016), with its own center learning rate.

    L = CE(W x + b, y) + lambda * L_C,     L_C = (1/B) sum_i 1/2 |x_i - c_{y_i}|^2

(the paper's sums over the batch, divided by B like the cross-entropy). lambda = `center_weight`
(paper: 0.003). The centers c_j [num_classes, D] start at zero and are a separate parameter group
(`param_groups`: lr = `center_lr` (the paper's alpha, 0.5), no weight decay, no momentum; the
engine's lr schedule scales it like every group).
Their gradient is the paper's update direction, not dL/dc:

    dc_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j)        (Wen et al. eq. 4, n_j = batch count of class j)

so plain SGD with lr alpha reproduces c_j <- c_j - alpha * dc_j exactly, independent of lambda and B.
(Implemented as the value-free term L_c - stopgrad(L_c); the reported loss is the formula above.)
Embeddings get the true gradient lambda (x_i - c_{y_i}) / B. Options of `softmax` (label_smoothing)
apply to the cross-entropy part.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fvtool import optcheck
from fvtool.losses.base import LossOutput
from fvtool.losses.classification import ClassificationLoss
from fvtool.losses.registry import register_loss
from fvtool.losses.softmax import SoftmaxLoss


@register_loss("center", family="classification")
class CenterLoss(ClassificationLoss):
    """Softmax + center loss (Wen et al. 2016): weight lambda = 0.003, center lr alpha = 0.5."""

    shardable = False  # the centres are a second class table with their own update rule

    def __init__(self, *, embedding_size: int, num_classes: int, center_weight: float = 0.003,
                 center_lr: float = 0.5, label_smoothing: float = 0.0) -> None:
        super().__init__("loss center", embedding_size, num_classes)
        self.center_weight = optcheck.number(self.owner, "center_weight", center_weight, low=0.0)
        self.center_lr = optcheck.number(self.owner, "center_lr", center_lr, low=0.0)
        self.softmax = SoftmaxLoss(embedding_size=embedding_size, num_classes=num_classes,
                                   label_smoothing=label_smoothing)
        self.centers = nn.Parameter(torch.zeros(self.num_classes, self.embedding_size))

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        ce = self.softmax.cross_entropy(embeddings, labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.float()
            c = self.centers[labels]
            center = 0.5 * (x - c.detach()).square().sum(1).mean()
            counts = torch.bincount(labels, minlength=self.num_classes)[labels].to(x.dtype)
            for_centers = (0.5 * (x.detach() - c).square().sum(1) / (1.0 + counts)).sum()
            loss = ce.loss + self.center_weight * center + (for_centers - for_centers.detach())
        return LossOutput(loss=loss, components={"ce": ce.components["ce"], "center": float(center.detach())},
                          logits=ce.logits)

    def param_groups(self, weight_decay: float) -> list[dict[str, object]]:
        """The centers at `center_lr`, no weight decay, no momentum; the classifier is optimised like the
        backbone (see the hook described in fvtool/losses/base.py). `weight_decay` is not used."""
        return [{"params": [self.centers], "lr": self.center_lr, "weight_decay": 0.0, "momentum": 0.0,
                 "name": "centers"}]
