"""Siamese verifier loss: a pair head on two embeddings, one logit, binary cross-entropy.

The classic siamese verifier (Koch, Zemel & Salakhutdinov, "Siamese Neural Networks for One-shot
Image Recognition", 2015; Chopra, Hadsell & LeCun 2005 for the shared-weights idea): one
embedding network f applied to both images, and a head that turns the pair into the logit of
"same identity",

    p(same | x1, x2) = sigmoid(h(f(x1), f(x2)))
    L = -[y log p + (1 - y) log(1 - p)]            (y = 1 for a genuine pair)

Heads (`head`):
  linear    h = w . |f1 - f2| + b       Koch et al.'s weighted L1 distance            [default]
  mlp       h = MLP(|f1 - f2|)          one hidden layer of `hidden` units (ReLU)
  distance  h = -a ||f1 - f2|| + b      a > 0: a calibrated distance; ranks pairs exactly as
                                        the embedding distance does
Embeddings are L2-normalised first (`normalize`), so the distance/cosine score of `fvtool verify`
on the learned embeddings and the head see the same geometry.

A batch of pairs is laid out as the pair sampler yields it: embeddings [2B, D] with the B left
images first, then the B right images; `same` [B] (or, when absent, labels[:B] == labels[B:]).
This module is the loss (registered as "siamese-bce", family "pair"); the method that trains it
on pair batches is fvtool/training/siamese.py. At verification time either score works: the
embedding distance (`fvtool embed` + `verify`) or the head's probability (`head_scores`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.registry import register_loss

HEADS = ("linear", "mlp", "distance")


class PairHead(nn.Module):
    """Two embeddings -> one logit of "same identity"."""

    def __init__(self, embedding_size: int, kind: str = "linear", hidden: int = 64) -> None:
        super().__init__()
        if kind not in HEADS:
            raise InputError(f"siamese head must be one of {', '.join(HEADS)}, not {kind!r}")
        self.kind = kind
        if kind == "linear":
            self.net: nn.Module = nn.Linear(embedding_size, 1)
            with torch.no_grad():  # start as "closer is more similar": negative weights on |f1 - f2|
                self.net.weight.fill_(-1.0 / embedding_size ** 0.5)
                self.net.bias.fill_(1.0)
        elif kind == "mlp":
            if hidden < 1:
                raise InputError(f"siamese mlp head needs hidden >= 1 (got {hidden})")
            self.net = nn.Sequential(nn.Linear(embedding_size, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))
        else:
            self.log_a = nn.Parameter(torch.tensor(1.0))  # a = softplus(log_a) > 0
            self.b = nn.Parameter(torch.tensor(1.0))

    def forward(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        if self.kind == "distance":
            d = (e1 - e2).pow(2).sum(1).clamp_min(1e-12).sqrt()
            return -F.softplus(self.log_a) * d + self.b
        return self.net((e1 - e2).abs()).squeeze(1)


@register_loss("siamese-bce", family="pair")
class SiameseBCELoss(nn.Module):
    """Siamese verifier: pair head on |f1 - f2| -> one logit, binary cross-entropy on labelled pairs"""

    def __init__(self, embedding_size: int = 128, head: str = "linear", hidden: int = 64,
                 normalize: bool = True) -> None:
        super().__init__()
        self.head = PairHead(int(embedding_size), head, int(hidden))
        self.normalize = bool(normalize)

    def pair_logits(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            e1, e2 = F.normalize(e1, dim=1), F.normalize(e2, dim=1)
        return self.head(e1, e2)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor | None = None,
                same: torch.Tensor | None = None) -> LossOutput:
        if embeddings.ndim != 2 or embeddings.shape[0] % 2:
            raise InputError(f"siamese-bce takes a pair batch [2B, D] (left images, then right images); got "
                             f"shape {tuple(embeddings.shape)}")
        b = embeddings.shape[0] // 2
        if same is None:
            if labels is None:
                raise InputError("siamese-bce needs `same` or the labels of both halves of the pair batch")
            labels = labels.reshape(-1)
            same = labels[:b] == labels[b:]
        same = same.reshape(-1).to(embeddings.device)
        if same.numel() != b:
            raise InputError(f"{same.numel()} pair labels for {b} pairs")
        logits = self.pair_logits(embeddings[:b], embeddings[b:])
        target = same.to(logits.dtype)
        per_pair = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
        loss = per_pair.mean()
        with torch.no_grad():
            correct = (logits > 0) == same.bool()
            stats = {
                "n_pairs": float(b),
                "pair_accuracy": float(correct.float().mean()),
                # "active": pairs still giving a sizeable gradient (p(correct) < 0.9, i.e. BCE > 0.105)
                "active_fraction": float((per_pair > -math.log(0.9)).float().mean()),
            }
        return LossOutput(loss, {"bce": float(loss.detach())}, stats=stats)

    @torch.no_grad()
    def head_scores(self, e1: torch.Tensor, e2: torch.Tensor) -> torch.Tensor:
        """p(same) for pairs of embeddings (rows of e1 with rows of e2): the head's verification score."""
        return torch.sigmoid(self.pair_logits(e1.float(), e2.float()))
