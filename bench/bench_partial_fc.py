"""Partial FC vs the replicated full classifier: per-rank FC memory and head step time, 2 CPU ranks (gloo).

For each class count C, every rank of a 2-process job times the classification head alone (the
embeddings come from a small linear layer, so the backbone costs nothing) for one SGD step on a global
batch of B embeddings of dimension D, ArcFace (s = 16, m = 0.5):

  full FC      plain DDP: every rank holds all C x D weights, scores its B/2 embeddings against all
               C classes, and all-reduces the C x D weight gradient (what DDP does every step)
  PFC r=1      Partial FC: rank k holds C/2 rows, scores the all-gathered B embeddings against them,
               reduces the softmax across ranks; no weight all-reduce
  PFC r=0.3    the same keeping 30 % of each shard's negatives per step

Reported per rank: FC memory = weights + gradient + SGD momentum of the class rows it holds (exact, from
the tensor sizes) + its logits for one step (rows x columns x 4 bytes, x 3 for logits, exponentials and
gradient), the process's peak RSS, and the median step time. The last table is the same arithmetic for
2 M identities at D = 512 on N GPUs (no measurement: no GPU here).

    nice -n 10 .venv/bin/python bench/bench_partial_fc.py                 # C = 100k and 1M, D = 32, B = 64
    nice -n 10 .venv/bin/python bench/bench_partial_fc.py --classes 100000 --dim 64 --steps 5
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

MB = 1024 * 1024


def fc_bytes(rows: int, dim: int, batch_rows: int, cols: int) -> tuple[int, int]:
    """(weights + grad + momentum, logits + exponentials + logit gradient) in bytes, float32."""
    return 3 * rows * dim * 4, 3 * batch_rows * cols * 4


def run_variant(kind: str, classes: int, dim: int, batch: int, steps: int, rate: float) -> dict[str, float]:
    from fvtool.losses.partial_fc import PartialFC
    from fvtool.losses.registry import build_loss

    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    proj = nn.Linear(dim, dim)
    build = lambda n: build_loss("arcface", embedding_size=dim, num_classes=n, scale=16.0)  # noqa: E731
    if kind == "full":
        head: nn.Module = build(classes)
        rows, batch_rows, cols = classes, batch // world, classes
    else:
        head = PartialFC(build, num_classes=classes, embedding_size=dim, sample_rate=rate, seed=0)
        rows = head.hi - head.lo
        batch_rows, cols = batch, max(int(rate * rows), 1)
    opt = torch.optim.SGD([*proj.parameters(), *head.parameters()], lr=0.1, momentum=0.9)
    times = []
    for step in range(steps + 2):
        g = torch.Generator().manual_seed(step)
        x = torch.randn(batch, dim, generator=g)
        y = torch.randint(0, classes, (batch,), generator=g)
        part = slice(rank * batch // world, (rank + 1) * batch // world)
        dist.barrier()
        t0 = time.perf_counter()
        out = head(proj(x[part]), y[part])
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        grads = [p.grad for p in proj.parameters()]
        if kind == "full":
            grads += [p.grad for p in head.parameters()]  # DDP all-reduces the replicated classifier too
        for grad in grads:
            dist.all_reduce(grad)
            grad /= world
        opt.step()
        if step >= 2:
            times.append(time.perf_counter() - t0)
    state, logits = fc_bytes(rows, dim, batch_rows, cols)
    return {"rows": rows, "state_mb": state / MB, "logits_mb": logits / MB, "step_s": statistics.median(times),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _job(out: str, classes: list[int], dim: int, batch: int, steps: int, rate: float) -> None:
    from fvtool.training.distributed import init_distributed

    torch.set_num_threads(1)
    init_distributed("cpu")
    results = []
    for c in classes:
        for kind, r in (("pfc", 1.0), ("pfc", rate), ("full", 1.0)):  # full last: its RSS peak is the largest
            res = run_variant(kind, c, dim, batch, steps, r)
            results.append({"classes": c, "variant": "full FC" if kind == "full" else f"PFC r={r:g}", **res})
    Path(out, f"rank{dist.get_rank()}.json").write_text(json.dumps(results))


def paper_table(classes: int, dim: int, global_batch: int, gpus: list[int], rate: float) -> list[str]:
    """Per-GPU FC memory for `classes` identities on N GPUs, by `fc_bytes` (as the measured table)."""
    lines = ["| GPUs | full FC: W + grad + momentum | full FC: logits | PFC: W + grad + momentum | PFC r=1: logits "
             f"| PFC r={rate:g}: logits |", "|---:|---:|---:|---:|---:|---:|"]
    gib = 2.0 ** 30
    for n in gpus:
        rows = classes // n
        full_state, full_logits = fc_bytes(classes, dim, global_batch // n, classes)
        pfc_state, pfc_logits = fc_bytes(rows, dim, global_batch, rows)
        _, sampled_logits = fc_bytes(rows, dim, global_batch, int(rate * rows))
        lines.append(f"| {n} | {full_state / gib:.1f} GiB | {full_logits / gib:.2f} GiB | {pfc_state / gib:.2f} GiB "
                     f"| {pfc_logits / gib:.2f} GiB | {sampled_logits / gib:.2f} GiB |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classes", type=int, nargs="+", default=[100_000, 1_000_000])
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--batch", type=int, default=64, help="global batch (split over the 2 ranks)")
    ap.add_argument("--steps", type=int, default=4, help="timed steps per variant (after 2 warm-up steps)")
    ap.add_argument("--rate", type=float, default=0.3)
    args = ap.parse_args()
    from fvtool.training.distributed import spawn

    with tempfile.TemporaryDirectory() as tmp:
        spawn(_job, 2, (tmp, args.classes, args.dim, args.batch, args.steps, args.rate), env={"OMP_NUM_THREADS": "1"})
        per_rank = [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in (0, 1)]
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, 2 ranks x 1 thread (gloo), "
          f"D = {args.dim}, global batch {args.batch}, ArcFace s = 16, median of {args.steps} steps")
    print("| C | head | class rows per rank | FC state per rank (W + grad + momentum) | logits per rank "
          "| peak RSS rank 0 / 1 | step s |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for a, b in zip(*per_rank, strict=True):
        print(f"| {a['classes']:,} | {a['variant']} | {a['rows']:,} | {a['state_mb']:.1f} MB | "
              f"{a['logits_mb']:.1f} MB | {a['peak_rss_mb']:.0f} / {b['peak_rss_mb']:.0f} MB | "
              f"{max(a['step_s'], b['step_s']):.3f} |")
    print("\n# on paper: 2,000,000 identities, D = 512, float32, global batch 1024 (logits x 3 as above)")
    print("\n".join(paper_table(2_000_000, 512, 1024, [1, 8, 16, 32], args.rate)))


if __name__ == "__main__":
    main()
