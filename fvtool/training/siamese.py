"""The siamese BCE verifier as a training method: shared backbone + pair head, pair batches.

Why its own method: the embedding+loss method trains on P x K batches of labelled images; the
siamese verifier trains on batches of labelled *pairs* (the engine's "pairs" sampler: B left
images then B right images, `same` per pair) and owns a head that scores a pair. The backbone is
shared between the two images (one forward over the 2B images), and it is the method's
`embedder`, so `fvtool embed` / `verify` score pairs by embedding distance like every other run;
`head_scores` gives the head's probability instead (see fvtool/losses/siamese_bce.py).

Method options (`[method_options]` in the TOML config): head = "linear" | "mlp" | "distance",
hidden (mlp width), normalize (L2-normalise before the head).

The same method trains `--loss contrastive` and `--loss triplet` on *listed* tuples (study 1's
verifiers share one network and differ only in the loss): with `--method siamese`, or by default
when `--train-pairs` gives a pairs file. Contrastive takes the batch's pairs as they are (pair
batches), triplet takes triplets [anchors, positives, negatives] (the "triplets" sampler; from a
pairs file: its genuine pairs with a negative drawn from its other images). The losses' own
options (margin, squared, normalize, reduction) apply; no miner: `fvtool.mining.listed` hands the
loss the listed tuples.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.registry import build_loss
from fvtool.losses.siamese_bce import SiameseBCELoss
from fvtool.mining.listed import ListedTuples
from fvtool.training.methods import (
    Batch,
    Method,
    MethodContext,
    build_backbone_for,
    method_options,
    register_method,
)

OPTIONS = ("head", "hidden", "normalize")
#: losses on listed tuples besides siamese-bce, with the batch layout each needs
LISTED_LOSSES = {"contrastive": "pairs", "triplet": "triplets"}


class SiameseMethod(Method):
    """Shared backbone on the images of each listed pair (or triplet) + a pair/triplet loss."""

    metric_family = True  # the collapse monitor watches the embeddings

    def __init__(self, backbone: nn.Module, loss: nn.Module, sampler_kind: str = "pairs") -> None:
        super().__init__()
        self.backbone = backbone
        self.loss = loss
        self.sampler_kind = sampler_kind

    @property
    def embedder(self) -> nn.Module:
        return self.backbone

    def training_step(self, batch: Batch) -> LossOutput:
        if self.sampler_kind == "pairs" and batch.same is None:
            raise InputError("the siamese method needs pair batches (the 'pairs' sampler)")
        with self.autocast():
            emb = self.backbone(batch.images)
        self.last_embeddings = emb.detach()
        if isinstance(self.loss, SiameseBCELoss):
            return self.loss(emb.float(), batch.labels, same=batch.same)
        return self.loss(emb.float(), batch.labels)

    @torch.no_grad()
    def head_scores(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """p(same) from the trained head, for embeddings of this run's embedder."""
        if not isinstance(self.loss, SiameseBCELoss):
            raise InputError("only a siamese-bce run has a pair head; score its embeddings with `fvtool verify`")
        return self.loss.head_scores(e1, e2)


@register_method("siamese", losses=("siamese-bce",))
def build_siamese(ctx: MethodContext) -> Method:
    """Siamese verifier: shared backbone on labelled pairs; BCE pair head, or contrastive/triplet on listed tuples."""
    cfg = ctx.config
    if cfg.loss in LISTED_LOSSES:
        method_options(ctx, f"siamese method with --loss {cfg.loss}", (), "no method options (its loss options "
                       "go in --loss-opt)")
        options = {**cfg.loss_options, **({"margin": cfg.margin} if cfg.margin is not None else {})}
        loss = build_loss(cfg.loss, embedding_size=cfg.embedding_size, miner=ListedTuples(cfg.seed), **options)
        return SiameseMethod(build_backbone_for(cfg), loss, LISTED_LOSSES[cfg.loss])
    if cfg.loss != "siamese-bce":
        raise InputError(f"the siamese method trains siamese-bce, contrastive or triplet; not --loss {cfg.loss}")
    opts = method_options(ctx, "siamese method", OPTIONS)
    if cfg.loss_options:
        raise InputError("siamese-bce takes its options as method options (head, hidden, normalize), "
                         f"not loss options ({', '.join(cfg.loss_options)})")
    loss = SiameseBCELoss(embedding_size=cfg.embedding_size, **opts)
    return SiameseMethod(build_backbone_for(cfg), loss)
