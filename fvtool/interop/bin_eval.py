"""Evaluate a trained run on an insightface verification set (.bin) with insightface's own rule.

insightface (`eval/verification.py`) embeds every image and its horizontal flip, sums the two
embeddings, L2-normalises, takes squared L2 distances of the pairs and reports 10-fold accuracy
with the threshold grid arange(0, 4, 0.01) chosen on the other folds, folds being contiguous
blocks of the pair list. fvtool runs exactly that (`fvtool.verification.kfold`), with the
run's own preprocessing (central crop, resize, normalisation from its config), so numbers compare
with published tables when the model was trained on the same alignment (112x112 similarity crops).
Writing a .bin from an fvtool protocol + aligned images lets those sets be built from any data.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.console import progress
from fvtool.data.cache import CacheSpec, image_to_row
from fvtool.data.dataset import load_image_set
from fvtool.data.images import ImageReadError, decode_rgb
from fvtool.data.scan import safe_join
from fvtool.errors import InputError
from fvtool.interop.insightface_bin import VerificationBin, read_bin, write_bin
from fvtool.protocols.model import Protocol
from fvtool.verification.kfold import kfold_report
from fvtool.verification.metrics import eer


@dataclass
class BinResult:
    n_pairs: int
    accuracy_mean: float
    accuracy_std: float
    kfold: dict
    eer: float


def bin_to_rows(vb: VerificationBin, spec: CacheSpec, source: str = ".bin") -> np.ndarray:
    """Decode every image of the set into the cache geometry: uint8 [2P, S, S, 3]."""
    rows = np.empty((len(vb.images), spec.size, spec.size, 3), np.uint8)
    for i, data in enumerate(vb.images):
        try:
            rows[i] = image_to_row(decode_rgb(data, f"{source}[{i}]"), spec)
        except ImageReadError as e:
            raise InputError(f"{source}: image {i} (pair {i // 2}) cannot be decoded: {e}") from None
    return rows


def evaluate_bin(path: str | Path, checkpoint: str | Path, *, prefer: str = "best", folds: int = 10,
                 batch_size: int = 128, device: str = "auto", show_progress: bool = True) -> BinResult:
    # torch is imported only to evaluate: `fvtool interop bin-write` (protocol_to_bin) runs without it
    from fvtool.data.transforms import Normalisation
    from fvtool.inference import embed_rows
    from fvtool.runtime import resolve_device
    from fvtool.training.checkpoint import load_trained_method

    vb = read_bin(path)
    if vb.n_pairs < folds:
        raise InputError(f"{path}: {vb.n_pairs} pairs cannot form {folds} folds")
    method, config, _state, _ckpt = load_trained_method(checkpoint, prefer=prefer)
    spec = CacheSpec(config.input_size, config.crop, config.resample)
    with progress(disable=not show_progress, transient=True) as bar:
        bar.add_task(f"decoding {len(vb.images)} images", total=None, info="")
        rows = bin_to_rows(vb, spec, str(path))
    dev = resolve_device(device)
    model = method.embedder.eval().to(dev)
    emb = embed_rows(model, rows, np.arange(len(rows)), normalisation=Normalisation.named(config.normalisation),
                     device=dev, batch_size=batch_size, channels_last=config.channels_last, tta="flip-sum")
    a, b = emb[0::2], emb[1::2]
    dist = ((a - b) ** 2).sum(axis=1)
    same = np.asarray(vb.issame, dtype=bool)
    # insightface uses sklearn KFold(n_splits=10, shuffle=False): the first n % k folds get one more pair
    sizes = np.full(folds, vb.n_pairs // folds)
    sizes[: vb.n_pairs % folds] += 1
    fold_of = np.repeat(np.arange(folds), sizes)
    report = kfold_report(dist, same, fold_of)
    e = eer(-dist[~same], -dist[same])
    grid = report["grid"]
    return BinResult(vb.n_pairs, grid["accuracy_mean"], grid["accuracy_std"], report, float(e.value))


def protocol_to_bin(protocol: Protocol, data_root: str | Path, out: str | Path) -> int:
    """Write a pairs protocol's images (encoded bytes as stored on disk) as an insightface .bin."""
    if protocol.kind != "pairs":
        raise InputError(f"protocol {protocol.name!r} is {protocol.kind}; a .bin holds explicit pairs")
    root = Path(data_root)
    keys = load_image_set(root).keys  # the dataset's own keys, so extension changes by `align` resolve
    idx = protocol.resolve_indices(keys)
    images: list[bytes] = []
    for a, b in zip(protocol.a, protocol.b, strict=True):
        for i in (a, b):
            images.append(safe_join(root, keys[idx[i]]).read_bytes())
    write_bin(out, images, protocol.same.tolist())
    return len(protocol.same)

