"""`curricularface`: adaptive curriculum on the hard negatives (Huang et al., "CurricularFace: Adaptive
Curriculum Learning Loss for Deep Face Recognition", CVPR 2020).

ArcFace's target logit, and every *hard* negative (cos theta_j > cos(theta_y + m)) re-weighted by the
training progress t:

    logit_y = s * T(cos theta_y),   T = cos(theta_y + m), or cos theta_y - m sin m past theta_y > pi - m
    logit_j = s * N(t, cos theta_j),   N = cos theta_j (t + cos theta_j) if cos theta_j > cos(theta_y + m)
                                        else cos theta_j
    t <- alpha * mean_i cos theta_{y_i} + (1 - alpha) * t        (before use, every training batch; t_0 = 0)
    L = cross_entropy(logits, y)

Early on t ~ 0 and cos theta_j < 1, so hard negatives are *down*-weighted (easy samples first); as the
target cosines grow, t rises and they are emphasised. The hardness test uses the raw cos(theta_y + m)
(the authors' code; without the pi - m fallback). t is a buffer in the state dict (a resumed run
continues it). Defaults m = 0.5, alpha = 0.01 (the authors') and s = AdaCos's sqrt(2) ln(C - 1) (the
authors' s = 64 suits 10k+ identities).
"""

from __future__ import annotations

import math

import torch

from fvtool import optcheck
from fvtool.losses.classification import (
    ClassificationLoss,
    adacos_scale,
    init_class_weights,
    scatter_target,
    target_scores,
)
from fvtool.losses.registry import register_loss


@register_loss("curricularface", family="classification")
class CurricularFaceLoss(ClassificationLoss):
    """CurricularFace: ArcFace target, hard negatives modulated by cos (t + cos); m = 0.5, s = AdaCos."""

    def __init__(self, *, embedding_size: int, num_classes: int, margin: float = 0.5, scale: float | None = None,
                 t_alpha: float = 0.01) -> None:
        super().__init__("loss curricularface", embedding_size, num_classes)
        self.margin = optcheck.number(self.owner, "margin", margin, low=0.0, high=math.pi / 2)
        self.scale = optcheck.number(self.owner, "scale", adacos_scale(self.num_classes) if scale is None else scale,
                                     low=0.0, low_open=True)
        self.t_alpha = optcheck.number(self.owner, "t_alpha", t_alpha, low=0.0, high=1.0, low_open=True)
        self.weight = init_class_weights(self.num_classes, self.embedding_size)
        self.register_buffer("t", torch.zeros(()))

    def class_tables(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    def observe(self, score_y: torch.Tensor, norms: torch.Tensor) -> None:
        self.t.mul_(1 - self.t_alpha).add_(self.t_alpha * score_y.clamp(-1.0, 1.0).mean())

    def _with_margin(self, cos_y: torch.Tensor) -> torch.Tensor:
        sin_y = torch.sqrt((1.0 - cos_y * cos_y).clamp(min=1e-12))
        return cos_y * math.cos(self.margin) - sin_y * math.sin(self.margin)

    def margin_logits(self, scores: torch.Tensor, target_col: torch.Tensor, score_y: torch.Tensor,
                      norms: torch.Tensor) -> torch.Tensor:
        cos = scores.clamp(-1.0, 1.0)
        hard = cos > self._with_margin(score_y.clamp(-1.0, 1.0))[:, None]  # global target: works on a shard
        cos_y = target_scores(cos, target_col)
        target = torch.where(cos_y > math.cos(math.pi - self.margin), self._with_margin(cos_y),
                             cos_y - math.sin(math.pi - self.margin) * self.margin)
        modulated = torch.where(hard, cos * (self.t + cos), cos)
        return scatter_target(modulated, target_col, target) * self.scale

    def plain_logits(self, scores: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return scores * self.scale

    def state_components(self) -> dict[str, float]:
        return {"t": float(self.t)}

    def extra_repr(self) -> str:
        return f"s={self.scale}, m={self.margin}, t_alpha={self.t_alpha}"
