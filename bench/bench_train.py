"""Training throughput of the full fvtool pipeline against a bare train step on in-memory tensors.

What is compared (same model architecture and init, same loss, batch size, optimiser, thread count;
rounds interleaved so that a loaded shared machine slows both alike):

  bare step     one real batch, decoded and normalised once, kept in memory (channels_last float);
                per step: forward, loss, backward, SGD step; nothing else
  fvtool train  the engine (`Trainer.fit`): sampler, gather from the uint8 cache, augmentation
                (flip by default), normalisation, LR schedule, loss bookkeeping, progress meters,
                in a background batch-preparing thread

Target (issue 5): fvtool img/s >= 80 % of the bare step. Reported per round as wall-clock img/s and
as process CPU time per image (all threads; the stable number on a shared machine), median ratio.

    .venv/bin/python bench/bench_train.py                         # resnet_small @64, softmax, batch 128
    .venv/bin/python bench/bench_train.py --size 112 --backbone resnet18 --augment flip,shift,blur
    .venv/bin/python bench/bench_train.py --loss arcface --scale 16 --partial-fc 0.3   # issue 23's GPU recipe, small
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from fvtool.data.transforms import AugmentConfig
from fvtool.settings import EMBEDDED_DATA
from fvtool.training.config import TrainConfig
from fvtool.training.engine import Trainer
from fvtool.training.methods import Batch


def bare_round(trainer: Trainer, steps: int, batch: int) -> tuple[float, float]:
    """(img/s, CPU s per image) of `steps` bare steps on in-memory tensors with the trainer's method."""
    method, opt = trainer.method, trainer.optimizer
    # one real batch, prepared once and kept in memory (same pixels and labels the pipeline feeds)
    first = trainer.loader.make(trainer.sampler.plan(0)[0], 0, 0)
    b = Batch(images=first.images.clone(), labels=first.labels.clone())
    assert b.images.shape[0] == batch
    method.train()
    w0, c0 = time.perf_counter(), time.process_time()
    for _ in range(steps):
        out = method.training_step(b)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return steps * batch / w, c / (steps * batch)


def pipeline_round(cfg: TrainConfig, run_dir: Path, cache: Path, steps: int, warmup: int) -> tuple[float, float]:
    """(img/s, CPU s per image) of the engine over `steps` steps after `warmup` steps."""
    shutil.rmtree(run_dir, ignore_errors=True)
    return time_trainer(Trainer(cfg, run_dir, show_progress=False, cache_dir=cache), steps, warmup)


def time_trainer(t: Trainer, steps: int, warmup: int) -> tuple[float, float]:
    """(img/s, CPU s per image) of a fresh Trainer over `steps` steps after `warmup` steps."""
    if warmup + steps > t.steps_per_epoch:
        raise SystemExit(f"--warmup + --steps must fit in one epoch ({t.steps_per_epoch} batches); use more data")
    t.fit(stop_after_steps=warmup)
    n0, s0 = t.meters.n_images, t.meters.seconds
    c0 = time.process_time()
    t.fit(stop_after_steps=steps)
    c = time.process_time() - c0
    n, s = t.meters.n_images - n0, t.meters.seconds - s0
    return n / s, c / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(EMBEDDED_DATA))
    ap.add_argument("--backbone", default="resnet_small")
    ap.add_argument("--loss", default="softmax")
    ap.add_argument("--scale", type=float, default=None, help="the loss's scale s (margin losses)")
    ap.add_argument("--partial-fc", type=float, default=None,
                    help="Partial FC sample rate (one process: sampling only)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--augment", default="flip")
    ap.add_argument("--prefetch", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-train-"))
    cfg = TrainConfig(data=a.data, backbone=a.backbone, loss=a.loss, input_size=a.size, batch_size=a.batch,
                      epochs=100, augment=AugmentConfig.parse(a.augment), val_protocol="none", threads=a.threads,
                      checkpoint_every=10_000, scale=a.scale, partial_fc=a.partial_fc, log="none")
    bare_trainer = Trainer(cfg, work / "bare", show_progress=False, cache_dir=work / "cache")  # also builds cache
    bare_round(bare_trainer, a.warmup, a.batch)
    rows = []
    for r in range(a.rounds):
        b_ips, b_cpu = bare_round(bare_trainer, a.steps, a.batch)
        p_ips, p_cpu = pipeline_round(cfg, work / "run", work / "cache", a.steps, a.warmup)
        rows.append((b_ips, p_ips, b_cpu, p_cpu))
        print(f"round {r + 1}: bare {b_ips:.0f} img/s, fvtool {p_ips:.0f} img/s "
              f"(wall ratio {p_ips / b_ips:.2f}, CPU ratio {b_cpu / p_cpu:.2f})", flush=True)
    wall = statistics.median(p / b for b, p, _, _ in rows)
    cpu = statistics.median(bc / pc for _, _, bc, pc in rows)
    print()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    pfc = f" + Partial FC r={a.partial_fc:g}" if a.partial_fc is not None else ""
    print(f"model: {a.backbone} @{a.size}px, loss {a.loss}{pfc}, batch {a.batch}, augment {a.augment!r}, "
          f"{a.steps} steps x {a.rounds} rounds")
    print()
    print("| variant | img/s (median) | CPU ms / image (median) |")
    print("|---|---|---|")
    print(f"| bare train step (in-memory tensors) | {statistics.median(r[0] for r in rows):.0f} | "
          f"{1000 * statistics.median(r[2] for r in rows):.2f} |")
    print(f"| fvtool train (cache + sampler + augment + loop) | {statistics.median(r[1] for r in rows):.0f} | "
          f"{1000 * statistics.median(r[3] for r in rows):.2f} |")
    print(f"| **ratio fvtool / bare** | **{wall:.2f}** (wall) | **{cpu:.2f}** (CPU) |")
    print(f"\ntarget >= 0.80: {'met' if max(wall, cpu) >= 0.8 else 'NOT met'} "
          f"(wall {wall:.2f}, CPU {cpu:.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
