"""MXNet RecordIO without MXNet: the framing, the image-record header and the `.idx` index.

Why our own: insightface distributes its training sets (MS1M-ArcFace, MS1MV2/V3, CASIA-WebFace,
Glint360K, WebFace) as `train.rec` + `train.idx` + `property`, written by `mxnet.recordio`. MXNet is
no longer maintained and does not install on current Python; the format is small enough to read
and write from its specification (dmlc-core `include/dmlc/recordio.h` + `src/recordio.cc`, and
`python/mxnet/recordio.py`):

Framing (dmlc RecordIO), every record in the `.rec` file:
    uint32 magic = 0xced7230a (little endian)
    uint32 lrec  = cflag << 29 | length      (cflag: 3 upper bits, length: 29 lower bits)
    length bytes of data, then zero padding up to a multiple of 4 bytes
A payload that contains the magic number at a 4-byte-aligned offset is split there (the magic
itself is dropped): the parts carry cflag 1 (first), 2 (middle), 3 (last); cflag 0 is a record in
one part. A reader joins the parts with the magic number between them.

Image record payload (`mxnet.recordio.pack`): `struct.pack('IfQQ', flag, label, id, id2)` (24 bytes,
little endian on every platform MXNet ran on), then, when `flag > 0`, `flag` float32 labels (the
header's own label field is then 0), then the encoded image (JPEG in insightface's sets).

Index (`MXIndexedRecordIO`): a text file of `key<TAB>byte offset of the record's magic<LF>` lines.

Reading is random access through `os.pread` on a descriptor opened lazily in each process, so a
reader can be handed to DataLoader worker processes (fork or spawn) and threads without sharing a
file position.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.atomic import atomic_path
from fvtool.errors import InputError

MAGIC = 0xCED7230A
MAGIC_BYTES = struct.pack("<I", MAGIC)
LENGTH_BITS = 29
MAX_LENGTH = (1 << LENGTH_BITS) - 1
IR_FORMAT = "<IfQQ"
IR_SIZE = struct.calcsize(IR_FORMAT)  # 24


class RecordError(InputError):
    """A record that cannot be read; `key` is its index key, `reason` short enough for a report."""

    def __init__(self, path: str | os.PathLike[str], key: int, reason: str) -> None:
        self.path, self.key, self.reason = str(path), key, reason
        super().__init__(f"{path}: record {key}: {reason}")


@dataclass(frozen=True)
class IRHeader:
    """`mxnet.recordio.IRHeader`: flag (number of float labels, 0: one label in `label`), label, id, id2."""

    flag: int
    label: float | tuple[float, ...]
    id: int = 0
    id2: int = 0

    @property
    def first_label(self) -> float:
        return self.label if isinstance(self.label, float) else (self.label[0] if self.label else float("nan"))


# ---- framing -------------------------------------------------------------------------------------

def encode_lrec(cflag: int, length: int) -> int:
    return (cflag << LENGTH_BITS) | length


def frame(payload: bytes) -> bytes:
    """The bytes dmlc's `RecordIOWriter::WriteRecord` writes for `payload` (split at aligned magics)."""
    n = len(payload)
    if n > MAX_LENGTH:
        raise ValueError(f"RecordIO records hold at most {MAX_LENGTH} bytes, got {n}")
    out = bytearray()
    start = 0
    for i in range(0, n - n % 4, 4):
        if payload[i:i + 4] == MAGIC_BYTES:
            out += MAGIC_BYTES + struct.pack("<I", encode_lrec(1 if start == 0 else 2, i - start))
            out += payload[start:i]
            start = i + 4
    out += MAGIC_BYTES + struct.pack("<I", encode_lrec(3 if start else 0, n - start))
    out += payload[start:]
    out += b"\0" * (-n % 4)
    return bytes(out)


def pack(header: IRHeader, image: bytes) -> bytes:
    """`mxnet.recordio.pack`: IRHeader (+ float32 label array when there are several labels) + image."""
    if isinstance(header.label, (int, float)):
        return struct.pack(IR_FORMAT, 0, float(header.label), header.id, header.id2) + image
    labels = np.asarray(header.label, dtype="<f4")
    return struct.pack(IR_FORMAT, labels.size, 0.0, header.id, header.id2) + labels.tobytes() + image


def unpack(payload: bytes, where: str = "record") -> tuple[IRHeader, bytes]:
    """`mxnet.recordio.unpack`: (header, image bytes); a too-short payload raises ValueError."""
    if len(payload) < IR_SIZE:
        raise ValueError(f"{where}: {len(payload)} bytes, shorter than the {IR_SIZE}-byte image header")
    flag, label, id1, id2 = struct.unpack_from(IR_FORMAT, payload)
    if flag == 0:
        return IRHeader(0, float(label), id1, id2), payload[IR_SIZE:]
    end = IR_SIZE + 4 * flag
    if len(payload) < end:
        raise ValueError(f"{where}: header says {flag} labels ({4 * flag} bytes) but the record has only "
                         f"{len(payload) - IR_SIZE} bytes after the header")
    labels = tuple(float(v) for v in np.frombuffer(payload, dtype="<f4", count=flag, offset=IR_SIZE))
    return IRHeader(flag, labels, id1, id2), payload[end:]


# ---- index ---------------------------------------------------------------------------------------

def read_index(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(keys, offsets) of an `.idx` file as int64 arrays, in file order; malformed lines name their line."""
    path = Path(path)
    try:
        text = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the RecordIO index ({e.strerror or e})") from None
    lines = text.splitlines()
    keys = np.empty(len(lines), np.int64)
    offsets = np.empty(len(lines), np.int64)
    n = 0
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        parts = line.split(b"\t")
        try:
            if len(parts) != 2:
                raise ValueError
            keys[n], offsets[n] = int(parts[0]), int(parts[1])
        except ValueError:
            raise InputError(f"{path}:{lineno}: expected `key<TAB>offset`, got {line[:60]!r}") from None
        if offsets[n] < 0:
            raise InputError(f"{path}:{lineno}: negative offset {offsets[n]}")
        n += 1
    keys, offsets = keys[:n], offsets[:n]
    uniq, counts = np.unique(keys, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"{path}: key {int(uniq[counts > 1][0])} appears more than once")
    return keys, offsets


# ---- reading -------------------------------------------------------------------------------------

class RecordReader:
    """Random access to the records of a `.rec` file by byte offset (from its `.idx`).

    Safe in DataLoader workers and threads: the descriptor is opened on first use in each process
    (`__getstate__` drops it) and every read is a positional `os.pread`.
    """

    def __init__(self, rec_path: str | Path) -> None:
        self.path = Path(rec_path)
        try:
            self.size = self.path.stat().st_size
        except OSError as e:
            raise InputError(f"{self.path}: cannot open the RecordIO file ({e.strerror or e})") from None
        self._fd: int | None = None
        self._pid = -1

    def __getstate__(self) -> dict:
        return {"path": self.path, "size": self.size, "_fd": None, "_pid": -1}

    def _descriptor(self) -> int:
        if self._fd is None or self._pid != os.getpid():
            self._fd = os.open(self.path, os.O_RDONLY)  # a forked child must not share the parent's
            self._pid = os.getpid()
        return self._fd

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __del__(self) -> None:
        with suppress(Exception):
            self.close()

    def read_at(self, offset: int, key: int = -1) -> bytes:
        """The payload of the record whose magic is at `offset` (parts joined); RecordError if damaged."""
        fd = self._descriptor()
        parts: list[bytes] = []
        pos = offset
        while True:
            if pos + 8 > self.size:
                where = "offset past the end of the file" if pos >= self.size else "truncated record header"
                raise RecordError(self.path, key, f"{where} (offset {pos}, file size {self.size})")
            head = os.pread(fd, 8, pos)
            magic, lrec = struct.unpack("<II", head)
            if magic != MAGIC:
                raise RecordError(self.path, key, f"no RecordIO magic at offset {pos} (found 0x{magic:08x}); "
                                                  "the index does not match the .rec file")
            cflag, length = lrec >> LENGTH_BITS, lrec & MAX_LENGTH
            if pos + 8 + length > self.size:
                raise RecordError(self.path, key, f"truncated record: {length} bytes announced at offset {pos}, "
                                                  f"{self.size - pos - 8} left in the file")
            data = os.pread(fd, length, pos + 8)
            if cflag not in (0, 1, 2, 3) or (cflag in (2, 3)) != bool(parts):
                raise RecordError(self.path, key, f"bad continuation flag {cflag} at offset {pos}")
            parts.append(data)
            if cflag in (0, 3):
                return MAGIC_BYTES.join(parts)
            pos += 8 + length + (-length % 4)

    def scan_headers(self, offsets: np.ndarray, chunk: int = 1 << 13) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Vectorised first look at many records: yields, per chunk of `offsets`, the framing fields
        (magic, cflag, length as an [n, 3] int64 array) and the first 40 payload bytes ([n, 40] uint8,
        zero where the file ends). Through a memory map, so 5.8 M records take seconds, not minutes; the
        mapped pages are released after each chunk, so resident memory does not grow with the file."""
        import mmap

        if self.size == 0:
            for s in range(0, len(offsets), chunk):
                n = len(offsets[s:s + chunk])
                yield np.zeros((n, 3), np.int64), np.zeros((n, 40), np.uint8)
            return
        with open(self.path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            buf = np.frombuffer(mm, dtype=np.uint8)
            try:
                span = np.arange(48, dtype=np.int64)
                for s in range(0, len(offsets), chunk):
                    off = offsets[s:s + chunk].astype(np.int64)
                    idx = off[:, None] + span
                    ok = idx < self.size
                    raw = np.where(ok, buf[np.minimum(idx, self.size - 1)], 0).astype(np.uint8)
                    words = raw[:, :8].copy().view("<u4").astype(np.int64)
                    fields = np.stack([words[:, 0], words[:, 1] >> LENGTH_BITS, words[:, 1] & MAX_LENGTH], axis=1)
                    yield fields, raw[:, 8:48]
                    if hasattr(mm, "madvise") and len(off):  # release the pages just read (resident set)
                        lo = int(np.clip(off.min(), 0, self.size - 1)) // mmap.PAGESIZE * mmap.PAGESIZE
                        hi = int(np.clip(off.max() + 48, 1, self.size))
                        mm.madvise(mmap.MADV_DONTNEED, lo, hi - lo)
            finally:
                del buf


# ---- writing -------------------------------------------------------------------------------------

class IndexedRecordWriter:
    """`MXIndexedRecordIO(idx, rec, 'w')`: append framed records and their `key<TAB>offset` lines.

    Use through `indexed_record_writer`, which writes both files under temporary names and renames
    them only when every record is in, so an interrupted write never leaves a `.rec` that looks complete.
    """

    def __init__(self, rec_file, idx_file) -> None:
        self._rec, self._idx = rec_file, idx_file
        self._pos = 0
        self.count = 0

    def write(self, key: int, payload: bytes) -> None:
        data = frame(payload)
        self._rec.write(data)
        self._idx.write(f"{key}\t{self._pos}\n")
        self._pos += len(data)
        self.count += 1


@contextmanager
def indexed_record_writer(rec_path: str | Path, idx_path: str | Path) -> Iterator[IndexedRecordWriter]:
    # files close (innermost) before the renames (outer), so a renamed file is always complete
    with (atomic_path(rec_path) as rec_tmp, atomic_path(idx_path) as idx_tmp, open(rec_tmp, "wb") as rec_f,
          open(idx_tmp, "w", encoding="ascii", newline="\n") as idx_f):
        w = IndexedRecordWriter(rec_f, idx_f)
        yield w
        for f in (rec_f, idx_f):
            f.flush()
            os.fsync(f.fileno())


def header_record(n_images: int, n_identities: int) -> bytes:
    """Record 0 of an insightface set: flag 2, labels (first identity record key, one past the last)."""
    return pack(IRHeader(2, (float(n_images + 1), float(n_images + 1 + n_identities))), b"")


def identity_record(first_key: int, end_key: int) -> bytes:
    """The record of one identity in an insightface set: labels (its first image key, one past its last)."""
    return pack(IRHeader(2, (float(first_key), float(end_key))), b"")
