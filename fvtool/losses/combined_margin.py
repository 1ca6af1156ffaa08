"""`combined_margin`: the insightface combined angular margin (m1, m2, m3); ArcFace, CosFace, NormFace are presets.

With x and the class weights w_j L2-normalised, cos(theta_j) = x.w_j / (|x| |w_j|) and

    logit_j = s * cos(theta_j)                          for j != y
    logit_y = s * psi(theta_y),   psi(theta) = cos(m1 * theta + m2) - m3
    L = cross_entropy(logits, y)

`notation="source"` takes study 3's s * (cos(theta + m1) + m2) instead (see the factory).

Presets: NormFace (1, 0, 0), CosFace/AM-Softmax (1, 0, m3), ArcFace (1, m2, 0); m1 > 1 is the
multiplicative (SphereFace-like) margin in this normalised-feature form, *without* SphereFace's
piecewise (-1)^k trick (see `sphereface` for the original A-Softmax).

Safeguard (`fallback`): psi is decreasing only while m1*theta + m2 <= pi, i.e. theta <= theta_max =
(pi - m2) / m1; past it cos(m1 theta + m2) rises again and a *wrong* class assignment would be
rewarded (for ArcFace m2 = 0.5 this is theta > 151 degrees, reached early in training).
- "th-mm" (default; insightface ArcFace and pytorch-metric-learning): for theta > theta_max use
      psi(theta) = cos(theta) - m3 - mm,   mm = ((m1 - 1) * theta_max + m2) * sin(theta_max)
  i.e. the first-order margin penalty at theta_max held constant. For ArcFace (m1 = 1) this is exactly
  insightface's `where(cos > th, phi, cos - mm)` with th = cos(pi - m), mm = sin(pi - m) * m.
  psi stays decreasing and below cos(theta); for CosFace/NormFace theta_max = pi and nothing changes.
- "easy" (insightface `easy_margin`): the margin applies only where cos(theta) > 0, psi = cos(theta)
  elsewhere; allowed only when m1 * pi/2 + m2 <= pi (so psi is decreasing on [0, pi/2]).
- "none": the raw formula, for experiments on the safeguard itself.
`logits` returned for train accuracy are s * cos(theta_j), without margin.

Scale: `scale=None` (the default of every preset) is AdaCos's fixed scale sqrt(2) * ln(C - 1) for C
classes (`adacos_scale`, see classification.py): the papers' s = 64 was tuned for 10k-100k identities
and leaves a few-hundred-class run at chance (ArcFace at 2-4 % training accuracy in the
demo). Give a number to fix it.
"""

from __future__ import annotations

import math

import torch

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.losses.classification import (
    ClassificationLoss,
    adacos_scale,
    init_class_weights,
    scatter_target,
    target_angles,
    target_scores,
)
from fvtool.losses.registry import register_loss

FALLBACKS = ("th-mm", "easy", "none")


class CombinedMarginLoss(ClassificationLoss):
    """s * (cos(m1 theta_y + m2) - m3) on the target class, s * cos(theta_j) elsewhere."""

    def __init__(self, *, embedding_size: int, num_classes: int, scale: float | None = None, m1: float = 1.0,
                 m2: float = 0.0, m3: float = 0.0, fallback: str = "th-mm", owner: str = "loss combined_margin"):
        super().__init__(owner, embedding_size, num_classes)
        if scale is None:
            scale = adacos_scale(self.num_classes)
        self.scale = optcheck.number(owner, "scale", scale, low=0.0, low_open=True)
        self.m1 = optcheck.number(owner, "m1", m1, low=1.0)
        self.m2 = optcheck.number(owner, "m2", m2, low=0.0, high=math.pi, high_open=True)
        self.m3 = optcheck.number(owner, "m3", m3, low=0.0)
        self.fallback = optcheck.choice(owner, "fallback", fallback, FALLBACKS)
        if self.fallback == "easy" and self.m1 * math.pi / 2 + self.m2 > math.pi:
            raise InputError(f"{owner}: fallback 'easy' needs m1*pi/2 + m2 <= pi (psi decreasing on [0, pi/2]); "
                             f"got m1={self.m1}, m2={self.m2}; use fallback 'th-mm'")
        self.theta_max = (math.pi - self.m2) / self.m1
        self.mm = ((self.m1 - 1.0) * self.theta_max + self.m2) * math.sin(self.theta_max)
        self.weight = init_class_weights(self.num_classes, self.embedding_size)

    def target_logit(self, cos_y: torch.Tensor) -> torch.Tensor:
        """psi(theta_y) (unscaled) from cos(theta_y), with the configured safeguard."""
        if self.m1 == 1.0 and self.m2 == 0.0:
            return cos_y - self.m3  # CosFace / NormFace: no angle needed, exact in float
        if self.m1 == 1.0:
            # cos(theta + m2) by the addition formula, as insightface: exact at theta = 0, where float32
            # acos(cos) is off by ~5e-4 rad; the clamp keeps d sin / d cos finite (zero) at |cos| = 1
            sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp(min=1e-12))
            psi = cos_y * math.cos(self.m2) - sin_y * math.sin(self.m2) - self.m3
            in_range = cos_y >= math.cos(self.theta_max)
        else:
            theta = target_angles(cos_y)
            psi = torch.cos(self.m1 * theta + self.m2) - self.m3
            in_range = theta <= self.theta_max
        if self.fallback == "th-mm":
            return torch.where(in_range, psi, cos_y - self.m3 - self.mm)
        if self.fallback == "easy":
            return torch.where(cos_y > 0, psi, cos_y)
        return psi

    def class_tables(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    def margin_logits(self, scores: torch.Tensor, target_col: torch.Tensor, score_y: torch.Tensor,
                      norms: torch.Tensor) -> torch.Tensor:
        cos_y = target_scores(scores, target_col)
        return scatter_target(scores, target_col, self.target_logit(cos_y)) * self.scale

    def plain_logits(self, scores: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return scores * self.scale

    def extra_repr(self) -> str:
        return f"s={self.scale}, m1={self.m1}, m2={self.m2}, m3={self.m3}, fallback={self.fallback!r}"


NOTATIONS = ("insightface", "source")


@register_loss("combined_margin", family="classification")
def combined_margin(*, embedding_size: int, num_classes: int, scale: float | None = None, m1: float | None = None,
                    m2: float | None = None, m3: float | None = None, fallback: str = "th-mm",
                    notation: str = "insightface") -> CombinedMarginLoss:
    """Combined angular margin s*(cos(m1*theta + m2) - m3) (insightface); defaults = ArcFace, s = AdaCos.

    `notation="source"` reads m1, m2 as study 3's source writes them, s * (cos(theta + m1) + m2):
    m1 the additive angle, m2 added to the cosine (so a CosFace-like penalty is m2 < 0; m2 > 0
    would raise the target's logit, no margin, and is refused); m3 is not part of that notation.
    It is the insightface form with (m1, m2, m3) = (1, m1_source, -m2_source); defaults (0.5, 0) = ArcFace.
    """
    owner = "loss combined_margin"
    notation = optcheck.choice(owner, "notation", notation, NOTATIONS)
    if notation == "source":
        if m3 is not None:
            raise InputError(f"{owner}: notation 'source' has no m3 (s * (cos(theta + m1) + m2)); "
                             "write a cosine margin as m2 < 0")
        angle = optcheck.number(owner, "m1", 0.5 if m1 is None else m1, low=0.0, high=math.pi, high_open=True)
        add = optcheck.number(owner, "m2", 0.0 if m2 is None else m2, high=0.0)
        return CombinedMarginLoss(embedding_size=embedding_size, num_classes=num_classes, scale=scale, m1=1.0,
                                  m2=angle, m3=-add, fallback=fallback)
    return CombinedMarginLoss(embedding_size=embedding_size, num_classes=num_classes, scale=scale,
                              m1=1.0 if m1 is None else m1, m2=0.5 if m2 is None else m2,
                              m3=0.0 if m3 is None else m3, fallback=fallback)
