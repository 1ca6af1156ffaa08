"""Random mining: every positive pair with one negative drawn uniformly at random.

The baseline the studies compare smarter miners against (FaceNet's "random" triplets): for
every ordered positive pair (a, p), a != p, one negative n with label(n) != label(a), drawn
uniformly from the batch with the miner's seeded generator. Anchors without any negative in the
batch give no triplet.
"""

from __future__ import annotations

import torch

from fvtool.mining.base import Miner, Triplets, label_masks, positive_pairs
from fvtool.mining.registry import register_miner


@register_miner("random")
class RandomMiner(Miner):
    """every positive pair with one uniformly random negative"""

    name = "random"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        _, neg = label_masks(labels)
        a, p = positive_pairs(labels)
        keep = neg[a].any(1)
        a, p = a[keep], p[keep]
        if a.numel() == 0:
            return Triplets(a, p, a.clone())
        n = self._sample(neg[a].to(torch.float64))
        return Triplets(a, p, n)
