"""`adaface`: feature-norm adaptive margin (Kim, Jain & Liu, "AdaFace: Quality Adaptive Margin for Face
Recognition", CVPR 2022).

The feature norm |x| is a proxy for image quality. With |x| normalised by running batch statistics,

    z_i   = clip(h * (|x_i| - mu) / (sigma + eps), -1, 1)          (|x_i| clipped to [0.001, 100], no gradient)
    g_ang = -m * z_i,   g_add = m * z_i + m
    logit_y = s * (cos(clip(theta_y + g_ang, eps, pi - eps)) - g_add),   logit_j = s * cos(theta_j)
    L = cross_entropy(logits, y)

with every cosine clamped to [-1 + eps, 1 - eps] and eps = 1e-3 (the authors' head.py). z = -1 (low
norm: a poor image) gives g_ang = m, g_add = 0, ArcFace's margin; z = 0 gives CosFace's (g_add = m);
z = 1 (high norm) gives g_ang = -m, g_add = 2m, which emphasises the hard samples among good images.
mu and sigma are exponential moving averages of the batch mean and (unbiased) standard deviation of
the norms, updated before use on every training batch:

    mu <- t_alpha * mean(|x|) + (1 - t_alpha) * mu,   sigma <- t_alpha * std(|x|) + (1 - t_alpha) * sigma

starting at mu = 20, sigma = 100 (the authors' buffers; they are in the state dict, so a resumed run
continues them). Defaults: m = 0.4, h = 0.333, t_alpha = 0.01 (the paper's training recipe) and s = AdaCos's
sqrt(2) ln(C - 1) for C classes like the other cosine losses (the paper's s = 64 suits 10k+ identities;
`adacos_scale` in classification.py).
The margins need the raw (unnormalised) backbone output, which is what fvtool's losses get.
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

EPS = 1e-3


@register_loss("adaface", family="classification")
class AdaFaceLoss(ClassificationLoss):
    """AdaFace: margin adapted to the feature norm (EMA batch statistics); m = 0.4, h = 0.333, s = AdaCos."""

    def __init__(self, *, embedding_size: int, num_classes: int, margin: float = 0.4, h: float = 0.333,
                 scale: float | None = None, t_alpha: float = 0.01) -> None:
        super().__init__("loss adaface", embedding_size, num_classes)
        self.margin = optcheck.number(self.owner, "margin", margin, low=0.0, high=math.pi / 2)
        self.h = optcheck.number(self.owner, "h", h, low=0.0)
        self.scale = optcheck.number(self.owner, "scale", adacos_scale(self.num_classes) if scale is None else scale,
                                     low=0.0, low_open=True)
        self.t_alpha = optcheck.number(self.owner, "t_alpha", t_alpha, low=0.0, high=1.0, low_open=True)
        self.weight = init_class_weights(self.num_classes, self.embedding_size)
        self.register_buffer("batch_mean", torch.full((), 20.0))
        self.register_buffer("batch_std", torch.full((), 100.0))

    def class_tables(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    def observe(self, score_y: torch.Tensor, norms: torch.Tensor) -> None:
        if norms.numel() < 2:
            raise InputError(f"{self.owner}: the norm statistics need at least 2 samples per batch")
        safe = norms.clamp(0.001, 100.0)
        self.batch_mean.mul_(1 - self.t_alpha).add_(self.t_alpha * safe.mean())
        self.batch_std.mul_(1 - self.t_alpha).add_(self.t_alpha * safe.std())

    def norm_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """z = clip(h (|x| - mu) / (sigma + eps), -1, 1), no gradient (the margin does not train the norm)."""
        safe = norms.detach().clamp(0.001, 100.0)
        return ((safe - self.batch_mean) / (self.batch_std + EPS) * self.h).clamp(-1.0, 1.0)

    def margin_logits(self, scores: torch.Tensor, target_col: torch.Tensor, score_y: torch.Tensor,
                      norms: torch.Tensor) -> torch.Tensor:
        cos = scores.clamp(-1.0 + EPS, 1.0 - EPS)
        z = self.norm_scaler(norms)
        theta = torch.acos(target_scores(cos, target_col).clamp(-1.0 + EPS, 1.0 - EPS))
        target = torch.cos((theta - self.margin * z).clamp(EPS, math.pi - EPS)) - (self.margin + self.margin * z)
        return scatter_target(cos, target_col, target) * self.scale

    def plain_logits(self, scores: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return scores * self.scale

    def state_components(self) -> dict[str, float]:
        return {"norm_mean": float(self.batch_mean), "norm_std": float(self.batch_std)}

    def extra_repr(self) -> str:
        return f"s={self.scale}, m={self.margin}, h={self.h}, t_alpha={self.t_alpha}"
