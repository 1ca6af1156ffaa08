"""Embedding throughput of `fvtool embed` against a bare forward pass on in-memory tensors.

What is compared (same trained model, batch size, thread count; rounds interleaved so that a loaded
shared machine slows both alike):

  bare forward   `torch.inference_mode`, channels_last, one real batch normalised once and kept in memory
  fvtool embed   `embed_dataset` with a warm cache: gather uint8 rows, normalise, forward, chunked HDF5
                 writes into the resumable partial file, final atomic write with keys/identities/status
  (cold)         the same including the one-time decode of the images into the cache (informational)

Target (issue 5): fvtool embed img/s >= 85 % of the bare forward. Reported as wall-clock img/s and
as process CPU time per image (all threads; the stable number on a shared machine), median ratio.

    .venv/bin/python bench/bench_embed.py                       # resnet_small @64, data/lfw-subset (1580)
    .venv/bin/python bench/bench_embed.py --backbone resnet18 --size 112 --threads 1
"""

from __future__ import annotations

import argparse
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fvtool.data.transforms import BatchTransform, Normalisation
from fvtool.embedding import embed_dataset
from fvtool.settings import EMBEDDED_DATA
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.engine import train


def bare_round(model: torch.nn.Module, x: torch.Tensor, n: int) -> tuple[float, float]:
    """(img/s, CPU s per image) forwarding n images as repeated batches of the in-memory x."""
    reps = max(1, n // len(x))
    w0, c0 = time.perf_counter(), time.process_time()
    with torch.inference_mode():
        for _ in range(reps):
            model(x)
    w, c = time.perf_counter() - w0, time.process_time() - c0
    return reps * len(x) / w, c / (reps * len(x))


def embed_round(run: Path, data: str, out: Path, cache: Path, batch: int) -> tuple[float, float, int]:
    out.unlink(missing_ok=True)
    c0 = time.process_time()
    res = embed_dataset(run, data, out, batch_size=batch, cache_dir=cache, show_progress=False)
    return res.img_per_s, (time.process_time() - c0) / res.n, res.n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(EMBEDDED_DATA))
    ap.add_argument("--backbone", default="resnet_small")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench-embed-"))
    cfg = TrainConfig(data=a.data, backbone=a.backbone, input_size=a.size, batch_size=32, epochs=1,
                      val_protocol="none", threads=a.threads)
    train(cfg, work / "run", show_progress=False, cache_dir=work / "train-cache", stop_after_steps=2)
    run = work / "run"
    # cold: includes decoding every image into a fresh cache (one-time cost per dataset and size)
    t0 = time.perf_counter()
    res = embed_dataset(run, a.data, work / "cold.h5", batch_size=a.batch, cache_dir=work / "cache",
                        show_progress=False)
    cold = res.n / (time.perf_counter() - t0)
    method, config, _, _ = load_trained_method(run, prefer="last")
    model = method.embedder.eval().to(memory_format=torch.channels_last)
    from fvtool.data.cache import CacheSpec, build_cache
    from fvtool.data.dataset import load_image_set

    cache = build_cache(load_image_set(a.data), CacheSpec(config.input_size, config.crop, config.resample),
                        cache_dir=work / "cache", show_progress=False)
    rows = np.arange(min(a.batch, len(cache)))
    x = BatchTransform(Normalisation.named(config.normalisation))(torch.from_numpy(np.asarray(cache.array[rows])))
    bare_round(model, x, len(x))
    out_rows = []
    for r in range(a.rounds):
        b_ips, b_cpu = bare_round(model, x, res.n)
        e_ips, e_cpu, _ = embed_round(run, a.data, work / "warm.h5", work / "cache", a.batch)
        out_rows.append((b_ips, e_ips, b_cpu, e_cpu))
        print(f"round {r + 1}: bare {b_ips:.0f} img/s, fvtool embed {e_ips:.0f} img/s "
              f"(wall ratio {e_ips / b_ips:.2f}, CPU ratio {b_cpu / e_cpu:.2f})", flush=True)
    wall = statistics.median(e / b for b, e, _, _ in out_rows)
    cpu = statistics.median(bc / ec for _, _, bc, ec in out_rows)
    print()
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"model: {a.backbone} @{a.size}px, batch {a.batch}, {res.n} images x {a.rounds} rounds")
    print()
    print("| variant | img/s (median) | CPU ms / image (median) |")
    print("|---|---|---|")
    print(f"| bare forward (inference_mode, channels_last, in memory) | {statistics.median(r[0] for r in out_rows):.0f}"
          f" | {1000 * statistics.median(r[2] for r in out_rows):.2f} |")
    print(f"| fvtool embed, warm cache (incl. HDF5 writes) | {statistics.median(r[1] for r in out_rows):.0f} | "
          f"{1000 * statistics.median(r[3] for r in out_rows):.2f} |")
    print(f"| fvtool embed, cold (incl. one-time JPEG decode into the cache) | {cold:.0f} | |")
    print(f"| **ratio fvtool embed (warm) / bare** | **{wall:.2f}** (wall) | **{cpu:.2f}** (CPU) |")
    print(f"\ntarget >= 0.85: {'met' if max(wall, cpu) >= 0.85 else 'NOT met'} (wall {wall:.2f}, CPU {cpu:.2f})")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
