"""Multi-process training (DistributedDataParallel) under torchrun, or spawned by `fvtool train --nproc N`.

The contract: N processes with a global batch of B images train the same model as one process
with batches of B, step for step (the loss curve and the weights agree to float rounding on the
CPU when batch norm is `frozen`; tested in tests/test_distributed.py). What makes that hold:

- `--batch-size` / `--pk` are the GLOBAL batch. Every rank builds the same global sampler (same
  seed, same epoch plan) and takes a disjoint contiguous 1/N slice of every batch (pair batches
  are sliced by pair). A batch that does not split into N equal parts is refused: DDP averages
  gradients over ranks, which equals the global-batch mean only when every rank's loss is the
  mean over an equal number of images. With augmentation, each rank augments the whole global
  batch with the batch's seeded generator and keeps its slice, so rank r's images are exactly
  the images the one-process run has at those positions (costs N x the augmentation work, which
  is small next to a training step; without augmentation only the slice is read).
- Metric losses (triplet, contrastive, margin, ...) gather the embeddings and labels of all ranks
  before the loss, in rank order, so the miner sees the global batch in the one-process order
  (pytorch-metric-learning's DistributedLossWrapper does the same). The gathered copies carry
  no gradient; the local part carries the gradient scaled by N, so that DDP's average over ranks
  gives the full gradient. (pml multiplies the loss by N instead, which also multiplies the
  gradients of the loss's own parameters, e.g. the margin loss's beta, by N; scaling only the
  embedding path keeps them right.) Every rank computes the same global loss, so miners with
  random draws stay in step (same generator, same inputs).
- Classification losses keep their classifier weights REPLICATED on every rank (plain DDP) unless
  `--partial-fc R` is given: at 100,000 identities x 512 dims the weight matrix is 205 MB in
  float32, plus as much for its gradient and per momentum buffer (SGD: 0.6 GB per rank; Adam:
  0.8 GB). With Partial FC (fvtool/losses/partial_fc.py) each rank keeps C/N rows, all-gathers the
  embeddings and forms the softmax with all-reduced max and sum of exponentials; the loss module is
  then left out of DDP (its rows differ per rank and must neither be broadcast nor averaged), and
  each checkpoint gets one side file per rank, `<name>.fc-rank<k>-of-<N>.pt`, with that rank's rows,
  the loss's state and the rank's optimiser state (momentum of its rows). See docs/scaling.md.
- Batch norm: per-rank statistics unless `--batchnorm sync` (SyncBatchNorm, CUDA only) or
  `frozen` (fvtool/training/batchnorm.py). DDP broadcasts rank 0's buffers at every forward.
- Only rank 0 writes: config.json, history.jsonl, checkpoints, progress bars and console output
  (the engine's `is_main` gates). Validation runs on rank 0 and its result is sent to all ranks,
  so best-checkpoint selection, plateau restarts and early stopping decide the same everywhere.
  Checkpoints are read by every rank (resume, plateau restarts), so with several machines the
  run folder must be on storage every machine sees at the same path.
- The logged loss, components, statistics and train accuracy are those of the global batch
  (per-rank values are averaged; counts summed); img/s counts the images of all ranks.
- Checkpoints record the world size; resuming with another number of processes is refused.

Environment (set by torchrun or `spawn`): RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT. Backend: gloo for the CPU, NCCL for CUDA (one GPU per process: cuda:LOCAL_RANK).
FVTOOL_DIST_TIMEOUT (seconds, default 3600) bounds how long ranks wait for each other, e.g.
while rank 0 decodes the image cache or validates.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import faulthandler
import math
import os
import socket
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

import fvtool.errors as errors
from fvtool.console import console
from fvtool.data.samplers import SampledBatch
from fvtool.errors import FvtoolError, InputError
from fvtool.losses.base import LossOutput
from fvtool.losses.partial_fc import PartialFC, clip_grad_norm_sharded
from fvtool.runtime import no_cuda
from fvtool.training.checkpoint import json_field, load_checkpoint, save_checkpoint
from fvtool.training.config import TrainConfig
from fvtool.training.data import BatchLoader, prepare_training_data
from fvtool.training.engine import Trainer
from fvtool.training.methods import Batch, EmbeddingLossMethod, Method

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_S = 3600


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_CTX: DistContext | None = None


def _int_env(environ: dict[str, str] | os._Environ[str], name: str) -> int | None:
    raw = environ.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise InputError(f"environment variable {name}={raw!r} is not an integer (set by torchrun)") from None


def env_world(environ: dict[str, str] | os._Environ[str] | None = None) -> tuple[int, int, int] | None:
    """(rank, world_size, local_rank) from torchrun's variables, or None outside a distributed launch."""
    env = os.environ if environ is None else environ
    rank, world, local = _int_env(env, "RANK"), _int_env(env, "WORLD_SIZE"), _int_env(env, "LOCAL_RANK")
    if rank is None and world is None:
        return None
    if rank is None or world is None:
        raise InputError("RANK and WORLD_SIZE must be set together (launch with torchrun, or unset both)")
    if world < 1 or not 0 <= rank < world:
        raise InputError(f"RANK={rank} / WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE")
    local = rank if local is None else local
    if local < 0:
        raise InputError(f"LOCAL_RANK={local} must be >= 0")
    return rank, world, local


def device_for(device: str, local_rank: int) -> torch.device:
    """The device of the process with `local_rank`: cuda:LOCAL_RANK for CUDA runs, else the CPU."""
    want_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not want_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise no_cuda(device)
    n = torch.cuda.device_count()
    if local_rank >= n:
        raise InputError(f"LOCAL_RANK={local_rank} but this machine has {n} CUDA device(s): start at most {n} "
                         "processes per machine (torchrun --nproc_per_node)")
    return torch.device("cuda", local_rank)


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def current() -> DistContext | None:
    """The initialised context of this process, or None when it is not part of a multi-process job."""
    return _CTX


def init_distributed(device: str = "auto") -> DistContext | None:
    """Join the process group described by the environment (torchrun's variables); None when the
    environment names no job or a job of one process (then everything runs as without torchrun)."""
    global _CTX
    if _CTX is not None:
        return _CTX
    env = env_world()
    if env is None or env[1] == 1:
        return None
    rank, world, local = env
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise InputError(f"WORLD_SIZE={world} but {', '.join(missing)} is not set: launch with torchrun "
                         "(`torchrun --nproc_per_node N -m fvtool train ...`) or `fvtool train --nproc N`")
    dev = device_for(device, local)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    backend = backend_for(dev)
    if not dist.is_initialized():
        timeout = _dt.timedelta(seconds=float(os.environ.get("FVTOOL_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world, timeout=timeout)
    _CTX = DistContext(rank, world, local, dev, backend)
    return _CTX


def shutdown(*, completed: bool = False) -> None:
    """Leave the process group (at the end of a run; safe to call when none was joined).

    `completed`: every rank finished its work; they then meet at a barrier before any of them closes
    its connections. Without it a fast rank can tear its gloo sockets down while a slower one still
    reads from them, and gloo's I/O thread aborts that process (SIGABRT) although the work is done.
    After a failure there is no barrier: the other ranks may be inside a collective it would not match."""
    global _CTX
    if dist.is_available() and dist.is_initialized():
        if completed and _CTX is not None:
            barrier(_CTX)
        elif completed:
            dist.barrier()
        dist.destroy_process_group()
    _CTX = None


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (NCCL is told this rank's GPU, so it does not guess one)."""
    if ctx.device.type == "cuda":
        dist.barrier(device_ids=[ctx.device.index])
    else:
        dist.barrier()


def agree(value: Any) -> Any:
    """Rank 0's `value` on every rank (e.g. a timestamped run name); `value` itself without a job."""
    if _CTX is None:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def on_main(fn: Callable[[], Any]) -> Any:
    """Run `fn` on rank 0 only and return its result on every rank; an error on rank 0 is raised on
    every rank (the same FvtoolError type and message), so no rank is left waiting for the others."""
    if _CTX is None:
        return fn()
    box: list[Any] = [None]
    if _CTX.is_main:
        try:
            box[0] = ("ok", fn())
        except FvtoolError as e:
            box[0] = ("fvtool", type(e).__name__, str(e))
            dist.broadcast_object_list(box, src=0)
            raise
        except BaseException as e:
            box[0] = ("error", type(e).__name__, str(e))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind = box[0][0]
    if kind == "ok":
        return box[0][1]
    if kind == "fvtool":
        cls = getattr(errors, box[0][1], FvtoolError)
        raise cls(box[0][2])
    raise RuntimeError(f"rank 0 failed: {box[0][1]}: {box[0][2]}")


# ---- per-rank batches ------------------------------------------------------------------------

def _part(n: int, rank: int, world: int, what: str) -> slice:
    if n % world:
        raise InputError(f"a global batch of {n} {what} does not split into {world} equal parts (one per process); "
                         f"use a batch size divisible by {world} (--batch-size, or P*K with --pk)")
    m = n // world
    return slice(rank * m, (rank + 1) * m)


def slice_sampled(sb: SampledBatch, rank: int, world: int) -> SampledBatch:
    """Rank `rank`'s contiguous part of a global batch of row indices (pair batches: by pair)."""
    if sb.same is None:
        return SampledBatch(sb.indices[_part(len(sb.indices), rank, world, "images")])
    b = len(sb.same)
    s = _part(b, rank, world, "pairs")
    return SampledBatch(np.concatenate([sb.indices[:b][s], sb.indices[b:][s]]), sb.same[s])


def slice_batch(batch: Batch, rank: int, world: int) -> Batch:
    """The same slice of an assembled global `Batch` (images, labels, and `same` for pairs)."""
    if batch.same is None:
        s = _part(int(batch.images.shape[0]), rank, world, "images")
        images, labels = batch.images[s], batch.labels[s]
    else:
        b = int(batch.same.shape[0])
        s = _part(b, rank, world, "pairs")
        images = torch.cat([batch.images[:b][s], batch.images[b:][s]])
        labels = torch.cat([batch.labels[:b][s], batch.labels[b:][s]])
    return Batch(images=images, labels=labels, same=None if batch.same is None else batch.same[s],
                 epoch=batch.epoch, step=batch.step, steps_per_epoch=batch.steps_per_epoch)


class RankBatchLoader(BatchLoader):
    """A BatchLoader that yields this rank's slice of every global batch (see the module docstring)."""

    def __init__(self, inner: BatchLoader, rank: int, world: int) -> None:
        super().__init__(inner.array, inner.rows, inner.labels, inner.transform, inner.device, inner.seed,
                         prefetch=inner.prefetch)
        self.rank, self.world = rank, world

    def make(self, sb: SampledBatch, epoch: int, index: int) -> Batch:
        if self.transform.augment is None:  # no randomness: read and prepare only this rank's images
            return super().make(slice_sampled(sb, self.rank, self.world), epoch, index)
        return slice_batch(super().make(sb, epoch, index), self.rank, self.world)


# ---- gathering for metric losses -------------------------------------------------------------

class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by `factor` (see the module docstring)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.factor, None


def gather_batch(embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All ranks' embeddings and labels concatenated in rank order; only this rank's part keeps
    its graph (gradient x world size). Every rank must pass the same shapes."""
    world, rank = dist.get_world_size(), dist.get_rank()
    emb_parts = [torch.empty_like(embeddings) for _ in range(world)]
    dist.all_gather(emb_parts, embeddings.detach().contiguous())
    lab_parts = [torch.empty_like(labels) for _ in range(world)]
    dist.all_gather(lab_parts, labels.contiguous())
    emb_parts[rank] = _ScaleGrad.apply(embeddings, float(world))
    return torch.cat(emb_parts), torch.cat(lab_parts)


def gathers_batch(method: Method) -> bool:
    """Whether the method's loss needs the global batch (metric losses: mining over all ranks)."""
    return isinstance(method, EmbeddingLossMethod) and method.family == "metric"


class _StepModule(nn.Module):
    """What DDP wraps: the whole method (backbone and loss parameters). The batch is handed over
    as an attribute, so DDP never copies or inspects the Batch dataclass."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method
        self.pending: Batch | None = None

    def forward(self) -> LossOutput:
        batch, self.pending = self.pending, None
        assert batch is not None
        return self.method.training_step(batch)


def _mean_dicts(dicts: Sequence[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    return {k: math.fsum(float(d[k]) for d in dicts if k in d) / sum(1 for d in dicts if k in d) for k in keys}


# ---- the trainer ---------------------------------------------------------------------------

class DistributedTrainer(Trainer):
    """The engine's Trainer as one rank of a DDP job (the process group must be initialised)."""

    def __init__(self, config: TrainConfig, run_dir: Path, *, ctx: DistContext, resume: bool = False,
                 show_progress: bool = True, cache_dir: Path | None = None, prefetch: int = 2) -> None:
        self.ctx = ctx
        self.is_main = ctx.is_main
        self.world_size = ctx.world_size
        self._last_value = math.nan
        self._last_counts: tuple[int, int] | None = None
        if not ctx.is_main:  # rank 0 speaks for the job (progress, notes, collapse warnings)
            console.quiet = True
        # rank 0 decodes the image cache first; the others then find it instead of decoding it too
        if ctx.is_main:
            prepare_training_data(config, cache_dir=cache_dir, show_progress=show_progress)
        barrier(ctx)
        super().__init__(config, run_dir, resume=resume, show_progress=show_progress and ctx.is_main,
                         cache_dir=cache_dir, prefetch=prefetch)
        plan = self.sampler.plan(self.sampler.epoch)
        for sb in plan[:1]:
            slice_sampled(sb, ctx.rank, ctx.world_size)  # refuses batches that do not split evenly
        self.loader = RankBatchLoader(self.loader, ctx.rank, ctx.world_size)
        self.gathered = gathers_batch(self.method)
        if self.gathered:
            self.method.loss.register_forward_pre_hook(self._gather_hook)  # type: ignore[union-attr]
        self._step_module = _StepModule(self.method)
        sharded = self._sharded_loss()
        if sharded is not None:  # per-rank rows: DDP must neither broadcast nor average them
            names = [f"method.loss.{n}" for n, _ in [*sharded.named_parameters(), *sharded.named_buffers()]]
            nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(self._step_module, names)
        # device_ids stays None on CUDA too (allowed for single-device modules whose inputs are already on
        # the device): with device_ids DDP indexes the moved inputs, and this forward takes none. The CPU
        # and GPU runs then share one DDP code path.
        self.ddp = nn.parallel.DistributedDataParallel(self._step_module, device_ids=None)
        self.notes.append(f"DDP: {ctx.world_size} processes ({ctx.backend}), global batch split "
                          f"{ctx.world_size} ways" + (", metric loss over the gathered global batch"
                                                      if self.gathered else "")
                          + (f", Partial FC: class rows sharded {ctx.world_size} ways, sample rate "
                             f"{sharded.sample_rate:g}" if sharded is not None else ""))

    def _gather_hook(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        emb, labels = gather_batch(args[0], args[1])
        self.method.last_embeddings = emb.detach()  # the collapse monitor sees the global batch
        return (emb, labels, *args[2:])

    def _forward(self, batch: Any) -> LossOutput:
        self._step_module.pending = batch
        out: LossOutput = self.ddp()
        local = float(out.loss.detach())
        if self.gathered:  # the same global loss on every rank: nothing to combine
            self._last_value, self._last_counts = local, None
            return out
        counts = None
        if out.logits is not None and out.logits.shape[0] == batch.labels.shape[0]:
            counts = (int((out.logits.detach().argmax(1) == batch.labels).sum()), int(batch.labels.shape[0]))
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, (local, dict(out.components), dict(out.stats), counts))
        self._last_value = math.fsum(p[0] for p in parts) / self.world_size
        out.components = _mean_dicts([p[1] for p in parts])
        out.stats = _mean_dicts([p[2] for p in parts])
        all_counts = [p[3] for p in parts]
        self._last_counts = None if any(c is None for c in all_counts) else (
            sum(c[0] for c in all_counts), sum(c[1] for c in all_counts))
        return out

    def _loss_value(self, out: LossOutput) -> float:
        return self._last_value

    def _step_counts(self, out: LossOutput, batch: Any) -> tuple[int, tuple[int, int] | None]:
        return int(batch.images.shape[0]) * self.world_size, self._last_counts

    def _validate(self) -> dict[str, Any] | None:
        return on_main(lambda: Trainer._validate(self))

    # ---- Partial FC: per-rank checkpoint side files ------------------------------------------------
    def _sharded_loss(self) -> PartialFC | None:
        loss = getattr(self.method, "loss", None)
        return loss if isinstance(loss, PartialFC) and loss.world > 1 else None

    def _clip_gradients(self, params: list[torch.nn.Parameter]) -> None:
        sharded = self._sharded_loss()
        if sharded is None:
            return super()._clip_gradients(params)
        own = {id(p) for p in sharded.parameters()}
        clip_grad_norm_sharded([p for p in params if id(p) not in own], [p for p in params if id(p) in own],
                               float(self.config.grad_clip or 0.0), self.world_size)

    def _shard_path(self, path: Path) -> Path:
        return path.with_name(f"{path.stem}.fc-rank{self.ctx.rank}-of-{self.world_size}{path.suffix}")

    def save(self, name: str) -> Path:
        path = super().save(name)
        sharded = self._sharded_loss()
        if sharded is not None:
            save_checkpoint(self._shard_path(path), {
                "kind": "partial-fc-shard", "rank": self.ctx.rank, "world_size": self.world_size,
                "step": self.step, "rows": [sharded.lo, sharded.hi], "num_classes": sharded.num_classes,
                "loss": sharded.state_dict(), "optimizer": self.optimizer.state_dict()})
        return path

    def _load(self, path: Path) -> dict[str, Any]:
        """The run's checkpoint with this rank's class rows, loss state and optimiser state from its side file."""
        state = super()._load(path)
        sharded = self._sharded_loss()
        if sharded is None:
            return state
        saved_world = int(state.get("world_size", 1))
        if saved_world != self.world_size:
            raise InputError(f"{path}: written by a Partial FC run with {saved_world} process(es), each holding "
                             f"1/{saved_world} of the class weights; this job has {self.world_size}. Resume with "
                             f"{saved_world} processes (torchrun --nproc_per_node / fvtool train --nproc "
                             f"{saved_world})")
        side = self._shard_path(path)
        if not side.is_file():
            raise InputError(f"{side} does not exist: the class-weight shard of rank {self.ctx.rank} that belongs "
                             f"to {path} (Partial FC writes one per process next to each checkpoint)")
        shard = load_checkpoint(side)
        step = json_field(state, "progress")["step"]
        if (shard.get("rank"), shard.get("world_size"), shard.get("step"), shard.get("rows")) != (
                self.ctx.rank, self.world_size, step, [sharded.lo, sharded.hi]):
            raise InputError(f"{side} does not match {path} (rank {shard.get('rank')} of {shard.get('world_size')}, "
                             f"step {shard.get('step')}, rows {shard.get('rows')}; expected rank {self.ctx.rank} of "
                             f"{self.world_size}, step {step}, rows {[sharded.lo, sharded.hi]}): the files are from "
                             "different saves; resume from a complete checkpoint")
        method = {k: v for k, v in state["method"].items() if not k.startswith("loss.")}
        state["method"] = method | {f"loss.{k}": v for k, v in shard["loss"].items()}
        state["optimizer"] = shard["optimizer"]
        return state


def make_trainer(config: TrainConfig, run_dir: str | Path, *, resume: bool = False, show_progress: bool = True,
                 cache_dir: Path | None = None, prefetch: int = 2) -> Trainer:
    """A DistributedTrainer when this process is part of a multi-process job, else the plain Trainer."""
    ctx = init_distributed(config.device)
    if ctx is None:
        return Trainer(config, Path(run_dir), resume=resume, show_progress=show_progress, cache_dir=cache_dir,
                       prefetch=prefetch)
    return DistributedTrainer(config, Path(run_dir), ctx=ctx, resume=resume, show_progress=show_progress,
                              cache_dir=cache_dir, prefetch=prefetch)


# ---- launching processes -------------------------------------------------------------------

def free_port() -> int:
    """A TCP port that was free a moment ago (for the rendezvous of locally spawned processes)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _child(local_rank: int, fn: Callable[..., Any], nproc: int, port: int, args: tuple[Any, ...],
           env: dict[str, str]) -> None:
    os.environ.update(env)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(local_rank),
                       "LOCAL_RANK": str(local_rank), "WORLD_SIZE": str(nproc), "LOCAL_WORLD_SIZE": str(nproc)})
    if "OMP_NUM_THREADS" not in env:  # as torchrun: do not oversubscribe the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    faulthandler.enable()  # a process killed by a signal prints where it was (the launcher reports only the signal)
    done = False
    try:
        fn(*args)
        done = True
    finally:
        shutdown(completed=done)


def spawn(fn: Callable[..., Any], nproc: int, args: tuple[Any, ...] = (), env: dict[str, str] | None = None) -> None:
    """Run `fn(*args)` in `nproc` fresh processes that form one job on this machine (what
    `torchrun --standalone --nproc_per_node nproc` does). `fn` must be importable (module level).
    If a process fails, the others are stopped and the failure is raised here
    (torch.multiprocessing.ProcessExitedException / ProcessRaisedException)."""
    import torch.multiprocessing as mp

    if nproc < 1:
        raise InputError(f"--nproc must be >= 1 (got {nproc})")
    mp.start_processes(_child, args=(fn, nproc, free_port(), tuple(args), dict(env or {})), nprocs=nproc,
                       join=True, start_method="spawn")


# ---- the train stage's side -------------------------------------------------------

def join_job(device: str, nproc: int | None) -> DistContext | None:
    """For the train stage: join the torchrun job of the environment, if any. Ranks other than 0
    keep the console quiet (their errors are still printed, see `rank_errors`)."""
    env = env_world()
    if nproc is not None and nproc > 1 and env is not None:
        raise InputError(f"--nproc {nproc}: this process is already one of a torchrun job (WORLD_SIZE={env[1]}); "
                         "drop --nproc (torchrun starts the processes)")
    ctx = init_distributed(device)
    if ctx is not None and not ctx.is_main:
        console.quiet = True
    return ctx


@contextlib.contextmanager
def rank_errors() -> Iterator[None]:
    """Print an error raised on a rank other than 0 (whose console is quiet) with the rank's number,
    and leave the process group after a successful run (after a failure the launcher stops the ranks)."""
    ctx = _CTX
    try:
        yield
    except FvtoolError as e:
        if ctx is not None and not ctx.is_main:
            sys.stderr.write(f"rank {ctx.rank}: error: {e}\n")
        raise
    if ctx is not None:
        shutdown(completed=True)
