"""Multi-class N-pair loss (Sohn, "Improved Deep Metric Learning with Multi-class N-pair Loss
Objective", NeurIPS 2016).

For N pairs (x_i, x_i^+) from N different identities, with embeddings f_i, f_i^+ (not
normalised; inner products):

    L = 1/N sum_i log(1 + sum_{j != i} exp(f_i . f_j^+ - f_i . f_i^+))

i.e. a softmax cross-entropy in which every anchor must pick its own positive among the N
positives. Sohn regularises the L2 norm of the embeddings; here the loss adds
`l2_reg` * mean_k ||f_k||^2 over every embedding used as anchor or positive (0.002 by default,
a common re-implementation value; the paper leaves the weight open; 0 turns it off).

From a P x K batch the tuples are built without a miner: within each identity the samples are
taken in batch order and paired (1st, 2nd), (3rd, 4th), ...; round r collects the r-th pair of
every identity and is one N-pair problem (rounds with fewer than two identities are skipped).
With K = 2 this is exactly Sohn's N-pair-mc batch (and pml's NPairsLoss); with larger K every
sample is used instead of two per identity.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fvtool import optcheck
from fvtool.losses.base import LossOutput
from fvtool.losses.metric_base import MetricLoss, zero_loss
from fvtool.losses.registry import register_loss


def npair_rounds(labels: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(anchor_idx, positive_idx)] per round; each round has one pair per identity, >= 2 identities."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels.tolist()):
        by_class.setdefault(int(y), []).append(i)
    rounds: list[tuple[list[int], list[int]]] = []
    for idx in by_class.values():
        for r in range(len(idx) // 2):
            if r == len(rounds):
                rounds.append(([], []))
            rounds[r][0].append(idx[2 * r])
            rounds[r][1].append(idx[2 * r + 1])
    dev = labels.device
    return [(torch.tensor(a, device=dev), torch.tensor(p, device=dev)) for a, p in rounds if len(a) >= 2]


@register_loss("npair", family="metric")
class NPairLoss(MetricLoss):
    """Sohn 2016: log(1 + sum_j exp(f.f_j+ - f.f+)) over N pairs of N identities"""

    def __init__(self, l2_reg: float = 0.002) -> None:
        l2_reg = optcheck.number("npair", "l2_reg", l2_reg, low=0.0)
        super().__init__("npair")  # no miner: the N-pair tuples come from the P x K batch itself
        self.l2_reg = l2_reg

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        labels = self.check_batch(embeddings, labels)
        terms, used = [], []
        for a, p in npair_rounds(labels):
            logits = embeddings[a] @ embeddings[p].t()
            terms.append(F.cross_entropy(logits, torch.arange(len(a), device=logits.device), reduction="none"))
            used.extend([a, p])
        if not terms:
            return LossOutput(zero_loss(embeddings), {"npair": 0.0},
                              stats={"n_tuples": 0.0, "active_fraction": 0.0})
        t = torch.cat(terms)
        loss = t.mean()
        comps = {"npair": float(loss.detach())}
        if self.l2_reg > 0:
            reg = self.l2_reg * embeddings[torch.cat(used)].pow(2).sum(1).mean()
            comps["l2_reg"] = float(reg.detach())
            loss = loss + reg
        # a term is "active" while the anchor's own positive does not win by a clear margin (loss > 0.01)
        stats = {"n_tuples": float(t.numel()), "n_rounds": float(len(terms)),
                 "active_fraction": float((t.detach() > 0.01).float().mean())}
        return LossOutput(loss, comps, stats=stats)

    def extra_repr(self) -> str:
        return f"l2_reg={self.l2_reg}"
