"""Align throughput against bare MTCNN detection on the same images, in the same process.

What is compared (same images, same batch size, same torch thread count, rounds interleaved so
that a loaded shared machine slows every variant alike):

  detect-only   facenet-pytorch `MTCNN.detect(batch, landmarks=True)` on images already in memory
  bare MTCNN    what a minimal facenet-pytorch script does: `Image.open(f).convert("RGB")` per file,
                then `MTCNN.detect` per batch; nothing written
  fvtool align  `align_folder(src, dst)`: scan, robust decode, detection, face selection, alignment,
                JPEG encode, atomic writes, manifest and align.json (a fresh output folder each round)
  fvtool without MTCNN  the same run with `reuse_detections` (detections read from the previous
                round's manifest): everything fvtool does except detection, i.e. its own cost

The overhead of fvtool's own work is `fvtool align / bare MTCNN - 1` (target: at most 10%), taken
as the median of the per-round ratios, both for wall time and for process CPU time (all threads).
On a shared, loaded machine the CPU-time ratio is the stable one: wall time then mostly measures
how much of a core the scheduler gave this process.

    .venv/bin/python bench/bench_align.py                      # 96 images of data/lfw-subset, 3 rounds
    .venv/bin/python bench/bench_align.py --images 256 --rounds 5 --threads 1 --mode crop
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

from fvtool.align.detector import DetectorConfig, FaceDetector
from fvtool.align.stage import AlignOptions, align_folder
from fvtool.settings import EMBEDDED_DATA


def _pick_images(root: Path, n: int) -> list[Path]:
    files = sorted(root.glob("*/*.jpg"))
    if len(files) < n:
        raise SystemExit(f"only {len(files)} images under {root}, asked for {n}")
    step = len(files) / n
    return [files[int(i * step)] for i in range(n)]  # spread over identities, deterministic


def _bare(mtcnn, files: list[Path], batch_size: int) -> int:
    found = 0
    for i in range(0, len(files), batch_size):
        imgs = [Image.open(f).convert("RGB") for f in files[i:i + batch_size]]
        boxes, _, _ = mtcnn.detect(imgs, landmarks=True)
        found += sum(b is not None for b in boxes)
    return found


def _detect_only(mtcnn, images: list[Image.Image], batch_size: int) -> int:
    found = 0
    for i in range(0, len(images), batch_size):
        boxes, _, _ = mtcnn.detect(images[i:i + batch_size], landmarks=True)
        found += sum(b is not None for b in boxes)
    return found


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=EMBEDDED_DATA, help="identity folder of JPEGs (default: embedded)")
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for every variant")
    ap.add_argument("--mode", default="similarity", choices=["similarity", "crop"])
    ap.add_argument("--size", type=int, default=112)
    args = ap.parse_args()

    from facenet_pytorch import MTCNN

    torch.set_num_threads(args.threads)
    files = _pick_images(args.data, args.images)
    work = Path(tempfile.mkdtemp(prefix="fvtool-bench-align-"))
    try:
        src = work / "src"
        for f in files:
            (src / f.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, src / f.parent.name / f.name)
        mtcnn = MTCNN(min_face_size=20, thresholds=[0.6, 0.7, 0.7], device="cpu")
        options = AlignOptions(size=args.size, mode=args.mode, batch_size=args.batch_size, show_progress=False,
                               resume=False, threads=args.threads)
        detector = FaceDetector(DetectorConfig(min_face_size=20))
        decoded = [Image.open(f).convert("RGB") for f in files]
        _detect_only(mtcnn, decoded[: args.batch_size], args.batch_size)  # warm-up (oneDNN kernels)

        times: dict[str, list[float]] = {"detect-only": [], "bare MTCNN": [], "fvtool align": [],
                                         "fvtool without MTCNN": []}
        cpu: dict[str, list[float]] = {k: [] for k in times}
        found: dict[str, int] = {}
        for r in range(args.rounds):
            order = list(times)[:3] if r % 2 == 0 else list(reversed(list(times)[:3]))
            order.append("fvtool without MTCNN")  # needs this round's fvtool output
            for name in order:
                t0, c0 = time.perf_counter(), time.process_time()
                if name == "detect-only":
                    found[name] = _detect_only(mtcnn, decoded, args.batch_size)
                elif name == "bare MTCNN":
                    found[name] = _bare(mtcnn, files, args.batch_size)
                elif name == "fvtool align":
                    s = align_folder(src, work / f"out{r}", options, detector=detector)
                    found[name] = s.counts["ok"]
                else:
                    reuse = replace(options, reuse_detections=work / f"out{r}")
                    s = align_folder(src, work / f"reuse{r}", reuse, detector=detector)
                    found[name] = s.counts["ok"]
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
        n = len(files)
        print(f"# align throughput, {n} LFW images ({args.data.name}), batch {args.batch_size}, "
              f"{args.threads} torch thread(s), mode {args.mode} {args.size}px, {args.rounds} interleaved rounds")
        print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
              f"torch {torch.__version__}, load average at end {os.getloadavg()[0]:.1f}")
        print()
        print("| variant | wall s (median) | img/s (wall) | CPU s (median) | CPU ms/img | faces found |")
        print("|---|---:|---:|---:|---:|---:|")
        for name in times:
            w, c = statistics.median(times[name]), statistics.median(cpu[name])
            print(f"| {name} | {w:.2f} | {n / w:.1f} | {c:.2f} | {1000 * c / n:.1f} | {found[name]}/{n} |")
        print()
        for label, table in (("wall", times), ("CPU", cpu)):
            ratios = [a / b for a, b in zip(table["fvtool align"], table["bare MTCNN"], strict=True)]
            print(f"fvtool overhead vs bare MTCNN, {label} time: {100 * (statistics.median(ratios) - 1):+.1f}% "
                  f"(rounds: {', '.join(f'{100 * (x - 1):+.1f}%' for x in ratios)})")
            own = [a / b for a, b in zip(table["fvtool without MTCNN"], table["bare MTCNN"], strict=True)]
            print(f"fvtool's own work (run without MTCNN) / bare MTCNN, {label} time: "
                  f"{100 * statistics.median(own):.1f}%")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
