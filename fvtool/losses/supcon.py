"""Supervised contrastive loss (Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020),
the L^sup_out form.

With L2-normalised embeddings z, temperature tau, P(i) the other samples of i's identity and
A(i) all samples but i:

    L = sum_i  -1/|P(i)|  sum_{p in P(i)}  log( exp(z_i . z_p / tau) / sum_{a in A(i)} exp(z_i . z_a / tau) )

averaged over the anchors that have at least one positive in the batch. Every other sample of
the batch is a candidate, so no miner is used; a low temperature (default 0.1, the paper's
value for its best runs and pml's default) weights hard negatives more.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.losses.base import LossOutput
from fvtool.losses.metric_base import MetricLoss, zero_loss
from fvtool.losses.registry import register_loss
from fvtool.mining.base import label_masks


@register_loss("supcon", family="metric")
class SupConLoss(MetricLoss):
    """Khosla et al. 2020: -mean_p log softmax_a(z.z_p / tau), L_out form"""

    def __init__(self, temperature: float = 0.1) -> None:
        temperature = optcheck.number("supcon", "temperature", temperature, low=0.0, low_open=True)
        super().__init__("supcon")  # no miner: every other sample of the batch is a candidate
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        z = F.normalize(embeddings, dim=1)
        logits = (z @ z.t()) / self.temperature
        pos, _ = label_masks(labels)
        eye = torch.eye(len(labels), dtype=torch.bool, device=z.device)
        log_prob = logits - torch.logsumexp(logits.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
        rows = pos.any(1)
        stats = {"n_anchors": float(rows.sum()), "n_pos_pairs": float(pos.sum())}
        if not bool(rows.any()):
            stats["active_fraction"] = 0.0
            return LossOutput(zero_loss(embeddings), {"supcon": 0.0}, stats=stats)
        per_anchor = -(log_prob * pos).sum(1)[rows] / pos.sum(1)[rows]
        loss = per_anchor.mean()
        with torch.no_grad():  # active: a positive that is not the anchor's most similar candidate yet
            best_neg = logits.masked_fill(pos | eye, float("-inf")).max(1, keepdim=True).values
            stats["active_fraction"] = float(((logits < best_neg) & pos).sum()) / max(1.0, float(pos.sum()))
        return LossOutput(loss, {"supcon": float(loss.detach())}, stats=stats)

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}"
