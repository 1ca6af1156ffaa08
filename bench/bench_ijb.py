"""Time the IJB-C pipeline's stages and scale them to the full benchmark (docs/verify.md, "IJB-B/C").

Two parts, because the licensed data is not here:
1. alignment: the miniature IJB-C-layout set from data/lfw-subset (`write_miniature`), aligned from its
   5 points (`align_ijb`, one thread); seconds per image x 227,630 images.
2. pooling + 1:1 + 1:N at 1/SCALE of IJB-C's size with random 512-d image embeddings and a synthetic
   meta table of the same shape (images per template ~9.8, media per template ~4, 15.7 M / SCALE
   template pairs with IJB-C's genuine share, galleries and probes as in the 1:N protocol); the
   measured seconds x SCALE (every step is linear in images, templates or pairs).
Embedding time is left out: it is the model's cost (see docs/scaling.md for fvtool's networks).

    .venv/bin/python bench/bench_ijb.py [--scale 10] [--work /tmp/ijb-bench]
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

IJBC = {"images": 227_630, "templates": 23_124, "pairs": 15_658_489, "genuine": 19_557, "subjects": 3_531}


def synthetic(root: Path, scale: int, rng: np.random.Generator) -> tuple[Path, int, int]:
    n_img, n_t, n_pairs = IJBC["images"] // scale, IJBC["templates"] // scale, IJBC["pairs"] // scale
    n_gen = IJBC["genuine"] // scale
    n_subj = max(4, IJBC["subjects"] // scale)
    meta = root / "meta"
    meta.mkdir(parents=True)
    tids = np.sort(rng.integers(1, n_t + 1, n_img))
    tids[:n_t] = np.arange(1, n_t + 1)  # every template has an image
    tids.sort()
    mids = tids * 10 + rng.integers(0, 4, n_img)
    names = [f"{i}.jpg" for i in range(1, n_img + 1)]
    (meta / "ijbc_face_tid_mid.txt").write_text("".join(f"{n} {t} {m}\n" for n, t, m in zip(names, tids, mids,
                                                                                            strict=True)))
    pts = " ".join(["50.0"] * 10)
    (meta / "ijbc_name_5pts_score.txt").write_text("".join(f"{n} {pts} {s:.3f}\n" for n, s in
                                                           zip(names, rng.uniform(0.5, 1, n_img), strict=True)))
    a = rng.integers(1, n_t + 1, n_pairs)
    b = rng.integers(1, n_t + 1, n_pairs)
    lab = np.zeros(n_pairs, np.int64)
    lab[rng.choice(n_pairs, n_gen, replace=False)] = 1
    np.savetxt(meta / "ijbc_template_pair_label.txt", np.column_stack([a, b, lab]), fmt="%d")
    subj = rng.integers(1, n_subj + 1, n_t)
    first = {}
    for t, s in enumerate(subj.tolist(), 1):
        first.setdefault(s, t)
    g = sorted(first.items())
    rows = "TEMPLATE_ID,SUBJECT_ID,FILENAME\n"
    (meta / "ijbc_1N_gallery_G1.csv").write_text(rows + "".join(f"{t},{s},x\n" for s, t in g if s % 2 == 0))
    (meta / "ijbc_1N_gallery_G2.csv").write_text(rows + "".join(f"{t},{s},x\n" for s, t in g if s % 2 == 1))
    gal = set(first.values())
    (meta / "ijbc_1N_probe_mixed.csv").write_text(rows + "".join(f"{t},{s},x\n" for t, s in
                                                                 enumerate(subj.tolist(), 1) if t not in gal))
    return root, n_img, n_pairs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=10, help="measure at 1/SCALE of IJB-C's size")
    ap.add_argument("--work", type=Path, default=Path("/tmp/ijb-bench"))
    a = ap.parse_args()
    import torch

    torch.set_num_threads(1)
    from fvtool.data.embeddings import EmbeddingSet, read_embeddings, write_embeddings
    from fvtool.identification.open_set_stage import identify_protocol
    from fvtool.protocols.ijb import align_ijb, parse_spec, write_miniature
    from fvtool.verification.stage import VerifyOptions, verify

    shutil.rmtree(a.work, ignore_errors=True)
    a.work.mkdir(parents=True)
    c = write_miniature(Path(__file__).resolve().parents[1] / "data" / "lfw-subset", a.work / "mini", subjects=20)
    t0 = time.perf_counter()
    align_ijb(parse_spec(f"ijbc:{a.work / 'mini'}"), a.work / "aligned", threads=1, show_progress=False)
    per_img = (time.perf_counter() - t0) / c["images"]
    print(f"align: {c['images']} images, {per_img * 1e3:.2f} ms/image -> IJB-C {per_img * IJBC['images'] / 60:.1f} min")

    rng = np.random.default_rng(0)
    root, n_img, n_pairs = synthetic(a.work / "IJBC", a.scale, rng)
    emb = a.work / "emb.h5"
    keys = [f"{i}.png" for i in range(1, n_img + 1)]
    write_embeddings(emb, EmbeddingSet(rng.normal(size=(n_img, 512)).astype(np.float32), keys, keys,
                                       ["ok"] * n_img))
    read_embeddings(emb)
    t0 = time.perf_counter()
    verify(emb, f"ijbc:{root}", VerifyOptions(out=a.work / "verify", show_progress=False))
    t_11 = time.perf_counter() - t0
    t0 = time.perf_counter()
    identify_protocol(emb, f"ijbc:{root}", output=a.work / "identify")
    t_1n = time.perf_counter() - t0
    print(f"1:1 at 1/{a.scale} ({n_img:,} images, {n_pairs:,} pairs): {t_11:.1f} s -> "
          f"IJB-C {t_11 * a.scale / 60:.1f} min")
    print(f"1:N at 1/{a.scale}: {t_1n:.1f} s -> IJB-C {t_1n * a.scale / 60:.1f} min "
          "(probe x gallery scores grow with the square of the scale: an upper bound of x scale^2 = "
          f"{t_1n * a.scale ** 2 / 60:.1f} min for that part)")


if __name__ == "__main__":
    main()
