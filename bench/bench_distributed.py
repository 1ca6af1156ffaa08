"""Multi-process throughput on this machine: DDP training (gloo) and sharded embedding, against one process.

What is compared, each variant a fresh `python -m fvtool ...` process (rounds interleaved, so a loaded
shared machine slows all variants alike):

  train 1p x T threads     `fvtool train` in one process with T threads (T = all cores)
  train Np x T/N threads   `fvtool train --nproc N` (DistributedDataParallel, gloo), same global batch
  train 1p x T/N threads   one process with one process's share of the cores (per-process reference)

Training img/s is the engine's own per-epoch figure (images / seconds inside training steps) of the LAST
epoch (the first pays for warm-up), so process start-up and cache decoding are not in it; wall s is the
whole command.

  embed 1p                 `fvtool embed RUN --data D` (T threads)
  embed N shards + merge   N concurrent `fvtool embed RUN --data D --shard i/N` (T/N threads each), then
                           `fvtool embed merge`; caches warm (every variant ran once before timing)

Embed img/s is the embed loop's own figure (the largest over the shards for N shards), wall s the whole
command(s); start-up (importing torch) is a large part of the wall time on small data.

    .venv/bin/python bench/bench_distributed.py                      # lfw-subset, resnet_small @64, softmax
    .venv/bin/python bench/bench_distributed.py --embed-data /work/shared/data/lfw-deepfunneled --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fvtool.settings import EMBEDDED_DATA

PY = [sys.executable, "-m", "fvtool"]


def run(cmd: list[str], env: dict[str, str]) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-3000:]}")
    return time.perf_counter() - t, p.stderr


def last_epoch_ips(run_dir: Path) -> float:
    recs = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return float([r for r in recs if r["kind"] == "epoch"][-1]["img_per_s"])


def embed_ips(stderr: str) -> float:
    m = re.search(r"\((\d+) img/s\)", stderr)
    return float(m.group(1)) if m else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(EMBEDDED_DATA), help="training data (default: the embedded LFW subset)")
    ap.add_argument("--embed-data", default=None, help="data to embed (default: --data)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="cores for the whole job")
    ap.add_argument("--loss", default="softmax")
    ap.add_argument("--backbone", default="resnet_small")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--skip-embed", action="store_true")
    a = ap.parse_args()
    n, t_all = a.nproc, a.threads
    t_one = max(1, t_all // n)
    work = Path(tempfile.mkdtemp(prefix="fvtool-bench-ddp-"))
    env = {**os.environ, "FVTOOL_WORKSPACE": str(work / "ws"), "OMP_NUM_THREADS": str(t_one)}
    common = ["--data", a.data, "--split", "none", "--val-protocol", "none", "--loss", a.loss, "--backbone", a.backbone,
              "--input-size", str(a.size), "--batch-size", str(a.batch), "--epochs", str(a.epochs), "--quiet"]
    if a.loss in ("triplet", "contrastive", "margin", "circle", "npair", "supcon", "hard-margin"):
        common += ["--pk", str(a.batch // 4), "4"]
    variants = {
        f"train 1p x {t_all} threads": ["--threads", str(t_all)],
        f"train {n}p x {t_one} threads (gloo)": ["--threads", str(t_one), "--nproc", str(n)],
        f"train 1p x {t_one} threads": ["--threads", str(t_one)],
    }
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or platform.platform()}; "
          f"load average {os.getloadavg()[0]:.1f} at start")
    print(f"train: {a.backbone} @{a.size}px, {a.loss}, global batch {a.batch}, {a.epochs} epochs of {a.data}")
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in variants}
    for r in range(a.rounds):
        for name, extra in variants.items():
            rd = work / f"run-{r}-{len(res[name])}-{name.split()[1]}-{extra[1]}"
            wall, _ = run([*PY, "train", *common, *extra, "-o", str(rd)], env)
            res[name].append((last_epoch_ips(rd), wall))
            print(f"  round {r + 1}: {name}: {res[name][-1][0]:.0f} img/s, wall {wall:.1f} s", flush=True)
    print("\n| variant | img/s (last epoch, median) | wall s (median) |\n|---|---:|---:|")
    for name, vals in res.items():
        print(f"| {name} | {statistics.median(v[0] for v in vals):.0f} | {statistics.median(v[1] for v in vals):.1f} |")
    if a.skip_embed:
        return
    run_dir = next(work.glob(f"run-0-0-1p-{t_all}"))
    data = a.embed_data or a.data
    emb = work / "emb"
    full_cmd = [*PY, "embed", str(run_dir), "--data", data, "--threads", str(t_all), "--allow-resize"]
    shard_cmds = [[*PY, "embed", str(run_dir), "--data", data, "--threads", str(t_one), "--allow-resize",
                   "--shard", f"{i}/{n}", "-o", str(emb / f"e.shard-{i}-of-{n}.h5")] for i in range(n)]
    merge_cmd = [*PY, "embed", "merge", *(str(emb / f"e.shard-{i}-of-{n}.h5") for i in range(n)), "-o",
                 str(emb / "merged.h5")]
    print(f"\nembed: {data}")
    run([*full_cmd, "-o", str(emb / "warm.h5")], env)  # decode caches once (whole set and each shard)
    procs = [subprocess.Popen([*c[:-2], "-o", str(emb / f"warm{i}.h5")], env=env, stderr=subprocess.DEVNULL)
             for i, c in enumerate(shard_cmds)]
    for p in procs:
        p.wait()
    rows: dict[str, list[tuple[float, float]]] = {"embed 1p": [], f"embed {n} shards + merge": []}
    for r in range(a.rounds):
        wall, err = run([*full_cmd, "-o", str(emb / f"full{r}.h5")], env)
        rows["embed 1p"].append((embed_ips(err), wall))
        t0 = time.perf_counter()
        procs = [subprocess.Popen(c, env=env, stderr=subprocess.PIPE, text=True) for c in shard_cmds]
        outs = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            raise SystemExit("a shard failed:\n" + "\n".join(o[-2000:] for o in outs))
        run(merge_cmd, env)
        rows[f"embed {n} shards + merge"].append((min(embed_ips(o) for o in outs) * n, time.perf_counter() - t0))
        for name, vals in rows.items():
            print(f"  round {r + 1}: {name}: {vals[-1][0]:.0f} img/s, wall {vals[-1][1]:.1f} s", flush=True)
    print("\n| variant | img/s (embed loop, median) | wall s (median) |\n|---|---:|---:|")
    for name, vals in rows.items():
        print(f"| {name} | {statistics.median(v[0] for v in vals):.0f} | {statistics.median(v[1] for v in vals):.1f} |")
    print(f"(work folder {work})")


if __name__ == "__main__":
    main()
