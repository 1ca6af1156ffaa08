"""Quality benchmark on LFW View 2 fold 10, "unrestricted, no outside data", CPU, time budget (issues 5, 6).

Each run trains on every LFW identity outside fold 10 with >= `--min-images` images
(`lfw_unrestricted_split`; 1,505 identities / 7,829 images at 2) for as many epochs as fit in
`--minutes` of training at the throughput measured in a short probe on the same machine, embeds the
images of pairs.txt with flip-sum TTA and scores (cosine):

- fold 10's 300 + 300 View 2 pairs: accuracy at the threshold chosen on folds 1-9 (the LFW rule;
  those folds hold training identities, so that threshold is biased for them but the fold-10
  accuracy stays honest), accuracy at fold 10's own best threshold (optimistic), EER (bob rule);
- all pairs of fold 10's 451 identities, at most the first 20 images (sorted keys) of each (none
  seen in training; uncapped, George W Bush alone would own most genuine pairs) =
  `fvtool pairs allpairs --split <split> --part test --max-per-identity 20`:
  EER and FRR at FAR = 1e-3 and 1e-4, which 300 impostor pairs cannot measure.

A run is `LABEL` (a loss name) or `LABEL:key=value,key=value` with TrainConfig fields, e.g.

    .venv/bin/python bench/bench_quality_lfw.py                          # softmax, arcface, cosface, 20 min each
    .venv/bin/python bench/bench_quality_lfw.py --run 'arc32:loss=arcface,scale=32,warmup_epochs=1'
    .venv/bin/python bench/bench_quality_lfw.py --minutes 8 --run softmax \\
        --run 'ft-triplet:loss=triplet,mining=semihard,init_from=@softmax,lr=0.01,minutes=4'

`init_from=@LABEL` fine-tunes the run LABEL of the same --out folder (run it first); the table's
"total min" then adds that run's training minutes. `minutes=` overrides --minutes for one run;
`epochs=` skips the probe.
Runs go to --out (git-ignored bench/out/...); `--collect DIR...` prints one table from finished runs.
Needs the full data (../shared/data or $FVTOOL_DATA).
Run on an otherwise idle machine (or N runs side by side with --threads 2/N): the epoch count
follows the throughput measured in the probe.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fvtool.data.cache import CacheSpec, build_cache
from fvtool.data.dataset import load_image_set
from fvtool.data.transforms import AugmentConfig, Normalisation
from fvtool.embedding import embed_rows
from fvtool.protocols.allpairs import allpairs_protocol
from fvtool.protocols.lfw import read_packaged
from fvtool.protocols.splits import lfw_unrestricted_split, write_split
from fvtool.settings import shared_path
from fvtool.training.config import TrainConfig
from fvtool.training.data import subset
from fvtool.training.engine import Trainer, load_trained_method
from fvtool.verification.metrics import ScoreTable

FOLD = 9  # 0-based: the tenth fold
ALLPAIRS_CAP = 20  # images per identity in the all-pairs set (else one person owns most genuine pairs)


def best_threshold(scores: np.ndarray, same: np.ndarray) -> float:
    """Threshold (accept iff score >= t) with the highest accuracy; ties: the lowest threshold."""
    cand = np.unique(scores)
    acc = [(np.mean((scores >= t) == same), -t) for t in cand]
    return -max(acc)[1]


def frr_at(table: ScoreTable, far: float) -> float | None:
    op = table.frr_at_far(far)
    return float(op.frr) if op.measurable else None


def evaluate(run: Path, images, proto, spec: CacheSpec, cache_dir: Path) -> dict:
    method, config, _, _ = load_trained_method(run, prefer="last")
    model = method.embedder.eval().to(memory_format=torch.channels_last)
    rows = proto.resolve_indices(images.keys)
    test = proto.fold == FOLD
    ident = np.asarray(images.identities)
    # every image of fold 10's identities (disjoint from the training split), for the all-pairs metrics
    f10_ids = np.unique(ident[rows[np.concatenate([proto.a[test], proto.b[test]])]])
    f10_rows = allpairs_protocol(images.keys, images.identities, subset=f10_ids,
                                 max_per_identity=ALLPAIRS_CAP).resolve_indices(images.keys)
    used = np.unique(np.concatenate([rows, f10_rows]))
    sub = subset(images, used)
    cache = build_cache(sub, spec, cache_dir=cache_dir, show_progress=False)
    emb = embed_rows(model, np.asarray(cache.array), np.arange(len(sub)), tta="flip-sum",
                     normalisation=Normalisation.named(config.normalisation), device=torch.device("cpu"))
    where = np.searchsorted(used, rows)
    e = emb[where]
    s = np.einsum("ij,ij->i", e[proto.a], e[proto.b])
    same = proto.same
    t_other = best_threshold(s[~test], same[~test])
    t_self = best_threshold(s[test], same[test])
    table = ScoreTable.from_scores(s[test & ~same], s[test & same])
    x = emb[np.searchsorted(used, f10_rows)].astype(np.float64)
    ids = ident[f10_rows]
    iu = np.triu_indices(len(f10_rows), k=1)
    sc = (x @ x.T)[iu]
    gen = ids[iu[0]] == ids[iu[1]]
    allp = ScoreTable.from_scores(sc[~gen], sc[gen])
    return {
        "accuracy_fold10": float(np.mean((s[test] >= t_other) == same[test])),
        "accuracy_fold10_best_threshold": float(np.mean((s[test] >= t_self) == same[test])),
        "eer_fold10": float(table.eer().value),
        "allpairs_images": len(f10_rows), "allpairs_genuine": int(gen.sum()), "allpairs_impostor": int((~gen).sum()),
        "eer_allpairs": float(allp.eer().value),
        "frr@far=1e-3_allpairs": frr_at(allp, 1e-3),
        "frr@far=1e-4_allpairs": frr_at(allp, 1e-4),
    }


def probe_epochs(base: dict[str, Any], minutes: float, probe_dir: Path, cache_dir: Path) -> int:
    """Epochs that fit in `minutes` at the throughput of steps 6-30 of a probe run (the first
    steps are slower; a probe that overlaps another process's start-up underestimates, so for
    side-by-side lanes give `epochs=` explicitly from a steady-state measurement)."""
    shutil.rmtree(probe_dir, ignore_errors=True)
    probe = Trainer(TrainConfig(**base, epochs=1), probe_dir, show_progress=False, cache_dir=cache_dir)
    probe.fit(stop_after_steps=5)
    n0, s0 = probe.meters.n_images, probe.meters.seconds
    probe.fit(stop_after_steps=min(30, probe.steps_per_epoch))
    ips = (probe.meters.n_images - n0) / (probe.meters.seconds - s0)
    shutil.rmtree(probe_dir, ignore_errors=True)
    return max(1, int(minutes * 60 * ips / (probe.steps_per_epoch * base["batch_size"])))


def parse_run(spec: str) -> tuple[str, dict[str, Any]]:
    """`LABEL` (= loss LABEL) or `LABEL:key=value,...` -> (label, TrainConfig overrides + `minutes`)."""
    label, _, rest = spec.partition(":")
    opts: dict[str, Any] = {}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"run {spec!r}: {item!r} is not key=value")
        if key == "augment":
            opts[key] = AugmentConfig.parse(value.replace("+", ","))
        elif key == "pk":
            p, k = value.split("x")
            opts[key] = (int(p), int(k))
        elif key in ("loss_opt", "mining_opt", "method_opt", "backbone_opt"):
            k2, _, v2 = value.partition(":")
            opts.setdefault(key.replace("_opt", "_options"), {})[k2] = json.loads(v2)
        else:
            try:
                opts[key] = json.loads(value)
            except json.JSONDecodeError:
                opts[key] = value
    opts.setdefault("loss", label)
    return label, opts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--losses", default="softmax,arcface,cosface", help="shortcut: one run per loss name")
    ap.add_argument("--run", action="append", default=[], help="LABEL[:key=value,...] (repeatable; replaces --losses)")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per run")
    ap.add_argument("--backbone", default="resnet_small")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--crop", type=float, default=0.5, help="central fraction of the 250x250 deep-funneled image")
    ap.add_argument("--embedding-size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--cap", type=int, default=40)
    ap.add_argument("--min-images", type=int, default=2, help="train identities need this many images")
    ap.add_argument("--augment", default="flip,shift=0.05")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    ap.add_argument("--data", type=Path, default=None,
                    help="LFW folder to train/evaluate on (default: the shared deep-funneled images); e.g. the "
                         "output of `fvtool align` (with --crop 1.0 for similarity crops)")
    ap.add_argument("--collect", type=Path, nargs="+", default=None,
                    help="only print one table from the finished runs (*/lfw10-*/bench.json) under these folders")
    a = ap.parse_args()
    if a.collect:
        rows = [json.loads(p.read_text()) for d in a.collect for p in sorted(d.glob("lfw10-*/bench.json"))]
        print(markdown_table(sorted(rows, key=lambda r: -r["accuracy_fold10"])))
        return
    torch.set_num_threads(a.threads)
    lfw = a.data or shared_path("lfw-deepfunneled")
    if lfw is None or not lfw.exists():
        raise SystemExit("full LFW not found (set FVTOOL_DATA)")
    a.out.mkdir(parents=True, exist_ok=True)
    images = load_image_set(lfw)
    proto = read_packaged("pairs.txt")
    split = lfw_unrestricted_split(proto, images.keys, images.identities, fold=FOLD, min_images=a.min_images)
    split_path = a.out / f"split-fold10-min{a.min_images}.json"
    write_split(split_path, split)
    spec = CacheSpec(a.size, a.crop)
    runs = [parse_run(r) for r in a.run] or [(loss, {"loss": loss}) for loss in a.losses.split(",")]
    results = []
    for label, opts in runs:
        opts = dict(opts)
        minutes = float(opts.pop("minutes", a.minutes))
        before = 0.0
        if str(opts.get("init_from", "")).startswith("@"):
            src = a.out / f"lfw10-{opts['init_from'][1:]}"
            opts["init_from"] = str(src)
            before = json.loads((src / "bench.json").read_text())["train_min"]
        base = dict(data=str(lfw), split=str(split_path), val_protocol="none", backbone=a.backbone,
                    input_size=a.size, crop=a.crop, embedding_size=a.embedding_size, batch_size=a.batch,
                    cap=a.cap, augment=AugmentConfig.parse(a.augment), threads=a.threads, select_metric="loss",
                    seed=0)
        base.update(opts)
        epochs = base.pop("epochs", None) or probe_epochs(base, minutes, a.out / f"probe-{label}", a.out / "cache")
        run = a.out / f"lfw10-{label}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        res = Trainer(TrainConfig(**base, epochs=epochs), run, show_progress=True, cache_dir=a.out / "cache").fit()
        train_min = (time.perf_counter() - t0) / 60
        m = evaluate(run, images, proto, spec, a.out / "cache")
        row = {"label": label, "options": {k: str(v) for k, v in opts.items()}, "epochs": epochs,
               "train_min": train_min, "total_min": train_min + before, "img_per_s": res.img_per_s,
               "epochs_done": res.epochs_done, "stopped": res.stopped, **m}
        (run / "bench.json").write_text(json.dumps(row, indent=1))
        results.append(row)
        print(json.dumps(row), flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nmachine: {platform.machine()}, {a.threads} torch threads; {a.backbone} @{a.size}px crop {a.crop}, "
          f"batch {a.batch}, cap {a.cap}, min images {a.min_images}, augment {a.augment!r}, "
          f"budget {a.minutes} min per run")
    print(markdown_table(results))


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def markdown_table(results: list[dict]) -> str:
    lines = ["| run | epochs | train min | total min | img/s | fold-10 acc (thr. folds 1-9) | fold-10 acc (own thr.) "
             "| fold-10 EER | all-pairs EER | FRR@FAR=1e-3 | FRR@FAR=1e-4 |", "|---" * 11 + "|"]
    for r in results:
        ep = r["epochs"] if r.get("epochs_done", r["epochs"]) == r["epochs"] else f"{r['epochs_done']}/{r['epochs']}*"
        lines.append(f"| {r['label']} | {ep} | {r['train_min']:.1f} | {r['total_min']:.1f} | "
                     f"{r['img_per_s']:.0f} | {pct(r['accuracy_fold10'])} | "
                     f"{pct(r['accuracy_fold10_best_threshold'])} | "
                     f"{pct(r['eer_fold10'])} | {pct(r['eer_allpairs'])} | {pct(r['frr@far=1e-3_allpairs'])} | "
                     f"{pct(r['frr@far=1e-4_allpairs'])} |")
    if any(r.get("epochs_done", r["epochs"]) != r["epochs"] for r in results):
        lines.append("\n\\* stopped early: " + "; ".join(f"{r['label']}: {r['stopped']}" for r in results
                                                      if r.get("epochs_done", r["epochs"]) != r["epochs"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
