"""LFW official files: structure of View 2 / View 1, byte-identical round trip, validation errors,
missing-image reports. Reference: the official files in ../shared/data/lfw-protocol (md5 from the
LFW site) and the facts listed in ../shared/data/README.md."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from fvtool.errors import InputError
from fvtool.protocols.lfw import (
    OFFICIAL_MD5,
    check_images,
    fold_identities,
    fold_identity_overlap,
    format_lfw_pairs,
    packaged_file,
    parse_lfw_key,
    parse_lfw_pairs,
    read_lfw_pairs,
    read_packaged,
)
from fvtool.protocols.model import Protocol, resolve_keys

PAIRS_MD5 = "9f1ba174e4e1c508ff7cdf10ac338a7d"


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@pytest.fixture(scope="module")
def view2(lfw_protocol_dir: Path) -> Protocol:
    return read_lfw_pairs(lfw_protocol_dir / "pairs.txt")


def test_view2_structure(view2: Protocol, lfw_protocol_dir: Path) -> None:
    assert _md5((lfw_protocol_dir / "pairs.txt").read_bytes()) == PAIRS_MD5
    assert len(view2.a) == 6000 and view2.n_folds == 10
    for f in range(10):
        sel = view2.fold == f
        assert sel.sum() == 600
        # contiguous block: 300 same then 300 different
        assert np.array_equal(np.flatnonzero(sel), np.arange(600 * f, 600 * (f + 1)))
        assert view2.same[sel][:300].all() and not view2.same[sel][300:].any()
    ids = np.asarray(view2.identities)
    assert (ids[view2.a[view2.same]] == ids[view2.b[view2.same]]).all()
    assert (ids[view2.a[~view2.same]] != ids[view2.b[~view2.same]]).all()
    c = view2.counts()
    assert (c["pairs"], c["genuine"], c["impostor"]) == (6000, 3000, 3000)
    assert c["identities"] == 4281  # data README: 4,281 identities appear in pairs.txt
    assert view2.extra["lfw"]["official"] is True


def test_view2_folds_identity_disjoint(view2: Protocol) -> None:
    assert fold_identity_overlap(view2) == {}
    per_fold = fold_identities(view2)
    for i in range(10):
        for j in range(i + 1, 10):
            assert not per_fold[i] & per_fold[j]
    # first line of the file: Abel_Pacheco 1 4 -> fold 0, same, images 1 and 4
    assert view2.images[view2.a[0]] == "Abel_Pacheco/Abel_Pacheco_0001.jpg"
    assert view2.images[view2.b[0]] == "Abel_Pacheco/Abel_Pacheco_0004.jpg"


@pytest.mark.parametrize("name", ["pairs.txt", "pairsDevTrain.txt", "pairsDevTest.txt"])
def test_round_trip_byte_identical(lfw_protocol_dir: Path, name: str) -> None:
    raw = (lfw_protocol_dir / name).read_bytes()
    proto = read_lfw_pairs(lfw_protocol_dir / name)
    assert format_lfw_pairs(proto).encode() == raw
    assert _md5(raw) == OFFICIAL_MD5[name]


def test_view1_parsed(lfw_protocol_dir: Path) -> None:
    train = read_lfw_pairs(lfw_protocol_dir / "pairsDevTrain.txt")
    test = read_lfw_pairs(lfw_protocol_dir / "pairsDevTest.txt")
    assert (len(train.a), int(train.same.sum()), train.n_folds) == (2200, 1100, 1)
    assert (len(test.a), int(test.same.sum()), test.n_folds) == (1000, 500, 1)
    assert train.extra["lfw"]["view"] == 1 and train.name == "lfw-view1-train"
    assert train.same[:1100].all() and not train.same[1100:].any()


def test_packaged_files_are_the_official_ones(lfw_protocol_dir: Path) -> None:
    for name in OFFICIAL_MD5:
        assert packaged_file(name).read_bytes() == (lfw_protocol_dir / name).read_bytes()


def test_packaged_pairs_without_shared_data() -> None:
    p = read_packaged("pairs.txt")
    assert _md5(format_lfw_pairs(p).encode()) == PAIRS_MD5
    assert p.counts()["pairs"] == 6000


def test_official_images_all_present_in_full_lfw(view2: Protocol, lfw_full: Path) -> None:
    from fvtool.data.dataset import load_image_set

    keys = load_image_set(lfw_full).keys
    idx = check_images(view2, keys)
    assert [keys[i] for i in idx] == view2.images


def test_missing_images_reported_by_name_and_count(embedded_data: Path) -> None:
    from fvtool.data.dataset import load_image_set

    proto = read_packaged("pairs.txt")
    keys = load_image_set(embedded_data).keys
    expected_missing = [k for k in proto.images if k not in set(keys)]
    with pytest.raises(InputError) as e:
        check_images(proto, keys)
    msg = str(e.value)
    assert f"{len(expected_missing)} of {len(proto.images)} images" in msg
    assert expected_missing[0] in msg and "more" in msg


def test_missing_single_image(tmp_path: Path) -> None:
    proto = parse_lfw_pairs("1\nA\t1\t2\nA\t1\tB\t1\n")
    with pytest.raises(InputError, match=r"1 of 3 images .*B/B_0001\.jpg"):
        check_images(proto, ["A/A_0001.jpg", "A/A_0002.png"])  # extension fallback for A_0002
    idx = check_images(proto, ["B/B_0001.jpg", "A/A_0001.jpg", "A/A_0002.png"])
    assert idx.tolist() == [1, 2, 0]


_GOOD = "2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t1\n"


def test_small_file_round_trip() -> None:
    p = parse_lfw_pairs(_GOOD)
    assert p.fold.tolist() == [0, 0, 1, 1] and p.same.tolist() == [True, False, True, False]
    assert format_lfw_pairs(p) == _GOOD


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", "empty file"),
        ("ten\t300\n", r":1: expected the LFW header"),
        ("2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t1\t3\n", r"expected 4 pair lines .*found 3 \(truncated\?\)"),
        ("2\t1\nA\t1\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t1\nE\t1\t2\n", r"found 5 \(extra lines\?\)"),
        ("2\t1\nA\t1\tB\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t1\n", r":2: expected a same-person line"),
        ("2\t1\nA\t1\t2\nA\t1\t2\nC\t1\t3\nC\t2\tD\t1\n", r":3: expected a different-person line"),
        ("2\t1\nA\t01\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t1\n", r":2: image number '01'"),
        ("2\t1\nA\tx\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t1\n", r":2: image number 'x'"),
        ("2\t1\nA\t2\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t1\n", r":2: .*with itself"),
        ("2\t1\nA\t1\t2\nA\t1\tA\t3\nC\t1\t3\nC\t2\tD\t1\n", r":3: .*same person 'A' twice"),
        ("2\t1\nA\t1\t2\nA\t1\tB\t1\nA\t2\t1\nC\t2\tD\t1\n", r":4: duplicate pair \(same images as line 2\)"),
        ("2\t1\n..\t1\t2\nA\t1\tB\t1\nC\t1\t3\nC\t2\tD\t1\n", r":2: invalid person name '\.\.'"),
    ],
)
def test_malformed_files_name_the_line(text: str, pattern: str) -> None:
    with pytest.raises(InputError, match=pattern):
        parse_lfw_pairs(text, source="bad.txt")


def test_all_problems_reported_with_total() -> None:
    body = "".join(f"P{i}\t1\tx\n" for i in range(15)) + "".join(f"P{i}\t1\tQ{i}\t1\n" for i in range(15))
    with pytest.raises(InputError) as e:
        parse_lfw_pairs("15\n" + body, source="bad.txt")
    msg = str(e.value)
    assert "15 problem(s)" in msg and "bad.txt:2:" in msg and "and 5 more" in msg


def test_crlf_and_trailing_blank_lines_accepted() -> None:
    p = parse_lfw_pairs(_GOOD.replace("\n", "\r\n") + "\r\n")
    assert p.extra["lfw"]["crlf"] is True
    assert format_lfw_pairs(p) == _GOOD  # written back with LF, as the official file


def test_read_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        read_lfw_pairs(tmp_path / "nope.txt")


def test_export_refuses_non_lfw_structure() -> None:
    p = parse_lfw_pairs(_GOOD)
    reordered = Protocol(kind="pairs", name="x", images=p.images, identities=p.identities,
                         a=p.a[::-1], b=p.b[::-1], same=p.same[::-1], fold=p.fold[::-1])
    with pytest.raises(InputError, match="not in LFW order"):
        format_lfw_pairs(reordered)
    att = Protocol(kind="pairs", name="att", images=["s1/1.pgm", "s1/2.pgm"], identities=["s1", "s1"],
                   a=[0], b=[1], same=[True], fold=[0])
    with pytest.raises(InputError, match="cannot form"):
        format_lfw_pairs(att)
    att2 = Protocol(kind="pairs", name="att", images=["s1/1.pgm", "s1/2.pgm", "s2/1.pgm"],
                    identities=["s1", "s1", "s2"], a=[0, 0], b=[1, 2], same=[True, False], fold=[0, 0])
    with pytest.raises(InputError, match="LFW layout"):
        format_lfw_pairs(att2)


def test_parse_lfw_key() -> None:
    assert parse_lfw_key("George_W_Bush/George_W_Bush_0530.png") == ("George_W_Bush", 530)
    with pytest.raises(InputError, match="LFW layout"):
        parse_lfw_key("s1/1.pgm")


def test_manifest_dataset_missing_and_extension(tmp_path: Path) -> None:
    """Against an aligned folder's manifest: .png crops match .jpg pair entries; an image the
    manifest lists as not written (no face, --on-fail skip) is reported missing by name."""
    from fvtool.data.dataset import load_image_set
    from fvtool.data.manifest import ManifestRow, write_manifest

    rows = [ManifestRow("A", "A/A_0001.jpg", "A/A_0001.png", "ok"),
            ManifestRow("A", "A/A_0002.jpg", "A/A_0002.png", "ok"),
            ManifestRow("B", "B/B_0001.jpg", "", "no_face", reason="no face")]
    write_manifest(tmp_path / "manifest.csv", rows)
    images = load_image_set(tmp_path)
    proto = parse_lfw_pairs("1\nA\t1\t2\nA\t1\tB\t1\n")
    with pytest.raises(InputError, match=r"1 of 3 images .*B/B_0001\.jpg"):
        check_images(proto, images.keys)
    idx = resolve_keys(["A/A_0002.jpg", "A/A_0001.jpg"], images.keys)
    assert [images.keys[i] for i in idx] == ["A/A_0002.png", "A/A_0001.png"]
