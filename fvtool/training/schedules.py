"""Optimisers and learning-rate schedules.

Why schedules are factors of each group's base learning rate, updated every step: parameter
groups may have their own learning rates (center loss centres), and one multiplicative factor
keeps their ratio; per-step updates make warm-up and OneCycle smooth within an epoch. The
schedule's whole state is a few numbers, saved in checkpoints.

Schedules (t = step, T = total steps, w = warm-up steps; linear warm-up from 0 first if w > 0):
  constant   1
  step       gamma ** (milestones passed); milestones < 1 are fractions of the run, >= 1 epochs
  cosine     0.5 * (1 + cos(pi * (t - w) / (T - w)))
  onecycle   torch's OneCycleLR rule (cosine annealing, pct_start 0.3 or the warm-up, div_factor 25,
             final_div_factor 1e4), without momentum cycling
  plateau    0.1 ** drops: the engine drops the rate 10x when validation has not improved for
             `plateau_patience` evaluations and restarts from the best weights; after `max_drops`
             drops a further plateau ends the run (the thesis' "drop and restart" recipe)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from fvtool.errors import InputError
from fvtool.training.config import TrainConfig


def build_optimizer(groups: list[dict[str, Any]], config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with Nesterov momentum, Adam or AdamW; each group keeps its own lr if it set one."""
    for g in groups:
        g.setdefault("lr", config.lr)
        g["base_lr"] = g["lr"]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=config.momentum > 0)
    if config.optimizer == "adam":
        # torch's Adam adds L2 to the gradient (the classic "weight decay" of Adam papers)
        return torch.optim.Adam(groups, lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    raise InputError(f"unknown optimizer {config.optimizer!r}")


class LRSchedule:
    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.kind = config.schedule
        self.spe = max(1, steps_per_epoch)
        self.total = max(1, config.epochs * self.spe)
        self.warmup = round((config.warmup_epochs or 0.0) * self.spe)
        self.gamma = config.gamma
        self.milestones = sorted(round(m * self.total) if m < 1 else round(m * self.spe)
                                 for m in config.milestones)
        self.drops = 0
        # OneCycle's rising phase ends at step pct_start * T - 1 (torch's float rule), or after the warm-up
        self.oc_peak = (0.3 * self.total if self.warmup == 0 else float(self.warmup)) - 1

    def factor(self, step: int) -> float:
        t = min(step, self.total)
        if self.kind == "onecycle":
            return self._onecycle(t)
        f = 1.0
        if self.warmup > 0 and t < self.warmup:
            f = (t + 1) / self.warmup
        if self.kind == "step":
            f *= self.gamma ** sum(t >= m for m in self.milestones)
        elif self.kind == "cosine" and t >= self.warmup:
            span = max(1, self.total - self.warmup)
            f *= 0.5 * (1 + math.cos(math.pi * (t - self.warmup) / span))
        elif self.kind == "plateau":
            f *= 0.1 ** self.drops
        return f

    def _onecycle(self, t: int) -> float:
        div, final_div = 25.0, 1e4
        start, peak, end = 1.0 / div, 1.0, 1.0 / (div * final_div)
        up = max(1e-9, self.oc_peak)
        down = max(1e-9, self.total - 1 - up)

        def cos_anneal(a: float, b: float, pct: float) -> float:
            return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)

        if t <= up:
            return cos_anneal(start, peak, t / up)
        return cos_anneal(peak, end, min(1.0, (t - up) / down))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's lr for `step`; returns the factor."""
        f = self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        return f

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "drops": self.drops}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.drops = int(state.get("drops", 0))
