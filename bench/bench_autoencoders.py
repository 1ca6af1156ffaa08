"""Issue 7 comparison: BCE vs MSE reconstruction for the VAE and the AE, next to classification losses.

Same data, network and budget for every run: LFW View 2 "unrestricted" training split of fold 10
(1,505 identities with >= 2 images, 7,829 images), central crop 0.5 of the 250 px deep-funneled images
resized to 64 px, the `conv-encoder` (width 128, 128-d code), 8 epochs of batch 64, Adam lr 1e-3 with a
cosine schedule, no weight decay, flip augmentation, seed 0, one CPU thread. All through the ordinary
stages (`fvtool pairs split`, `train`, `embed --checkpoint last`, `verify`), so the AE/VAE runs are
embedded and verified exactly like any backbone. Reported per run:
- reconstruction error per pixel value (MSE, pixels in [0, 1]) and KL (nats per image) on the 785
  held-out images of fold 10 (identities never trained on), eval mode (decoding mu);
- LFW fold-10 accuracy (threshold from folds 1-9, the LFW rule) and EER (bob rule) on fold 10's
  300 + 300 pairs, cosine scores of the embedding (mu for the VAE, the code for the AE);
- a reference row "pixels": the mean-centred 64 px pixels themselves as the embedding.
Figures: fold-10 faces with each run's reconstruction, and prior samples of both VAEs.

    .venv/bin/python bench/bench_autoencoders.py                    # all runs (~80 min on a loaded 2-core CPU)
    .venv/bin/python bench/bench_autoencoders.py --runs ae-bce softmax --epochs 1   # a smoke run

Outputs in bench/out/autoencoders/ (git-ignored): the workspace, logs, results.md, figures. Needs the
full data (../shared/data or $FVTOOL_DATA); fold 10 comes from `fvtool pairs lfw --fold 10`. Processes
run under `nice -n 19` so a shared machine's other work goes first.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fvtool.data.cache import CacheSpec, build_cache
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.data.transforms import Normalisation
from fvtool.losses.vae import kl_divergence
from fvtool.settings import shared_path
from fvtool.training.autoencoder import image_grid, write_png
from fvtool.training.checkpoint import load_trained_method

RUNS = {
    "vae-bce": ["--loss", "vae", "--recon", "bce", "--kl-warmup", "1"],
    "vae-mse": ["--loss", "vae", "--recon", "mse", "--kl-warmup", "1"],
    "ae-bce": ["--loss", "ae", "--recon", "bce"],
    "ae-mse": ["--loss", "ae", "--recon", "mse"],
    "vae-bce-arcface": ["--loss", "vae", "--recon", "bce", "--kl-warmup", "1", "--method-opt", "head=arcface",
                        "--method-opt", "head_weight=0.1"],
    "arcface": ["--loss", "arcface", "--backbone", "conv-encoder"],
    "softmax": ["--loss", "softmax", "--backbone", "conv-encoder"],
}
RECON_RUNS = ("vae-bce", "vae-mse", "ae-bce", "ae-mse", "vae-bce-arcface")
SIZE, CROP = 64, 0.5


def fvtool(ws: Path, *args: str, log: Path) -> None:
    cmd = ["nice", "-n", "19", sys.executable, "-m", "fvtool", "-w", str(ws), *args]
    with open(log, "w") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode != 0:
            raise SystemExit(f"failed: {' '.join(cmd)} (see {log})")


def held_out_reconstruction(run: Path, x01: torch.Tensor, pick: torch.Tensor) -> tuple[dict, np.ndarray]:
    method, cfg, _, _ = load_trained_method(run, prefer="last")
    method.eval()
    x = Normalisation.named(cfg.normalisation).apply(x01)
    mse, kl = [], []
    with torch.no_grad():
        for i in range(0, len(x), 128):
            mu, logvar = method.model.encoder.encode(x[i:i + 128])
            mse.append((torch.sigmoid(method.model.decoder(mu)) - x01[i:i + 128]).square().flatten(1).mean(1))
            if logvar is not None:
                kl.append(kl_divergence(mu, logvar))
        recon = torch.sigmoid(method.model.decoder(method.model.encoder.encode(x[pick])[0]))
    stats = {"mse": float(torch.cat(mse).mean()), "kl": float(torch.cat(kl).mean()) if kl else None}
    return stats, image_grid([x01[pick], recon])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "autoencoders")
    args = ap.parse_args()
    torch.set_num_threads(1)
    lfw = shared_path("lfw-deepfunneled")
    if lfw is None:
        raise SystemExit("full data not found: set FVTOOL_DATA to the folder holding lfw-deepfunneled/, lfw-protocol/")
    out = args.out.resolve()
    ws, logs = out / "fvwork", out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    split = ws / "splits" / "lfw-view2-fold10-unrestricted.json"
    if not split.is_file():
        fvtool(ws, "pairs", "split", str(lfw), "--lfw-fold", "10", "--min-images", "2", log=logs / "split.log")
    fold10 = out / "lfw-fold10.json"
    if not fold10.is_file():
        fvtool(ws, "pairs", "lfw", "--fold", "10", "--data", str(lfw), "--name", "lfw-fold10", "-o", str(fold10),
               log=logs / "fold10.log")
    common = ["--data", str(lfw), "--split", str(split), "--val-protocol", "none", "--input-size", str(SIZE),
              "--crop", str(CROP), "--backbone-opt", f"width={args.width}", "--embedding-size", "128",
              "--epochs", str(args.epochs), "--batch-size", "64", "--optimizer", "adam", "--lr", "1e-3",
              "--weight-decay", "0", "--threads", "1", "--seed", "0", "-q"]
    for name in args.runs:
        run = ws / "runs" / name
        if not (run / "checkpoints" / "last.pt").is_file():
            print(f"training {name} ...", flush=True)
            fvtool(ws, "train", *common, *RUNS[name], "--name", name, log=logs / f"{name}.train.log")
        emb = ws / "embeddings" / f"{name}.h5"
        if not emb.is_file():
            fvtool(ws, "embed", str(run), "--data", str(lfw), "--checkpoint", "last", "--threads", "1", "-o",
                   str(emb), "-q", log=logs / f"{name}.embed.log")

    images = load_image_set(lfw)
    cache = build_cache(images, CacheSpec(SIZE, CROP), show_progress=False)
    pixels = ws / "embeddings" / "pixels.h5"
    if not pixels.is_file():
        x = np.asarray(cache.array, dtype=np.float32).reshape(len(images), -1) / 255.0
        x -= x.mean(0, keepdims=True)
        write_embeddings(pixels, EmbeddingSet(x, images.keys, images.identities, images.status, attrs={
            "backbone": f"raw pixels ({SIZE} px, crop {CROP}, mean-centred)", "input_size": SIZE}))
    rows_md = []
    keys = json.loads(fold10.read_text())["images"]
    index = images.index()
    x01 = torch.from_numpy(np.asarray(cache.array)[[index[k] for k in keys]]).permute(0, 3, 1, 2).float() / 255
    pick = torch.linspace(0, len(keys) - 1, 8).long()
    grids: dict[str, np.ndarray] = {}
    for name in [*args.runs, "pixels"]:
        emb = ws / "embeddings" / f"{name}.h5"
        for proto, tag in (("lfw", "lfw"), (str(fold10), "fold10")):
            if not (ws / "verify" / f"{name}-{tag}" / "metrics.json").is_file():
                fvtool(ws, "verify", str(emb), "--protocol", proto, "-o", str(ws / "verify" / f"{name}-{tag}"),
                       log=logs / f"{name}.verify-{tag}.log")
        m = json.loads((ws / "verify" / f"{name}-lfw" / "metrics.json").read_text())
        m10 = json.loads((ws / "verify" / f"{name}-fold10" / "metrics.json").read_text())
        rec = {"mse": None, "kl": None}
        if name in RECON_RUNS:
            rec, grids[name] = held_out_reconstruction(ws / "runs" / name, x01, pick)
        cfg = (json.loads((ws / "runs" / name / "config.json").read_text())["config"]
               if name != "pixels" else {})
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        rows_md.append(f"| {name} | {cfg.get('loss', '-')} | {cfg.get('recon') or '-'} | {fmt(rec['mse'], '.4f')} | "
                       f"{fmt(rec['kl'], '.1f')} | {m['kfold']['grid']['fold_accuracy'][9]:.3f} | "
                       f"{m10['eer']['value']:.3f} | {m10['auc']['value']:.3f} |")
    table = "\n".join([
        "| run | loss | recon | held-out MSE per pixel | held-out KL (nats/image) | LFW fold-10 accuracy | "
        "fold-10 EER | fold-10 AUC |",
        "|---|---|---|---|---|---|---|---|", *rows_md])
    (out / "results.md").write_text(table + "\n")
    print(table)
    shown = [r for r in RECON_RUNS if r in grids]
    if shown:
        write_png(out / "recon_fold10.png",
                  np.concatenate([grids[shown[0]][:SIZE + 4]] + [grids[r][SIZE + 4:2 * SIZE + 6] for r in shown]))
    samples = [ws / "runs" / r / "images" / f"samples_epoch{args.epochs:03d}.png" for r in ("vae-bce", "vae-mse")]
    if all(p.is_file() for p in samples):
        a, b = (np.asarray(Image.open(p)) for p in samples)
        write_png(out / "samples_vae_bce_mse.png", np.concatenate([a, np.full((6, a.shape[1], 3), 255, np.uint8), b]))
    print(f"figures and results in {out}")


if __name__ == "__main__":
    main()
