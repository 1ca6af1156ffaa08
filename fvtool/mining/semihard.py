"""Semi-hard mining (Schroff et al., FaceNet, 2015).

FaceNet's definition: for an anchor-positive pair (a, p), a negative n is *semi-hard* when it is
farther from the anchor than the positive but still inside the margin,

    d(a, p) < d(a, n) < d(a, p) + alpha,

with d the loss's distance (squared L2 on normalised embeddings for FaceNet's triplet loss) and
alpha the loss's margin. Such triplets still have a positive loss but avoid the hardest
negatives, which "can lead to bad local minima early on in training ... a collapsed model".

Every anchor-positive pair of the batch is used (FaceNet: "we use all anchor-positive pairs");
`select` says which of its semi-hard negatives are kept:
  random   one, uniformly at random (seeded)                       [default]
  hardest  the closest one (TensorFlow's triplet_semihard_loss without its fallback)
  all      all of them (pytorch-metric-learning's TripletMarginMiner(type_of_triplets="semihard"))
Pairs with no semi-hard negative give no triplet.
"""

from __future__ import annotations

import torch

from fvtool.errors import InputError
from fvtool.mining.base import Miner, Triplets, label_masks, positive_pairs
from fvtool.mining.registry import register_miner

SELECT = ("random", "hardest", "all")


@register_miner("semihard", aliases=("semi-hard",))
class SemiHardMiner(Miner):
    """FaceNet semi-hard negatives: d(a,p) < d(a,n) < d(a,p) + margin"""

    name = "semihard"
    needs_margin = True

    def __init__(self, margin: float | None = None, select: str = "random", seed: int = 0) -> None:
        super().__init__(seed)
        if select not in SELECT:
            raise InputError(f"semihard miner: select must be one of {', '.join(SELECT)}, not {select!r}")
        self.margin = None if margin is None else float(margin)
        self.select = select

    def semihard_mask(self, labels: torch.Tensor, dist: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                                                torch.Tensor]:
        """(a, p, mask[len(a), B]): mask[i, n] is True when n is a semi-hard negative of (a[i], p[i])."""
        if self.margin is None:
            raise InputError("semihard miner needs a margin (set it, or use it with a loss that has one)")
        _, neg = label_masks(labels)
        a, p = positive_pairs(labels)
        d_ap = dist[a, p][:, None]
        d_an = dist[a]
        mask = neg[a] & (d_an > d_ap) & (d_an < d_ap + self.margin)
        return a, p, mask

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        a, p, mask = self.semihard_mask(labels, dist)
        if self.select == "all":
            i, n = torch.nonzero(mask, as_tuple=True)
            return Triplets(a[i], p[i], n)
        keep = mask.any(1)
        a, p, mask = a[keep], p[keep], mask[keep]
        if a.numel() == 0:
            return Triplets(a, p, a.clone())
        if self.select == "hardest":
            n = dist[a].masked_fill(~mask, float("inf")).argmin(1)
        else:
            n = self._sample(mask.to(torch.float64))
        return Triplets(a, p, n)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, select={self.select!r}, seed={self.seed}"
