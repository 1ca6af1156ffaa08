"""insightface training sets as shipped: `train.rec` + `train.idx` + `property`, read and written.

Layout (insightface `recognition/arcface_torch/dataset.py` MXFaceDataset, `face2rec2.py`):
- record 0 is a header when its IRHeader has `flag > 0` and no image: labels (A, B) with images at
  keys 1 .. A-1 and one record per identity at keys A .. B-1 (labels: that identity's first image
  key, one past its last); without such a header every indexed record is an image (im2rec sets);
- an image record: IRHeader whose (first) label is the identity's class id 0 .. K-1, then a JPEG of
  an already aligned 112 x 112 face (no detection needed);
- `property`: one line `K,H,W` (number of identities, image height and width).
fvtool also writes an optional `identities.txt` (line k: the name of class k) so names survive a
round trip; without it identities are named by their class id.

What is checked when a set is opened (each problem is a `DataProblem` naming the record key; those
records are left out and reported): an index offset past the end of the file, a truncated record
or record header, a missing magic number (an index that does not match the file), a payload
shorter than the 24-byte image header or than the labels its flag announces, a label that is not
an integer class id in 0 .. K-1, image keys the header record announces but the index lacks.
A corrupt JPEG inside a record is found when the image is decoded (cache build, `align`), which
names the record the same way.
"""

from __future__ import annotations

import io
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from fvtool.atomic import write_text
from fvtool.data.cache import ordered_map
from fvtool.data.images import ImageReadError, decode_rgb
from fvtool.data.imageset import DataProblem, ImageSet
from fvtool.data.recordio import (
    IR_SIZE,
    MAGIC,
    IRHeader,
    RecordError,
    RecordReader,
    header_record,
    identity_record,
    indexed_record_writer,
    pack,
    read_index,
    unpack,
)
from fvtool.errors import InputError

REC_NAME, IDX_NAME, PROPERTY_NAME, NAMES_NAME = "train.rec", "train.idx", "property", "identities.txt"


def find_rec(path: Path) -> tuple[Path, Path] | None:
    """(rec, idx) when `path` is a `.rec` file or a folder holding `train.rec`; else None."""
    if path.is_file() and path.suffix == ".rec":
        return path, path.with_suffix(".idx")
    if path.is_dir() and (path / REC_NAME).is_file():
        return path / REC_NAME, path / IDX_NAME
    return None


class RecStore:
    """The images of one `.rec` file: `read_image(ref)` with `ref` a position in the index arrays."""

    def __init__(self, rec: Path, idx: Path, keys: np.ndarray, offsets: np.ndarray) -> None:
        self.path, self.idx_path = rec, idx
        self.reader = RecordReader(rec)
        self.keys, self.offsets = keys, offsets

    def describe(self, ref: int) -> str:
        return f"{self.path} record {int(self.keys[ref])}"

    def read_image(self, ref: int) -> bytes:
        key = int(self.keys[ref])
        payload = self.reader.read_at(int(self.offsets[ref]), key)
        try:
            return unpack(payload, f"{self.path} record {key}")[1]
        except ValueError as e:
            raise RecordError(self.path, key, str(e).split(": ", 1)[-1]) from None

    def signature(self) -> str:
        parts = []
        for p in (self.path, self.idx_path):
            st = os.stat(p)
            parts.append(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}")
        return "\0".join(parts)


def read_property(path: Path) -> tuple[int, int, int] | None:
    """(identities, height, width) from a `property` file, or None when there is none."""
    if not path.is_file():
        return None
    text = path.read_text(errors="replace").strip()
    try:
        k, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"{path}: expected `identities,height,width` (e.g. `85742,112,112`), got {text[:60]!r}") \
            from None
    if k <= 0 or h <= 0 or w <= 0:
        raise InputError(f"{path}: identities, height and width must be positive, got {text!r}")
    return k, h, w


def load_rec_set(path: str | Path) -> ImageSet:
    """Open an insightface RecordIO set (a `.rec` file or its folder) as an ImageSet; see the module doc."""
    found = find_rec(Path(path))
    if found is None:
        raise InputError(f"{path}: not a RecordIO set (expected a .rec file or a folder holding {REC_NAME})")
    rec, idx = found
    if not idx.is_file():
        raise InputError(f"{rec}: its index {idx} is missing (MXNet's MXIndexedRecordIO writes both; "
                         "fvtool reads records through the index)")
    keys, offsets = read_index(idx)
    if len(keys) == 0:
        raise InputError(f"{idx}: the index lists no records")
    order = np.argsort(keys, kind="stable")
    keys, offsets = keys[order], offsets[order]
    store = RecStore(rec, idx, keys, offsets)
    prop = read_property(rec.parent / PROPERTY_NAME)
    problems: list[DataProblem] = []

    labels, sound_all = _scan(store, problems)  # first label per index position; False where damaged
    image_pos, n_ids = _image_positions(store, sound_all, problems)
    if prop is not None:
        if n_ids is not None and n_ids != prop[0]:
            raise InputError(f"{rec.parent / PROPERTY_NAME} says {prop[0]} identities but the header record of "
                             f"{rec} lists {n_ids}; the files belong to different sets")
        n_ids = prop[0]
    names = _identity_names(rec.parent / NAMES_NAME, n_ids)

    lab = labels[image_pos]
    sound = sound_all[image_pos]  # damaged records are problems already
    with np.errstate(invalid="ignore"):
        valid = sound & np.isfinite(lab) & (lab == np.floor(lab)) & (lab >= 0)
        if n_ids is not None:
            valid &= lab < n_ids
    limit = f"0..{n_ids - 1}" if n_ids is not None else "a class id >= 0"
    for p in image_pos[sound & ~valid]:
        problems.append(DataProblem(store.describe(int(p)), f"label out of range ({labels[p]:g}, expected {limit})"))
    kept = image_pos[valid]
    classes = lab[valid].astype(np.int64)
    if not len(kept):
        raise InputError(f"{rec}: no readable image record ({len(problems)} problems, first: "
                         f"{problems[0].where}: {problems[0].reason})" if problems else f"{rec}: no image records")
    table = names if names is not None else [str(c) for c in range(int(classes.max()) + 1)]
    identities = [table[c] for c in classes.tolist()]  # one shared str object per identity
    refs = np.asarray(kept, dtype=np.int64)
    return ImageSet(
        root=rec.parent, keys=[f"{ident}/{k}.jpg" for ident, k in zip(identities, keys[kept].tolist(), strict=True)],
        identities=identities, status=["ok"] * len(kept), source="recordio", store=store, refs=refs,
        problems=problems, prealigned=prop[1] if prop is not None and prop[1] == prop[2] else None,
        not_written=Counter({"bad record": len(problems)}) if problems else Counter(),
    )


def _scan(store: RecStore, problems: list[DataProblem]) -> tuple[np.ndarray, np.ndarray]:
    """Framing and IRHeader checks of every indexed record, vectorised: the first label per index
    position, and whether the record is sound (each damaged one is a DataProblem). Python runs only
    for the few bad or split records, so millions of records take seconds."""
    size = store.reader.size
    out = np.full(len(store.offsets), np.nan)
    sound = np.zeros(len(store.offsets), dtype=bool)
    pos0 = 0
    for fields, head in store.reader.scan_headers(store.offsets):
        n = len(fields)
        off = store.offsets[pos0:pos0 + n]
        magic, cflag, length = fields[:, 0], fields[:, 1], fields[:, 2]
        flag = head[:, 0:4].copy().view("<u4")[:, 0].astype(np.int64)
        label0 = head[:, 4:8].copy().view("<f4")[:, 0].astype(np.float64)
        label_arr = head[:, 24:28].copy().view("<f4")[:, 0].astype(np.float64)
        checks = _framing_checks(off, magic, cflag, length, flag, size)
        bad = np.zeros(n, dtype=bool)
        for mask, reason in checks:
            for j in np.flatnonzero(mask & ~bad):
                problems.append(DataProblem(store.describe(pos0 + int(j)), reason(int(j))))
            bad |= mask
        good = ~bad
        out[pos0:pos0 + n][good] = np.where(flag[good] == 0, label0[good], label_arr[good])
        sound[pos0:pos0 + n] = good
        for j in np.flatnonzero(good & (cflag == 1)):  # split at an aligned magic number (rare): read it whole
            p = pos0 + int(j)
            try:
                out[p] = unpack(store.reader.read_at(int(off[j]), int(store.keys[p])))[0].first_label
            except (RecordError, ValueError) as e:
                sound[p] = False
                problems.append(DataProblem(store.describe(p), getattr(e, "reason", None) or str(e).split(": ", 1)[-1]))
        pos0 += n
    return out, sound


def _framing_checks(off: np.ndarray, magic: np.ndarray, cflag: np.ndarray, length: np.ndarray, flag: np.ndarray,
                    size: int) -> list:
    """(mask, reason of record j) pairs over one chunk of records, in the order they are reported."""
    return [  # in order: the first that applies names the problem
        (off >= size, lambda j: f"index offset past the end of the file (offset {off[j]}, file size {size})"),
        (off + 8 > size, lambda j: f"truncated record header at offset {off[j]} (file size {size})"),
        (magic != MAGIC, lambda j: f"no RecordIO magic at offset {off[j]}: the index does not match the .rec file"),
        ((cflag != 0) & (cflag != 1),
         lambda j: f"bad continuation flag {cflag[j]} at the start of a record (offset {off[j]})"),
        (off + 8 + length > size, lambda j: f"truncated record ({length[j]} bytes announced at offset {off[j]}, "
                                            f"{size - off[j] - 8} left in the file)"),
        ((cflag == 0) & (length < IR_SIZE),
         lambda j: f"header of the wrong size: the record has {length[j]} bytes, an image header {IR_SIZE}"),
        ((cflag == 0) & (flag > 0) & (IR_SIZE + 4 * flag > length),
         lambda j: f"header of the wrong size: flag {flag[j]} announces {4 * flag[j]} label bytes, the record "
                   f"has {length[j] - IR_SIZE} after its header"),
    ]


def _image_positions(store: RecStore, sound: np.ndarray, problems: list[DataProblem]
                     ) -> tuple[np.ndarray, int | None]:
    """Index positions of image records and the identity count the header record gives (None: no header)."""
    keys = store.keys
    everything = np.arange(len(keys))
    if keys[0] != 0 or not sound[0]:
        return everything, None
    header, image = unpack(store.reader.read_at(int(store.offsets[0]), 0))
    if header.flag < 2 or image:
        return everything, None  # record 0 is an ordinary image (im2rec sets)
    first_id, end_id = int(header.label[0]), int(header.label[1])
    if not 1 <= first_id <= end_id:
        raise InputError(f"{store.path} record 0: header labels ({header.label[0]:g}, {header.label[1]:g}) "
                         "are not an image range followed by an identity range")
    pos = np.searchsorted(keys, np.arange(1, first_id))
    present = (pos < len(keys)) & (keys[np.minimum(pos, len(keys) - 1)] == np.arange(1, first_id))
    for k in np.flatnonzero(~present)[:1000]:
        problems.append(DataProblem(f"{store.path} record {k + 1}", "announced by the header record but "
                                    f"missing from the index {store.idx_path.name}"))
    if (~present).sum() > 1000:
        problems.append(DataProblem(str(store.idx_path), f"{int((~present).sum()) - 1000} more announced records "
                                    "missing from the index"))
    return pos[present], end_id - first_id


def _identity_names(path: Path, n_ids: int | None) -> list[str] | None:
    if not path.is_file():
        return None
    names = path.read_text(encoding="utf-8").splitlines()
    if n_ids is not None and len(names) != n_ids:
        raise InputError(f"{path}: {len(names)} names for {n_ids} identities")
    if len(set(names)) != len(names) or any(not n or "/" in n for n in names):
        raise InputError(f"{path}: identity names must be unique, non-empty and contain no '/'")
    return names


# ---- writing -------------------------------------------------------------------------------------

def encode_face(data: bytes, name: str, size: int, quality: int) -> bytes:
    """The JPEG a record stores: the source bytes when they already are a `size` x `size` RGB JPEG,
    else the decoded image resized to `size` and encoded (decoding also rejects corrupt files)."""
    img = decode_rgb(data, name)
    if img.size == (size, size) and data[:3] == b"\xff\xd8\xff":
        with Image.open(io.BytesIO(data)) as probe:
            if probe.mode == "RGB":
                return data
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_rec_set(images: ImageSet, out_dir: str | Path, *, size: int = 112, quality: int = 95,
                  workers: int | None = None) -> tuple[int, list[DataProblem]]:
    """Pack `images` as an insightface set in `out_dir` (train.rec, train.idx, property, identities.txt).

    Layout as insightface's face2rec2: images grouped by identity (sorted names, class ids 0..K-1) at
    keys 1..N, identity records at keys N+1..N+K, header record 0 (stored last in the file, listed
    last in the index). Images that cannot be decoded are
    left out and returned as problems. Files appear only when complete (`property` last).
    Returns (images written, problems).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = sorted(set(images.identities))
    cid = {n: k for k, n in enumerate(names)}
    order = sorted(range(len(images)), key=lambda i: (cid[images.identities[i]], images.keys[i]))

    def work(j: int) -> bytes | str:
        i = order[j]
        try:
            return encode_face(images.read_bytes(i), images.name(i), size, quality)
        except (ImageReadError, InputError) as e:
            return str(e)

    problems: list[DataProblem] = []
    ranges: list[list[int]] = [[0, 0] for _ in names]
    written = 0
    n = len(order)
    with indexed_record_writer(out / REC_NAME, out / IDX_NAME) as w:
        for j, enc in enumerate(ordered_map(work, n, workers or os.cpu_count() or 1)):
            i = order[j]
            if isinstance(enc, str):
                problems.append(DataProblem(images.name(i), enc.split(": ", 1)[-1]))
                continue
            c = cid[images.identities[i]]
            written += 1  # keys 1..written without gaps: failed images take no key
            if ranges[c][1] == 0:
                ranges[c][0] = written
            ranges[c][1] = written + 1
            w.write(written, pack(IRHeader(0, float(c)), enc))
        for c, (a, b) in enumerate(ranges):
            w.write(written + 1 + c, identity_record(a, b))
        # record 0 last in the file (its counts are known only now); readers find it through the index
        w.write(0, header_record(written, len(names)))
    write_text(out / NAMES_NAME, "".join(f"{name}\n" for name in names))
    write_text(out / PROPERTY_NAME, f"{len(names)},{size},{size}\n")
    return written, problems
