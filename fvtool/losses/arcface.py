"""`arcface`: additive angular margin (Deng et al. 2019), a preset of `combined_margin` (1, m, 0).

    logit_y = s * cos(theta_y + m),   logit_j = s * cos(theta_j) (j != y),   L = cross_entropy(logits, y)

x and w_j are L2-normalised. `margin` m is in radians (pytorch-metric-learning's ArcFaceLoss takes
degrees: its default 28.6 degrees = 0.499 rad). Defaults m = 0.5 (the paper's) and s = AdaCos's
sqrt(2) * ln(C - 1) for C classes (the paper's s = 64 suits 10k+ identities only; see combined_margin.py).
Safeguard past theta_y > pi - m: logit_y = s * (cos(theta_y) - m sin m) (insightface "th-mm";
`fallback="easy"` applies the margin only where cos(theta_y) > 0). See combined_margin.py.
"""

from __future__ import annotations

import math

from fvtool import optcheck
from fvtool.losses.combined_margin import CombinedMarginLoss
from fvtool.losses.registry import register_loss


@register_loss("arcface", family="classification")
def arcface(*, embedding_size: int, num_classes: int, margin: float = 0.5, scale: float | None = None,
            fallback: str = "th-mm") -> CombinedMarginLoss:
    """ArcFace: s*cos(theta_y + m), m in radians (default 0.5), s = sqrt(2) ln(C-1), th-mm safeguard near pi."""
    margin = optcheck.number("loss arcface", "margin", margin, low=0.0, high=math.pi, high_open=True)
    return CombinedMarginLoss(embedding_size=embedding_size, num_classes=num_classes, scale=scale, m1=1.0,
                              m2=margin, m3=0.0, fallback=fallback, owner="loss arcface")
