"""`--method joint`: a classification loss and a metric loss on the same batch, L = L_cls + w * L_metric.

Why: study 3's source trains "CE jointly with a metric loss": the classifier gives a stable signal
from the first step, the pair/triplet term shapes the distances that verification thresholds.
Both losses see the same embeddings of one P x K batch (the metric loss needs several images per
identity; `--pk` sets P and K). `--loss` names the classification loss (softmax, arcface, ...; its
`--margin`/`--scale`/`--loss-opt` apply to it); the method options name the metric loss:

    --method joint --method-opt metric=triplet --method-opt weight=1.0
    --method-opt metric_options='{"margin": 0.3}'   # the metric loss's own options
    --mining semihard                                 # its miner (default: the loss's own)

The logged components are the two losses' own (e.g. `ce`, `triplet`), the classification loss's
logits give the train accuracy, and the collapse monitor watches the embeddings as for any metric loss.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.registry import build_loss, get_loss_spec
from fvtool.training.methods import (
    EmbeddingLossMethod,
    Method,
    MethodContext,
    build_backbone_for,
    method_options,
    register_method,
)

OPTIONS = ("metric", "weight", "metric_options")


class JointLoss(nn.Module):
    """classification(emb, y) + weight * metric(emb, y), components and statistics of both."""

    def __init__(self, classification: nn.Module, metric: nn.Module, weight: float) -> None:
        super().__init__()
        self.classification = classification
        self.metric = metric
        self.weight = weight

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        a = self.classification(embeddings, labels)
        b = self.metric(embeddings, labels)
        components = {**a.components, **b.components}
        return LossOutput(a.loss + self.weight * b.loss, components, logits=a.logits,
                          stats={**a.stats, **b.stats}, counts=a.counts)

    def param_groups(self, weight_decay: float) -> list[dict[str, Any]]:
        """The parts' own optimiser groups (e.g. center loss's centers), if they declare any."""
        groups: list[dict[str, Any]] = []
        for part in (self.classification, self.metric):
            hook = getattr(part, "param_groups", None)
            if callable(hook):
                groups += list(hook(weight_decay))
        return groups

    def extra_repr(self) -> str:
        return f"weight={self.weight}"


@register_method("joint", uses=("mining",))
def build_joint(ctx: MethodContext) -> Method:
    """Classification loss (--loss) + weight x metric loss (--method-opt metric=NAME) on the same P x K batch."""
    cfg = ctx.config
    opts = method_options(ctx, "joint method", OPTIONS)
    if "metric" not in opts:
        raise InputError("joint method: name the metric loss, e.g. --method-opt metric=triplet")
    metric_name = str(opts["metric"])
    weight = optcheck.number("joint method", "weight", opts.get("weight", 1.0), low=0.0)
    metric_options = opts.get("metric_options", {})
    if not isinstance(metric_options, dict):
        raise InputError("joint method: metric_options is a JSON object, e.g. metric_options='{\"margin\": 0.3}'")
    for name, family in ((cfg.loss, "classification"), (metric_name, "metric")):
        if get_loss_spec(name).family != family:
            raise InputError(f"joint method: {name!r} is a {get_loss_spec(name).family} loss; the method joins a "
                             f"classification loss (--loss) and a metric loss (metric=)")
    options = {**cfg.loss_options, **{k: v for k, v in (("margin", cfg.margin), ("scale", cfg.scale)) if v is not None}}
    seed = options.pop("seed", cfg.seed)
    cls = build_loss(cfg.loss, embedding_size=cfg.embedding_size, num_classes=ctx.num_classes, seed=seed, **options)
    metric = build_loss(metric_name, embedding_size=cfg.embedding_size, num_classes=ctx.num_classes, seed=seed,
                        miner=cfg.mining, miner_options=cfg.mining_options, **metric_options)
    method = EmbeddingLossMethod(build_backbone_for(cfg), JointLoss(cls, metric, weight), "metric", "pk")
    return method
