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
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from fvtool.atomic import atomic_path, write_json, write_text
from fvtool.console import progress
from fvtool.data.images import ImageReadError, decode_rgb, load_rgb
from fvtool.data.imageset import ImageSet
from fvtool.errors import InputError
from fvtool.workspace import Workspace

T = TypeVar("T")
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


def decode_row(images: ImageSet, i: int, spec: CacheSpec) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_to_array` for image i of any ImageSet (a file or a record of a container)."""
    img = decode_rgb(images.read_bytes(i), images.name(i))
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
            h.update(hashlib.sha256(images.read_bytes(i)).digest())
        except InputError as e:
            raise InputError(f"{e}; cannot fingerprint the dataset") from None
    return h.hexdigest()


def stat_signature(images: ImageSet) -> str | None:
    """sha256 over keys, identities, sizes and modification times (no file is read), or None when a
    key is not a plain relative path or a file cannot be stat'ed (then the full fingerprint decides)."""
    h = hashlib.sha256(str(images.root.resolve()).encode())
    if images.store is not None:  # a container: its files' sizes and times, and which record is which key
        h.update(images.store.signature().encode())
        refs = images.refs if images.refs is not None else []
        for key, ident, ref in zip(images.keys, images.identities, refs, strict=True):
            h.update(f"{key}\0{ident}\0{ref}\0".encode())
        return h.hexdigest()
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


def stream_rows(images: ImageSet, spec: CacheSpec, workers: int, window: int | None = None
                ) -> Iterator[tuple[int, tuple[np.ndarray, tuple[int, int]] | str]]:
    """(i, (row, source size)) for every image in order, or (i, reason) for one that cannot be decoded.

    Bounded memory at any N: at most `window` images (default 8 per worker) are in flight, so a
    5.8 M-image set costs what a 1,000-image one does. Decoding and resizing run in a thread pool;
    Pillow releases the GIL in both, so `workers` threads use that many cores.
    """
    def work(i: int) -> tuple[np.ndarray, tuple[int, int]] | str:
        try:
            return decode_row(images, i, spec)
        except InputError as e:
            return str(e)

    yield from enumerate(ordered_map(work, len(images), workers, window))


def ordered_map(fn: Callable[[int], T], n: int, workers: int, window: int | None = None) -> Iterator[T]:
    """`fn(0), ..., fn(n - 1)` in order, computed by `workers` threads with at most `window` in flight.

    Why not `ThreadPoolExecutor.map`: it submits all n calls at once, which at millions of images
    holds millions of futures (and their results, when the consumer is slower) in memory.
    """
    window = window or 8 * workers
    with ThreadPoolExecutor(workers, thread_name_prefix="fvtool-stream") as pool:
        pending: deque[Future[T]] = deque()
        nxt = 0
        for _ in range(n):
            while nxt < n and len(pending) < window:
                pending.append(pool.submit(fn, nxt))
                nxt += 1
            yield pending.popleft().result()


def _failures_message(images: ImageSet, failures: list[str], limit: int = 10) -> str:
    lines = [f"{len(failures)} of {len(images)} images of {images.root} cannot be decoded:"]
    lines += [f"  {f}" for f in failures[:limit]]
    if len(failures) > limit:
        lines.append(f"  ... and {len(failures) - limit} more")
    lines.append("run `fvtool align` on the data: it records unreadable images/records in its manifest and "
                 "writes only the readable ones")
    return "\n".join(lines)


def build_cache(
    images: ImageSet,
    spec: CacheSpec,
    cache_dir: Path | None = None,
    workers: int | None = None,
    show_progress: bool = True,
    fingerprint: str | None = None,
) -> ImageCache:
    """Return the cache of `images` at `spec`, decoding (once) only if it does not exist yet.

    Decoding streams through `stream_rows` (all cores, bounded memory); rows are appended to a
    temporary `.npy` (plain sequential writes, so resident memory stays flat), renamed when complete,
    then the sidecar is written. Images that
    cannot be decoded are all collected and reported together (file or record named), and no cache is kept.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    fp = fingerprint or cached_fingerprint(images, cache_dir)
    npy, side = cache_paths(cache_dir, fp, spec)
    existing = _load_existing(npy, side, images, spec, fp)
    if existing is not None:
        return existing
    cache_dir.mkdir(parents=True, exist_ok=True)
    n = len(images)
    workers = workers or os.cpu_count() or 1
    sizes: Counter[str] = Counter()
    failures: list[str] = []
    # Rows arrive in order, so the .npy is written sequentially with plain writes: a memory map being
    # filled would count every written page in the process's resident memory (the whole cache at the end).
    shape = (n, spec.size, spec.size, 3)
    blank = np.zeros(shape[1:], np.uint8)
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)),
                                                 "fortran_order": False, "shape": shape})
        buf: list[bytes] = []
        with progress(disable=not show_progress) as bar:
            task = bar.add_task(f"decoding {n} images at {spec.size}px", total=n, info="")
            for i, row in stream_rows(images, spec, workers):
                if isinstance(row, str):
                    failures.append(row)
                    buf.append(blank.tobytes())
                else:
                    buf.append(np.ascontiguousarray(row[0]).tobytes())
                    sizes["{}x{}".format(*row[1])] += 1
                if len(buf) >= 256 or i == n - 1:
                    f.write(b"".join(buf))
                    buf = []
                    bar.update(task, completed=i + 1)
        if failures:
            raise InputError(_failures_message(images, failures))
        f.flush()
        os.fsync(f.fileno())
    write_json(side, {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "fingerprint": fp, "spec": asdict(spec),
        "mode": spec.mode, "data_root": str(images.root), "source_sizes": dict(sizes),
        "keys": images.keys, "identities": images.identities,
    }, indent=None)
    arr = np.load(npy, mmap_mode="r")
    return ImageCache(arr, list(images.keys), list(images.identities), spec, fp, npy, dict(sizes))
