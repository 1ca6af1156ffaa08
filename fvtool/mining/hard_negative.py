"""Hard-negative mining: every positive pair with the hardest negative of its anchor.

For every ordered positive pair (a, p), a != p, the negative closest to the anchor,
argmin_{n: y_n != y_a} d(a, n) (FaceNet's "hard negative"; unlike batch-hard, all positives are
kept, not only the hardest). Ties go to the lowest index.
"""

from __future__ import annotations

import torch

from fvtool.mining.base import Miner, Triplets, label_masks, positive_pairs
from fvtool.mining.registry import register_miner


@register_miner("hard-negative", aliases=("hardneg", "hard_negative", "hardest-negative"))
class HardNegativeMiner(Miner):
    """every positive pair with its anchor's closest negative"""

    name = "hard-negative"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        _, neg = label_masks(labels)
        hardest = dist.masked_fill(~neg, float("inf")).argmin(1)
        a, p = positive_pairs(labels)
        keep = neg[a].any(1)
        a, p = a[keep], p[keep]
        return Triplets(a, p, hardest[a])
