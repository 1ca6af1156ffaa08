"""Quality benchmark of issue 5: LFW View 2 fold 10, "unrestricted, no outside data", CPU, time budget.

For each loss: train on every LFW identity outside fold 10 with >= 2 images (1,505 identities, 7,829
images, `lfw_unrestricted_split`), for as many epochs as fit in `--minutes` of training at the
throughput measured in a short probe on the same machine; embed the images of pairs.txt with flip-sum
TTA; score fold 10's 300 + 300 pairs (cosine). Reported per loss: fold-10 accuracy at the threshold
chosen on folds 1-9 (the LFW protocol's rule; those folds contain training identities, so the
threshold is optimistic for them but the fold-10 accuracy is honest), fold-10 accuracy at its own
best threshold (optimistic), EER (bob rule) and FRR at FAR = 1e-2 on fold 10, training minutes,
epochs and img/s. Issue-5 target for the best loss: >= 90 % accuracy and <= 10 % EER on fold 10.

    .venv/bin/python bench/bench_quality_lfw.py                          # softmax, arcface, cosface, 20 min each
    .venv/bin/python bench/bench_quality_lfw.py --losses arcface --minutes 5 --threads 2

Runs go to bench/out/quality/ (git-ignored). Needs the full data (../shared/data or $FVTOOL_DATA).
Run it on an otherwise idle machine: the epoch count follows the measured throughput.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from fvtool.data.cache import CacheSpec, build_cache
from fvtool.data.dataset import load_image_set
from fvtool.data.transforms import AugmentConfig, Normalisation
from fvtool.embedding import embed_rows
from fvtool.protocols.lfw import read_packaged
from fvtool.protocols.splits import lfw_unrestricted_split, write_split
from fvtool.settings import shared_path
from fvtool.training.config import TrainConfig
from fvtool.training.data import subset
from fvtool.training.engine import Trainer, load_trained_method
from fvtool.verification.metrics import ScoreTable

FOLD = 9  # 0-based: the tenth fold


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold (accept iff score >= t) with the highest accuracy; ties: the lowest threshold."""
    cand = np.unique(scores)
    acc = [(np.mean((scores >= t) == same), -t) for t in cand]
    return -max(acc)[1]


def evaluate(run: Path, images, proto, spec: CacheSpec, cache_dir: Path) -> dict:
    method, config, _, _ = load_trained_method(run, prefer="last")
    model = method.embedder.eval().to(memory_format=torch.channels_last)
    rows = proto.resolve_indices(images.keys)
    used = np.unique(rows)
    sub = subset(images, used)
    cache = build_cache(sub, spec, cache_dir=cache_dir, show_progress=False)
    emb = embed_rows(model, np.asarray(cache.array), np.arange(len(sub)), tta="flip-sum",
                     normalisation=Normalisation.named(config.normalisation), device=torch.device("cpu"))
    where = {int(r): k for k, r in enumerate(used)}
    e = emb[[where[int(r)] for r in rows]]
    s = np.einsum("ij,ij->i", e[proto.a], e[proto.b])
    same = proto.same
    test = proto.fold == FOLD
    t_other = best_threshold(s[~test], same[~test])
    t_self = best_threshold(s[test], same[test])
    table = ScoreTable.from_scores(s[test & ~same], s[test & same])
    op = table.frr_at_far(1e-2)
    return {
        "accuracy_fold10": float(np.mean((s[test] >= t_other) == same[test])),
        "accuracy_fold10_best_threshold": float(np.mean((s[test] >= t_self) == same[test])),
        "eer_fold10": float(table.eer().value),
        "frr@far=1e-2_fold10": float(op.frr) if op.measurable else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--losses", default="softmax,arcface,cosface")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per loss")
    ap.add_argument("--backbone", default="resnet_small")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", type=float, default=0.5, help="central fraction of the 250x250 deep-funneled image")
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cap", type=int, default=40)
    ap.add_argument("--augment", default="flip,shift=0.05")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    ap.add_argument("--data", type=Path, default=None,
                    help="LFW folder to train/evaluate on (default: the shared deep-funneled images); e.g. the "
                         "output of `fvtool align` (with --crop 1.0 for similarity crops)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    lfw = a.data or shared_path("lfw-deepfunneled")
    if lfw is None or not lfw.exists():
        raise SystemExit("full LFW not found (set FVTOOL_DATA)")
    a.out.mkdir(parents=True, exist_ok=True)
    images = load_image_set(lfw)
    proto = read_packaged("pairs.txt")
    split = lfw_unrestricted_split(proto, images.keys, images.identities, fold=FOLD, min_images=2)
    write_split(a.out / "split-fold10.json", split)
    spec = CacheSpec(a.size, a.crop)
    results = []
    for loss in a.losses.split(","):
        base = dict(data=str(lfw), split=str(a.out / "split-fold10.json"), val_protocol="none", loss=loss,
                    backbone=a.backbone, input_size=a.size, crop=a.crop, embedding_size=a.embedding_size,
                    batch_size=a.batch, cap=a.cap, augment=AugmentConfig.parse(a.augment), threads=a.threads,
                    select_metric="loss", seed=0)
        probe = Trainer(TrainConfig(**base, epochs=1), a.out / f"probe-{loss}", show_progress=False,
                        cache_dir=a.out / "cache")
        probe.fit(stop_after_steps=3)
        n0, s0 = probe.meters.n_images, probe.meters.seconds
        probe.fit(stop_after_steps=12)
        ips = (probe.meters.n_images - n0) / (probe.meters.seconds - s0)
        per_epoch = probe.steps_per_epoch * a.batch
        epochs = max(1, int(a.minutes * 60 * ips / per_epoch))
        shutil.rmtree(a.out / f"probe-{loss}", ignore_errors=True)
        run = a.out / f"lfw10-{loss}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        res = Trainer(TrainConfig(**base, epochs=epochs), run, show_progress=True, cache_dir=a.out / "cache").fit()
        minutes = (time.perf_counter() - t0) / 60
        m = evaluate(run, images, proto, spec, a.out / "cache")
        row = {"loss": loss, "epochs": epochs, "train_min": minutes, "img_per_s": res.img_per_s, **m}
        results.append(row)
        print(json.dumps(row), flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nmachine: {platform.machine()}, {a.threads} torch threads; {a.backbone} @{a.size}px crop {a.crop}, "
          f"batch {a.batch}, cap {a.cap}, augment {a.augment!r}, budget {a.minutes} min per loss")
    print("\n| loss | epochs | train min | img/s | fold-10 acc (thr. folds 1-9) | fold-10 acc (own best thr.) "
          "| fold-10 EER | FRR@FAR=1e-2 |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        frr = r["frr@far=1e-2_fold10"]
        print(f"| {r['loss']} | {r['epochs']} | {r['train_min']:.1f} | {r['img_per_s']:.0f} | "
              f"{100 * r['accuracy_fold10']:.1f}% | {100 * r['accuracy_fold10_best_threshold']:.1f}% | "
              f"{100 * r['eer_fold10']:.1f}% | {'n/a' if frr is None else f'{100 * frr:.1f}%'} |")


if __name__ == "__main__":
    main()
