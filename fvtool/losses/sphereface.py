"""`sphereface`: A-Softmax (Liu et al. 2017), the original form with the annealed multiplicative margin m1.

Class weights are L2-normalised (no bias), the embedding x is not:

    psi(theta) = (-1)^k cos(m theta) - 2k,   theta in [k pi/m, (k+1) pi/m],  k = 0..m-1
    logit_j = s |x| cos(theta_j)                                   for j != y
    logit_y = s |x| (lambda cos(theta_y) + psi(theta_y)) / (1 + lambda)
    L = cross_entropy(logits, y)

psi is decreasing on [0, pi] for integer m (the piecewise trick is SphereFace's own safeguard);
cos(m theta) is the Chebyshev polynomial T_m(cos theta), as in the original Caffe layer.

lambda annealing (SphereFace's training recipe, without which m = 4 does not converge from scratch):
    lambda(t) = max(lambda_min, lambda_base * (1 + gamma * t) ** -power),  t = training forwards so far
with the official defaults lambda_base = 1000, gamma = 0.12, power = 1, lambda_min = 5. `t` is a buffer
in the state dict, so a resumed run continues the schedule. lambda_base = lambda_min = 0 gives plain
A-Softmax (pytorch-metric-learning's SphereFaceLoss, which has no annealing). Scale s defaults to 1
(the paper; pml's `scale`). For the normalised-feature "insightface combined" variant use
`combined_margin` with m1.
"""

from __future__ import annotations

import math

import torch

from fvtool import optcheck
from fvtool.losses.classification import (
    ClassificationLoss,
    init_class_weights,
    scatter_target,
    target_angles,
    target_scores,
)
from fvtool.losses.registry import register_loss


def chebyshev(m: int, c: torch.Tensor) -> torch.Tensor:
    """T_m(c) = cos(m * acos(c)) by the recurrence T_{n+1} = 2c T_n - T_{n-1}."""
    prev, cur = torch.ones_like(c), c
    if m == 0:
        return prev
    for _ in range(m - 1):
        prev, cur = cur, 2 * c * cur - prev
    return cur


@register_loss("sphereface", family="classification")
class SphereFaceLoss(ClassificationLoss):
    """SphereFace A-Softmax: psi(theta) = (-1)^k cos(m theta) - 2k with lambda annealing (default m = 4)."""

    def __init__(self, *, embedding_size: int, num_classes: int, margin: int = 4, scale: float = 1.0,
                 lambda_base: float = 1000.0, lambda_gamma: float = 0.12, lambda_power: float = 1.0,
                 lambda_min: float = 5.0) -> None:
        super().__init__("loss sphereface", embedding_size, num_classes)
        self.margin = optcheck.integer(self.owner, "margin", margin, low=1)
        self.scale = optcheck.number(self.owner, "scale", scale, low=0.0, low_open=True)
        self.lambda_base = optcheck.number(self.owner, "lambda_base", lambda_base, low=0.0)
        self.lambda_gamma = optcheck.number(self.owner, "lambda_gamma", lambda_gamma, low=0.0)
        self.lambda_power = optcheck.number(self.owner, "lambda_power", lambda_power, low=0.0)
        self.lambda_min = optcheck.number(self.owner, "lambda_min", lambda_min, low=0.0)
        self.weight = init_class_weights(self.num_classes, self.embedding_size)
        self.register_buffer("iteration", torch.zeros((), dtype=torch.long))

    def psi(self, cos_y: torch.Tensor) -> torch.Tensor:
        theta = target_angles(cos_y)
        k = torch.floor(theta.detach() * self.margin / math.pi).clamp(max=self.margin - 1)
        sign = 1.0 - 2.0 * torch.remainder(k, 2)  # (-1)^k
        return sign * chebyshev(self.margin, cos_y) - 2.0 * k

    def class_tables(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    def observe(self, score_y: torch.Tensor, norms: torch.Tensor) -> None:
        self.iteration += 1

    def current_lambda(self) -> float:
        """lambda of the forward in progress: `observe` has already counted it when training."""
        t = int(self.iteration) - (1 if self.training else 0)
        return max(self.lambda_min, self.lambda_base * (1.0 + self.lambda_gamma * t) ** -self.lambda_power)

    def margin_logits(self, scores: torch.Tensor, target_col: torch.Tensor, score_y: torch.Tensor,
                      norms: torch.Tensor) -> torch.Tensor:
        lam = self.current_lambda()
        cos_y = target_scores(scores, target_col)
        target = (lam * cos_y + self.psi(cos_y)) / (1.0 + lam)
        return scatter_target(scores, target_col, target) * (norms[:, None] * self.scale)

    def plain_logits(self, scores: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        return scores * (norms[:, None] * self.scale)

    def state_components(self) -> dict[str, float]:
        return {"lambda": self.current_lambda()}
