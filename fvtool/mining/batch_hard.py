"""Batch-hard mining (Hermans, Beyer & Leibe, "In Defense of the Triplet Loss", 2017).

For every anchor a of the batch: its hardest positive, argmax_{p: y_p = y_a, p != a} d(a, p),
and its hardest negative, argmin_{n: y_n != y_a} d(a, n); one triplet per anchor. Anchors with no
positive or no negative in the batch give no triplet. Ties go to the lowest index.
Same selection as pytorch-metric-learning's BatchHardMiner.
"""

from __future__ import annotations

import torch

from fvtool.mining.base import Miner, Triplets, label_masks
from fvtool.mining.registry import register_miner


@register_miner("batch-hard", aliases=("hard", "batchhard", "batch_hard"))
class BatchHardMiner(Miner):
    """per anchor: the farthest positive and the closest negative"""

    name = "batch-hard"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        pos, neg = label_masks(labels)
        keep = pos.any(1) & neg.any(1)
        p = dist.masked_fill(~pos, float("-inf")).argmax(1)
        n = dist.masked_fill(~neg, float("inf")).argmin(1)
        a = torch.arange(len(labels), device=dist.device)
        return Triplets(a[keep], p[keep], n[keep])
