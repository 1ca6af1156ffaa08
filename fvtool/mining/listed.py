"""The tuples a batch lists, read from its layout: no mining at all.

Why: the siamese method (fvtool/training/siamese.py) trains contrastive and triplet losses on
*listed* pairs and triplets (a pairs file, study 1's "paired into positive pairs / negative
pairs"), not on tuples mined from a P x K batch. Its samplers lay batches out as

    pairs     [left_1 .. left_B, right_1 .. right_B]           pair i = (i, B + i)
    triplets  [anchor_1 .. anchor_B, positive_1 .. positive_B, negative_1 .. negative_B]

and this object returns exactly those tuples to the loss, so ContrastiveLoss and TripletLoss keep
one formula each (fvtool/losses/contrastive.py, triplet.py). A pair is positive when its two labels
agree (a pairs file's `same` agrees with its identities: the protocol reader checks it). Not a
`--mining` choice: on a P x K batch these positions mean nothing.
"""

from __future__ import annotations

import torch

from fvtool.errors import InputError
from fvtool.mining.base import Miner, Pairs, Triplets


class ListedTuples(Miner):
    """Pairs (i, B + i) or triplets (i, B + i, 2B + i) of a batch laid out by the pair/triplet samplers."""

    name = "listed"

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        n = labels.numel()
        if n % 3:
            raise InputError(f"a triplet batch holds anchors, positives and negatives (3B images); got {n}")
        b = n // 3
        i = torch.arange(b, device=labels.device)
        return Triplets(i, i + b, i + 2 * b)

    def mine_pairs(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Pairs:
        n = labels.numel()
        if n % 2:
            raise InputError(f"a pair batch holds B left then B right images (2B images); got {n}")
        b = n // 2
        i = torch.arange(b, device=labels.device)
        same = labels[:b] == labels[b:]
        return Pairs(i[same], i[same] + b, i[~same], i[~same] + b)
