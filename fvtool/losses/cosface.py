"""`cosface`: additive cosine margin, CosFace / AM-Softmax (Wang et al. 2018), a preset of `combined_margin` (1, 0, m).

    logit_y = s * (cos(theta_y) - m),   logit_j = s * cos(theta_j) (j != y),   L = cross_entropy(logits, y)

x and w_j are L2-normalised. Defaults m = 0.35 (CosFace paper; AM-Softmax used s = 30, m = 0.35)
and s = AdaCos's sqrt(2) * ln(C - 1) for C classes (the paper's s = 64 suits 10k+ identities only).
The logit is monotonic in theta, so no safeguard is needed.
"""

from __future__ import annotations

from fvtool import optcheck
from fvtool.losses.combined_margin import CombinedMarginLoss
from fvtool.losses.registry import register_loss


@register_loss("cosface", family="classification")
def cosface(*, embedding_size: int, num_classes: int, margin: float = 0.35, scale: float | None = None
            ) -> CombinedMarginLoss:
    """CosFace / AM-Softmax: s*(cos(theta_y) - m), default m = 0.35, s = sqrt(2) ln(C-1)."""
    margin = optcheck.number("loss cosface", "margin", margin, low=0.0)
    return CombinedMarginLoss(embedding_size=embedding_size, num_classes=num_classes, scale=scale, m1=1.0,
                              m2=0.0, m3=margin, owner="loss cosface")
