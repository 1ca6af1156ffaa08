"""Interop: the restricted insightface .bin loader and foreign-embeddings import."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import h5py
import numpy as np
import pytest

from fvtool.errors import InputError
from fvtool.interop.import_embeddings import import_embeddings
from fvtool.interop.insightface_bin import UnsafePickleError, loads_bin, read_bin, write_bin


def test_bin_round_trip(tmp_path: Path, embedded_data: Path) -> None:
    files = sorted(embedded_data.glob("*/*.jpg"))[:4]
    images = [f.read_bytes() for f in files]
    write_bin(tmp_path / "t.bin", images, [True, False])
    vb = read_bin(tmp_path / "t.bin")
    assert vb.images == images and vb.issame == [True, False] and vb.n_pairs == 2


def test_bin_reads_insightface_style_pickle() -> None:
    # exactly what insightface's lfw2pack.py writes: a tuple (list of bytes, list of bool), highest protocol
    data = pickle.dumps(([b"\xff\xd8a", b"\xff\xd8b"], [True]), protocol=pickle.HIGHEST_PROTOCOL)
    assert loads_bin(data).issame == [True]
    # Python 2 era protocol-2 pickles load too
    assert loads_bin(pickle.dumps(([b"a", b"b"], [False]), protocol=2)).issame == [False]


class _Payload:
    """Unpickling this runs os.system: the loader must refuse before anything executes."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (os.system, (f"touch {self.marker}",))


def test_bin_refuses_planted_payload(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    data = pickle.dumps(([b"a", b"b", _Payload(marker)], [True]))
    with pytest.raises(UnsafePickleError, match="refusing to load"):
        loads_bin(data)
    assert not marker.exists()
    # the same payload loaded with plain pickle would execute: proves the test can fail
    pickle.loads(data)
    assert marker.exists()


@pytest.mark.parametrize("obj", [[b"a"], ([b"a", b"b"], [True, False]), ("x", [True]), ([b"a", b"b"], ["yes"])])
def test_bin_rejects_wrong_shapes(obj: object) -> None:
    with pytest.raises(InputError):
        loads_bin(pickle.dumps(obj))


def test_bin_rejects_garbage() -> None:
    with pytest.raises(InputError, match="not a readable"):
        loads_bin(b"\x00\x01garbage")


def _emb(n: int = 6, d: int = 4) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, d)).astype(np.float32), [f"id{i // 2}/img{i}.jpg" for i in range(n)]


def test_import_npy_npz_csv_h5_agree(tmp_path: Path) -> None:
    emb, keys = _emb()
    np.save(tmp_path / "e.npy", emb)
    (tmp_path / "keys.txt").write_text("\n".join(keys) + "\n")
    np.savez(tmp_path / "e.npz", embeddings=emb, keys=np.array(keys))
    lines = ["key," + ",".join(f"f{j}" for j in range(emb.shape[1]))]
    lines += [k + "," + ",".join(repr(float(v)) for v in row) for k, row in zip(keys, emb, strict=True)]
    (tmp_path / "e.csv").write_text("\n".join(lines) + "\n")
    with h5py.File(tmp_path / "e.h5", "w") as f:
        f["vectors"] = emb
        f["names"] = np.array(keys, dtype=object).astype("S")
    results = [
        import_embeddings(tmp_path / "e.npy", keys_file=tmp_path / "keys.txt"),
        import_embeddings(tmp_path / "e.npz"),
        import_embeddings(tmp_path / "e.csv"),
        import_embeddings(tmp_path / "e.h5", emb_dataset="vectors", keys_dataset="names"),
    ]
    for r in results:
        np.testing.assert_array_equal(r.embeddings, emb)
        assert r.keys == keys and r.identities == [k.split("/")[0] for k in keys]
        assert r.attrs["source"].startswith("import:")


def test_import_checks(tmp_path: Path) -> None:
    emb, keys = _emb()
    emb[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", embeddings=emb, keys=np.array(keys))
    with pytest.raises(InputError, match=r"NaN/inf, e.g. id1/img3.jpg"):
        import_embeddings(tmp_path / "nan.npz")
    emb, keys = _emb()
    np.savez(tmp_path / "dup.npz", embeddings=emb, keys=np.array(keys[:-1] + keys[:1]))
    with pytest.raises(InputError, match="duplicate"):
        import_embeddings(tmp_path / "dup.npz")
    np.savez(tmp_path / "obj.npz", embeddings=emb, keys=np.array(keys, dtype=object))
    with pytest.raises(InputError, match="unpickling"):
        import_embeddings(tmp_path / "obj.npz")
    np.savez(tmp_path / "esc.npz", embeddings=emb, keys=np.array(["../x.jpg", *keys[1:]]))
    with pytest.raises(InputError, match="inside the data root"):
        import_embeddings(tmp_path / "esc.npz")
    root = tmp_path / "data"
    np.savez(tmp_path / "abs.npz", embeddings=emb, keys=np.array([str(root / k) for k in keys]))
    assert import_embeddings(tmp_path / "abs.npz", data_root=root).keys == keys
    with pytest.raises(InputError, match="outside the data root"):
        import_embeddings(tmp_path / "abs.npz", data_root=tmp_path / "other")


def test_bob_scores_round_trip(tmp_path: Path) -> None:
    from fvtool.interop.bob_scores import ScoreRows, read_scores, write_scores

    rng = np.random.default_rng(3)
    score = rng.normal(size=6)
    rows = ScoreRows(["a", "a", "b", "c", "c", "d"], [f"a/{i}.jpg" for i in range(6)],
                     ["a", "b", "b", "a", "c", "e"], [f"x/{i}.jpg" for i in range(6)], score)
    for cols in (4, 5):
        write_scores(tmp_path / f"s{cols}.txt", rows, columns=cols)
        back = read_scores(tmp_path / f"s{cols}.txt")
        np.testing.assert_array_equal(back.score, score)  # exact: shortest repr round-trips
        assert back.claimed_id == rows.claimed_id and back.real_id == rows.real_id
        imp, gen = back.split()
        np.testing.assert_array_equal(gen, score[[0, 2, 4]])
        np.testing.assert_array_equal(imp, score[[1, 3, 5]])
    first = (tmp_path / "s5.txt").read_text().splitlines()[0].split()
    assert first[:4] == ["a", "a/0.jpg", "a", "x/0.jpg"]
    assert len((tmp_path / "s4.txt").read_text().splitlines()[0].split()) == 4


def test_bob_scores_errors(tmp_path: Path) -> None:
    from fvtool.interop.bob_scores import ScoreRows, read_scores, write_scores

    (tmp_path / "bad.txt").write_text("a a x 0.5\nb c y\n")
    with pytest.raises(InputError, match=r"bad.txt:2"):
        read_scores(tmp_path / "bad.txt")
    (tmp_path / "nan.txt").write_text("a a x nan\n")
    with pytest.raises(InputError, match="not finite"):
        read_scores(tmp_path / "nan.txt")
    rows = ScoreRows(["John Doe"], ["k"], ["x"], ["y"], np.array([0.1]))
    with pytest.raises(InputError, match="whitespace"):
        write_scores(tmp_path / "w.txt", rows)
    assert not (tmp_path / "w.txt").exists()
