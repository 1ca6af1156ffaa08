"""Partial FC (An et al., "Partial FC: Training 10 Million Identities on a Single Machine", ICCVW 2021 /
"Killing Two Birds with One Stone", CVPR 2022): a class-sharded margin-softmax head with sampled negatives.

Why: a classification loss holds one weight row per training identity. Replicated on every rank (plain
DDP), 2 M identities x 512 dims is 4 GB of fp32 weights per GPU, as much again for the gradient and per
optimiser buffer, and the softmax over all classes dominates the step. Here the rows are sharded:

- rank k of N holds the class rows [k*C//N, (k+1)*C//N) (`shard.*`: the loss's per-class tables,
  e.g. `weight`, and `bias` for softmax) and nothing else of the class dimension;
- the features (and labels) of all ranks are all-gathered, so every rank scores the global batch of B
  features against its own rows: [B, C/N] logits, margins applied locally (the target logit lives on
  the rank that holds the class; `ClassificationLoss.margin_logits` works on any subset of rows);
- the softmax normaliser is reduced across ranks (all-reduce of the row max, then of the sum of
  exponentials) and so is the target logit, giving every rank the exact global cross-entropy;
- backward: d loss / d logits = (p - onehot) / B on each shard, and the feature gradient is summed
  over ranks (all-reduce) before each rank keeps its own features' part, multiplied by N so that
  DDP's average over ranks gives the full gradient (the same convention as fvtool's gathered metric
  losses and insightface's AllGather);
- sampling (`sample_rate` r < 1): per step every rank keeps the positive classes of the global batch
  that fall in its shard and a random subset of its negatives, max(int(r * C_k), #positives, 1) rows in
  all (insightface's rule); the draw is a pure function of (seed, rank, step), so a resumed run draws
  the same rows. Only the kept rows take part in the softmax and get a gradient. At r = 1 the head is
  exactly the full classifier (tested to float rounding against the single-process loss: value,
  feature gradients, weights after SGD steps).

Statistics that the margin heads keep (AdaFace's norm EMA, CurricularFace's t, SphereFace's lambda
schedule) are computed from the global batch (the gathered norms and the all-reduced target cosines),
so they are identical on every rank and equal to the single-process values. MagFace's regulariser is
a per-feature term and is computed on the local features.

What is not sharded: center loss (a second class table with its own update rule) and label smoothing
(the smoothing term needs the mean log-probability over all classes); both are refused. Train accuracy
comes from two more small reductions (the row maximum of the margin-free logits and the own class's
logit); with sampling it is the accuracy among the kept classes (optimistic).

Checkpoints: each rank's shard and optimiser state go to a file of its own next to the run's
checkpoint (fvtool/training/distributed.py); resuming needs the same number of ranks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from fvtool import optcheck
from fvtool.errors import InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.classification import ClassificationLoss, target_scores


def shard_range(num_classes: int, rank: int, world: int) -> tuple[int, int]:
    """The class rows [lo, hi) of rank `rank` of `world`: [rank*C//N, (rank+1)*C//N)."""
    return rank * num_classes // world, (rank + 1) * num_classes // world


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _mixed_seed(seed: int, rank: int, step: int) -> int:
    """A 32-bit seed from (run seed, rank, step); step -1 is the shard's initialisation."""
    return int(np.random.SeedSequence([seed, rank, step + 1]).generate_state(1)[0])


def _all_reduce(t: torch.Tensor, op: Any, world: int) -> torch.Tensor:
    if world > 1:
        dist.all_reduce(t, op=op)
    return t


class _GatherFeatures(torch.autograd.Function):
    """All ranks' [b, D] features concatenated in rank order; backward sums the gradient over ranks and
    returns this rank's rows times the world size (DDP then averages over ranks)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, rank: int, world: int) -> torch.Tensor:
        ctx.rank, ctx.world, ctx.b = rank, world, x.shape[0]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.b:(ctx.rank + 1) * ctx.b] * ctx.world, None, None


class _ShardedCrossEntropy(torch.autograd.Function):
    """Mean over the B rows of log sum_j exp(z_j) - z_y, with the columns spread over the ranks.

    `target_col` is the column of each row's class in this rank's logits (-1 where another rank holds it)."""

    @staticmethod
    def forward(ctx: Any, logits: torch.Tensor, target_col: torch.Tensor, world: int) -> torch.Tensor:
        with torch.no_grad():
            row_max = _all_reduce(logits.max(dim=1).values, dist.ReduceOp.MAX, world)
            e = torch.exp(logits - row_max[:, None])
            total = _all_reduce(e.sum(dim=1), dist.ReduceOp.SUM, world)
            z_y = _all_reduce(target_scores(logits, target_col), dist.ReduceOp.SUM, world)
            loss = (torch.log(total) + row_max - z_y).mean()
            ctx.save_for_backward(e / total[:, None], target_col)
        return loss

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        p, target_col = ctx.saved_tensors
        g = p.clone()
        rows = torch.nonzero(target_col >= 0).squeeze(1)
        g[rows, target_col[rows]] -= 1.0
        return g * (grad / p.shape[0]), None, None


class PartialFC(nn.Module):
    """A classification loss with its class rows sharded over the ranks of the process group (see module doc).

    `build(n)` builds the wrapped loss for n classes (the registry factory with the user's options). It is
    called twice: for the formulas and hyperparameters with the real class count on the meta device (no
    memory), and for this rank's n_local rows on the real device (their initialisation and the loss's
    state buffers), under a random generator forked from (seed, rank) so that ranks get different rows
    and the global torch RNG stream stays the same on every rank.
    """

    def __init__(self, build: Callable[[int], nn.Module], *, num_classes: int, embedding_size: int,
                 sample_rate: float = 1.0, seed: int = 0, rank: int | None = None, world: int | None = None) -> None:
        super().__init__()
        owner = "--partial-fc"
        self.sample_rate = optcheck.number(owner, "sample rate", sample_rate, low=0.0, high=1.0, low_open=True)
        self.seed = int(seed)
        r, w = _world()
        self.rank, self.world = (r if rank is None else rank), (w if world is None else world)
        self.num_classes, self.embedding_size = int(num_classes), int(embedding_size)
        self.lo, self.hi = shard_range(self.num_classes, self.rank, self.world)
        n_local = self.hi - self.lo
        if n_local < 2:
            raise InputError(f"{owner}: {self.num_classes} classes over {self.world} processes leave rank "
                             f"{self.rank} {n_local} class(es); Partial FC needs at least 2 per process")
        with torch.device("meta"):
            inner = build(self.num_classes)
        if not isinstance(inner, ClassificationLoss) or not inner.shardable:
            raise InputError(f"{owner}: loss {getattr(inner, 'owner', type(inner).__name__)} cannot be sharded "
                             "(Partial FC shards the softmax-type classification losses; not center loss or "
                             "metric losses)")
        if inner.label_smoothing:
            raise InputError(f"{owner}: label smoothing needs the mean log-probability over all classes; "
                             "use label_smoothing=0 with Partial FC")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_mixed_seed(self.seed, self.rank, -1))
            local = build(n_local)
        tables = local.class_tables()
        # the wrapped loss keeps its formulas and state buffers; its (meta) class tables are dropped
        meta_tables = {id(t) for t in inner.class_tables().values()}
        for module in inner.modules():
            for name, p in list(module.named_parameters(recurse=False)):
                if id(p) in meta_tables:
                    module.register_parameter(name, None)
        if any(True for _ in inner.parameters()):
            raise InputError(f"{owner}: {inner.owner} has parameters besides its class tables; cannot shard it")
        inner.load_state_dict(dict(local.named_buffers()), strict=True, assign=True)
        self.inner = inner
        self.shard = nn.ParameterDict({k: nn.Parameter(v.detach().clone()) for k, v in tables.items()})
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))  # training forwards (sampling seed)
        self.register_buffer("shard_info", torch.tensor([self.lo, self.hi, self.num_classes, self.world]))
        self.last_rows: torch.Tensor | None = None  # the rows of the last forward (for tests)

    # ---- pieces -------------------------------------------------------------------------------
    def sample_rows(self, labels: torch.Tensor, step: int) -> torch.Tensor:
        """Sorted local row indices kept this step: this shard's positives of `labels` (global batch)
        plus random negatives, max(int(r * n_local), #positives, 1) in all (all rows at r = 1)."""
        n_local = self.hi - self.lo
        device = self.shard["weight"].device
        if self.sample_rate >= 1.0:
            return torch.arange(n_local, device=device)
        mine = (labels >= self.lo) & (labels < self.hi)
        positives = torch.unique(labels[mine] - self.lo).cpu()
        k = max(1, int(self.sample_rate * n_local))  # a shard without positives still joins the softmax
        if positives.numel() >= k:
            return positives.to(device)
        g = torch.Generator().manual_seed(_mixed_seed(self.seed, self.rank, step))
        priority = torch.rand(n_local, generator=g)
        priority[positives] = 2.0
        return torch.topk(priority, k).indices.sort().values.to(device)

    def gather(self, x: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.world == 1:
            return x, labels
        if dist.get_world_size() != self.world:
            raise InputError(f"--partial-fc: the head was built for {self.world} processes, the job has "
                             f"{dist.get_world_size()}")
        parts = [torch.empty_like(labels) for _ in range(self.world)]
        dist.all_gather(parts, labels.contiguous())
        return _GatherFeatures.apply(x, self.rank, self.world), torch.cat(parts)

    # ---- the loss ----------------------------------------------------------------------------------
    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> LossOutput:
        inner = self.inner
        labels = inner.check_batch(embeddings, labels)
        step = int(self.steps)
        if self.training:
            self.steps += 1
        with torch.autocast(embeddings.device.type, enabled=False):
            x_local = embeddings.float()
            x, y = self.gather(x_local, labels)
            rows = self.sample_rows(y, step)
            self.last_rows = rows
            tables = {k: v if self.sample_rate >= 1.0 else v[rows] for k, v in self.shard.items()}
            mine = (y >= self.lo) & (y < self.hi)
            target_col = torch.full_like(y, -1)
            target_col[mine] = torch.searchsorted(rows, y[mine] - self.lo)
            scores = inner.scores(x, tables)
            with torch.no_grad():
                score_y = _all_reduce(target_scores(scores, target_col), dist.ReduceOp.SUM, self.world)
            norms = x.norm(dim=1)
            if self.training:
                inner.observe(score_y, norms.detach())
            logits = inner.margin_logits(scores, target_col, score_y, norms)
            ce = _ShardedCrossEntropy.apply(logits, target_col, self.world)
            extra = inner.regularisers(x_local)
            loss = ce + sum(extra.values()) if extra else ce
            counts = self.accuracy_counts(inner.plain_logits(scores, norms).detach(), target_col)
        components = {"ce": float(ce.detach())} | {k: float(v.detach()) for k, v in extra.items()}
        components |= inner.state_components()
        stats = inner.batch_stats(score_y) | {"fc_rows": float(rows.numel())}
        return LossOutput(loss=loss, components=components, logits=None, stats=stats, counts=counts)

    def accuracy_counts(self, plain: torch.Tensor, target_col: torch.Tensor) -> tuple[int, int, int]:
        """(correct, B, C) of the global batch: the own class's margin-free logit is the largest of all
        ranks' kept rows (with sampling, among the kept classes only)."""
        with torch.no_grad():
            best = _all_reduce(plain.max(dim=1).values, dist.ReduceOp.MAX, self.world)
            own = _all_reduce(target_scores(plain, target_col), dist.ReduceOp.SUM, self.world)
            return int((own >= best).sum()), int(plain.shape[0]), self.num_classes

    def extra_repr(self) -> str:
        return (f"rows=[{self.lo}, {self.hi}) of {self.num_classes}, rank {self.rank}/{self.world}, "
                f"sample_rate={self.sample_rate}")


def full_rows_of(loss: nn.Module, lo: int, hi: int) -> dict[str, torch.Tensor]:
    """The rows [lo, hi) of a full (unsharded) classification loss's tables (tests, conversions)."""
    if not isinstance(loss, ClassificationLoss):
        raise TypeError(f"{type(loss).__name__} is not a classification loss")
    return {k: v.detach()[lo:hi].clone() for k, v in loss.class_tables().items()}




def clip_grad_norm_sharded(params: list[torch.Tensor], shard: list[torch.Tensor], max_norm: float,
                           world: int) -> float:
    """`torch.nn.utils.clip_grad_norm_` over the replicated `params` (the same gradient on every rank after
    DDP's all-reduce) plus every rank's `shard` rows, i.e. what one process clipping the full model would
    do; scales the gradients in place and returns the total norm."""
    grads = [p.grad for p in params if p.grad is not None]
    shard_grads = [p.grad for p in shard if p.grad is not None]
    device = (grads or shard_grads)[0].device
    sq_shard = sum((g.detach().float().pow(2).sum() for g in shard_grads), torch.zeros((), device=device))
    sq_shard = _all_reduce(sq_shard.clone(), dist.ReduceOp.SUM, world)
    sq_rest = sum((g.detach().float().pow(2).sum() for g in grads), torch.zeros((), device=device))
    total = torch.sqrt(sq_shard + sq_rest)
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in (*grads, *shard_grads):
        g.mul_(coef.to(g.dtype))
    return float(total)
