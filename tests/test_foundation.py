"""The shared foundation: atomic writes, workspace defaults, scanning, manifest, image sets,
embeddings file, protocol file, and the CLI shell (version, help, exit codes)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fvtool import __version__
from fvtool.atomic import TMP_MARK, atomic_path, remove_stale_temporaries, write_json
from fvtool.data.dataset import load_image_set
from fvtool.data.embeddings import EmbeddingSet, read_embeddings, write_embeddings
from fvtool.data.manifest import ManifestRow, read_manifest, write_manifest
from fvtool.data.scan import safe_join, scan_identity_folder
from fvtool.errors import InputError
from fvtool.protocols.model import Protocol, read_protocol, write_protocol
from fvtool.workspace import Workspace


def test_atomic_write_leaves_nothing_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "out.json"
    write_json(dest, {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(dest) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert json.loads(dest.read_text()) == {"a": 1}  # old content intact
    assert not list(tmp_path.glob(f"{TMP_MARK}*"))


def test_write_json_refuses_nan(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        write_json(tmp_path / "x.json", {"eer": float("nan")})
    assert not (tmp_path / "x.json").exists()


def test_remove_stale_temporaries(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / f"{TMP_MARK}xyz.jpg").write_bytes(b"x")
    (tmp_path / "a" / "keep.jpg").write_bytes(b"x")
    assert remove_stale_temporaries(tmp_path) == 1
    assert (tmp_path / "a" / "keep.jpg").exists()


def test_workspace_records_latest(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws")
    assert ws.latest("align") is None
    with pytest.raises(InputError, match="--data"):
        ws.require_latest("align", "--data", "fvtool align SRC")
    out = tmp_path / "aligned"
    out.mkdir()
    ws.record("align", out)
    assert ws.latest("align") == out.resolve()
    out.rmdir()  # a recorded output that vanished is not offered
    assert ws.latest("align") is None


def test_scan_embedded_data(embedded_data: Path) -> None:
    items = scan_identity_folder(embedded_data)
    assert len(items) == 1580
    assert len({i.identity for i in items}) == 158
    assert items[0].key.count("/") == 1


@pytest.mark.parametrize("key", ["../etc/passwd", "/etc/passwd", "a/../../b.jpg", ""])
def test_safe_join_refuses_escape(tmp_path: Path, key: str) -> None:
    with pytest.raises(InputError):
        safe_join(tmp_path, key)


def test_manifest_round_trip_and_image_set(tmp_path: Path) -> None:
    rows = [
        ManifestRow("A", "A/A_0001.jpg", "A/A_0001.jpg", "ok", 0.999, [1, 2, 30, 40], list(range(10)), "", 250, 250, 1),
        ManifestRow("A", "A/A_0002.jpg", "", "no_face", None, None, None, "no face found", 250, 250, 0),
        ManifestRow("B", "B/bad.jpg", "", "unreadable", reason="zero-byte file"),
        ManifestRow("B", "B/B_0001.jpg", "B/B_0001.jpg", "fallback", reason="no face; centre crop"),
    ]
    write_manifest(tmp_path / "manifest.csv", rows)
    back = read_manifest(tmp_path / "manifest.csv")
    assert [r.status for r in back] == ["ok", "no_face", "unreadable", "fallback"]
    assert back[0].box == [1, 2, 30, 40] and back[0].landmarks == list(range(10))
    assert back[0].prob == pytest.approx(0.999)
    s = load_image_set(tmp_path)
    assert s.source == "manifest" and s.keys == ["A/A_0001.jpg", "B/B_0001.jpg"]
    assert s.status == ["ok", "fallback"] and s.not_written == {"no_face": 1, "unreadable": 1}


def test_manifest_errors_name_line(tmp_path: Path) -> None:
    p = tmp_path / "manifest.csv"
    p.write_text("identity,src,key,status\nA,a.jpg,a.jpg,weird\n")
    with pytest.raises(InputError, match=r"manifest.csv:2"):
        read_manifest(p)


def test_embeddings_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    es = EmbeddingSet(rng.normal(size=(5, 8)), [f"p/{i}.jpg" for i in range(5)], list("aabbc"), ["ok"] * 5,
                      {"backbone": "x", "input_size": 64})
    write_embeddings(tmp_path / "e.h5", es)
    back = read_embeddings(tmp_path / "e.h5")
    np.testing.assert_array_equal(back.embeddings, es.embeddings.astype(np.float32))
    assert back.keys == es.keys and back.identities == es.identities
    assert back.attrs["backbone"] == "x" and back.attrs["input_size"] == 64
    assert back.attrs["format"] == "fvtool-embeddings"


def test_protocol_round_trip_and_hash(tmp_path: Path) -> None:
    p = Protocol("pairs", "t", ["a/1.jpg", "a/2.jpg", "b/1.jpg"], ["a", "a", "b"],
                 a=[0, 0], b=[1, 2], same=[1, 0], fold=[0, 1], seed=3)
    write_protocol(tmp_path / "p.json", p)
    q = read_protocol(tmp_path / "p.json")
    assert q.sha256() == p.sha256() and q.seed == 3 and q.counts()["genuine"] == 1
    d = json.loads((tmp_path / "p.json").read_text())
    d["pairs"]["same"][1] = 1
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(InputError, match="hash mismatch"):
        read_protocol(tmp_path / "p.json")


def test_allpairs_counts() -> None:
    ids = ["a"] * 3 + ["b"] * 2 + ["c"]
    p = Protocol("allpairs", "t", [f"{i}.jpg" for i in range(6)], ids, trials=[list(range(6))])
    c = p.counts()
    assert (c["pairs"], c["genuine"], c["impostor"]) == (15, 4, 11)
    assert c["min_far"] == pytest.approx(1 / 11)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fvtool", *args], capture_output=True, text=True, timeout=120)


def test_cli_version_and_help() -> None:
    r = _cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"fvtool {__version__}"
    r = _cli("--help")
    assert r.returncode == 0 and "align" in r.stdout


def test_cli_bad_usage_exit_code() -> None:
    assert _cli("no-such-command").returncode == 2


def test_atomic_outputs_honour_umask(tmp_path: Path) -> None:
    import os

    write_json(tmp_path / "p.json", {})
    mode = (tmp_path / "p.json").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_select_folds_keeps_exactly_that_fold() -> None:
    from fvtool.protocols.lfw import read_packaged

    full = read_packaged("pairs.txt")
    f10 = full.select_folds([9])
    assert len(f10.same) == 600 and f10.same.sum() == 300 and set(f10.fold.tolist()) == {0}
    keep = full.fold == 9
    got = {(f10.images[a], f10.images[b]) for a, b in zip(f10.a, f10.b, strict=True)}
    want = {(full.images[a], full.images[b]) for a, b in zip(full.a[keep], full.b[keep], strict=True)}
    assert got == want
    assert not set(f10.identities) & set(full.select_folds(list(range(9))).identities)  # identity-disjoint
    with pytest.raises(InputError, match="no fold 11"):
        full.select_folds([10])


def test_refold_deals_the_same_pairs_into_stratified_seeded_folds() -> None:
    from fvtool.protocols.lfw import read_packaged

    f10 = read_packaged("pairs.txt").select_folds([9])
    cv = f10.refold(10, seed=0)
    assert cv.n_folds == 10 and cv.images == f10.images
    assert np.array_equal(cv.a, f10.a) and np.array_equal(cv.b, f10.b) and np.array_equal(cv.same, f10.same)
    for k in range(10):  # 300 + 300 pairs -> 30 genuine + 30 impostor per fold
        assert cv.same[cv.fold == k].sum() == 30 and (~cv.same[cv.fold == k]).sum() == 30
    assert np.array_equal(f10.refold(10, seed=0).fold, cv.fold)  # seeded
    assert not np.array_equal(f10.refold(10, seed=1).fold, cv.fold)
    assert cv.extra["refolded"]["from"] == f10.sha256() and cv.extra["refolded"]["identity_disjoint_folds"] is False
    uneven = f10.refold(7, seed=3)  # 300 = 7 x 42 + 6: fold sizes differ by at most one per class
    for mask in (uneven.same, ~uneven.same):
        sizes = np.bincount(uneven.fold[mask], minlength=7)
        assert sizes.sum() == 300 and sizes.max() - sizes.min() <= 1
    for bad in (1, 301):
        with pytest.raises(InputError, match="--refold"):
            f10.refold(bad)
