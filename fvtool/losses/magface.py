"""`magface`: magnitude-aware margin and regulariser (Meng et al., "MagFace: A Universal Representation
for Face Recognition and Quality Assessment", CVPR 2021).

With a = |x| clamped to [l_a, u_a] (no gradient outside it) and x, w_j L2-normalised for the cosines:

    m(a) = (u_m - l_m) / (u_a - l_a) * (a - l_a) + l_m              (linear from l_m at l_a to u_m at u_a)
    g(a) = 1/a + a / u_a^2                                          (decreasing on [l_a, u_a]: pulls a up)
    logit_y = s * cos(theta_y + m(a)),   logit_j = s * cos(theta_j)
    L = cross_entropy(logits, y) + lambda_g * mean_i g(a_i)

The margin grows with the magnitude, so only easy, well-placed samples can afford a large norm: a
is the quality score. The margin's gradient does reach a (the authors' code), g's pulls it up.
Safeguard: `easy_margin` (the authors' default) applies the margin only where cos(theta_y) > 0; with
`easy_margin=false`, insightface's rule with the per-sample margin: cos(theta_y) - m(a) sin m(a)
past theta_y > pi - m(a). Defaults: l_a = 10, u_a = 110, l_m = 0.45, u_m = 0.8, lambda_g = 35
(the authors' released models) and s = AdaCos's sqrt(2) ln(C - 1) (the authors' s = 64 suits 10k+
identities). Their feasibility bound lambda_g >= s k u_a^2 l_a^2 / (u_a^2 - l_a^2),
k = (u_m - l_m)/(u_a - l_a) (22.6 at s = 64, 5.7 at s = 16), is checked when the loss is built
(a warning, as in their trainer: below it the optimal magnitude is not unique).
The norms of fvtool's backbones (batch norm on the embedding) are about sqrt(D) at the start, i.e. 11
at D = 128 and 23 at D = 512, inside the default [l_a, u_a].
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
    target_scores,
)
from fvtool.losses.registry import register_loss


@register_loss("magface", family="classification")
class MagFaceLoss(ClassificationLoss):
    """MagFace: margin linear in |x| on [l_a, u_a] plus lambda_g * (1/a + a/u_a^2); s = AdaCos, lambda_g = 35."""

    def __init__(self, *, embedding_size: int, num_classes: int, scale: float | None = None, l_a: float = 10.0,
                 u_a: float = 110.0, l_margin: float = 0.45, u_margin: float = 0.8, lambda_g: float = 35.0,
                 easy_margin: bool = True) -> None:
        super().__init__("loss magface", embedding_size, num_classes)
        own = self.owner
        self.scale = optcheck.number(own, "scale", adacos_scale(self.num_classes) if scale is None else scale,
                                     low=0.0, low_open=True)
        self.l_a = optcheck.number(own, "l_a", l_a, low=0.0, low_open=True)
        self.u_a = optcheck.number(own, "u_a", u_a, low=0.0, low_open=True)
        self.l_margin = optcheck.number(own, "l_margin", l_margin, low=0.0, high=math.pi / 2)
        self.u_margin = optcheck.number(own, "u_margin", u_margin, low=0.0, high=math.pi / 2)
        self.lambda_g = optcheck.number(own, "lambda_g", lambda_g, low=0.0)
        self.easy_margin = bool(easy_margin)
        if self.u_a <= self.l_a or self.u_margin < self.l_margin:
            raise InputError(f"{own}: need l_a < u_a and l_margin <= u_margin; got l_a={self.l_a}, u_a={self.u_a}, "
                             f"l_margin={self.l_margin}, u_margin={self.u_margin}")
        self.slope = (self.u_margin - self.l_margin) / (self.u_a - self.l_a)
        self.weight = init_class_weights(self.num_classes, self.embedding_size)
        if self.lambda_g < self.min_lambda_g():
            from fvtool.console import console

            console.print(f"[yellow]warning:[/] {own}: lambda_g={self.lambda_g:g} is below the bound "
                          f"{self.min_lambda_g():.1f} for s={self.scale:g} (MagFace's uniqueness condition)")

    def min_lambda_g(self) -> float:
        """The authors' lower bound on lambda_g for a unique optimal magnitude (their trainer's check)."""
        return self.scale * self.slope * self.u_a ** 2 * self.l_a ** 2 / (self.u_a ** 2 - self.l_a ** 2)

    def magnitude(self, norms: torch.Tensor) -> torch.Tensor:
        return norms.clamp(self.l_a, self.u_a)

    def class_tables(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    def margin_logits(self, scores: torch.Tensor, target_col: torch.Tensor, score_y: torch.Tensor,
                      norms: torch.Tensor) -> torch.Tensor:
        m = self.slope * (self.magnitude(norms) - self.l_a) + self.l_margin
        cos = scores.clamp(-1.0, 1.0)
        cos_y = target_scores(cos, target_col)
        sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp(min=1e-12))
        psi = cos_y * torch.cos(m) - sin_y * torch.sin(m)
        if self.easy_margin:
            psi = torch.where(cos_y > 0, psi, cos_y)
        else:
            psi = torch.where(cos_y > torch.cos(math.pi - m), psi, cos_y - torch.sin(math.pi - m) * m)
        return scatter_target(cos, target_col, psi) * self.scale

    def plain_logits(self, scores: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return scores * self.scale

    def regularisers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        a = self.magnitude(x.norm(dim=1))
        return {"g": self.lambda_g * (1.0 / a + a / self.u_a ** 2).mean()}

    def extra_repr(self) -> str:
        return (f"s={self.scale}, a=[{self.l_a}, {self.u_a}], m=[{self.l_margin}, {self.u_margin}], "
                f"lambda_g={self.lambda_g}, easy_margin={self.easy_margin}")
