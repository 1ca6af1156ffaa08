"""The embed stage: a trained embedder + a dataset -> one `fvtool-embeddings` HDF5 file.

Why these steps:
- The images go through the same uint8 cache and the same geometry (central crop, resize,
  normalisation) the run trained with, read from the checkpoint's config, so train-time and
  embed-time pixels cannot drift apart. A dataset whose source images have another size than
  the training data's (e.g. 112x112 aligned crops for a model trained on 250x250 LFW crops) is
  refused: the face would sit at another scale than the network learned. `allow_resize` overrides.
- Inference runs in `torch.inference_mode`, in channels_last, in batches; flip test-time
  augmentation is optional (see `fvtool.inference.embed_rows`).
- Shardable: `shard=(i, n)` embeds only rows [start, stop) of the dataset, cut on the batch grid
  of the unsharded run (fvtool/embed_shards.py), decoding only those images; `merge_shards` joins
  the shard files into the file an unsharded run writes.
- Resumable: embeddings are written chunk by chunk into `<out>.partial` (HDF5, with the job's
  identity as an attribute); an interrupted run restarts from the last complete chunk. The final
  file is written by `fvtool.data.embeddings.write_embeddings` (temporary name, then rename) and
  the partial file is removed, so a complete-looking output is always complete.
"""

from __future__ import annotations

import io
import json
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn as nn
from PIL import Image

from fvtool.atomic import check_output_file, make_folder, output_lock, sha256_file
from fvtool.console import progress
from fvtool.data.cache import CacheSpec, build_cache, cached_fingerprint, default_cache_dir
from fvtool.data.dataset import ImageSet, load_image_set, warn_problems
from fvtool.data.embeddings import EmbeddingSet, write_embeddings
from fvtool.data.transforms import Normalisation
from fvtool.embed_shards import shard_range
from fvtool.errors import InputError
from fvtool.inference import TTA_MODES, embed_rows
from fvtool.interop.foreign_model import Preprocess, load_foreign_model
from fvtool.protocols.splits import read_split
from fvtool.runtime import resolve_amp, resolve_device
from fvtool.training.checkpoint import load_trained_method

PARTIAL_FORMAT = "fvtool-embeddings-partial"


# ---- the stage ------------------------------------------------------------------------------

@dataclass
class EmbedResult:
    path: Path
    n: int
    dim: int
    seconds: float
    img_per_s: float
    resumed_at: int  # rows already done by an interrupted earlier run (0: fresh)
    attrs: dict[str, Any]


def _probe_size(images: ImageSet, n: int = 64) -> str:
    """Most common source size among up to n images spread over the set (headers only)."""
    idx = np.unique(np.linspace(0, len(images) - 1, min(n, len(images))).astype(int))
    sizes: Counter[str] = Counter()
    for i in idx:
        try:
            with Image.open(io.BytesIO(images.read_bytes(int(i)))) as im:
                sizes[f"{im.size[0]}x{im.size[1]}"] += 1
        except (OSError, InputError):
            continue
    return sizes.most_common(1)[0][0] if sizes else ""


def check_geometry(train_size: str, data_size: str, config: Any, allow_resize: bool) -> None:
    if not train_size or not data_size or train_size == data_size or allow_resize:
        return
    raise InputError(
        f"this model was trained on {train_size} source images (central crop {config.crop:g}, resized to "
        f"{config.input_size}x{config.input_size}), but the data to embed has {data_size} images: the faces would "
        f"be at another scale/position than the network learned. Embed data aligned like the training data "
        f"(e.g. `fvtool align` with the same settings), or pass --allow-resize to resize anyway."
    )


def _job(model_sha: str, fingerprint: str, tta: str, n: int, spec: CacheSpec,
         rows: tuple[int, int] | None = None, extra: dict[str, Any] | None = None) -> str:
    job: dict[str, Any] = {"checkpoint_sha256": model_sha, "data_fingerprint": fingerprint, "tta": tta, "n": n,
                           "cache": spec.mode, "size": spec.size, **(extra or {})}
    if rows is not None:
        job["rows"] = list(rows)
    return json.dumps(job, sort_keys=True)


def _open_partial(path: Path, job: str, n: int, dim: int) -> tuple[h5py.File, int]:
    """The partial file for this job (resumed if it matches, else started afresh) and rows done."""
    if path.exists():
        try:
            f = h5py.File(path, "r+")
            if f.attrs.get("format") == PARTIAL_FORMAT and f.attrs.get("job") == job and \
                    f["embeddings"].shape == (n, dim):
                return f, int(f.attrs.get("done", 0))
            f.close()
        except (OSError, KeyError):
            pass
        path.unlink()
    f = h5py.File(path, "w")
    f.attrs["format"] = PARTIAL_FORMAT
    f.attrs["job"] = job
    f.attrs["done"] = 0
    f.create_dataset("embeddings", shape=(n, dim), dtype=np.float32, chunks=(max(1, min(n, 1024)), dim))
    return f, 0


def _split_part(images: ImageSet, split: str | Path, part: str) -> tuple[ImageSet, dict[str, Any]]:
    """The images of part `part` of `split` (or of several: `train,heldout`), and the attributes that
    record the selection."""
    s = read_split(split)
    parts = [p.strip() for p in part.split(",")]
    rows: list[int] = []
    for p in parts:
        got = s.rows(p, images.keys, images.identities)
        if not got:
            raise InputError(f"{split}: no image of {images.root} belongs to its {p!r} part "
                             f"({len(s.part(p))} identities); is it a split of this dataset?"
                             + (" (the split holds no images out: `fvtool pairs split --heldout-images K`)"
                                if p == "heldout" and not s.heldout else ""))
        rows.extend(got)
    rows = sorted(set(rows))
    attrs = {"split": str(Path(split).resolve()), "split_name": s.name, "split_sha256": s.sha256(),
             "split_part": part}
    return images.take(rows), attrs


def embed_dataset(checkpoint: str | Path, data: str | Path | None, out: str | Path, *, tta: str = "none",
                  batch_size: int = 256, device: str = "auto", amp: str = "off", allow_resize: bool = False,
                  input_size: int | None = None, prefer: str = "best", cache_dir: Path | None = None,
                  chunk: int = 2048, show_progress: bool = True, stop_after_chunks: int | None = None,
                  shard: tuple[int, int] | None = None, split: str | Path | None = None,
                  part: str = "test") -> EmbedResult:
    """Embed every image of `data` (default: the run's training data) with the run's embedder.

    `split`/`part`: only the images of that part of an identity split (e.g. the test identities that
    the protocols score): a study that evaluates on LFW fold 10 embeds its 1,611 images, not all
    13,233. `shard=(i, n)`: only shard i of n of those (see fvtool/embed_shards.py).
    `stop_after_chunks` stops early leaving the partial file (used by tests of resumption).
    """
    if tta not in TTA_MODES:
        raise InputError(f"--tta {tta!r}: choose one of {', '.join(TTA_MODES)}")
    check_output_file(out)  # before any work
    method, config, state, ckpt = load_trained_method(checkpoint, prefer=prefer)
    if input_size is not None and input_size != config.input_size:
        raise InputError(f"{ckpt} was trained at {config.input_size}x{config.input_size}; its network cannot embed "
                         f"{input_size}x{input_size} inputs. Omit --input-size (images are resized to "
                         f"{config.input_size}), or train a model at {input_size}.")
    data_root = Path(data) if data is not None else Path(config.data or "")
    if not str(data_root) or not data_root.exists():
        raise InputError(f"no data to embed: pass --data (the run's data {config.data!r} does not exist here)")
    images = load_image_set(data_root)
    warn_problems(images)
    split_attrs: dict[str, Any] = {}
    if split is not None:
        images, split_attrs = _split_part(images, split, part)
    train_facts = json.loads(state["data"]) if isinstance(state.get("data"), str) else (state.get("data") or {})
    check_geometry(train_facts.get("source_size", ""), _probe_size(images), config, allow_resize)

    spec = CacheSpec(config.input_size, config.crop, config.resample)
    model = method.embedder.eval()
    attrs = {
        "backbone": config.backbone,
        "checkpoint": str(Path(ckpt).resolve()),
        "input_size": config.input_size,
        "loss": config.loss,
        "run": str(Path(ckpt).resolve().parent.parent),
        "train_data_fingerprint": train_facts.get("fingerprint", ""),
        **split_attrs,
    }
    return _embed_images(
        model, images, spec, Normalisation.named(config.normalisation), out, model_sha=sha256_file(ckpt),
        attrs=attrs, channels_last=config.channels_last, tta=tta, batch_size=batch_size, device=device, amp=amp,
        cache_dir=cache_dir, chunk=chunk, show_progress=show_progress, stop_after_chunks=stop_after_chunks,
        shard=shard, after_cache=lambda size: check_geometry(train_facts.get("source_size", ""), size, config,
                                                             allow_resize))


def embed_with_model(model_spec: str, data: str | Path, out: str | Path, *, preprocess: Any = None,
                     trust_model: bool = False, tta: str = "none", batch_size: int = 256, device: str = "auto",
                     amp: str = "off", allow_resize: bool = False, resample: str = "bilinear",
                     cache_dir: Path | None = None, chunk: int = 2048, show_progress: bool = True,
                     stop_after_chunks: int | None = None, shard: tuple[int, int] | None = None,
                     split: str | Path | None = None, part: str = "test") -> EmbedResult:
    """Embed `data` with a model from outside fvtool (`--model`: ONNX, TorchScript, BACKBONE:weights=FILE).

    The images go through the same cache (central crop, resize to the model's input size), flip TTA,
    sharding and resumable writer as a trained run's; the preprocessing (`Preprocess`: input size,
    mean/std, channel order, crop) is explicit because a foreign file does not say how it was trained,
    and it is recorded in the HDF5 attributes. Source images of another size than the input size are
    refused unless `allow_resize` (the face would sit at another scale than the model expects).
    """
    if tta not in TTA_MODES:
        raise InputError(f"--tta {tta!r}: choose one of {', '.join(TTA_MODES)}")
    check_output_file(out)  # before any work
    pre = preprocess or Preprocess()
    data_root = Path(data)
    if not data_root.exists():
        raise InputError(f"no data to embed: {data_root} does not exist")
    fm = load_foreign_model(model_spec, pre, resolve_device(device), trust=trust_model)
    images = load_image_set(data_root)
    warn_problems(images)
    split_attrs: dict[str, Any] = {}
    if split is not None:
        images, split_attrs = _split_part(images, split, part)
    s = pre.input_size

    def geometry(size: str) -> None:
        side = f"{s}x{s}"
        if pre.crop == 1.0 and size and size != side and not allow_resize:
            raise InputError(f"{data_root} has {size} images but the model takes {side} inputs: resizing would put "
                             f"the face at another scale than the model expects. Align the data to {s} px (e.g. "
                             f"`fvtool align --size {s}`), or pass --allow-resize (or --crop) to resize anyway.")

    geometry(_probe_size(images))
    attrs = {
        "backbone": fm.facts.get("backbone", fm.kind),
        "checkpoint": str(fm.path.resolve()),
        "model": fm.spec,
        "model_format": fm.kind,
        "model_facts": json.dumps(fm.facts, sort_keys=True, default=str),
        "input_size": s,
        "preprocessing": pre.describe(),
        "mean": list(pre.mean),
        "std": list(pre.std),
        "channel_order": pre.channels,
        **split_attrs,
    }
    return _embed_images(
        fm.module, images, CacheSpec(s, pre.crop, resample), pre.normalisation(), out, model_sha=fm.sha256,
        attrs=attrs, channels_last=fm.channels_last, tta=tta, batch_size=batch_size, device=device, amp=amp,
        cache_dir=cache_dir, chunk=chunk, show_progress=show_progress, stop_after_chunks=stop_after_chunks,
        shard=shard, after_cache=geometry, job_extra={"preprocessing": pre.describe(), "model": fm.kind})


def _embed_images(model: nn.Module, images: ImageSet, spec: CacheSpec, norm: Normalisation, out: str | Path,
                  **kw: Any) -> EmbedResult:
    """`_embed_locked` while holding the output's lock (`<out>.lock`).

    Why: two embeds to one output would share its `.partial` file; one then crashed on the partial the
    other removed, and the other reported success over the first one's embeddings. A
    second embed to the same output now stops at once with exit code 3, naming the running one.
    """
    out = check_output_file(out)
    make_folder(out.parent)
    with output_lock(out):
        return _embed_locked(model, images, spec, norm, out, **kw)


def _embed_locked(model: nn.Module, images: ImageSet, spec: CacheSpec, norm: Normalisation, out: Path, *,
                  model_sha: str, attrs: dict[str, Any], channels_last: bool, tta: str, batch_size: int,
                  device: str, amp: str, cache_dir: Path | None, chunk: int, show_progress: bool,
                  stop_after_chunks: int | None, shard: tuple[int, int] | None, after_cache: Any,
                  job_extra: dict[str, Any] | None = None) -> EmbedResult:
    """The shared part of every embed: shard selection, cache, chunked resumable forward, final file.

    `after_cache(source_size)` re-checks the geometry on the cache's measured source size.
    `attrs` are the model's own attributes; the data/geometry/TTA ones are added here.
    """
    n_all, lo, hi, shard_attrs = len(images), 0, len(images), {}
    if shard is not None:
        lo, hi = shard_range(n_all, shard[0], shard[1], batch_size=batch_size, chunk=chunk)
        if hi <= lo:
            raise InputError(f"shard {shard[0]}/{shard[1]} is empty: {n_all} images make only "
                             f"{-(-n_all // batch_size)} batches of {batch_size}, fewer than {shard[1]} shards; "
                             "the other shards cover every image (merge them), or use fewer shards")
        shard_attrs = {"shard": f"{shard[0]}/{shard[1]}", "shard_start": lo, "shard_stop": hi, "shard_total": n_all,
                       "shard_batch_size": batch_size, "shard_chunk": chunk,
                       "data_fingerprint": cached_fingerprint(images, Path(cache_dir or default_cache_dir()))}
        images = images.take(np.arange(lo, hi))
    cache = build_cache(images, spec, cache_dir=cache_dir, show_progress=show_progress)
    after_cache(cache.source_size)
    dev = resolve_device(device)
    dtype = resolve_amp(amp, dev)
    model = model.eval().to(dev)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    array = np.asarray(cache.array)
    n = len(images)
    probe = embed_rows(model, array, np.arange(min(2, n)), normalisation=norm, device=dev, tta=tta,
                       channels_last=channels_last, autocast_dtype=dtype)
    dim = int(probe.shape[1])
    partial = out.with_name(out.name + ".partial")
    job = _job(model_sha, cache.fingerprint, tta, n, spec, (lo, hi) if shard is not None else None,
               job_extra)
    f, done = _open_partial(partial, job, n, dim)
    resumed_at = done
    t0 = time.perf_counter()
    chunks_run = 0
    try:
        with progress(disable=not show_progress) as bar:
            task = bar.add_task(f"embedding {n} images", total=n, completed=done, info="")
            while done < n:
                end = min(n, done + chunk - (lo + done) % chunk)  # chunks on the unsharded run's grid
                emb = embed_rows(model, array, np.arange(done, end), normalisation=norm, device=dev,
                                 batch_size=batch_size, tta=tta, channels_last=channels_last,
                                 autocast_dtype=dtype)
                f["embeddings"][done:end] = emb
                f.attrs["done"] = end
                f.flush()
                done = end
                chunks_run += 1
                rate = (done - resumed_at) / max(1e-9, time.perf_counter() - t0)
                bar.update(task, completed=done, info=f"{rate:.0f} img/s")
                if stop_after_chunks is not None and chunks_run >= stop_after_chunks and done < n:
                    break
            embeddings = f["embeddings"][()] if done >= n else None
    finally:
        f.close()
    seconds = time.perf_counter() - t0
    attrs = {
        **attrs,
        "checkpoint_sha256": model_sha,
        "normalisation": norm.describe(),
        "align_mode": f"{images.source}; central crop {spec.crop:g}, resized to {spec.size}px "
                      f"({spec.mode}); source {cache.source_size}",
        "tta": tta,
        "data_root": str(images.root.resolve()),
        "data_fingerprint": cache.fingerprint,
        "source": "embed",
        "embedding_size": dim,
        "l2_normalised": tta != "none",
        **shard_attrs,
    }
    if embeddings is None:
        return EmbedResult(partial, done, dim, seconds, 0.0, resumed_at, attrs)
    write_embeddings(out, EmbeddingSet(embeddings, list(images.keys), list(images.identities),
                                       list(images.status), attrs))
    os.remove(partial)
    return EmbedResult(out, n, dim, seconds, (n - resumed_at) / seconds if seconds > 0 else 0.0, resumed_at, attrs)
