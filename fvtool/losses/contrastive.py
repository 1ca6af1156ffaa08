"""Contrastive loss (Hadsell, Chopra & LeCun, "Dimensionality Reduction by Learning an Invariant
Mapping", CVPR 2006).

For a pair (x_1, x_2) with y = 1 when both show the same identity and y = 0 otherwise, and
d = ||f(x_1) - f(x_2)||_2:

    L = y * d^2 + (1 - y) * max(0, m - d)^2

Genuine pairs are pulled together; impostor pairs are pushed apart until they are at least the
margin m away, after which they stop contributing. `squared=False` gives the unsquared variant
y * d + (1 - y) * max(0, m - d) (pytorch-metric-learning's ContrastiveLoss with pos_margin=0).
Embeddings are L2-normalised by default (d in [0, 2]), so the default margin m = 1 sits between
"same" (d -> 0) and orthogonal (d = sqrt(2)).

Pairs come from the miner (default: every pair of the batch); per-pair terms are reduced with
`reduction` (default `balanced_active`: the mean over active positive pairs plus the mean over
active negative pairs, see fvtool.losses.metric_base).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.losses.base import LossOutput
from fvtool.losses.metric_base import (
    PAIR_REDUCTIONS,
    MetricLoss,
    euclidean_distances,
    l2_normalize,
    pair_stats,
    reduce_pair_terms,
    zero_loss,
)
from fvtool.losses.registry import register_loss
from fvtool.mining.base import Miner


@register_loss("contrastive", family="metric")  # default: every pair
class ContrastiveLoss(MetricLoss):
    """Hadsell et al. 2006: y d^2 + (1 - y) max(0, m - d)^2 over mined pairs"""

    def __init__(self, margin: float = 1.0, squared: bool = True, normalize: bool = True,
                 reduction: str = "balanced_active", miner: Miner | None = None) -> None:
        margin = optcheck.number("contrastive", "margin", margin, low=0.0, low_open=True)
        reduction = optcheck.choice("contrastive", "reduction", reduction, PAIR_REDUCTIONS)
        super().__init__("contrastive", miner, mining_margin=margin)
        self.margin = margin
        self.squared = bool(squared)
        self.normalize = bool(normalize)
        self.reduction = reduction

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        x = l2_normalize(embeddings, self.normalize)
        dist = euclidean_distances(x)
        pairs = self.mine_pairs(x, labels, dist)
        d_pos = dist[pairs.pos_a, pairs.pos_b]
        d_neg = dist[pairs.neg_a, pairs.neg_b]
        power = 2 if self.squared else 1
        pos = d_pos.pow(power)
        neg = F.relu(self.margin - d_neg).pow(power)
        stats = pair_stats(pos, neg, d_pos, d_neg)
        if pos.numel() + neg.numel() == 0:
            return LossOutput(zero_loss(embeddings), {"pos": 0.0, "neg": 0.0}, stats=stats)
        loss = reduce_pair_terms(pos, neg, self.reduction)
        comps = {"pos": float(pos.detach().mean()) if pos.numel() else 0.0,
                 "neg": float(neg.detach().mean()) if neg.numel() else 0.0}
        return LossOutput(loss, comps, stats=stats)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, squared={self.squared}, normalize={self.normalize}, reduction={self.reduction!r}"
