"""What the classification-family losses share: a class-weight matrix, batch checks, cosine logits.

Why a base class: softmax, SphereFace, the additive-margin family and center loss all score an
embedding against one weight vector per training identity; only how the target logit is formed
differs, so each loss module writes just that formula (its docstring) and nothing else.

Conventions (all classification losses):
- the class weights are `weight` with the `nn.Linear` layout [num_classes, embedding_size]
  (pytorch-metric-learning stores the transpose, [embedding_size, num_classes]);
- the angular terms are computed in float32 with autocast off, whatever the engine's autocast:
  acos/cos of bf16 cosines near +-1 are too coarse for a 0.5-radian margin;
- `forward(embeddings, labels)` returns a `LossOutput` whose `logits` are the margin-free class scores
  (for train accuracy) and whose components are the parts of the loss, as floats.

The margin heads are written as four small steps on *some* of the classes, so that one formula serves
both the full classifier (here) and the class-sharded Partial FC head (fvtool/losses/partial_fc.py,
where a rank sees only its shard of the classes and the batch of every rank):

    scores = loss.scores(x, tables)                      margin-free scores of the given class rows
    loss.observe(score_y, norms)                         running statistics (EMA), training only
    logits = loss.margin_logits(scores, target_col, score_y, norms)   margins, scale, modulation
    extra = loss.regularisers(x)                         per-feature terms added to the cross-entropy

`tables` are the per-class parameters (`class_tables()`: rows = classes), `target_col` the column of
each sample's own class among the given rows (-1 where it is not among them), `score_y` every
sample's margin-free target score (detached: only statistics and masks use it; the target logit's
gradient flows through `scores`), `norms` the feature norms |x| (with gradient).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.losses.base import LossOutput

#: cosines are clamped this far inside [-1, 1] before acos, so d acos / d cos stays finite
ACOS_EPS = 1e-7


class ClassificationLoss(nn.Module):
    """Base: checks sizes once at build time and every batch's shapes and label range.

    Subclasses that follow the four-step form (module docstring) implement `class_tables`, `scores`
    and `margin_logits` (and optionally `observe`, `regularisers`, `plain_logits`) and inherit `forward`;
    those that do not (center loss) override `forward` and set `shardable = False`.
    """

    #: whether Partial FC can shard this loss (its loss is a softmax cross-entropy over class rows)
    shardable: bool = True
    #: torch's label smoothing of the cross-entropy (softmax only); Partial FC needs 0
    label_smoothing: float = 0.0

    def __init__(self, owner: str, embedding_size: int, num_classes: int) -> None:
        super().__init__()
        self.owner = owner
        self.embedding_size = optcheck.integer(owner, "embedding_size", embedding_size, low=1)
        self.num_classes = optcheck.integer(owner, "num_classes", num_classes, low=2)

    def check_batch(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if embeddings.ndim != 2 or embeddings.shape[1] != self.embedding_size:
            raise InputError(f"{self.owner}: expected [B, {self.embedding_size}] embeddings, "
                             f"got shape {tuple(embeddings.shape)}")
        labels = labels.reshape(-1)
        if labels.numel() != embeddings.shape[0]:
            raise InputError(f"{self.owner}: {labels.numel()} labels for {embeddings.shape[0]} embeddings")
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise InputError(f"{self.owner}: labels must be integer class indices, got {labels.dtype}")
        if labels.numel():
            lo, hi = int(labels.min()), int(labels.max())
            if lo < 0 or hi >= self.num_classes:
                raise InputError(f"{self.owner}: labels must lie in [0, {self.num_classes}) "
                                 f"(num_classes={self.num_classes}), got values in [{lo}, {hi}]")
        return labels.to(device=embeddings.device, dtype=torch.long)

    # ---- the four steps (see the module docstring) ----------------------------------------------
    def class_tables(self) -> dict[str, torch.Tensor]:
        """The per-class parameters by name, each with one row per class (weight [C, D], bias [C])."""
        raise NotImplementedError(f"{self.owner} has no class tables")

    def scores(self, x: torch.Tensor, tables: dict[str, torch.Tensor]) -> torch.Tensor:
        """[B, C'] margin-free scores of x against the given class rows (float32, autocast off)."""
        return cosine_logits(x, tables["weight"])

    def observe(self, score_y: torch.Tensor, norms: torch.Tensor) -> None:
        """Update running statistics from a training batch (detached inputs); default: none."""

    def margin_logits(self, scores: torch.Tensor, target_col: torch.Tensor, score_y: torch.Tensor,
                      norms: torch.Tensor) -> torch.Tensor:
        """[B, C'] logits with the margin applied in each row's `target_col` (where >= 0)."""
        raise NotImplementedError

    def plain_logits(self, scores: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
        """Margin-free logits for train accuracy; default: the scores as they are."""
        return scores

    def regularisers(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Named per-feature loss terms added to the cross-entropy (MagFace's g); default: none."""
        return {}

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        with torch.autocast(embeddings.device.type, enabled=False):
            x = embeddings.float()
            scores = self.scores(x, self.class_tables())
            score_y = scores.gather(1, labels[:, None]).squeeze(1)
            norms = x.norm(dim=1)
            if self.training:
                self.observe(score_y.detach(), norms.detach())
            logits = self.margin_logits(scores, labels, score_y.detach(), norms)
            ce = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
            extra = self.regularisers(x)
            loss = ce + sum(extra.values()) if extra else ce
        components = {"ce": float(ce.detach())} | {k: float(v.detach()) for k, v in extra.items()}
        components |= self.state_components()
        return LossOutput(loss=loss, components=components,
                          logits=self.plain_logits(scores, norms).detach(), stats=self.batch_stats(score_y))

    def state_components(self) -> dict[str, float]:
        """Scheduled or running quantities worth logging with the loss (SphereFace's lambda); default none."""
        return {}

    def batch_stats(self, score_y: torch.Tensor) -> dict[str, float]:
        """Statistics of the batch from the target scores; default: the mean target angle (angular heads)."""
        return angle_stats(score_y)


def scatter_target(scores: torch.Tensor, target_col: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`scores` with value[i] written at (i, target_col[i]) where target_col[i] >= 0 (out of place)."""
    idx = target_col.clamp(min=0)[:, None]
    current = scores.gather(1, idx).squeeze(1)
    return scores.scatter(1, idx, torch.where(target_col >= 0, value, current)[:, None])


def target_scores(scores: torch.Tensor, target_col: torch.Tensor) -> torch.Tensor:
    """[B] scores[i, target_col[i]] where target_col >= 0, else 0 (a shard's share of the target score)."""
    value = scores.gather(1, target_col.clamp(min=0)[:, None]).squeeze(1)
    return torch.where(target_col >= 0, value, torch.zeros_like(value))


def adacos_scale(num_classes: int) -> float:
    """The fixed-scale AdaCos choice s = sqrt(2) * ln(C - 1) for C classes (at least 1).

    Why: with normalised features and weights the logits are s * cos(theta) in [-s, s], so s alone sets
    how confident the softmax can get. Too small and the target probability cannot approach 1; too
    large (the papers' s = 64, tuned for 10k-100k identities) and on a few hundred classes the softmax
    saturates from the first steps, its gradient vanishes for all but the hardest samples and the
    network stays near chance. AdaCos (Zhang et al., "AdaCos: Adaptively Scaling Cosine Logits for
    Effectively Learning Deep Face Representations", CVPR 2019, the fixed scale s_f) derives the
    scale at which the target-class probability still has a strong gradient at theta_y = pi/4 with
    the C - 1 other classes near orthogonal: s_f = sqrt(2) * log(C - 1) (natural log, as in the
    authors' and 4uiiurz1/pytorch-adacos's code). Examples: C = 110 -> 6.63, 1,000 -> 9.77,
    10,000 -> 13.02, 85,742 (MS1M) -> 16.06. For C = 2 the formula gives 0; the floor 1 keeps s > 0.
    """
    return max(1.0, math.sqrt(2.0) * math.log(num_classes - 1)) if num_classes > 2 else 1.0


def init_class_weights(num_classes: int, embedding_size: int) -> nn.Parameter:
    """N(0, 0.01) class weights, insightface's initialisation for its margin heads."""
    return nn.Parameter(torch.normal(0.0, 0.01, (num_classes, embedding_size)))


def cosine_logits(embeddings: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """[B, C] cos(theta_j) between each embedding and each class weight, float32, autocast off."""
    with torch.autocast(embeddings.device.type, enabled=False):
        return F.linear(F.normalize(embeddings.float(), dim=1), F.normalize(weight.float(), dim=1))


def target_angles(cos_target: torch.Tensor) -> torch.Tensor:
    """theta_y = acos(cos_y), with cos clamped ACOS_EPS inside [-1, 1]."""
    return torch.acos(cos_target.clamp(-1.0 + ACOS_EPS, 1.0 - ACOS_EPS))


def angle_stats(cos_target: torch.Tensor) -> dict[str, float]:
    """Mean angle (degrees) between embeddings and their own class weight: falls as the classes separate."""
    with torch.no_grad():
        return {"target_angle_deg": float(torch.rad2deg(target_angles(cos_target.detach())).mean())}
