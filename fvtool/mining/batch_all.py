"""Batch-all mining (Hermans et al. 2017): every valid triplet, every pair.

Triplets: all (a, p, n) with y_a = y_p, a != p, y_n != y_a (B * (K - 1) * (B - K) for a P x K
batch). Pairs (for pair losses): every ordered positive pair and every ordered negative pair of
the batch, rather than one pair of each kind per triplet, so "all" means all pairs.
Inactive tuples (zero loss) are kept; the losses' `mean_active` reduction averages over the
active ones only, which is Hermans et al.'s "BA != 0" variant.
"""

from __future__ import annotations

import torch

from fvtool.mining.base import Miner, Pairs, Triplets, label_masks
from fvtool.mining.registry import register_miner


@register_miner("batch-all", aliases=("all", "batchall", "batch_all"))
class BatchAllMiner(Miner):
    """every valid triplet / every pair of the batch"""

    name = "batch-all"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        pos, neg = label_masks(labels)
        a, p, n = torch.nonzero(pos[:, :, None] & neg[:, None, :], as_tuple=True)
        return Triplets(a, p, n)

    def mine_pairs(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Pairs:
        pos, neg = label_masks(labels)
        pa, pb = torch.nonzero(pos, as_tuple=True)
        na, nb = torch.nonzero(neg, as_tuple=True)
        return Pairs(pa, pb, na, nb)
