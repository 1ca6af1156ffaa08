"""Circle loss, pair-wise labels (Sun et al., "Circle Loss: A Unified Perspective of Pair
Similarity Optimization", CVPR 2020).

With cosine similarities s of L2-normalised embeddings, for an anchor with within-class
similarities s_p^i and between-class similarities s_n^j:

    L = log(1 + sum_j exp(gamma a_n^j (s_n^j - D_n)) * sum_i exp(-gamma a_p^i (s_p^i - D_p)))
      = softplus(logsumexp_j(gamma a_n^j (s_n^j - D_n)) + logsumexp_i(-gamma a_p^i (s_p^i - D_p)))

    a_p^i = [O_p - s_p^i]_+,  a_n^j = [s_n^j - O_n]_+,
    O_p = 1 + m,  O_n = -m,  D_p = 1 - m,  D_n = m.

The weights a are constants in back-propagation (detached, as in the authors' code), so each
similarity is pushed at a speed that grows with its distance from its optimum. m is the
relaxation margin (option `margin`, so `--margin` works) and gamma the scale (option `scale`,
`--scale`); the defaults m = 0.25, gamma = 256 are the paper's face recognition values. The
loss is averaged over anchors that have at least one positive and one negative.
Pairs: every pair of the batch, or those of a miner (`--mining`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.losses.base import LossOutput
from fvtool.losses.metric_base import MetricLoss, euclidean_distances, zero_loss
from fvtool.losses.registry import register_loss
from fvtool.mining.base import Miner


def _masked_logsumexp(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.logsumexp(x.masked_fill(~mask, float("-inf")), dim=1)


FORMS = ("sun", "simple")


@register_loss("circle", family="metric")  # default: every pair
class CircleLoss(MetricLoss):
    """Sun et al. 2020: softplus(lse(gamma a_n (s_n - m)) + lse(-gamma a_p (s_p - 1 + m))); form=simple: a = 1"""

    def __init__(self, margin: float = 0.25, scale: float = 256.0, form: str = "sun",
                 miner: Miner | None = None) -> None:
        margin = optcheck.number("circle", "margin", margin)
        scale = optcheck.number("circle", "scale", scale, low=0.0, low_open=True)  # the paper's gamma
        super().__init__("circle", miner, mining_margin=None)
        self.m = margin
        self.gamma = scale
        self.form = optcheck.choice("circle", "form", form, FORMS)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        x = F.normalize(embeddings, dim=1)
        s = x @ x.t()
        pairs = self.mine_pairs(x, labels, euclidean_distances(x.detach()))
        B = len(labels)
        pos_mask = torch.zeros(B, B, dtype=torch.bool, device=x.device)
        neg_mask = torch.zeros_like(pos_mask)
        pos_mask[pairs.pos_a, pairs.pos_b] = True
        neg_mask[pairs.neg_a, pairs.neg_b] = True
        if self.form == "simple":
            logit_p = -self.gamma * (s - self.m)
            logit_n = self.gamma * (s + self.m)
        else:
            alpha_p = F.relu(1 + self.m - s.detach())
            alpha_n = F.relu(s.detach() + self.m)
            logit_p = -self.gamma * alpha_p * (s - (1 - self.m))
            logit_n = self.gamma * alpha_n * (s - self.m)
        rows = pos_mask.any(1) & neg_mask.any(1)
        stats = {"n_pairs": float(pos_mask.sum() + neg_mask.sum()), "n_anchors": float(rows.sum())}
        if not bool(rows.any()):
            stats["active_fraction"] = 0.0
            return LossOutput(zero_loss(embeddings), {"circle": 0.0}, stats=stats)
        per_anchor = F.softplus(_masked_logsumexp(logit_p[rows], pos_mask[rows])
                                + _masked_logsumexp(logit_n[rows], neg_mask[rows]))
        loss = per_anchor.mean()
        # a pair is active while it has not reached its optimum side of the decision boundary
        with torch.no_grad():
            act = ((s > self.m) & neg_mask).sum() + ((s < 1 - self.m) & pos_mask).sum()
            stats["active_fraction"] = float(act) / max(1.0, stats["n_pairs"])
            stats["pos_similarity"] = float(s[pos_mask].mean())  # rows exist: both masks are non-empty
            stats["neg_similarity"] = float(s[neg_mask].mean())
        return LossOutput(loss, {"circle": float(loss.detach())}, stats=stats)

    def extra_repr(self) -> str:
        return f"m={self.m}, gamma={self.gamma}, form={self.form!r}"
