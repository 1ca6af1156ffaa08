"""Decode a dataset once into a uint8 array at the training size, so epochs never decode JPEG.

Why: on a 2-core CPU decoding a 250x250 JPEG costs about as much as a training step of a small
network on the resulting 64x64 crop; decoding every epoch would halve throughput. The cache is a
memory-mapped `.npy` file `[N, S, S, 3]` (uint8, RGB, rows in `ImageSet.keys` order) with a JSON
sidecar that says what is inside. Runs on the same data share it: the file name is keyed by the
dataset's content hash, the size and the resize mode, under `<workspace>/cache/`.

Geometry (`CacheSpec`): keep the central `crop` fraction of each source image (1.0 = the whole
image; LFW deep-funneled without alignment is usually trained on a central crop), then resize to
`size` x `size` with PIL's antialiased filter (bilinear by default).

Completeness: the `.npy` is written under a temporary name and renamed; the sidecar is written
(atomically) last, so a cache without its sidecar is incomplete and is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from fvtool.atomic import atomic_path, write_json, write_text
from fvtool.console import progress
from fvtool.data.dataset import ImageSet
from fvtool.data.images import ImageReadError, load_rgb
from fvtool.errors import InputError

CACHE_FORMAT = "fvtool-image-cache"
CACHE_VERSION = 1
RESAMPLE = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
            "lanczos": Image.Resampling.LANCZOS, "box": Image.Resampling.BOX}


@dataclass(frozen=True)
class CacheSpec:
    """How source images become cache rows: central crop fraction, then resize to size x size."""

    size: int
    crop: float = 1.0
    resample: str = "bilinear"

    def __post_init__(self) -> None:
        if self.size < 8 or self.size > 1024:
            raise InputError(f"image size {self.size} is outside 8..1024")
        if not 0.1 <= self.crop <= 1.0:
            raise InputError(f"crop fraction {self.crop} is outside 0.1..1.0 (1.0 keeps the whole image)")
        if self.resample not in RESAMPLE:
            raise InputError(f"resample {self.resample!r} unknown; choose one of {', '.join(RESAMPLE)}")

    @property
    def mode(self) -> str:
        """A short text naming the geometry, recorded in configs and embedding files."""
        return f"center{self.crop:g}-{self.resample}"


def decode_to_array(path: Path, spec: CacheSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """One cache row ([S, S, 3] uint8) and the source image size (width, height).

    Decoding goes through `fvtool.data.images.load_rgb`, the decoder `align` uses (EXIF orientation,
    16-bit and ICC handling, truncated files refused), so the network sees what the detector saw.
    """
    try:
        img = load_rgb(path)
    except ImageReadError as e:
        raise InputError(f"{e}; run `fvtool align` to record unreadable files, or remove them") from None
    return image_to_row(img, spec), img.size


def image_to_row(img: Image.Image, spec: CacheSpec) -> np.ndarray:
    """The cache geometry on a decoded RGB image: central crop `spec.crop`, resize to `spec.size`.

    Shared by the cache and by everything that embeds images from elsewhere (insightface .bin
    sets), so a network always sees pixels prepared exactly as in training.
    """
    w, h = img.size
    cw, ch = w * spec.crop, h * spec.crop
    box = ((w - cw) / 2, (h - ch) / 2, (w + cw) / 2, (h + ch) / 2)
    out = img.resize((spec.size, spec.size), RESAMPLE[spec.resample], box=box)
    return np.array(out, dtype=np.uint8)


def dataset_fingerprint(images: ImageSet) -> str:
    """sha256 over keys, identities and the bytes of every image: the cache key of a dataset.

    Why content and not modification times: a re-aligned folder with the same names must not
    reuse stale pixels. Reading ~120 MB (all of LFW) costs well under a second.
    """
    h = hashlib.sha256()
    for i, (key, ident) in enumerate(zip(images.keys, images.identities, strict=True)):
        h.update(f"{key}\0{ident}\0".encode())
        try:
            h.update(hashlib.sha256(images.path(i).read_bytes()).digest())
        except OSError as e:
            raise InputError(f"{images.path(i)}: cannot read ({e})") from None
    return h.hexdigest()


def stat_signature(images: ImageSet) -> str | None:
    """sha256 over keys, identities, sizes and modification times (no file is read), or None when a
    key is not a plain relative path or a file cannot be stat'ed (then the full fingerprint decides)."""
    h = hashlib.sha256(str(images.root.resolve()).encode())
    for key, ident in zip(images.keys, images.identities, strict=True):
        if key.startswith(("/", "\\")) or ".." in key.replace("\\", "/").split("/"):
            return None
        try:
            st = os.stat(images.root / key)
        except OSError:
            return None
        h.update(f"{key}\0{ident}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def cached_fingerprint(images: ImageSet, cache_dir: Path) -> str:
    """`dataset_fingerprint`, remembered in `<cache_dir>/fingerprints/` under the files' stat signature,
    so a second run on unchanged files stats them instead of reading and hashing every byte."""
    sig = stat_signature(images)
    memo = cache_dir / "fingerprints" / f"{sig}.txt" if sig else None
    if memo is not None and memo.is_file():
        text = memo.read_text().strip()
        if len(text) == 64:
            return text
    fp = dataset_fingerprint(images)
    if memo is not None:
        write_text(memo, fp + "\n")
    return fp


@dataclass
class ImageCache:
    """A built cache: `array[i]` is image `keys[i]` as [S, S, 3] uint8 RGB."""

    array: np.ndarray
    keys: list[str]
    identities: list[str]
    spec: CacheSpec
    fingerprint: str
    path: Path
    source_sizes: dict[str, int]  # "WxH" -> count, to refuse crops of another geometry at embed time

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def source_size(self) -> str:
        """The most common source size, e.g. '250x250'."""
        return max(self.source_sizes.items(), key=lambda kv: kv[1])[0] if self.source_sizes else ""

    def meta(self) -> dict[str, Any]:
        return {"path": str(self.path), "fingerprint": self.fingerprint, **asdict(self.spec),
                "mode": self.spec.mode, "source_sizes": self.source_sizes}


def default_cache_dir() -> Path:
    from fvtool.workspace import Workspace

    return Workspace.current().root / "cache"


def cache_paths(cache_dir: Path, fingerprint: str, spec: CacheSpec) -> tuple[Path, Path]:
    stem = f"{fingerprint[:20]}-{spec.size}px-{spec.mode}"
    return cache_dir / f"{stem}.npy", cache_dir / f"{stem}.json"


def _load_existing(npy: Path, side: Path, images: ImageSet, spec: CacheSpec, fp: str) -> ImageCache | None:
    if not (npy.is_file() and side.is_file()):
        return None
    try:
        meta = json.loads(side.read_text())
        arr = np.load(npy, mmap_mode="r")
    except (OSError, ValueError, json.JSONDecodeError):
        return None  # damaged: rebuild
    ok = (meta.get("format") == CACHE_FORMAT and meta.get("fingerprint") == fp and meta.get("keys") == images.keys
          and arr.shape == (len(images), spec.size, spec.size, 3) and arr.dtype == np.uint8)
    if not ok:
        return None
    return ImageCache(arr, list(images.keys), list(images.identities), spec, fp, npy, dict(meta["source_sizes"]))


def build_cache(
    images: ImageSet,
    spec: CacheSpec,
    cache_dir: Path | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    fingerprint: str | None = None,
) -> ImageCache:
    """Return the cache of `images` at `spec`, decoding (once) only if it does not exist yet.

    Decoding runs in a thread pool (PIL releases the GIL while decoding); rows are written into a
    memory-mapped temporary `.npy`, renamed when complete, then the sidecar is written.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fp = fingerprint or cached_fingerprint(images, cache_dir)
    npy, side = cache_paths(cache_dir, fp, spec)
    existing = _load_existing(npy, side, images, spec, fp)
    if existing is not None:
        return existing
    cache_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    workers = workers or min(4, os.cpu_count() or 1)
    sizes: Counter[str] = Counter()
    with atomic_path(npy) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, spec.size, spec.size, 3))
        with progress(disable=not show_progress) as bar, ThreadPoolExecutor(workers) as pool:
            task = bar.add_task(f"decoding {n} images at {spec.size}px", total=n, info="")
            decode: Callable[[int], tuple[np.ndarray, tuple[int, int]]] = lambda i: decode_to_array(  # noqa: E731
                images.path(i), spec)
            for i, (row, (w, h)) in enumerate(pool.map(decode, range(n))):
                out[i] = row
                sizes[f"{w}x{h}"] += 1
                if i % 64 == 63 or i == n - 1:
                    bar.update(task, completed=i + 1)
        out.flush()
        del out
    write_json(side, {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": fp, "spec": asdict(spec),
        "mode": spec.mode, "data_root": str(images.root), "source_sizes": dict(sizes),
        "keys": images.keys, "identities": images.identities,
    }, indent=None)
    arr = np.load(npy, mmap_mode="r")
    return ImageCache(arr, list(images.keys), list(images.identities), spec, fp, npy, dict(sizes))
