"""Triplet loss (Schroff, Kalenichenko & Philbin, "FaceNet", CVPR 2015).

For a triplet (anchor a, positive p of the same identity, negative n of another identity) of
L2-normalised embeddings f (||f|| = 1):

    L = max(0, ||f(a) - f(p)||^2 - ||f(a) - f(n)||^2 + alpha)

alpha (`margin`, FaceNet: 0.2) is enforced between the squared distances. `squared=False` uses
plain L2 distances instead (pytorch-metric-learning's TripletMarginLoss convention).
Triplets come from the miner; the default is FaceNet's semi-hard mining (`--mining semihard`);
any miner of fvtool.mining works (`hard` = batch-hard, `all`, `random`, `hard-negative`,
`distance-weighted`). Reduction: `mean_active` (default; the mean over triplets with non-zero
loss, Hermans et al.'s "!= 0" and pml's default) or `mean` (FaceNet's plain average).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.losses.base import LossOutput
from fvtool.losses.metric_base import (
    TRIPLET_REDUCTIONS,
    MetricLoss,
    active_fraction,
    euclidean_distances,
    l2_normalize,
    reduce_triplet_terms,
    zero_loss,
)
from fvtool.losses.registry import register_loss
from fvtool.mining.base import Miner


@register_loss("triplet", family="metric")
class TripletLoss(MetricLoss):
    """FaceNet 2015: max(0, d(a,p)^2 - d(a,n)^2 + alpha) on L2-normalised embeddings"""

    default_miner = "semihard"

    def __init__(self, *, miner: Miner, margin: float = 0.2, squared: bool = True, normalize: bool = True,
                 reduction: str = "mean_active") -> None:
        margin = optcheck.number("triplet", "margin", margin, low=0.0)
        reduction = optcheck.choice("triplet", "reduction", reduction, TRIPLET_REDUCTIONS)
        super().__init__("triplet", miner, mining_margin=margin)
        self.reduction = reduction
        self.margin = margin
        self.squared = bool(squared)
        self.normalize = bool(normalize)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        x = l2_normalize(embeddings, self.normalize)
        dist = euclidean_distances(x, squared=self.squared)
        t = self.mine_triplets(x, labels, dist)
        d_ap = dist[t.anchor, t.positive]
        d_an = dist[t.anchor, t.negative]
        terms = F.relu(d_ap - d_an + self.margin)
        stats = {"n_triplets": float(len(t)), "active_fraction": active_fraction(terms)}
        if len(t) == 0:
            return LossOutput(zero_loss(embeddings), {"triplet": 0.0}, stats=stats)
        stats["pos_distance"] = float(d_ap.detach().mean())  # in the loss's units (squared by default)
        stats["neg_distance"] = float(d_an.detach().mean())
        loss = reduce_triplet_terms(terms, self.reduction)
        return LossOutput(loss, {"triplet": float(loss.detach())}, stats=stats)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, squared={self.squared}, normalize={self.normalize}, reduction={self.reduction!r}"
