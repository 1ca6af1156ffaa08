"""insightface RecordIO without MXNet: byte layout against the specification, reading, bad records.

The expected bytes are written out by hand from dmlc-core's recordio.h/.cc and mxnet/recordio.py
(magic 0xced7230a little endian, lrec = cflag << 29 | length, 4-byte padding, IRHeader 'IfQQ'),
so a writer and reader that agreed with each other but not with MXNet would fail here.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fvtool.cli import main
from fvtool.data.cache import CacheSpec, build_cache
from fvtool.data.dataset import ImageSet, load_image_set
from fvtool.data.insightface_rec import load_rec_set, write_rec_set
from fvtool.data.recordio import (
    IRHeader,
    RecordReader,
    frame,
    indexed_record_writer,
    pack,
    unpack,
)
from fvtool.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")

MAGIC_LE = bytes([0x0A, 0x23, 0xD7, 0xCE])


def _jpeg(seed: int, size: int = 112) -> bytes:
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _identity_folder(root: Path, ids: int = 3, per: int = 3, size: int = 112) -> Path:
    for k in range(ids):
        (root / f"person{k}").mkdir(parents=True)
        for j in range(per):
            (root / f"person{k}" / f"{j}.jpg").write_bytes(_jpeg(10 * k + j, size))
    return root


# ---- the specification's bytes ------------------------------------------------------------------

def test_frame_matches_dmlc_layout_by_hand() -> None:
    # 3-byte payload: magic, lrec = length 3 with cflag 0, data, one zero byte of padding
    assert frame(b"abc") == MAGIC_LE + b"\x03\x00\x00\x00" + b"abc" + b"\x00"
    # 4-byte payload: no padding
    assert frame(b"abcd") == MAGIC_LE + b"\x04\x00\x00\x00" + b"abcd"
    # the magic at an aligned offset splits the record: part 1 (cflag 1, len 4), part 3 (cflag 3, len 2)
    payload = b"abcd" + MAGIC_LE + b"ef"
    expected = (MAGIC_LE + struct.pack("<I", (1 << 29) | 4) + b"abcd"
                + MAGIC_LE + struct.pack("<I", (3 << 29) | 2) + b"ef" + b"\x00\x00")
    assert frame(payload) == expected
    # two magics (the first at offset 0): parts cflag 1 (len 0), 2 (len 4), 3 (len 0)
    payload = MAGIC_LE + b"wxyz" + MAGIC_LE
    expected = (MAGIC_LE + struct.pack("<I", (1 << 29) | 0) + MAGIC_LE + struct.pack("<I", (2 << 29) | 4) + b"wxyz"
                + MAGIC_LE + struct.pack("<I", (3 << 29) | 0))
    assert frame(payload) == expected
    # a magic at an unaligned offset is ordinary data
    assert frame(b"a" + MAGIC_LE) == MAGIC_LE + b"\x05\x00\x00\x00" + b"a" + MAGIC_LE + b"\x00\x00\x00"


def test_pack_matches_irheader_layout_by_hand() -> None:
    # flag 0: uint32 flag, float32 label, uint64 id, uint64 id2, then the image
    assert pack(IRHeader(0, 3.0, 7, 0), b"JPG") == (b"\x00\x00\x00\x00" + b"\x00\x00\x40\x40" + b"\x07" + b"\x00" * 7
                                                    + b"\x00" * 8 + b"JPG")
    # several labels: flag = count, header label 0, float32 labels before the image
    assert pack(IRHeader(2, (1.0, 2.0)), b"") == (b"\x02\x00\x00\x00" + b"\x00" * 4 + b"\x00" * 16
                                                  + b"\x00\x00\x80\x3f" + b"\x00\x00\x00\x40")
    h, img = unpack(pack(IRHeader(2, (5.0, 9.0), 3, 4), b"xyz"))
    assert (h.flag, h.label, h.id, h.id2, img) == (2, (5.0, 9.0), 3, 4, b"xyz")
    with pytest.raises(ValueError, match="shorter than the 24-byte"):
        unpack(b"\x00" * 10)


def test_written_set_has_insightface_layout(tmp_path: Path) -> None:
    """Parse a written set with an independent, spec-only parser: index lines, record 0, identity records."""
    src = load_image_set(_identity_folder(tmp_path / "src", ids=3, per=2))
    n, problems = write_rec_set(src, tmp_path / "rec", size=112)
    assert (n, problems) == (6, [])
    rec = (tmp_path / "rec" / "train.rec").read_bytes()
    lines = (tmp_path / "rec" / "train.idx").read_text().splitlines()
    index = {int(k): int(o) for k, o in (line.split("\t") for line in lines)}
    assert all("\t" in line and line == line.strip() for line in lines)
    assert sorted(index) == list(range(0, 1 + 6 + 3))

    def record(key: int) -> bytes:
        off = index[key]
        assert rec[off:off + 4] == MAGIC_LE
        (lrec,) = struct.unpack_from("<I", rec, off + 4)
        assert lrec >> 29 == 0  # random-noise JPEGs here contain no aligned magic
        return rec[off + 8: off + 8 + (lrec & ((1 << 29) - 1))]

    flag, label, _, _ = struct.unpack_from("<IfQQ", record(0))
    assert flag == 2 and label == 0.0
    assert struct.unpack_from("<2f", record(0), 24) == (7.0, 10.0)  # images 1..6, identities 7..9
    for c in range(3):
        r = record(7 + c)
        assert struct.unpack_from("<I", r)[0] == 2
        assert struct.unpack_from("<2f", r, 24) == (1.0 + 2 * c, 3.0 + 2 * c)
    for key in range(1, 7):
        r = record(key)
        flag, label, _, _ = struct.unpack_from("<IfQQ", r)
        assert flag == 0 and label == float((key - 1) // 2)
        assert r[24:27] == b"\xff\xd8\xff"  # the JPEG follows the 24-byte header
    # every record starts 4-byte aligned, and the file is a sequence of records with nothing between
    assert all(o % 4 == 0 for o in index.values())
    assert (tmp_path / "rec" / "property").read_text() == "3,112,112\n"
    # the source JPEGs were 112x112 RGB: stored byte for byte
    assert record(1)[24:] == (tmp_path / "src" / "person0" / "0.jpg").read_bytes()


# ---- reading -------------------------------------------------------------------------------------

def test_round_trip_and_split_records(tmp_path: Path) -> None:
    src = load_image_set(_identity_folder(tmp_path / "src"))
    write_rec_set(src, tmp_path / "rec")
    images = load_image_set(tmp_path / "rec")  # detected from the folder
    assert images.source == "recordio" and images.prealigned == 112 and not images.problems
    assert images.identities == src.identities
    assert [k.split("/")[0] for k in images.keys] == src.identities
    for i in range(len(images)):
        assert images.read_bytes(i) == src.read_bytes(i)
    assert images.name(0).endswith("train.rec record 1")
    # a payload with aligned magics in it comes back whole
    payload = MAGIC_LE + b"abcd" + MAGIC_LE + b"xy"
    with indexed_record_writer(tmp_path / "m.rec", tmp_path / "m.idx") as w:
        w.write(5, b"first")
        w.write(6, payload)
    reader = RecordReader(tmp_path / "m.rec")
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "m.idx").read_text().splitlines()]
    assert reader.read_at(offsets[0]) == b"first"
    assert reader.read_at(offsets[1]) == payload


def test_reader_is_safe_to_pickle_into_workers(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader, Dataset

    src = load_image_set(_identity_folder(tmp_path / "src", ids=2, per=2))
    write_rec_set(src, tmp_path / "rec")
    images = load_rec_set(tmp_path / "rec")
    images.read_bytes(0)  # parent opened its descriptor
    clone = pickle.loads(pickle.dumps(images))
    assert clone.read_bytes(3) == images.read_bytes(3)

    class Bytes(Dataset):
        def __init__(self, s: ImageSet) -> None:
            self.s = s

        def __len__(self) -> int:
            return len(self.s)

        def __getitem__(self, i: int) -> torch.Tensor:
            return torch.tensor(len(self.s.read_bytes(i)))

    got = [int(t) for t in DataLoader(Bytes(images), batch_size=None, num_workers=2)]
    assert got == [len(images.read_bytes(i)) for i in range(len(images))]


# ---- bad records ---------------------------------------------------------------------------------

def _bad_set(root: Path) -> Path:
    """A 3-identity set with one bad record of each kind, written with the low-level writer."""
    root.mkdir(parents=True)
    good = [_jpeg(i, 32) for i in range(6)]
    with indexed_record_writer(root / "train.rec", root / "train.idx") as w:
        w.write(0, pack(IRHeader(2, (10.0, 13.0)), b""))  # images 1..9, identities 10..12
        for k in range(6):
            w.write(k + 1, pack(IRHeader(0, float(k % 3)), good[k]))
        w.write(7, b"\x00" * 10)  # header of the wrong size
        w.write(8, pack(IRHeader(0, 7.0), good[0]))  # label out of range (3 identities)
        w.write(9, pack(IRHeader(0, 1.0), b"\xff\xd8\xff\xe0 not a jpeg"))  # corrupt JPEG
        for c in range(3):
            w.write(10 + c, pack(IRHeader(2, (1.0, 2.0)), b""))
    (root / "property").write_text("3,32,32\n")
    data = (root / "train.rec").read_bytes()
    idx = (root / "train.idx").read_text()
    # truncated record: a 14th key whose record is cut at the end of the file
    rec_bytes = frame(pack(IRHeader(0, 0.0), good[1]))
    (root / "train.rec").write_bytes(data + rec_bytes[:40])
    idx += f"13\t{len(data)}\n"
    idx += f"14\t{len(data) + 10_000}\n"  # index offset past the end of the file
    idx += "15\t6\n"  # an offset into the middle of a record: no magic there
    (root / "train.idx").write_text(idx)
    return root


def test_each_bad_record_is_counted_and_named(tmp_path: Path) -> None:
    root = _bad_set(tmp_path / "bad")
    images = load_rec_set(root)
    # keys 13..15 are beyond the header's image range (1..9): they are not images, but still checked
    reasons = {p.where.rsplit(" ", 1)[-1]: p.reason for p in images.problems}
    assert "header of the wrong size" in reasons["7"]
    assert "label out of range (7" in reasons["8"]
    assert "truncated record" in reasons["13"]
    assert "past the end of the file" in reasons["14"]
    assert "no RecordIO magic" in reasons["15"]
    assert len(images.problems) == 5
    assert len(images) == 7  # 6 good + the corrupt JPEG, found only by decoding
    with pytest.raises(InputError, match=r"(?s)1 of 7 images .*train.rec record 9"):
        build_cache(images, CacheSpec(16), cache_dir=tmp_path / "cache", show_progress=False)
    assert not list((tmp_path / "cache").glob("*.npy"))  # nothing half-built left behind


def test_rec_info_and_rec_write_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = _bad_set(tmp_path / "bad")
    with pytest.raises(SystemExit) as e:
        main(["interop", "rec-info", str(root)])
    assert e.value.code == 4
    cap = capsys.readouterr()
    out = " ".join((cap.out + cap.err).split())
    assert "5 image(s)/record(s)" in out and "train.rec record 7: header of the wrong size" in out
    # repacking the bad set: framing problems reported, the corrupt JPEG left out, exit 4
    with pytest.raises(SystemExit) as e:
        main(["interop", "rec-write", str(root), "-o", str(tmp_path / "clean"), "--size", "32"])
    assert e.value.code == 4
    clean = load_rec_set(tmp_path / "clean")
    assert len(clean) == 6 and not clean.problems
    # a missing index is a clear error (exit 3)
    (tmp_path / "noidx").mkdir()
    (tmp_path / "noidx" / "train.rec").write_bytes(b"")
    with pytest.raises(SystemExit) as e:
        main(["interop", "rec-info", str(tmp_path / "noidx")])
    assert e.value.code == 3


def test_im2rec_set_without_header_and_a_nan_label(tmp_path: Path) -> None:
    """No header record (im2rec style: every record an image); a NaN label is reported, not dropped."""
    root = tmp_path / "plain"
    root.mkdir()
    with indexed_record_writer(root / "train.rec", root / "train.idx") as w:
        w.write(0, pack(IRHeader(0, 1.0), _jpeg(1, 32)))
        w.write(1, pack(IRHeader(1, (0.0,)), _jpeg(2, 32)))  # the label in a one-element array
        w.write(2, pack(IRHeader(0, float("nan")), _jpeg(3, 32)))
    images = load_rec_set(root)
    assert images.identities == ["1", "0"] and images.prealigned is None
    assert [(p.where.rsplit(" ", 1)[-1], p.reason.split(" (")[0]) for p in images.problems] == [
        ("2", "label out of range")]


def test_training_batches_from_dataloader_workers_equal_the_thread_loader() -> None:
    """The worker-process data path (default on CUDA) yields exactly the thread path's batches."""
    import torch

    from fvtool.data.samplers import SampledBatch
    from fvtool.data.transforms import AugmentConfig, BatchTransform, Normalisation
    from fvtool.training.data import BatchLoader

    rng = np.random.default_rng(0)
    array = rng.integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    rows, labels = np.arange(40), rng.integers(0, 4, 40)
    tf = BatchTransform(Normalisation.named("pm1"), AugmentConfig(flip=0.5, brightness=0.2))
    plan = [SampledBatch(indices=rng.choice(40, 6, replace=False)) for _ in range(5)]

    def run(workers: int, start: int) -> list:
        loader = BatchLoader(array, rows, labels, tf, torch.device("cpu"), seed=3, workers=workers)
        return [(i, b.images, b.labels) for i, b in loader.iterate(plan, epoch=1, start=start)]

    for start in (0, 2):
        a, b = run(0, start), run(2, start)
        assert [i for i, *_ in a] == [i for i, *_ in b] == list(range(start, 5))
        for (_, xa, ya), (_, xb, yb) in zip(a, b, strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
