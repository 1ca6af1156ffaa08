"""Quality benchmark on LFW View 2 fold 10, "unrestricted, no outside data", CPU, time budget (issues 5, 6).

Each run trains on every LFW identity outside the test fold (`--fold`, default 10) with >=
`--min-images` images (`lfw_unrestricted_split`; 1,505 identities / 7,829 images at 2 for fold 10)
for as many epochs as fit in `--minutes` of training at the throughput measured in a short probe on
the same machine, embeds the images of pairs.txt with flip-sum TTA and scores (cosine):

- the test fold's 300 + 300 View 2 pairs: accuracy at the threshold chosen on the other nine folds
  (the LFW rule; those folds hold training identities, whose pairs the model scores higher than
  unseen people's, so that threshold sits too high and costs accuracy, but the number stays honest),
  at the threshold chosen on held-out validation identities (`--val-ids N`: N training identities
  left out of training; threshold with the lowest FAR + FRR on all their pairs, unbiased), and at
  the fold's own best threshold (optimistic); EER (bob rule);
- all pairs of the test fold's identities, at most the first 20 images (sorted keys) of each (none
  seen in training; uncapped, George W Bush alone would own most genuine pairs) =
  `fvtool pairs allpairs --split <split> --part test --max-per-identity 20`:
  EER and FRR at FAR = 1e-3 and 1e-4, which 300 impostor pairs cannot measure;
- with `--val-ids`: the EER on all pairs of the validation identities, to choose a recipe without
  looking at the test fold.

A run is `LABEL` (a loss name) or `LABEL:key=value,key=value` with TrainConfig fields, e.g.

    .venv/bin/python bench/bench_quality_lfw.py                          # softmax, arcface, cosface, 20 min each
    .venv/bin/python bench/bench_quality_lfw.py --run 'arc32:loss=arcface,scale=32,warmup_epochs=1'
    .venv/bin/python bench/bench_quality_lfw.py --minutes 8 --run softmax \\
        --run 'ft-triplet:loss=triplet,mining=semihard,init_from=@softmax,lr=0.01,minutes=4'

`init_from=@LABEL` fine-tunes the run LABEL of the same --out folder (run it first); the table's
"total min" then adds that run's training minutes. `minutes=` overrides --minutes for one run;
`epochs=` skips the probe. `--fold 9 --val-ids 100` is the model-selection setting (choose a
recipe on fold 9 / validation identities; then run it once on fold 10).
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
from fvtool.inference import embed_rows
from fvtool.protocols.allpairs import allpairs_protocol
from fvtool.protocols.lfw import read_packaged
from fvtool.protocols.splits import lfw_unrestricted_split, read_split, write_split
from fvtool.settings import shared_path
from fvtool.training.checkpoint import load_trained_method
from fvtool.training.config import TrainConfig
from fvtool.training.engine import Trainer
from fvtool.verification.metrics import ScoreTable

ALLPAIRS_CAP = 20  # images per identity in the all-pairs sets (else one person owns most genuine pairs)


def accuracy_at(scores: np.ndarray, same: np.ndarray, threshold: float) -> float:
    return float(np.mean((scores >= threshold) == same))


def pair_table(scores: np.ndarray, same: np.ndarray) -> ScoreTable:
    return ScoreTable.from_scores(scores[~same], scores[same])


def frr_at(table: ScoreTable, far: float) -> float | None:
    op = table.frr_at_far(far)
    return float(op.frr) if op.measurable else None


def capped_allpairs_rows(images, ids: np.ndarray) -> np.ndarray:
    return allpairs_protocol(images.keys, images.identities, subset=ids,
                             max_per_identity=ALLPAIRS_CAP).resolve_indices(images.keys)


def allpairs_table(x: np.ndarray, ids: np.ndarray) -> ScoreTable:
    iu = np.triu_indices(len(x), k=1)
    sc = (x @ x.T)[iu]
    gen = ids[iu[0]] == ids[iu[1]]
    return ScoreTable.from_scores(sc[~gen], sc[gen])


def evaluate(run: Path, images, proto, spec: CacheSpec, cache_dir: Path, fold: int) -> dict:
    """Metrics of one finished run; `fold` 0-based (see the module doc)."""
    method, config, _, _ = load_trained_method(run, prefer="last")
    model = method.embedder.eval().to(memory_format=torch.channels_last)
    val_ids = np.asarray(read_split(config.split).val)
    rows = proto.resolve_indices(images.keys)
    test = proto.fold == fold
    ident = np.asarray(images.identities)
    # every image of the test fold's identities (disjoint from the training split), for the all-pairs metrics
    test_ids = np.unique(ident[rows[np.concatenate([proto.a[test], proto.b[test]])]])
    test_rows = capped_allpairs_rows(images, test_ids)
    val_rows = capped_allpairs_rows(images, val_ids) if len(val_ids) else np.zeros(0, np.int64)
    used = np.unique(np.concatenate([rows, test_rows, val_rows]))
    sub = images.take(used)
    cache = build_cache(sub, spec, cache_dir=cache_dir, show_progress=False)
    emb = embed_rows(model, np.asarray(cache.array), np.arange(len(sub)), tta="flip-sum",
                     normalisation=Normalisation.named(config.normalisation), device=torch.device("cpu"))
    e = emb[np.searchsorted(used, rows)]
    s = np.einsum("ij,ij->i", e[proto.a], e[proto.b])
    same = proto.same
    t_other = pair_table(s[~test], same[~test]).min_hter_threshold()
    t_self = pair_table(s[test], same[test]).min_hter_threshold()
    allp = allpairs_table(emb[np.searchsorted(used, test_rows)].astype(np.float64), ident[test_rows])
    out = {
        "fold": fold + 1,
        "accuracy": accuracy_at(s[test], same[test], t_other),
        "accuracy_val_threshold": None,
        "accuracy_own_threshold": accuracy_at(s[test], same[test], t_self),
        "eer": float(pair_table(s[test], same[test]).eer().value),
        "allpairs_images": len(test_rows), "allpairs_genuine": allp.n_gen, "allpairs_impostor": allp.n_imp,
        "eer_allpairs": float(allp.eer().value),
        "frr@far=1e-3_allpairs": frr_at(allp, 1e-3),
        "frr@far=1e-4_allpairs": frr_at(allp, 1e-4),
        "val_identities": len(val_ids), "eer_val": None,
    }
    if len(val_ids):
        val = allpairs_table(emb[np.searchsorted(used, val_rows)].astype(np.float64), ident[val_rows])
        out["accuracy_val_threshold"] = accuracy_at(s[test], same[test], val.min_hter_threshold())
        out["eer_val"] = float(val.eer().value)
    return out


def upgrade(row: dict) -> dict:
    """bench.json rows written before --fold/--val-ids (fold 10, no validation identities)."""
    old = {"accuracy_fold10": "accuracy", "accuracy_fold10_best_threshold": "accuracy_own_threshold",
           "eer_fold10": "eer"}
    row = {old.get(k, k): v for k, v in row.items()}
    row.setdefault("fold", 10)
    row.setdefault("accuracy_val_threshold", None)
    row.setdefault("eer_val", None)
    return row


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
    ap.add_argument("--fold", type=int, default=10, help="test fold of View 2 (1..10); train on the others' identities")
    ap.add_argument("--val-ids", type=int, default=0,
                    help="hold out this many training identities: threshold and recipe choice without the test fold")
    ap.add_argument("--val-seed", type=int, default=0, help="seed of the validation-identity draw")
    ap.add_argument("--augment", default="flip,shift=0.05")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--out", type=Path, default=Path("bench/out/quality"))
    ap.add_argument("--data", type=Path, default=None,
                    help="LFW folder to train/evaluate on (default: the shared deep-funneled images); e.g. the "
                         "output of `fvtool align` (with --crop 1.0 for similarity crops)")
    ap.add_argument("--collect", type=Path, nargs="+", default=None,
                    help="only print one table from the finished runs (*/lfw*-*/bench.json) under these folders")
    ap.add_argument("--reevaluate", type=Path, nargs="+", default=None,
                    help="recompute the metrics of finished runs (run folders with bench.json) with this "
                         "version of the evaluation, in place, then print their table; needs --data")
    a = ap.parse_args()
    if a.collect:
        rows = [upgrade(json.loads(p.read_text())) for d in a.collect for p in sorted(d.glob("lfw*-*/bench.json"))]
        print(markdown_table(sorted(rows, key=lambda r: (r["fold"], -r["accuracy"]))))
        return
    torch.set_num_threads(a.threads)
    lfw = a.data or shared_path("lfw-deepfunneled")
    if lfw is None or not lfw.exists():
        raise SystemExit("full LFW not found (set FVTOOL_DATA)")
    a.out.mkdir(parents=True, exist_ok=True)
    images = load_image_set(lfw)
    proto = read_packaged("pairs.txt")
    spec = CacheSpec(a.size, a.crop)
    if a.reevaluate:
        rows = []
        for run in a.reevaluate:
            row = upgrade(json.loads((run / "bench.json").read_text()))
            row.update(evaluate(run, images, proto, spec, a.out / "cache", row["fold"] - 1))
            (run / "bench.json").write_text(json.dumps(row, indent=1))
            rows.append(row)
        print(markdown_table(rows))
        return
    if not 1 <= a.fold <= proto.n_folds:
        raise SystemExit(f"--fold must be 1..{proto.n_folds}")
    fold = a.fold - 1
    split = lfw_unrestricted_split(proto, images.keys, images.identities, fold=fold, min_images=a.min_images,
                                   val_identities=a.val_ids, seed=a.val_seed)
    split_path = a.out / f"split-fold{a.fold}-min{a.min_images}-val{a.val_ids}s{a.val_seed}.json"
    write_split(split_path, split)
    runs = [parse_run(r) for r in a.run] or [(loss, {"loss": loss}) for loss in a.losses.split(",")]
    results = []
    for label, opts in runs:
        opts = dict(opts)
        minutes = float(opts.pop("minutes", a.minutes))
        before = 0.0
        if str(opts.get("init_from", "")).startswith("@"):
            src = a.out / f"lfw{a.fold}-{opts['init_from'][1:]}"
            opts["init_from"] = str(src)
            before = json.loads((src / "bench.json").read_text())["train_min"]
        base = dict(data=str(lfw), split=str(split_path), val_protocol="none", backbone=a.backbone,
                    input_size=a.size, crop=a.crop, embedding_size=a.embedding_size, batch_size=a.batch,
                    cap=a.cap, augment=AugmentConfig.parse(a.augment), threads=a.threads, select_metric="loss",
                    seed=0)
        base.update(opts)
        epochs = base.pop("epochs", None) or probe_epochs(base, minutes, a.out / f"probe-{label}", a.out / "cache")
        run = a.out / f"lfw{a.fold}-{label}"
        shutil.rmtree(run, ignore_errors=True)
        t0 = time.perf_counter()
        res = Trainer(TrainConfig(**base, epochs=epochs), run, show_progress=True, cache_dir=a.out / "cache").fit()
        train_min = (time.perf_counter() - t0) / 60
        m = evaluate(run, images, proto, spec, a.out / "cache", fold)
        row = {"label": label, "options": {k: str(v) for k, v in opts.items()}, "epochs": epochs,
               "train_min": train_min, "total_min": train_min + before, "img_per_s": res.img_per_s,
               "epochs_done": res.epochs_done, "stopped": res.stopped, **m}
        (run / "bench.json").write_text(json.dumps(row, indent=1))
        results.append(row)
        print(json.dumps(row), flush=True)
    (a.out / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nmachine: {platform.machine()}, {a.threads} torch threads; {a.backbone} @{a.size}px crop {a.crop}, "
          f"batch {a.batch}, cap {a.cap}, min images {a.min_images}, {a.val_ids} validation identities, "
          f"augment {a.augment!r}, "
          f"budget {a.minutes} min per run")
    print(markdown_table(results))


def pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"


def markdown_table(results: list[dict]) -> str:
    lines = ["| run | fold | epochs | train min | total min | img/s | acc (thr. other folds) | acc (thr. val ids) "
             "| acc (own thr.) | EER | all-pairs EER | FRR@FAR=1e-3 | FRR@FAR=1e-4 | val EER |", "|---" * 14 + "|"]
    for r in results:
        ep = r["epochs"] if r.get("epochs_done", r["epochs"]) == r["epochs"] else f"{r['epochs_done']}/{r['epochs']}*"
        lines.append(f"| {r['label']} | {r['fold']} | {ep} | {r['train_min']:.1f} | {r['total_min']:.1f} | "
                     f"{r['img_per_s']:.0f} | {pct(r['accuracy'])} | {pct(r['accuracy_val_threshold'])} | "
                     f"{pct(r['accuracy_own_threshold'])} | "
                     f"{pct(r['eer'])} | {pct(r['eer_allpairs'])} | {pct(r['frr@far=1e-3_allpairs'])} | "
                     f"{pct(r['frr@far=1e-4_allpairs'])} | {pct(r['eer_val'])} |")
    if any(r.get("epochs_done", r["epochs"]) != r["epochs"] for r in results):
        lines.append("\n\\* stopped early: " + "; ".join(f"{r['label']}: {r['stopped']}" for r in results
                                                      if r.get("epochs_done", r["epochs"]) != r["epochs"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
