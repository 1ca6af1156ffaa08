"""What every loss returns, so the engine can log, mine-statistics and alarm uniformly.

Why a small dataclass instead of a bare tensor: the studies fvtool serves compare losses by
their components (reconstruction vs KL, softmax vs center term), by training accuracy for
classification heads, and by the fraction of active pairs/triplets for metric losses (collapse
alarm). One return type carries all of that without special cases in the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate
    components: dict[str, float] = field(default_factory=dict)  # named parts, for logging
    logits: torch.Tensor | None = None  # [B, C] class scores (train accuracy), if the loss has a classifier
    stats: dict[str, float] = field(default_factory=dict)  # e.g. active_fraction, n_triplets
    # (correct, classified, classes) when the loss counts train accuracy itself instead of returning logits
    # (Partial FC: the argmax over classes sharded across processes; the counts are of the global batch)
    counts: tuple[int, int, int] | None = None


# Optional hook on a loss module: `param_groups(weight_decay: float) -> list[dict]`, torch-style optimiser
# groups ("params", optional "lr", "weight_decay", "name") for those of its parameters that must not be
# optimised like the backbone's (center loss: centers at their own learning rate, no decay). Parameters in
# no returned group are optimised like the backbone's (weight decay on matrices only); a group without
# "lr" gets the run's lr. The engine (fvtool/training/methods.py) calls it when present.
