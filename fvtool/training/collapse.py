"""Collapse alarm for metric-learning runs.

Why: pair and triplet losses have a trivial minimum nearby. With too hard a miner, too high a
learning rate or too small a margin the network can map every image to (nearly) the same point
(FaceNet warns that hardest-negative mining "can result in a collapsed model, f(x) = 0"). The
loss then sits at a constant (the margin, for triplets), every tuple is active, the verifier is
at chance, and an unattended run burns its whole budget. This monitor notices within an epoch
or two and stops the run with a message that says what happened and what to change.

Per training step (`update`) it records, from the batch's embeddings after L2 normalisation:
  spread    mean pairwise Euclidean distance (0 = one point; ~1.41 = orthogonal/random directions)
  dim_std   mean over dimensions of the per-dimension standard deviation
  norm      mean raw embedding norm (a network whose outputs vanish collapses too)
and, from the loss's statistics, `active_fraction` (tuples with non-zero loss).
Per epoch (`end_epoch`) it averages them; an epoch is *collapsed* when spread < `min_spread`
(default 0.1: the embeddings of a batch huddle within ~6 degrees of each other; random directions
give ~1.41, trained face models ~1.2-1.4, a fresh backbone ~1.4) or the raw norm is below
`min_norm`. It warns loudly on the console at the first collapsed epoch and, after `patience`
consecutive collapsed epochs, sets `should_stop` with `reason`, which the engine uses to stop the
run (the last checkpoint is kept for inspection). An epoch with no active tuple at all is also
reported (a warning only: the miner/margin gives no gradient, nothing is learned).

Engine hook: `monitor.update(embeddings, loss_output_or_stats)` per step,
`record = monitor.end_epoch(epoch)` per epoch (the record goes into history.jsonl), then
`monitor.should_stop` / `monitor.reason`. `state_dict()` / `load_state_dict()` keep the count
of consecutive collapsed epochs across a resume.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from fvtool.console import console
from fvtool.losses.base import LossOutput

#: at most this many embeddings of a batch enter the spread statistics (cost O(n^2 D) per step)
MAX_ROWS = 256


@dataclass
class EpochCollapseRecord:
    epoch: int
    spread: float | None  # mean pairwise distance of normalised embeddings
    dim_std: float | None
    norm: float | None
    active_fraction: float | None
    collapsed: bool
    consecutive: int
    stop: bool
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}


def embedding_spread(embeddings: torch.Tensor) -> tuple[float, float, float]:
    """(mean pairwise distance, mean per-dimension std, mean norm) of a batch, after L2 normalisation."""
    e = embeddings.detach().float()
    if e.ndim != 2 or e.shape[0] < 2:
        raise ValueError(f"need a [B>=2, D] batch, got {tuple(e.shape)}")
    e = e[:MAX_ROWS]
    norm = float(e.norm(dim=1).mean())
    z = F.normalize(e, dim=1)
    d = torch.cdist(z, z)
    n = z.shape[0]
    spread = float(d.sum() / (n * (n - 1)))
    dim_std = float(z.std(dim=0, unbiased=True).mean())
    return spread, dim_std, norm


class CollapseMonitor:
    """Watches embedding spread and active tuples per epoch; see the module docstring."""

    def __init__(self, patience: int = 2, min_spread: float = 0.1, min_norm: float = 1e-6,
                 quiet: bool = False) -> None:
        if patience < 1:
            raise ValueError(f"collapse patience must be >= 1 epoch (got {patience})")
        self.patience = int(patience)
        self.min_spread = float(min_spread)
        self.min_norm = float(min_norm)
        self.quiet = quiet
        self.consecutive = 0
        self.should_stop = False
        self.reason: str | None = None
        self.records: list[EpochCollapseRecord] = []
        self._reset_epoch()

    @classmethod
    def from_config(cls, config: Any) -> CollapseMonitor:
        """Options from the run config (collapse_patience, collapse_min_spread; None: the defaults)."""
        kw: dict[str, Any] = {}
        if config.collapse_patience is not None:
            kw["patience"] = int(config.collapse_patience)
        if config.collapse_min_spread is not None:
            kw["min_spread"] = float(config.collapse_min_spread)
        return cls(**kw)

    def _reset_epoch(self) -> None:
        self._sums = {"spread": 0.0, "dim_std": 0.0, "norm": 0.0}
        self._n_emb = 0
        self._active = 0.0
        self._n_active = 0

    def update(self, embeddings: torch.Tensor | None, loss_output: LossOutput | dict[str, float] | None) -> None:
        """Record one training step: its embeddings (may be None) and its loss statistics."""
        if embeddings is not None and embeddings.ndim == 2 and embeddings.shape[0] >= 2:
            spread, dim_std, norm = embedding_spread(embeddings)
            if math.isfinite(spread):
                self._sums["spread"] += spread
                self._sums["dim_std"] += dim_std
                self._sums["norm"] += norm
                self._n_emb += 1
        stats = loss_output.stats if isinstance(loss_output, LossOutput) else (loss_output or {})
        af = stats.get("active_fraction")
        if af is not None and math.isfinite(float(af)):
            self._active += float(af)
            self._n_active += 1

    def end_epoch(self, epoch: int | None = None) -> dict[str, Any]:
        """Close the epoch: the verdict as a JSON-able record (also kept in `records`)."""
        epoch = len(self.records) + 1 if epoch is None else int(epoch)
        mean = {k: (v / self._n_emb if self._n_emb else None) for k, v in self._sums.items()}
        active = self._active / self._n_active if self._n_active else None
        self._reset_epoch()
        collapsed = mean["spread"] is not None and (mean["spread"] < self.min_spread or mean["norm"] < self.min_norm)
        self.consecutive = self.consecutive + 1 if collapsed else 0
        message = None
        if collapsed:
            act = f", {100 * active:.0f}% of tuples active" if active is not None else ""
            what = (f"embeddings collapsed at epoch {epoch}: mean pairwise distance of the normalised embeddings "
                    f"{mean['spread']:.4f} (< {self.min_spread}; random directions give ~1.41), mean norm "
                    f"{mean['norm']:.3g}{act}")
            if self.consecutive >= self.patience:
                self.should_stop = True
                message = (f"{what}. Stopped after {self.consecutive} collapsed epoch(s). Try a lower --lr, a "
                           "larger --margin, an easier miner (--mining semihard instead of hard), more "
                           "identities per batch (--pk), or fine-tune from a classification model (--init-from).")
                self.reason = f"collapse: {message}"
            else:
                message = f"{what} ({self.consecutive}/{self.patience} before the run is stopped)"
            if not self.quiet:
                console.print(f"[bold red]COLLAPSE WARNING:[/] {message}")
        elif active is not None and active == 0.0:
            message = (f"epoch {epoch}: no active pair/triplet (every tuple has zero loss): the loss gives no "
                       "gradient; use a harder miner or a larger margin")
            if not self.quiet:
                console.print(f"[bold yellow]warning:[/] {message}")
        rec = EpochCollapseRecord(epoch, mean["spread"], mean["dim_std"], mean["norm"], active, collapsed,
                                  self.consecutive, self.should_stop, message)
        self.records.append(rec)
        return rec.to_dict()

    def state_dict(self) -> dict[str, Any]:
        """JSON-able state: the collapsed-epoch count and the running sums of the current epoch, so
        a run resumed mid-epoch closes that epoch with the same record."""
        return {"consecutive": self.consecutive, "should_stop": self.should_stop, "reason": self.reason,
                "partial": {"_sums": dict(self._sums), "_n_emb": self._n_emb, "_active": self._active,
                            "_n_active": self._n_active},
                "records": [r.to_dict() for r in self.records]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state.get("consecutive", 0))
        self.should_stop = bool(state.get("should_stop", False))
        self.reason = state.get("reason")
        partial = state.get("partial") or {}
        self._sums = {k: float(v) for k, v in partial.get("_sums", self._sums).items()}
        self._n_emb = int(partial.get("_n_emb", self._n_emb))
        self._active = float(partial.get("_active", self._active))
        self._n_active = int(partial.get("_n_active", self._n_active))
        if "records" in state:
            self.records = [EpochCollapseRecord(**r) for r in state["records"]]
