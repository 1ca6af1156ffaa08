"""The `align` stage: a folder of identity sub-folders in, aligned crops + manifest out.

Contract (docs/align.md):
- the output mirrors the input layout (`<Name>/<Name>_0001.jpg` -> `<dst>/<Name>/<Name>_0001.jpg`,
  `s1/1.pgm` -> `<dst>/s1/1.jpg` with the chosen output format);
- `<dst>/manifest.csv` has one row per input file (fvtool/data/manifest.py): nothing is dropped
  silently; unreadable files and faces not found are rows with a status and a reason;
- `<dst>/align.json` records the source, the options, the software and the final counts;
- every image and the manifest are written atomically, so an interrupted run never leaves a
  truncated file that looks complete;
- resumable: a rerun with the same options keeps rows whose output exists, redoes the rest
  (including images written after the last manifest checkpoint), and removes stale temporaries.

Why decoding and writing run in a small thread pool: MTCNN is the cost that matters (~20 ms per
250x250 image on one core); JPEG decoding and encoding release the GIL, so overlapping them with
detection keeps fvtool's own overhead small (measured in bench/bench_align.py).
"""

from __future__ import annotations

import importlib.metadata
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from fvtool import __version__
from fvtool.align.detector import Face, FaceDetector, select_face
from fvtool.align.geometry import center_crop, crop_box, warp_similarity
from fvtool.align.options import AlignOptions
from fvtool.atomic import atomic_path, remove_stale_temporaries, write_json
from fvtool.console import console, progress
from fvtool.data.dataset import ImageSet
from fvtool.data.images import ImageReadError, decode_rgb
from fvtool.data.manifest import MANIFEST_NAME, STATUSES, WRITTEN_STATUSES, ManifestRow, read_manifest, write_manifest
from fvtool.data.scan import ScannedImage, safe_join, scan_identity_folder
from fvtool.errors import InputError
from fvtool.runtime import torch_threads

CONFIG_NAME = "align.json"
#: seconds between manifest checkpoints during a run (the manifest is also written at the end
#: and when the run is interrupted by an exception or Ctrl-C)
CHECKPOINT_SECONDS = 15.0


@dataclass
class AlignSummary:
    src: Path
    dst: Path
    manifest: Path
    total: int
    counts: Counter[str]
    processed: int  # images handled in this run
    reused: int  # rows kept from an earlier run (resume)
    seconds: float
    removed_temporaries: int = 0
    outputs_removed: int = 0
    extra: dict[str, object] = field(default_factory=dict)

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0

    @property
    def failed(self) -> int:
        """Images that could not be processed at all (unreadable or error)."""
        return self.counts["unreadable"] + self.counts["error"]

    @property
    def detected(self) -> int:
        return self.counts["ok"]

    def as_dict(self) -> dict[str, object]:
        return {
            "total": self.total,
            "counts": {s: self.counts[s] for s in STATUSES},
            "processed": self.processed,
            "reused": self.reused,
            "seconds": round(self.seconds, 3),
            "images_per_s": round(self.images_per_s, 3),
            "removed_temporaries": self.removed_temporaries,
        }


@dataclass
class _Item:
    index: int
    scanned: ScannedImage
    key: str  # output key


# --------------------------------------------------------------------------------------------
# public entry point


def align_folder(
    src: str | Path,
    dst: str | Path,
    options: AlignOptions | None = None,
    *,
    detector: FaceDetector | None = None,
    on_row: Callable[[ManifestRow], None] | None = None,
) -> AlignSummary:
    """Align every image under `src` into `dst` (see the module docstring for the contract).

    `detector` lets callers (benchmarks, tests) reuse a loaded MTCNN; `on_row` is called after
    each row is final (file renamed into place), e.g. to stop a run after k images in tests.
    Raises InputError for a bad source/destination or incompatible resume; per-image problems
    are rows in the manifest, never exceptions.
    """
    options = options or AlignOptions()
    if detector is not None and detector.config != options.detector_config():
        raise ValueError(f"detector config {detector.config} does not match the options {options.detector_config()}")
    src, dst = Path(src), Path(dst)
    _check_folders(src, dst)
    images = source_images(src)
    scanned = [ScannedImage(ident, key) for ident, key in zip(images.identities, images.keys, strict=True)]
    items = [_Item(i, s, k) for i, (s, k) in enumerate(zip(scanned, _output_keys(scanned, options), strict=True))]

    # every check that can refuse the run happens before anything is written into dst
    known = _reusable_detections(src, options) if options.reuse_detections is not None else {}
    given = _given_faces(images)
    known = {**given, **known}
    previous = _previous_rows(src, dst, options)
    config = _config_record(src, options)
    config["layout"] = images.source
    if given:
        config["faces_given"] = (f"{len(given)} of {len(images)} images: "
                                 + ("pre-aligned crops, no detection" if images.prealigned
                                    else "landmarks provided by the dataset, MTCNN only for the others"))
    if images.problems:
        config["source_problems"] = [{"where": p.where, "reason": p.reason} for p in images.problems]
    if options.reuse_detections is not None:
        config["detections_from"] = str(Path(options.reuse_detections).resolve())
    dst.mkdir(parents=True, exist_ok=True)
    removed_tmp = remove_stale_temporaries(dst)
    write_json(dst / CONFIG_NAME, {**config, "complete": False})

    rows: dict[str, ManifestRow] = {}
    todo: list[_Item] = []
    for it in items:
        prev = previous.get(it.scanned.key)
        if prev is not None and _is_done(prev, dst, options):
            rows[it.scanned.key] = prev
        else:
            todo.append(it)
    reused = len(rows)

    runner = _Runner(images, dst, options, items, rows, detector, on_row, known)
    t0 = time.perf_counter()
    try:
        runner.run(todo)
    finally:
        runner.checkpoint()
    seconds = time.perf_counter() - t0

    counts = Counter(r.status for r in rows.values())
    summary = AlignSummary(
        src=src, dst=dst, manifest=dst / MANIFEST_NAME, total=len(items), counts=counts,
        processed=len(todo), reused=reused, seconds=seconds, removed_temporaries=removed_tmp,
        outputs_removed=runner.outputs_removed, extra={"source_problems": len(images.problems)},
    )
    write_json(dst / CONFIG_NAME, {**config, "complete": True, "summary": summary.as_dict()})
    return summary


# --------------------------------------------------------------------------------------------
# folders, keys, resume


def source_images(src: Path) -> ImageSet:
    """The images `align` reads: a publisher layout (RecordIO, VGGFace2, ...: fvtool/data/layouts.py), else
    every file of the identity folders (non-images too, so they become `unreadable` rows, not omissions)."""
    from fvtool.data.layouts import detect_layout

    layout = detect_layout(src)
    if layout is not None:
        return layout(src)
    scanned = scan_identity_folder(src, include_all_files=True)
    return ImageSet(root=src, keys=[s.key for s in scanned], identities=[s.identity for s in scanned],
                    status=["ok"] * len(scanned), source="folder")


def _given_faces(images: ImageSet) -> dict[str, tuple[Face | None, int]]:
    """Faces the dataset provides, in the form of reused detections: VGGFace2's landmark rows, or the
    template itself for pre-aligned crops (a similarity warp onto the template is then a plain resize)."""
    from fvtool.align.geometry import template

    out: dict[str, tuple[Face | None, int]] = {}
    if images.prealigned:
        s = images.prealigned
        face = Face(np.array([0.0, 0.0, s - 1.0, s - 1.0]), None, template(s))
        return {key: (face, 1) for key in images.keys}
    if images.faces is not None:
        for key, row in zip(images.keys, images.faces, strict=True):
            if not np.isnan(row[4:]).any():
                out[key] = (Face(row[:4].astype(np.float64), None, row[4:].astype(np.float64).reshape(5, 2)), 1)
    return out


def _check_folders(src: Path, dst: Path) -> None:
    from fvtool.data.insightface_rec import find_rec

    if find_rec(src) is not None:
        if dst.exists() and not dst.is_dir():
            raise InputError(f"output {dst} exists and is not a folder")
        return
    if not src.is_dir():
        raise InputError(f"source folder {src} does not exist or is not a folder")
    s, d = src.resolve(), dst.resolve()
    if d == s or d.is_relative_to(s):
        raise InputError(f"output folder {dst} is inside the source folder {src}; choose another -o "
                         "(a rerun would otherwise align its own outputs)")
    if dst.exists() and not dst.is_dir():
        raise InputError(f"output {dst} exists and is not a folder")


def _output_keys(scanned: list[ScannedImage], options: AlignOptions) -> list[str]:
    """Output key per input: same relative path, extension of the output format.

    Two inputs that differ only by extension (`a.png`, `a.jpg`) would collide; those keep their
    original extension in the name (`a.png.jpg`) so no output overwrites another.
    """
    ext = "." + options.image_format
    plain = [str(PurePosixPath(s.key).with_suffix(ext)) for s in scanned]
    seen = Counter(plain)
    keys = [k if seen[k] == 1 else s.key + ext for s, k in zip(scanned, plain, strict=True)]
    if len(set(keys)) != len(keys):
        dup = next(k for k, n in Counter(keys).items() if n > 1)
        raise InputError(f"two input files map to the same output {dup!r}; rename one of them")
    return keys


def _config_record(src: Path, options: AlignOptions) -> dict[str, object]:
    try:  # the installed version from its metadata: importing facenet_pytorch pulls in torchvision
        detector_version = importlib.metadata.version("facenet-pytorch")
    except importlib.metadata.PackageNotFoundError:
        detector_version = "unknown"
    return {
        "format": "fvtool-align",
        "version": 1,
        "fvtool_version": __version__,
        "detector": f"facenet-pytorch {detector_version} MTCNN",
        "template": "insightface arcface_dst 5-point, 112x112, scaled to size" if options.mode == "similarity"
        else "facenet-pytorch extract_face (box + margin)",
        "source": str(src.resolve()),
        "options": options.output_options(),
        "on_fail": options.on_fail,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _previous_rows(src: Path, dst: Path, options: AlignOptions) -> dict[str, ManifestRow]:
    """Rows of an earlier run into `dst` that this run may keep (empty with --no-resume)."""
    manifest = dst / MANIFEST_NAME
    config_path = dst / CONFIG_NAME
    if not options.resume or not (manifest.exists() or config_path.exists()):
        return {}
    import json

    try:
        old = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"{dst} holds an earlier alignment but {config_path} is missing or unreadable ({e}); "
                         "pass --no-resume to redo it or choose another -o") from e
    if old.get("source") != str(src.resolve()):
        raise InputError(f"{dst} holds an alignment of {old.get('source')!r}, not of {src.resolve()}; "
                         "choose another -o or pass --no-resume to overwrite")
    old_opts, new_opts = old.get("options", {}), options.output_options()
    diff = [f"{k}: {old_opts.get(k)!r} -> {v!r}" for k, v in new_opts.items() if old_opts.get(k) != v]
    if diff:
        raise InputError(f"{dst} was aligned with other options ({'; '.join(diff)}); resuming would mix "
                         "two alignments. Choose another -o or pass --no-resume to redo everything")
    if not manifest.exists():
        return {}
    return {r.src: r for r in read_manifest(manifest)}


def _reusable_detections(src: Path, options: AlignOptions) -> dict[str, tuple[Face | None, int]]:
    """Detections of an earlier alignment of the same source with the same detection options.

    Why: MTCNN is ~95% of the cost; a second output mode or size of the same dataset needs no new
    detection. Only rows whose detection is known are reused (ok: the kept face; fallback /
    no_face: no face); unreadable and error rows are processed again. The manifest stores boxes and
    landmarks with 2 decimals, so reused geometry differs from a fresh run by < 0.005 px.
    """
    import json

    path = Path(options.reuse_detections)
    manifest = path / MANIFEST_NAME if path.is_dir() else path
    config_path = manifest.parent / CONFIG_NAME
    try:
        other = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InputError(f"--reuse-detections {path}: cannot read {config_path} ({e}); it must be an fvtool "
                         "align output folder") from e
    if other.get("source") != str(src.resolve()):
        raise InputError(f"--reuse-detections {path} aligned {other.get('source')!r}, not {src.resolve()}")
    theirs = other.get("options", {})
    diff = [f"{k}: {theirs.get(k)!r} vs {v!r}" for k, v in options.detection_options().items() if theirs.get(k) != v]
    if diff:
        raise InputError(f"--reuse-detections {path} used other detection options ({'; '.join(diff)})")
    known: dict[str, tuple[Face | None, int]] = {}
    for r in read_manifest(manifest):
        if r.status == "ok" and r.box is not None and r.landmarks is not None and r.prob is not None:
            face = Face(np.array(r.box, dtype=np.float64), r.prob,
                        np.array(r.landmarks, dtype=np.float64).reshape(5, 2))
            known[r.src] = (face, r.n_faces)
        elif r.status in ("fallback", "no_face"):
            known[r.src] = (None, r.n_faces)
    return known


def _is_done(row: ManifestRow, dst: Path, options: AlignOptions) -> bool:
    """A row from an earlier run stands if its output exists and it matches the --on-fail choice.

    Unreadable/error rows are retried (cheap, and the file may have been fixed); `no_face` rows
    stand under `--on-fail skip` and are redone as fallbacks under `center-crop` (and vice versa).
    """
    if row.status == "ok":
        return bool(row.key) and safe_join(dst, row.key).is_file()
    if row.status == "fallback":
        return options.on_fail == "center-crop" and bool(row.key) and safe_join(dst, row.key).is_file()
    if row.status == "no_face":
        return options.on_fail == "skip"
    return False


# --------------------------------------------------------------------------------------------
# the work loop


class _Runner:
    """Decodes ahead, detects in batches, writes behind; records rows once files are in place."""

    def __init__(self, images: ImageSet, dst: Path, options: AlignOptions, items: list[_Item],
                 rows: dict[str, ManifestRow], detector: FaceDetector | None,
                 on_row: Callable[[ManifestRow], None] | None,
                 known: dict[str, tuple[Face | None, int]] | None = None) -> None:
        self.images, self.src, self.dst, self.options = images, images.root, dst, options
        self.known = known or {}
        self.order = [it.scanned.key for it in items]
        self.rows = rows
        self.detector = detector
        self.on_row = on_row
        self.outputs_removed = 0
        self._last_checkpoint = time.monotonic()

    def checkpoint(self) -> None:
        write_manifest(self.dst / MANIFEST_NAME, [self.rows[k] for k in self.order if k in self.rows])
        self._last_checkpoint = time.monotonic()

    def run(self, todo: list[_Item]) -> None:
        if not todo:
            return
        bs = self.options.batch_size
        batches = [todo[i:i + bs] for i in range(0, len(todo), bs)]
        counts: Counter[str] = Counter()
        t0 = time.perf_counter()
        with (
            torch_threads(self.options.threads),
            ThreadPoolExecutor(max_workers=2, thread_name_prefix="fvtool-align-io") as pool,
            progress(disable=not self.options.show_progress) as bar,
        ):
            task = bar.add_task(f"align {self.src.name}", total=len(todo), info="")
            loads = _prefetch(pool, batches, lambda it: _load(self.images, it.index))
            pending: list[tuple[ManifestRow, Future[None]]] = []
            done = 0
            for batch, loaded in zip(batches, loads, strict=True):
                results = self._detect_and_align(batch, loaded)
                self._finish(pending)  # previous batch's writes
                pending = []
                for it, (row, image) in zip(batch, results, strict=True):
                    pending.append((row, pool.submit(self._write, row, image, it.key)))
                done += len(batch)
                for row, _ in pending:
                    counts[row.status] += 1
                rate = done / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=len(batch), info=_info(counts, rate))
            self._finish(pending)

    def _detect_and_align(self, batch: list[_Item], loaded: list[Image.Image | ImageReadError]
                          ) -> list[tuple[ManifestRow, Image.Image | None]]:
        images = [im for it, im in zip(batch, loaded, strict=True)
                  if isinstance(im, Image.Image) and it.scanned.key not in self.known]
        if images and self.detector is None:  # loaded on first use: not at all when detections are reused
            self.detector = FaceDetector(self.options.detector_config())
        try:
            detections = iter(self.detector.detect(images)) if images else iter(())
        except Exception as e:  # a batch failure must not lose the batch: retry image by image
            detections = iter(self._detect_one_by_one(images, e))
        out = []
        for it, im in zip(batch, loaded, strict=True):
            row = ManifestRow(identity=it.scanned.identity, src=it.scanned.key)
            if isinstance(im, ImageReadError):
                row.status, row.reason = "unreadable", im.reason
                out.append((row, None))
                continue
            row.width, row.height = im.size
            n_faces = None
            if it.scanned.key in self.known:
                face, n_faces = self.known[it.scanned.key]
                faces = [face] if face is not None else []
            else:
                faces = next(detections)
            if isinstance(faces, Exception):
                row.status, row.reason = "error", f"detection failed: {faces}"
                out.append((row, None))
                continue
            try:
                out.append((row, self._align(it, im, faces, row)))
                if n_faces is not None:
                    row.n_faces = n_faces
            except Exception as e:
                row.status, row.key, row.reason = "error", "", f"alignment failed: {type(e).__name__}: {e}"
                out.append((row, None))
        return out

    def _detect_one_by_one(self, images: list[Image.Image], batch_error: Exception) -> list[object]:
        out: list[object] = []
        for im in images:
            try:
                out.append(self.detector.detect([im])[0])
            except Exception as e:
                out.append(e)
        if len(out) > 1 and all(isinstance(o, Exception) for o in out):
            raise batch_error  # every image fails alone too: not an image problem (e.g. CUDA OOM), stop loudly
        return out

    def _align(self, it: _Item, im: Image.Image, faces: list, row: ManifestRow) -> Image.Image | None:
        o = self.options
        row.n_faces = len(faces)
        face = select_face(faces, im.size, o.keep)
        if face is not None:
            row.status, row.key = "ok", it.key
            row.prob = face.prob
            row.box = [float(v) for v in face.box]
            row.landmarks = [float(v) for v in np.asarray(face.landmarks).reshape(-1)]
            if o.mode == "similarity":
                return warp_similarity(im, face.landmarks, o.size)
            return crop_box(im, face.box, o.size, o.margin)
        if o.on_fail == "center-crop":
            row.status, row.key = "fallback", it.key
            row.reason = f"no face found (min face {o.min_face_size}px); centre crop {o.fallback_fraction:g} written"
            return center_crop(im, o.size, o.fallback_fraction)
        row.status, row.reason = "no_face", f"no face found (min face {o.min_face_size}px); skipped"
        return None

    def _write(self, row: ManifestRow, image: Image.Image | None, key: str) -> None:
        path = safe_join(self.dst, key)
        if image is None:
            # an output left by an earlier run (e.g. a fallback before --on-fail skip) must not
            # outlive its row: the folder would then hold a crop the manifest does not list
            if path.is_file():
                path.unlink()
                self.outputs_removed += 1
            return
        with atomic_path(path) as tmp:
            if self.options.image_format == "jpg":
                image.save(tmp, format="JPEG", quality=self.options.quality)
            else:
                image.save(tmp, format="PNG", compress_level=6)

    def _finish(self, pending: list[tuple[ManifestRow, Future[None]]]) -> None:
        """Record rows whose writes have completed; a failed write becomes an `error` row."""
        for row, fut in pending:
            try:
                fut.result()
            except OSError as e:
                row.status, row.reason = "error", f"cannot write output: {e}"
                row.key = ""
            self.rows[row.src] = row
            if self.on_row is not None:
                self.on_row(row)
        if time.monotonic() - self._last_checkpoint >= CHECKPOINT_SECONDS:
            self.checkpoint()


def _load(images: ImageSet, i: int) -> Image.Image | ImageReadError:
    try:
        return decode_rgb(images.read_bytes(i), images.name(i))
    except ImageReadError as e:
        return e
    except InputError as e:  # a damaged record of a container
        return ImageReadError(images.name(i), str(e).rsplit(": ", 1)[-1])


def _prefetch(pool: ThreadPoolExecutor, batches: list[list[_Item]], load: Callable[[_Item], object],
              depth: int = 2) -> Iterator[list]:
    """Yield each batch's decoded images while the next `depth` batches decode in the pool."""
    futures: list[list[Future]] = []
    for i in range(len(batches)):
        while len(futures) <= depth and i + len(futures) < len(batches):
            futures.append([pool.submit(load, it) for it in batches[i + len(futures)]])
        yield [f.result() for f in futures.pop(0)]


def _info(counts: Counter[str], rate: float) -> str:
    parts = [f"{s} {counts[s]}" for s in STATUSES if counts[s]]
    return f"{rate:5.1f} img/s  " + "  ".join(parts)


def print_summary(summary: AlignSummary) -> None:
    """The end summary on the console (stderr)."""
    from rich.table import Table

    t = Table(title=f"align {summary.src} -> {summary.dst}", show_header=True, header_style="bold")
    t.add_column("status")
    t.add_column("images", justify="right")
    t.add_column("share", justify="right")
    for s in STATUSES:
        n = summary.counts[s]
        if n or s in WRITTEN_STATUSES:
            t.add_row(s, str(n), f"{100.0 * n / max(summary.total, 1):.2f}%")
    t.add_row("[bold]total", f"[bold]{summary.total}", "")
    console.print(t)
    line = (f"{summary.processed} processed in {summary.seconds:.1f} s ({summary.images_per_s:.1f} img/s)"
            f", {summary.reused} reused from an earlier run")
    if summary.removed_temporaries:
        line += f", {summary.removed_temporaries} stale temporary file(s) removed"
    console.print(line)
    console.print(f"manifest: {summary.manifest}")


__all__ = ["CONFIG_NAME", "AlignOptions", "AlignSummary", "align_folder", "print_summary"]
