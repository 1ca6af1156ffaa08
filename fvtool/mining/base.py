"""What a miner returns and the pieces every miner shares.

Why miners are separate objects: the studies fvtool serves ask "which loss with which sampling?",
so a triplet or pair loss must accept any miner (`--loss triplet --mining semihard`,
`--loss contrastive --mining hard`) without a variant per combination (the pytorch-metric-learning
design). A miner looks at one batch and returns *triplets* (anchor, positive, negative) as index
tensors; pair losses read the same triplets as pairs, (anchor, positive) positive pairs and
(anchor, negative) negative pairs, one of each per triplet, duplicates kept, which is how
Wu et al.'s margin loss and pytorch-metric-learning's `convert_to_pairs` read them. A miner may
override `mine_pairs` when its pair definition is not "the pairs of its triplets" (batch-all:
every pair of the batch).

Random miners draw from their own seeded `torch.Generator`, saved with the loss's state dict
(`get_extra_state`), so a run resumed from a checkpoint draws the same tuples as an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn


@dataclass(frozen=True)
class Pairs:
    """Positive pairs (pos_a[i], pos_b[i]) and negative pairs (neg_a[j], neg_b[j]) as batch indices."""

    pos_a: torch.Tensor
    pos_b: torch.Tensor
    neg_a: torch.Tensor
    neg_b: torch.Tensor

    @property
    def n_pos(self) -> int:
        return int(self.pos_a.numel())

    @property
    def n_neg(self) -> int:
        return int(self.neg_a.numel())


@dataclass(frozen=True)
class Triplets:
    """Triplets (anchor[i], positive[i], negative[i]) as batch indices."""

    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __len__(self) -> int:
        return int(self.anchor.numel())

    def to_pairs(self) -> Pairs:
        """One positive and one negative pair per triplet (duplicates kept, as in Wu et al.)."""
        return Pairs(self.anchor, self.positive, self.anchor, self.negative)

    def as_set(self) -> set[tuple[int, int, int]]:
        """The triplets as a Python set, for tests and debugging."""
        return set(zip(self.anchor.tolist(), self.positive.tolist(), self.negative.tolist(), strict=True))


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask, negative mask), both [B, B] bool; the positive mask excludes i == i."""
    labels = labels.reshape(-1)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same


def positive_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ordered positive pair (a, p), a != p, in row-major order."""
    pos, _ = label_masks(labels)
    a, p = torch.nonzero(pos, as_tuple=True)
    return a, p


def euclidean_distances(x: torch.Tensor, squared: bool = False) -> torch.Tensor:
    """[B, B] Euclidean (or squared Euclidean) distances, differentiable everywhere.

    Computed from the Gram matrix (fast for batches) and clamped: the square root's gradient at
    0 is infinite, so distances of coincident points (a collapsed model) get a zero gradient
    instead of NaN.
    """
    sq = x.pow(2).sum(1)
    off_diag = 1.0 - torch.eye(len(x), device=x.device, dtype=x.dtype)
    d2 = (sq[:, None] + sq[None, :] - 2.0 * (x @ x.t())).clamp_min(0.0) * off_diag
    if squared:
        return d2
    return d2.clamp_min(1e-12).sqrt() * (d2 > 0)


class Miner(nn.Module):
    """Base class: `forward(embeddings, labels, dist) -> Triplets`.

    `embeddings` are in the loss's space (already L2-normalised when the loss normalises) and
    `dist` is the loss's own [B, B] distance matrix, detached, so "hard" and "within the margin"
    mean what the loss means by them (squared distances for FaceNet's triplet loss).
    `margin` is filled in by the loss when the user did not set it (semi-hard needs it).
    """

    name = "base"
    needs_margin = False

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = int(seed)
        self.margin: float | None = None
        self.generator = torch.Generator().manual_seed(self.seed)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Triplets:
        raise NotImplementedError

    def mine_pairs(self, embeddings: torch.Tensor, labels: torch.Tensor, dist: torch.Tensor) -> Pairs:
        return self(embeddings, labels, dist).to_pairs()

    # The generator's state travels in the loss's state dict (tensors only: weights_only-safe).
    def get_extra_state(self) -> Any:
        return {"generator": self.generator.get_state()}

    def set_extra_state(self, state: Any) -> None:
        if isinstance(state, dict) and "generator" in state:
            self.generator.set_state(state["generator"])

    def _sample(self, weights: torch.Tensor) -> torch.Tensor:
        """One index per row of `weights` (non-negative, each row with a positive sum), seeded."""
        w = weights.detach().to("cpu", torch.float64)
        return torch.multinomial(w, 1, replacement=True, generator=self.generator).reshape(-1).to(weights.device)

    def extra_repr(self) -> str:
        return f"seed={self.seed}, margin={self.margin}"
