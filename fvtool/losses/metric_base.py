"""What the pair and triplet losses share: miner handling, distances, reductions, statistics.

Why a base class: every triplet/pair loss does the same bookkeeping (normalise, compute the
[B, B] distance matrix, ask its miner for tuples, reduce per-tuple terms, report how many tuples
were active), and only the per-tuple formula differs, so each loss module only writes its
formula (the pytorch-metric-learning design, without its reducer/distance object zoo).

Reductions of per-tuple terms (each loss documents its default):
  mean             sum of terms / number of terms (the papers' plain average)
  mean_active      sum of terms / number of non-zero terms (pytorch-metric-learning's
                   AvgNonZeroReducer; Hermans et al.'s "batch all != 0"; Wu et al.'s margin loss)
  balanced         mean over positive pairs + mean over negative pairs (pair losses), so the
                   many negatives of a P x K batch do not drown the few positives
  balanced_active  the same, each side averaged over its non-zero terms (pml's ContrastiveLoss)
Empty sides contribute 0. A batch with no tuple at all gives a zero loss that still depends on
the embeddings, so backward() works and the step is a no-op.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool.errors import InputError
from fvtool.mining.base import Miner, Pairs, Triplets, euclidean_distances, label_masks

TRIPLET_REDUCTIONS = ("mean", "mean_active")
PAIR_REDUCTIONS = ("mean", "mean_active", "balanced", "balanced_active")


def _mean(terms: torch.Tensor, active_only: bool) -> torch.Tensor:
    if terms.numel() == 0:
        return terms.new_zeros(())
    if active_only:
        n = (terms > 0).sum()
        return terms.sum() / n.clamp_min(1)
    return terms.mean()


def reduce_triplet_terms(terms: torch.Tensor, reduction: str) -> torch.Tensor:
    """`reduction` is one of TRIPLET_REDUCTIONS (checked when the loss is built)."""
    return _mean(terms, reduction == "mean_active")


def reduce_pair_terms(pos: torch.Tensor, neg: torch.Tensor, reduction: str) -> torch.Tensor:
    """`reduction` is one of PAIR_REDUCTIONS (checked when the loss is built)."""
    if reduction.startswith("balanced"):
        active = reduction == "balanced_active"
        return _mean(pos, active) + _mean(neg, active)
    return _mean(torch.cat([pos, neg]), reduction == "mean_active")


def zero_loss(embeddings: torch.Tensor) -> torch.Tensor:
    """A zero that keeps the graph, so an empty batch of tuples still back-propagates (to zero)."""
    return embeddings.sum() * 0.0


def active_fraction(*terms: torch.Tensor) -> float:
    n = sum(int(t.numel()) for t in terms)
    if n == 0:
        return 0.0
    return float(sum(int((t > 0).sum()) for t in terms)) / n


def pair_stats(pos_terms: torch.Tensor, neg_terms: torch.Tensor, d_pos: torch.Tensor,
               d_neg: torch.Tensor) -> dict[str, float]:
    """Statistics the engine logs and the collapse monitor reads (undefined means are left out,
    not NaN, so they cannot poison the engine's per-epoch averages)."""
    stats = {
        "n_pairs": float(pos_terms.numel() + neg_terms.numel()),
        "n_pos_pairs": float(pos_terms.numel()),
        "n_neg_pairs": float(neg_terms.numel()),
        "active_fraction": active_fraction(pos_terms, neg_terms),
    }
    if d_pos.numel():
        stats["pos_distance"] = float(d_pos.detach().mean())
    if d_neg.numel():
        stats["neg_distance"] = float(d_neg.detach().mean())
    return stats


class MetricLoss(nn.Module):
    """Base for losses over pairs/triplets of a labelled batch, with a swappable miner.

    `owner` names the loss in error messages. `miner` is a Miner object (fvtool.mining; built by
    `fvtool.losses.registry.build_loss` from a name such as `hard` or `semihard`, or the loss's
    `default_miner`), or None for every pair of the batch (pair losses only).
    `mining_margin` is the margin in the loss's distance units, which the semi-hard miner needs.
    """

    #: the paper's sampling, built by `build_loss` when no miner is given (None: every pair of the batch)
    default_miner: str | None = None

    def __init__(self, owner: str, miner: Miner | None = None, mining_margin: float | None = None) -> None:
        super().__init__()
        self.owner = owner
        self.miner = miner
        if miner is not None and miner.margin is None and mining_margin is not None:
            miner.margin = float(mining_margin)
        if miner is not None and miner.needs_margin and miner.margin is None:
            raise InputError(f"the {miner.name} miner needs a margin in the distance units of the loss, "
                             f"and {type(self).__name__} has none; choose another miner")

    @staticmethod
    def check_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2:
            raise InputError(f"metric losses take [B, D] embeddings, got shape {tuple(embeddings.shape)}")
        labels = labels.reshape(-1)
        if labels.numel() != embeddings.shape[0]:
            raise InputError(f"{labels.numel()} labels for {embeddings.shape[0]} embeddings")
        return labels.to(embeddings.device)

    def mine_triplets(self, x: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        if self.miner is None:
            raise InputError(f"{self.owner}: a triplet loss needs a miner (e.g. batch-all: every triplet)")
        return self.miner(x.detach(), labels, dist.detach())

    def mine_pairs(self, x: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Pairs:
        if self.miner is None:
            pos, neg = label_masks(labels)
            pa, pb = torch.nonzero(pos, as_tuple=True)
            na, nb = torch.nonzero(neg, as_tuple=True)
            return Pairs(pa, pb, na, nb)
        return self.miner.mine_pairs(x.detach(), labels, dist.detach())


def l2_normalize(x: torch.Tensor, enabled: bool = True) -> torch.Tensor:
    return F.normalize(x, dim=1) if enabled else x


__all__ = [
    "PAIR_REDUCTIONS", "TRIPLET_REDUCTIONS", "MetricLoss", "active_fraction", "euclidean_distances",
    "l2_normalize", "pair_stats", "reduce_pair_terms", "reduce_triplet_terms", "zero_loss",
]
