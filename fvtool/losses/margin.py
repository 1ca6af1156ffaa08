"""Margin loss with distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl, "Sampling
Matters in Deep Embedding Learning", ICCV 2017).

For a pair (i, j) of L2-normalised embeddings at Euclidean distance D_ij, with y_ij = +1 for the
same identity and -1 otherwise:

    l_margin(i, j) = [alpha + y_ij (D_ij - beta)]_+

beta is the learnable boundary between genuine (D < beta - alpha) and impostor (D > beta + alpha)
pairs; alpha (`margin`, 0.2) is half the separation. beta starts at `beta` (1.2) and is a
parameter trained with the network (`learn_beta`); with `class_specific_beta` there is one beta
per training identity (beta_class(i) of the anchor; needs `num_classes`). The paper regularises
beta with nu: the loss adds nu * beta (the mean beta of the pairs when class-specific).

Pairs come from triplets (anchor, positive, negative): one positive pair (a, p) and one negative
pair (a, n) each. The default sampling is the paper's distance-weighted sampling
(fvtool.mining.distance_weighted); any miner works. The reduction follows the authors' code
(and pml's MarginLoss): the sum of terms over the number of non-zero terms (`mean_active`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.metric_base import (
    PAIR_REDUCTIONS,
    MetricLoss,
    euclidean_distances,
    pair_stats,
    reduce_pair_terms,
    zero_loss,
)
from fvtool.losses.registry import register_loss
from fvtool.mining.base import Miner


@register_loss("margin", family="metric")
class MarginLoss(MetricLoss):
    """Wu et al. 2017: [alpha + y (D - beta)]_+ with learnable beta, distance-weighted sampling"""

    default_miner = "distance-weighted"

    def __init__(self, margin: float = 0.2, beta: float = 1.2, learn_beta: bool = True,
                 class_specific_beta: bool = False, nu: float = 0.0, reduction: str = "mean_active",
                 miner: Miner | None = None, num_classes: int | None = None) -> None:
        owner = self.loss_name
        margin = optcheck.number(owner, "margin", margin, low=0.0)
        beta = optcheck.number(owner, "beta", beta)
        nu = optcheck.number(owner, "nu", nu, low=0.0)
        reduction = optcheck.choice(owner, "reduction", reduction, PAIR_REDUCTIONS)
        if class_specific_beta and not num_classes:
            raise InputError(f"{owner}: class_specific_beta needs num_classes "
                             "(the number of training identities)")
        super().__init__(owner, miner, mining_margin=margin)
        self.margin = margin
        self.nu = nu
        self.reduction = reduction
        init = torch.full((int(num_classes) if class_specific_beta else 1,), float(beta))
        self.beta = nn.Parameter(init, requires_grad=bool(learn_beta))

    loss_name = "margin"

    @staticmethod
    def pair_term(z: torch.Tensor) -> torch.Tensor:
        """The per-pair penalty of z = alpha + y (D - beta): the hinge [z]_+."""
        return F.relu(z)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        x = F.normalize(embeddings, dim=1)
        dist = euclidean_distances(x)
        pairs = self.mine_pairs(x, labels, dist)
        if len(self.beta) > 1:
            if int(labels.max()) >= len(self.beta) or int(labels.min()) < 0:
                raise InputError(f"{self.loss_name}: label {int(labels.max())} outside the {len(self.beta)} "
                                 "class-specific betas (num_classes)")
            beta_pos, beta_neg = self.beta[labels[pairs.pos_a]], self.beta[labels[pairs.neg_a]]
        else:
            beta_pos = self.beta.expand(pairs.n_pos)
            beta_neg = self.beta.expand(pairs.n_neg)
        d_pos = dist[pairs.pos_a, pairs.pos_b]
        d_neg = dist[pairs.neg_a, pairs.neg_b]
        pos = self.pair_term(self.margin + (d_pos - beta_pos))
        neg = self.pair_term(self.margin - (d_neg - beta_neg))
        stats = pair_stats(pos, neg, d_pos, d_neg)
        stats["beta"] = float(self.beta.detach().mean())
        if pos.numel() + neg.numel() == 0:
            return LossOutput(zero_loss(embeddings) + 0.0 * self.beta.sum(), {self.loss_name: 0.0}, stats=stats)
        loss = reduce_pair_terms(pos, neg, self.reduction)
        comps = {self.loss_name: float(loss.detach())}
        if self.nu > 0:
            reg = self.nu * torch.cat([beta_pos, beta_neg]).mean()
            comps["beta_reg"] = float(reg.detach())
            loss = loss + reg
        return LossOutput(loss, comps, stats=stats)

    def extra_repr(self) -> str:
        return (f"margin={self.margin}, beta_init={float(self.beta.detach()[0]):.3f}, n_beta={len(self.beta)}, "
                f"learn_beta={self.beta.requires_grad}, nu={self.nu}, reduction={self.reduction!r}")
