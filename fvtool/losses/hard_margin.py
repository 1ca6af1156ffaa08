"""Hard-margin loss: a smooth variant of Wu et al.'s margin loss proposed in a face-verification study.

For a pair (i, j) of L2-normalised embeddings at Euclidean distance D_ij, y_ij = +1 (same
identity) / -1 (different):

    l(i, j) = log(1 + [alpha + y_ij (D_ij - beta)]_+)

Same pairs, learnable beta, distance-weighted sampling and reduction as the margin loss
(fvtool.losses.margin); only the per-pair penalty differs: the log compresses the loss of the
hardest pairs, so a few mislabelled or extreme pairs cannot dominate the batch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvtool.losses.margin import MarginLoss
from fvtool.losses.registry import register_loss


@register_loss("hard-margin", family="metric")
class HardMarginLoss(MarginLoss):
    """log(1 + [alpha + y (D - beta)]_+) with learnable beta, distance-weighted sampling"""

    loss_name = "hard-margin"

    @staticmethod
    def pair_term(z: torch.Tensor) -> torch.Tensor:
        return torch.log1p(F.relu(z))
