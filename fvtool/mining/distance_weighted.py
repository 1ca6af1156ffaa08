"""Distance-weighted sampling (Wu, Manmatha, Smola & Krähenbühl, "Sampling Matters in Deep
Embedding Learning", ICCV 2017).

On the unit hypersphere in R^n, pairwise distances of random points follow

    q(d) ∝ d^(n-2) [1 - d^2/4]^((n-3)/2),

so uniform sampling yields mostly negatives at d ≈ sqrt(2), which carry no signal. Wu et al. draw,
for every anchor a and every positive p of a, one negative n with

    Pr(n | a) ∝ min(λ, q(d_an)^(-1)),

"clipping" the weight that explodes for nearby points. As in the authors' code (and
pytorch-metric-learning's DistanceWeightedMiner) the clip is applied to the distance: d is
clamped below at `cutoff` (0.5), and negatives at d >= `nonzero_loss_cutoff` (1.4), which cannot
give a non-zero margin loss, get weight 0. When every negative of an anchor has weight 0 the
negative is drawn uniformly, as in the authors' code (pytorch-metric-learning drops the anchor).

Distances are Euclidean between the L2-normalised embeddings (the miner normalises them itself;
the formula is only meaningful on the sphere), whatever the loss's own distance is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvtool.mining.base import Miner, Triplets, euclidean_distances, label_masks, positive_pairs
from fvtool.mining.registry import register_miner


def inverse_density_weights(d: torch.Tensor, dim: int, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4,
                            mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sampling weights q(d)^-1 with Wu et al.'s clipping, as float64, each row scaled by its maximum.

    log q(d)^-1 = (2 - n) log d - ((n - 3) / 2) log(1 - d^2 / 4), d clamped to [cutoff, 2).
    Only entries with d < nonzero_loss_cutoff (and `mask`, e.g. the negatives) get weight; each
    row is divided by its largest weight among them so exp never overflows or underflows
    (d^(2-n) is ~1e150 at d = 0.5 for n = 512). Rows are later normalised, so the scale is free.
    """
    d = d.detach().to(torch.float64).clamp(min=cutoff, max=2.0 - 1e-6)
    log_w = (2.0 - dim) * torch.log(d) - ((dim - 3) / 2.0) * torch.log(1.0 - 0.25 * d * d)
    valid = d < nonzero_loss_cutoff
    if mask is not None:
        valid = valid & mask
    log_w = log_w.masked_fill(~valid, float("-inf"))
    row_max = log_w.max(dim=-1, keepdim=True).values
    row_max = torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max))
    return torch.exp(log_w - row_max)


@register_miner("distance-weighted", aliases=("distance_weighted", "dw", "distance-weighted-sampling"))
class DistanceWeightedMiner(Miner):
    """Wu et al.: negatives drawn with weight ∝ inverse distance density on the hypersphere"""

    name = "distance-weighted"

    def __init__(self, cutoff: float = 0.5, nonzero_loss_cutoff: float = 1.4, seed: int = 0) -> None:
        super().__init__(seed)
        self.cutoff = float(cutoff)
        self.nonzero_loss_cutoff = float(nonzero_loss_cutoff)

    def negative_weights(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """[B, B] sampling weights of negatives per anchor (rows sum to 1 where any negative exists)."""
        x = F.normalize(embeddings.detach(), dim=1)
        d = euclidean_distances(x)
        _, neg = label_masks(labels)
        w = inverse_density_weights(d, x.shape[1], self.cutoff, self.nonzero_loss_cutoff, mask=neg)
        empty = w.sum(1, keepdim=True) == 0
        w = torch.where(empty, neg.to(w.dtype), w)  # uniform fallback
        return w / w.sum(1, keepdim=True).clamp_min(1e-300)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        w = self.negative_weights(embeddings, labels)
        a, p = positive_pairs(labels)
        keep = w[a].sum(1) > 0
        a, p = a[keep], p[keep]
        if a.numel() == 0:
            return Triplets(a, p, a.clone())
        return Triplets(a, p, self._sample(w[a]))

    def extra_repr(self) -> str:
        return f"cutoff={self.cutoff}, nonzero_loss_cutoff={self.nonzero_loss_cutoff}, seed={self.seed}"
