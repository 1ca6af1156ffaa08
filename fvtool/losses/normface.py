"""`normface`: normalised softmax (NormFace, Wang et al. 2017), a preset of `combined_margin` (1, 0, 0).

    logit_j = s * cos(theta_j) = s * (x / |x|) . (w_j / |w_j|),   L = cross_entropy(logits, y)

No margin; the fixed scale s matters because cosines in [-1, 1] cannot make a confident softmax
(NormFace's analysis: s must grow with the number of classes). Default s = AdaCos's sqrt(2) * ln(C - 1)
for C classes, like the margin losses, so a margin comparison changes only the margin.
"""

from __future__ import annotations

from fvtool.losses.combined_margin import CombinedMarginLoss
from fvtool.losses.registry import register_loss


@register_loss("normface", family="classification")
def normface(*, embedding_size: int, num_classes: int, scale: float | None = None) -> CombinedMarginLoss:
    """Normalised softmax (NormFace): s*cos(theta_j), normalised features and weights, s = sqrt(2) ln(C-1)."""
    return CombinedMarginLoss(embedding_size=embedding_size, num_classes=num_classes, scale=scale, m1=1.0,
                              m2=0.0, m3=0.0, owner="loss normface")
