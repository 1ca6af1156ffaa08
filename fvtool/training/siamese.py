"""The siamese BCE verifier as a training method: shared backbone + pair head, pair batches.

Why its own method: the embedding+loss method trains on P x K batches of labelled images; the
siamese verifier trains on batches of labelled *pairs* (the engine's "pairs" sampler: B left
images then B right images, `same` per pair) and owns a head that scores a pair. The backbone is
shared between the two images (one forward over the 2B images), and it is the method's
`embedder`, so `fvtool embed` / `verify` score pairs by embedding distance like every other run;
`head_scores` gives the head's probability instead (see fvtool/losses/siamese_bce.py).

Method options (`[method_options]` in the TOML config): head = "linear" | "mlp" | "distance",
hidden (mlp width), normalize (L2-normalise before the head).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.siamese_bce import SiameseBCELoss
from fvtool.training.methods import (
    Batch,
    Method,
    MethodContext,
    build_backbone_for,
    method_options,
    register_method,
)

OPTIONS = ("head", "hidden", "normalize")


class SiameseMethod(Method):
    """Shared backbone on both images of each pair + SiameseBCELoss."""

    sampler_kind = "pairs"
    metric_family = True  # the collapse monitor watches the embeddings

    def __init__(self, backbone: nn.Module, loss: SiameseBCELoss) -> None:
        super().__init__()
        self.backbone = backbone
        self.loss = loss

    @property
    def embedder(self) -> nn.Module:
        return self.backbone

    def training_step(self, batch: Batch) -> LossOutput:
        if batch.same is None:
            raise InputError("the siamese method needs pair batches (the 'pairs' sampler)")
        with self.autocast():
            emb = self.backbone(batch.images)
        self.last_embeddings = emb.detach()
        return self.loss(emb.float(), batch.labels, same=batch.same)

    @torch.no_grad()
    def head_scores(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """p(same) from the trained head, for embeddings of this run's embedder."""
        return self.loss.head_scores(e1, e2)


@register_method("siamese", losses=("siamese-bce",))
def build_siamese(ctx: MethodContext) -> Method:
    """Siamese verifier: shared backbone, pair head on |f1 - f2|, BCE on labelled pairs."""
    cfg = ctx.config
    opts = method_options(ctx, "siamese method", OPTIONS)
    if cfg.loss_options:
        raise InputError("siamese-bce takes its options as method options (head, hidden, normalize), "
                         f"not loss options ({', '.join(cfg.loss_options)})")
    loss = SiameseBCELoss(embedding_size=cfg.embedding_size, **opts)
    return SiameseMethod(build_backbone_for(cfg), loss)
