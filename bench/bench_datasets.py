"""Scale of the dataset path: a synthetic insightface RecordIO set of N small face crops, read and cached.

What it measures (docs/datasets.md quotes the output):
- generation: N crops made from the embedded LFW subset with random transforms (crop jitter, flip,
  brightness), 112x112 JPEG q90, packed with fvtool's RecordIO writer into <work>/synth/train.rec;
- open: `load_rec_set` (index parse + vectorised header scan of every record), records/s;
- read: `ImageSet.read_bytes` over all records in key order and over a random sample, records/s;
- bare PIL: `Image.open(BytesIO(jpeg)).convert("RGB").resize((S, S))` over the same bytes, one thread;
- cache: fingerprint + `build_cache` at S px for two sizes N1 < N2, each in a fresh process, images/s
  and peak RSS (ru_maxrss) -- flat in N means the build streams;
- projection to 5.8 M images (MS1M-ArcFace) at 112 px: time and disk (.rec and cache);
- data path: delivered images/s of training batches from the cache (gather + augment + normalise) by
  the training loader's thread and by a torch DataLoader with worker processes, vs the training
  step's consumption (forward + backward + SGD step of a backbone at S px on this CPU).

    nice -n 10 python bench/bench_datasets.py --n 200000 --work /tmp/fvbench --cache-n 50000,200000

The synthetic set is kept in --work for reruns (delete it afterwards: ~1 GB at N = 200,000, plus
~7.5 GB per cache of 200,000 images at 112 px).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fvtool.data.recordio import IRHeader, header_record, identity_record, indexed_record_writer, pack  # noqa: E402


def _crop_maker(size: int, seed: int):
    from fvtool.data.dataset import load_image_set

    src = load_image_set(ROOT / "data" / "lfw-subset")
    bases = [np.asarray(Image.open(src.path(i)).convert("RGB")) for i in range(len(src))]

    def make(i: int) -> bytes:
        rng = np.random.default_rng([seed, i])
        a = bases[int(rng.integers(len(bases)))]
        side = int(rng.integers(110, 150))
        x, y = (int(v) for v in rng.integers(50, 250 - side - 50 + 1, 2)) if side < 150 else (50, 50)
        img = Image.fromarray(a[y:y + side, x:x + side]).resize((size, size), Image.Resampling.BILINEAR)
        if rng.random() < 0.5:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        img = Image.eval(img, lambda v, g=float(rng.uniform(0.7, 1.3)): min(255, int(v * g)))
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=90)
        return buf.getvalue()

    return make


def generate(out: Path, n: int, per_identity: int, size: int, seed: int) -> dict:
    from fvtool.data.cache import ordered_map

    if (out / "property").is_file() and (out / "property").read_text().startswith(f"{-(-n // per_identity)},"):
        return {"generated": False}
    out.mkdir(parents=True, exist_ok=True)
    make = _crop_maker(size, seed)
    n_ids = -(-n // per_identity)
    t0 = time.perf_counter()
    with indexed_record_writer(out / "train.rec", out / "train.idx") as w:
        for i, jpeg in enumerate(ordered_map(make, n, os.cpu_count() or 1)):
            w.write(i + 1, pack(IRHeader(0, float(i // per_identity)), jpeg))
        for c in range(n_ids):
            w.write(n + 1 + c, identity_record(1 + c * per_identity, 1 + min(n, (c + 1) * per_identity)))
        w.write(0, header_record(n, n_ids))
    (out / "property").write_text(f"{n_ids},{size},{size}\n")
    dt = time.perf_counter() - t0
    return {"generated": True, "seconds": round(dt, 1), "images_per_s": round(n / dt, 1)}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def cache_child(rec: Path, n: int, size: int, cache_dir: Path) -> dict:
    """One cache build in this (fresh) process: timings and peak RSS."""
    from fvtool.data.cache import CacheSpec, build_cache, dataset_fingerprint
    from fvtool.data.insightface_rec import load_rec_set

    t0 = time.perf_counter()
    images = load_rec_set(rec)
    if n < len(images):
        images = images.take(range(n))
    t1 = time.perf_counter()
    rss_open = _rss_mb()
    fp = dataset_fingerprint(images)  # the full content hash (a rerun would find it memoised)
    t2 = time.perf_counter()
    cache = build_cache(images, CacheSpec(size), cache_dir=cache_dir, show_progress=False, fingerprint=fp)
    t3 = time.perf_counter()
    out = {"n": n, "open_s": round(t1 - t0, 2), "fingerprint_s": round(t2 - t1, 2), "build_s": round(t3 - t2, 2),
           "build_images_per_s": round(n / (t3 - t2), 1), "rss_after_open_mb": round(rss_open, 1),
           "peak_rss_mb": round(_rss_mb(), 1), "cache_bytes": cache.path.stat().st_size}
    cache.path.unlink()
    cache.path.with_suffix(".json").unlink()
    return out


def bare_pil(images, n: int, size: int, reps: int = 3) -> dict:
    """The bare PIL loop over in-memory JPEG bytes vs fvtool's per-image cache path (record read, full
    decode with the EXIF/ICC/mode rules, resize, uint8 array), both in one thread, interleaved so that
    a loaded machine slows both alike; the best of `reps` rounds of each."""
    from fvtool.data.cache import CacheSpec, decode_row

    spec = CacheSpec(size)
    blobs = [images.read_bytes(i) for i in range(n)]
    bare, ours = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        for b in blobs:
            Image.open(io.BytesIO(b)).convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
        t1 = time.perf_counter()
        for i in range(n):
            decode_row(images, i, spec)
        t2 = time.perf_counter()
        bare.append(n / (t1 - t0))
        ours.append(n / (t2 - t1))
    return {"bare_pil_images_per_s": round(max(bare), 1), "fvtool_decode_row_images_per_s": round(max(ours), 1)}


def data_path(rec: Path, n: int, size: int, cache_dir: Path, batch: int, steps: int, backbones: list[str]) -> dict:
    """Delivered batches/s of the data path alone (thread loader and DataLoader workers) vs the train step."""
    import torch
    from torch.utils.data import DataLoader, Dataset

    from fvtool.data.cache import CacheSpec, build_cache
    from fvtool.data.insightface_rec import load_rec_set
    from fvtool.data.samplers import SampledBatch
    from fvtool.data.transforms import AugmentConfig, BatchTransform, Normalisation
    from fvtool.models.registry import build_backbone
    from fvtool.training.data import BatchLoader

    images = load_rec_set(rec).take(range(n))
    cache = build_cache(images, CacheSpec(size), cache_dir=cache_dir, show_progress=False)
    array = np.asarray(cache.array)
    rows = np.arange(n)
    labels = np.zeros(n, dtype=np.int64)
    transform = BatchTransform(Normalisation.named("pm1"), AugmentConfig(), channels_last=False)
    rng = np.random.default_rng(0)
    plan = [SampledBatch(indices=rng.choice(n, batch, replace=False)) for _ in range(steps)]
    loader = BatchLoader(array, rows, labels, transform, torch.device("cpu"), seed=0)
    t0 = time.perf_counter()
    for _ in loader.iterate(plan, 0, 0):
        pass
    thread_ips = steps * batch / (time.perf_counter() - t0)

    class CacheBatches(Dataset):
        """One training batch per item: gathered and augmented in the worker process."""

        def __len__(self) -> int:
            return len(plan)

        def __getitem__(self, i: int):
            return loader.make(plan[i], 0, i).images

    res = {"batch": batch, "threads_torch": torch.get_num_threads(), "thread_loader_images_per_s": round(thread_ips, 1)}
    for workers in (1, 2):
        dl = DataLoader(CacheBatches(), batch_size=None, num_workers=workers, prefetch_factor=2,
                        persistent_workers=False)
        t0 = time.perf_counter()
        for _ in dl:
            pass
        res[f"dataloader_{workers}w_images_per_s"] = round(steps * batch / (time.perf_counter() - t0), 1)
    x = loader.make(plan[0], 0, 0).images
    y = torch.randint(0, 1000, (batch,))
    for backbone in backbones:
        model = build_backbone(backbone, embedding_size=512, input_size=size)
        head = torch.nn.Linear(512, 1000)
        opt = torch.optim.SGD([*model.parameters(), *head.parameters()], lr=0.01)
        model.train()
        for k in range(3):  # one warm-up step, two timed
            if k == 1:
                t0 = time.perf_counter()
            opt.zero_grad()
            torch.nn.functional.cross_entropy(head(model(x)), y).backward()
            opt.step()
        res[f"train_step_{backbone}_images_per_s"] = round(2 * batch / (time.perf_counter() - t0), 1)
    cache.path.unlink()
    cache.path.with_suffix(".json").unlink()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=200_000, help="records in the synthetic set")
    ap.add_argument("--per-identity", type=int, default=20, help="images per identity")
    ap.add_argument("--size", type=int, default=112, help="crop side in the .rec and in the cache")
    ap.add_argument("--work", type=Path, default=Path("/tmp/fvbench"), help="folder for the set and caches")
    ap.add_argument("--cache-n", default="50000,200000", help="two cache sizes N1,N2 for the RSS check")
    ap.add_argument("--pil-n", type=int, default=5000, help="images for the bare PIL loop")
    ap.add_argument("--dl-n", type=int, default=20000, help="images cached for the data-path benchmark")
    ap.add_argument("--dl-batch", type=int, default=128)
    ap.add_argument("--dl-steps", type=int, default=40)
    ap.add_argument("--backbones", default="resnet_small,iresnet50",
                    help="backbones of the training-step measurement, comma separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--child", nargs=2, metavar=("N", "CACHE_DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    rec = args.work / "synth" / "train.rec"
    if args.child:
        print(json.dumps(cache_child(rec, int(args.child[0]), args.size, Path(args.child[1]))))
        return
    from fvtool.data.insightface_rec import load_rec_set

    report: dict = {"n": args.n, "size": args.size, "cpus": os.cpu_count()}
    report["generate"] = generate(rec.parent, args.n, args.per_identity, args.size, args.seed)
    t0 = time.perf_counter()
    images = load_rec_set(rec)
    dt = time.perf_counter() - t0
    assert len(images) == args.n and not images.problems, images.problems[:3]
    report["open"] = {"seconds": round(dt, 2), "records_per_s": round(args.n / dt, 1)}
    t0 = time.perf_counter()
    total = sum(len(images.read_bytes(i)) for i in range(len(images)))
    dt = time.perf_counter() - t0
    report["read_sequential"] = {"seconds": round(dt, 2), "records_per_s": round(args.n / dt, 1),
                                 "mean_jpeg_bytes": round(total / args.n, 1)}
    sample = np.random.default_rng(1).choice(args.n, min(args.n, 20000), replace=False)
    t0 = time.perf_counter()
    for i in sample:
        images.read_bytes(int(i))
    report["read_random"] = {"records_per_s": round(len(sample) / (time.perf_counter() - t0), 1)}
    report["one_thread"] = bare_pil(images, args.pil_n, args.size)
    report["rec_bytes"] = rec.stat().st_size
    caches = []
    for n in (int(v) for v in args.cache_n.split(",")):
        out = subprocess.run([sys.executable, __file__, "--work", str(args.work), "--size", str(args.size),
                              "--child", str(n), str(args.work / "cache")], capture_output=True, text=True, check=True)
        caches.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(caches[-1]), file=sys.stderr)
    report["cache"] = caches
    big = caches[-1]
    per_image_s = (big["fingerprint_s"] + big["build_s"]) / big["n"]
    full = 5_800_000
    report["projection_5.8M"] = {
        "rec_gb": round(report["rec_bytes"] / args.n * full / 1e9, 1),
        "cache_gb": round(full * args.size * args.size * 3 / 1e9, 1),
        "open_minutes": round(full / report["open"]["records_per_s"] / 60, 1),
        "cache_build_hours": round(per_image_s * full / 3600, 2),
    }
    report["data_path"] = data_path(rec, min(args.dl_n, args.n), args.size, args.work / "cache", args.dl_batch,
                                    args.dl_steps, args.backbones.split(","))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
